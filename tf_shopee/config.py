"""Typed run configuration: one dataclass tree per run, saved into the run's folder.

A run's configuration is built from defaults, then a JSON file (``--config``), then ``--set``
overrides with dotted keys (``--set model.text.num_layers=4``), then the named command-line flags.
The resolved tree is written to ``<workdir>/config.json`` when training starts and beside every
export, so a result can always be traced back to the settings that made it.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from tf_shopee.errors import UserError
from tf_shopee.models.kind import ModelKind

# The smallest photo side, in pixels, anywhere in the project (training, the synthetic generator,
# decoding): the image backbones downsample by 32, so a smaller photo leaves them less than one
# pixel of feature map. Checked with a UserError where a size enters (this config, the synthetic
# generator's arguments); deeper layers check the same constant with a ValueError.
MIN_IMAGE_SIZE = 32


@dataclass
class DataConfig:
    """Where the training data is and how it is fed."""

    tfrecords: str = ""  # folder written by convert_tfrecords.py (holds manifest.json)
    image_size: int = 256  # photo side in pixels, at least MIN_IMAGE_SIZE
    validation_fold: int = 0  # train on folds != k, validate on fold k; -1 trains on everything
    # Folds kept out of training and validation, comma-separated (e.g. "1"): data the model never
    # saw, to choose thresholds on (predict.py --fold 1 --search-thresholds) without touching the
    # validation fold; a training fold would give thresholds tuned to the model's own data.
    holdout_folds: str = ""
    shuffle_buffer: int = 2048
    augment: bool = True
    class_balanced: bool = False  # sample rare label groups as often as large ones
    deterministic: bool = False
    cache: bool = False  # cache decoded records in memory (small datasets only)
    # Catalogue-aware training: a posting CSV of catalogue (studio) photos with label_group. Rows
    # whose product is in the training folds join training as members of their class, each draw
    # a new shop-like variant (tf_shopee.data.studio); rows of validation / held-out products
    # are left out (logged).
    catalog_csv: str = ""
    catalog_images: str = ""  # folder of catalog_csv's image column (default: the CSV's folder)
    catalog_fraction: float = 0.1  # share of the training examples drawn from catalogue photos
    catalog_shelf_background: float = 0.8  # chance a variant is put on a crop of a shop photo

    def holdout_fold_list(self) -> list[int]:
        """``holdout_folds`` as sorted fold numbers (UserError for anything else)."""
        folds = []
        for part in self.holdout_folds.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit():
                raise UserError(f"data.holdout_folds must be comma-separated fold numbers, got "
                                f"{self.holdout_folds!r}")
            folds.append(int(part))
        return sorted(set(folds))


@dataclass
class ImageModelConfig:
    """The image tower: a CNN backbone, pooling, and the embedding head."""

    # A name of tf_shopee.models.image.IMAGE_BACKBONES, or a keras-hub preset name / directory.
    backbone: str = "efficientnet_b0"
    # imagenet | none | path to a Keras weights file (.weights.h5), or for EfficientNet-Lite a
    # PyTorch .pth in the packaged layout
    weights: str = "imagenet"
    pooling: str = "gem"  # avg | gem (generalised mean with learnable p)
    gem_p: float = 3.0
    dropout: float = 0.2
    trainable: str = "all"  # head | last_block | last_N_blocks (the last N stages) | all
    # After pooling: dense_bn (Dense to model.embedding_dim + BatchNorm) | bn (BatchNorm only,
    # backbone width) | none (the pooled backbone features, e.g. ImageNet zero-shot)
    projection: str = "dense_bn"
    # Keep every backbone BatchNorm layer in inference mode with its pretrained statistics and
    # scale/offset (small batches give noisy batch statistics that wreck pretrained features).
    freeze_batch_norm: bool = False


@dataclass
class TextModelConfig:
    """The text tower: a BERT-family encoder with masked mean pooling and the embedding head.

    ``backbone="scratch"`` builds a small BERT from the config below with a WordPiece vocabulary
    learned from the training titles; anything else is a keras-hub preset name or a local preset /
    Hugging Face directory.
    """

    backbone: str = "scratch"
    vocabulary: str = ""  # scratch: WordPiece vocab file, learned from the titles at first start
    sequence_length: int = 48
    lowercase: bool = True
    vocabulary_size: int = 12000  # scratch only: target WordPiece vocabulary size
    num_layers: int = 4  # scratch only
    hidden_dim: int = 256  # scratch only
    num_heads: int = 4  # scratch only
    intermediate_dim: int = 512  # scratch only
    dropout: float = 0.1
    trainable: str = "all"  # head | all
    # After mean pooling: dense_bn (Dense to model.embedding_dim + BatchNorm) | none (the pooled
    # encoder output itself, e.g. a pretrained sentence encoder used zero-shot)
    projection: str = "dense_bn"


@dataclass
class ArcFaceConfig:
    """Additive angular margin head (used only while training)."""

    scale: float = 30.0
    margin: float = 0.5
    initial_margin: float = 0.2  # margin warm-up start; equal to margin disables the warm-up
    margin_warmup_epochs: float = 2.0
    easy_margin: bool = False
    label_smoothing: float = 0.0
    # Centres per class (sub-center ArcFace): each class's logit uses its nearest centre.
    sub_centers: int = 1


@dataclass
class ModelConfig:
    """Which model to train and its towers."""

    kind: ModelKind = ModelKind.IMAGE  # image | text | multimodal
    embedding_dim: int = 512
    image: ImageModelConfig = field(default_factory=ImageModelConfig)
    text: TextModelConfig = field(default_factory=TextModelConfig)
    arc_face: ArcFaceConfig = field(default_factory=ArcFaceConfig)

    def __post_init__(self):
        # From a JSON file, --set or code, the kind is a ModelKind from here on.
        self.kind = ModelKind.parse(self.kind, where="model.kind")


@dataclass
class TrainConfig:
    """Optimisation, distribution and checkpointing."""

    epochs: int = 10  # 0: no training, export the model as initialised (a pretrained baseline)
    batch_size: int = 16  # per replica; the global batch is batch_size x replicas
    learning_rate: float = 1e-4  # for a global batch of 64; scaled linearly with the global batch
    head_learning_rate_multiplier: float = 10.0  # the ArcFace head learns faster
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    gradient_clip_norm: float = 1.0
    steps_per_epoch: int = 0  # 0: one pass over the training folds
    strategy: str = "auto"  # auto | one_device | mirrored | multi_worker | tpu
    tpu: str = ""
    mixed_precision: bool = False
    jit_compile: bool = False
    seed: int = 42
    validate: bool = True
    checkpoint_every_steps: int = 0  # 0: off (epoch ends and checkpoint_every_minutes still save)
    # Also save mid-epoch once this many minutes have passed since the last save, so a killed or
    # preempted run loses minutes, not an epoch. 0: off.
    checkpoint_every_minutes: float = 5.0
    # A progress line (step, loss, examples/s, ETA) at most this often inside an epoch and while
    # validating. 0: after every call of the train function.
    log_every_seconds: float = 30.0
    # "Precise BatchNorm": at each epoch end, re-estimate the BatchNorm moving statistics from
    # this many un-augmented training batches before validating and saving. 0: off. Short runs
    # from random weights need it: with momentum 0.99 the moving statistics lag far behind the
    # weights and the inference-mode embeddings collapse.
    batch_norm_recalibration_batches: int = 0
    # A higher resolution at the end (image models): the last `final_epochs` epochs train on
    # final_image_size px photos, and the export takes that size. final_epochs=0 only exports at
    # the larger size (the test-time resolution of "FixRes"). 0: off.
    final_image_size: int = 0
    final_epochs: int = 1

    def export_image_size(self, image_size: int) -> int:
        """The image side of the export: ``final_image_size`` when set, else ``image_size``."""
        return self.final_image_size or image_size


@dataclass
class RunConfig:
    """Everything one training run needs."""

    name: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """The configuration as plain JSON-ready data."""
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the configuration as JSON (atomically)."""
        from tf_shopee.io_utils import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, payload: dict) -> "RunConfig":
        """Build a configuration from (possibly partial) nested data; unknown keys are an error."""
        return _from_dict(cls, payload, prefix="")

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        """Read a configuration JSON file written by :meth:`save` or by hand."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"config file not found: {path}") from None
        except json.JSONDecodeError as error:
            raise UserError(f"config file {path} is not valid JSON: {error}") from None
        return cls.from_dict(payload)

    def override(self, assignments: list[str]) -> "RunConfig":
        """Apply ``key=value`` assignments with dotted keys, e.g. ``model.text.num_layers=2``."""
        for assignment in assignments:
            key, separator, raw_value = assignment.partition("=")
            if not separator:
                raise UserError(f"--set expects key=value, got {assignment!r}")
            set_by_path(self, key.strip(), raw_value.strip())
        return self

    def validate(self) -> "RunConfig":
        """Check values that no type annotation can express; raise UserError naming the option."""
        self.model.kind = ModelKind.parse(self.model.kind, where="model.kind")
        if self.model.embedding_dim <= 0:
            raise UserError("model.embedding_dim must be positive")
        if self.train.batch_size <= 0:
            raise UserError("train.batch_size must be positive")
        if self.train.epochs < 0:
            raise UserError("train.epochs must be 0 (export the model as initialised) or more")
        if self.train.checkpoint_every_steps < 0 or self.train.checkpoint_every_minutes < 0:
            raise UserError(
                "train.checkpoint_every_steps and train.checkpoint_every_minutes must be 0 (off) "
                "or positive"
            )
        if self.train.log_every_seconds < 0:
            raise UserError("train.log_every_seconds must be 0 (every call) or positive")
        if self.train.batch_norm_recalibration_batches < 0:
            raise UserError("train.batch_norm_recalibration_batches must be 0 (off) or positive")
        holdout = self.data.holdout_fold_list()
        if self.data.validation_fold in holdout:
            raise UserError(f"data.holdout_folds {self.data.holdout_folds!r} includes the "
                            f"validation fold {self.data.validation_fold}")
        if self.data.catalog_csv and self.model.kind is not ModelKind.IMAGE:
            raise UserError("data.catalog_csv (catalogue photos in training) needs model.kind "
                            "image")
        if self.data.catalog_csv and not 0.0 < self.data.catalog_fraction < 1.0:
            raise UserError(f"data.catalog_fraction must be in (0, 1), got "
                            f"{self.data.catalog_fraction}")
        if not 0.0 <= self.data.catalog_shelf_background <= 1.0:
            raise UserError(f"data.catalog_shelf_background must be in [0, 1], got "
                            f"{self.data.catalog_shelf_background}")
        if self.train.final_image_size:
            if self.model.kind is not ModelKind.IMAGE:
                raise UserError("train.final_image_size needs model.kind image")
            if self.train.final_image_size < MIN_IMAGE_SIZE:
                raise UserError(f"train.final_image_size must be at least {MIN_IMAGE_SIZE} "
                                "pixels (0: off)")
            if not 0 <= self.train.final_epochs <= self.train.epochs:
                raise UserError(f"train.final_epochs must be in 0..train.epochs "
                                f"({self.train.epochs}), got {self.train.final_epochs}")
        if self.model.arc_face.sub_centers < 1:
            raise UserError("model.arc_face.sub_centers must be at least 1")
        if self.data.image_size < MIN_IMAGE_SIZE:
            raise UserError(f"data.image_size must be at least {MIN_IMAGE_SIZE} pixels, got "
                            f"{self.data.image_size}")
        if self.model.image.pooling not in ("avg", "gem"):
            raise UserError(
                f"model.image.pooling must be avg or gem, got {self.model.image.pooling!r}"
            )
        if self.model.image.projection not in ("dense_bn", "bn", "none"):
            raise UserError("model.image.projection must be dense_bn, bn or none")
        if not re.fullmatch(r"head|last_block|last_[1-9]\d*_blocks|all",
                            self.model.image.trainable):
            raise UserError("model.image.trainable must be head, last_block, last_N_blocks "
                            "(e.g. last_2_blocks) or all")
        if self.model.text.trainable not in ("head", "all"):
            raise UserError("model.text.trainable must be head or all")
        if self.model.text.projection not in ("dense_bn", "none"):
            raise UserError("model.text.projection must be dense_bn or none")
        return self


def _from_dict(cls, payload: dict, prefix: str):
    if not isinstance(payload, dict):
        raise UserError(f"config section {prefix or '<root>'} must be an object")
    hints = typing.get_type_hints(cls)
    known = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(payload) - known)
    if unknown:
        raise UserError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}")
    values = {}
    for name, value in payload.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _from_dict(hint, value, prefix=f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**values)


def _coerce(value, hint, key: str):
    """Convert ``value`` (from JSON or a command-line string) to the annotated scalar type."""
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return "" if value is None else str(value)
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return hint(value)
    except (TypeError, ValueError):
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            choices = ", ".join(str(member.value) for member in hint)
            raise UserError(f"config key {key} must be one of {choices}, got {value!r}") from None
        raise UserError(f"config key {key} expects {hint.__name__}, got {value!r}") from None
    return value


def set_by_path(config, dotted_key: str, raw_value) -> None:
    """Set ``config.<dotted_key>`` to ``raw_value`` converted to the field's type."""
    target = config
    parts = dotted_key.split(".")
    for depth, part in enumerate(parts):
        hints = typing.get_type_hints(type(target))
        if part not in hints:
            where = ".".join(parts[:depth]) or "<root>"
            options = ", ".join(sorted(hints))
            raise UserError(f"unknown config key {dotted_key!r} (in {where}: {options})")
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(hints[part]):
                raise UserError(f"config key {dotted_key!r} is a section, set one of its fields")
            setattr(target, part, _coerce(raw_value, hints[part], dotted_key))
        else:
            target = getattr(target, part)


