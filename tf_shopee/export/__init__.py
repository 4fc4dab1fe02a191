"""Exported embedding models: SavedModel folders and LiteRT files, written and loaded back.

* :mod:`tf_shopee.export.saved_model` — ``train.py --export``: a raw-input SavedModel folder
  (JPEG bytes and/or titles in, L2-normalised embeddings out), :class:`ExportedModel`.
* :mod:`tf_shopee.export.litert` — ``python -m tf_shopee.export litert SM OUT.tflite``: an image
  export as a float32 / float16 / int8 LiteRT model, :class:`LiteRTModel`.
* :mod:`tf_shopee.export.ensemble` — ``python -m tf_shopee.export concat A B OUT``: image exports
  whose embeddings are concatenated, as one export.

Everything that loads a model goes through :func:`load_exported` and :func:`read_export_metadata`
here, which take either: a folder is a SavedModel export, a ``.tflite`` file a LiteRT one. Both
loaded models have the same interface (``kind``, ``embedding_dim``, ``image_size``,
``threshold``, ``metadata``, ``directory``, ``fingerprint``, ``embed``; image models also
``embed_pixels`` and ``embed_views``), and :func:`model_fingerprint` is the identity embedding
caches and catalogue manifests key on.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tf_shopee.export.ensemble import concat_exports
from tf_shopee.export.litert import (
    LITERT_SUFFIX,
    LiteRTModel,
    convert_to_litert,
    is_litert_path,
    load_litert,
    read_litert_metadata,
)
from tf_shopee.export.saved_model import (
    CONFIG_FILE,
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    METADATA_FILE,
    PIXELS_INPUT,
    PIXELS_OUTPUT,
    PIXELS_SIGNATURE,
    SAVED_MODEL_FILE,
    SERVING_INPUTS,
    THRESHOLDS_FILE,
    ExportedModel,
    export_model,
    load_saved_model,
    read_saved_model_metadata,
    rebuild_keras_model,
)

__all__ = [
    "CONFIG_FILE",
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "LITERT_SUFFIX",
    "METADATA_FILE",
    "PIXELS_INPUT",
    "PIXELS_OUTPUT",
    "PIXELS_SIGNATURE",
    "SAVED_MODEL_FILE",
    "SERVING_INPUTS",
    "THRESHOLDS_FILE",
    "ExportedModel",
    "concat_exports",
    "LiteRTModel",
    "convert_to_litert",
    "export_model",
    "is_litert_path",
    "load_exported",
    "load_litert",
    "load_saved_model",
    "model_fingerprint",
    "read_export_metadata",
    "read_litert_metadata",
    "read_saved_model_metadata",
    "rebuild_keras_model",
]


def read_export_metadata(path: str | os.PathLike) -> dict:
    """The metadata of an export: ``tf_shopee_export.json`` of a SavedModel folder, or the entry
    inside a ``.tflite`` file (which also says ``"backend": "litert"`` and its quantization).

    Raises:
        UserError: missing, not a tf_shopee export, or another format version.
    """
    if is_litert_path(path):
        return read_litert_metadata(path)
    return read_saved_model_metadata(path)


def load_exported(path: str | os.PathLike, *, expected_kind: str | None = None):
    """Load a SavedModel export folder or a ``.tflite`` file; the model's ``fingerprint`` is set.

    Args:
        path: the export folder, or a LiteRT model file.
        expected_kind: when given, a model of another kind is refused.

    Raises:
        UserError: not a tf_shopee export, another format version or kind, or unloadable.
    """
    if is_litert_path(path):
        model = load_litert(path, expected_kind=expected_kind)
    else:
        model = load_saved_model(path, expected_kind=expected_kind)
    model.fingerprint = model_fingerprint(path)
    return model


def model_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of an export's identity: a SavedModel folder's metadata, graph and every variables
    file, or a ``.tflite`` file's bytes (its metadata is inside)."""
    from tf_shopee.io_utils import sha256_file

    root = Path(path)
    digest = hashlib.sha256()
    if is_litert_path(root):
        files = [root]
    else:
        files = [root / METADATA_FILE, root / SAVED_MODEL_FILE]
        files += sorted((root / "variables").glob("*"))
    for file in files:
        if file.is_file():
            digest.update(file.name.encode("utf-8") + b"\x00")
            digest.update(bytes.fromhex(sha256_file(file)))
    return digest.hexdigest()