def tiny_overrides(kind: ModelKind) -> list[str]:
    """The smallest configuration of each model, for CPU smoke runs (``train.py --tiny``)."""
    kind = ModelKind(kind)
    overrides = [
        "data.image_size=64",
        "data.shuffle_buffer=256",
        "model.embedding_dim=64",
        "model.image.backbone=efficientnet_tiny",
        "model.image.weights=none",
        "model.text.backbone=scratch",
        "model.text.sequence_length=32",
        "model.text.vocabulary_size=2000",
        "model.text.num_layers=2",
        "model.text.hidden_dim=64",
        "model.text.num_heads=2",
        "model.text.intermediate_dim=128",
        # From-scratch tiny models on a few thousand postings see each group only a few times:
        # a smaller margin and a larger learning rate let them learn in a few CPU epochs (with
        # m=0.5 and lr 1e-3 the demo's models did not beat their untrained selves).
        "model.arc_face.margin=0.3",
        "model.arc_face.initial_margin=0.1",
        "model.arc_face.margin_warmup_epochs=1",
        "train.batch_size=8",
        "train.learning_rate=2e-2",
        "train.warmup_epochs=0.5",
        # Short runs from random weights: BatchNorm moving statistics (momentum 0.99) lag far
        # behind the weights, and inference-mode embeddings collapse without re-estimating them.
        "train.batch_norm_recalibration_batches=20",
    ]
    if kind is ModelKind.IMAGE:
        # Measured on the demo's 2,400 training photos (about 2.5 per group): with margin 0.3
        # and scale 30 the tiny CNN's loss does not go down at all and validation F1 falls;
        # a normalised softmax (margin 0, scale 16) on batches of 32 without dropout learns
        # steadily. Real runs from ImageNet weights keep the ArcFace defaults.
        overrides += [
            "model.arc_face.margin=0",
            "model.arc_face.initial_margin=0",
            "model.arc_face.scale=16",
            "model.image.dropout=0",
            "train.batch_size=32",
            "train.learning_rate=6e-3",
        ]
    return overrides
