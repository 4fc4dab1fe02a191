"""Read the folder written by ``convert_tfrecords.py``: its manifest, shard list and label map.

A converted folder holds ``{split}-{i:05d}-of-{n:05d}.tfrec`` shards, ``manifest.json`` (written
last, so its presence means the conversion finished), ``label_map.json`` when the CSV had labels
and ``rejects.csv``. Every reader (tf.data pipeline, training, prediction) goes through
:func:`load_manifest` so an unfinished folder or one written by an incompatible version is refused
with one clear message instead of failing somewhere inside TensorFlow.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from tf_shopee.data.schema import SCHEMA_VERSION
from tf_shopee.errors import UserError
from tf_shopee.io_utils import read_json, sha256_file

MANIFEST_NAME = "manifest.json"
LABEL_MAP_NAME = "label_map.json"
REJECTS_NAME = "rejects.csv"


def load_manifest(directory: str | os.PathLike, *, verify_checksums: bool = False) -> dict:
    """Read and validate ``directory/manifest.json``.

    Checks that the folder exists, that the manifest is present and is a JSON object, that its
    ``schema_version`` is the one this code reads, and that every shard it lists exists (and, with
    ``verify_checksums``, still has the recorded sha256: slow on large folders, so off by default).

    Raises:
        UserError: naming the folder and what is wrong with it.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"TFRecord folder not found: {directory}")
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise UserError(
            f"{manifest_path} not found: {directory} is not a finished conversion "
            "(run convert_tfrecords.py, or run it again to finish an interrupted one)"
        )
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict):
        raise UserError(f"{manifest_path} must hold a JSON object")

    version = manifest.get("schema_version")
    if version is None:
        raise UserError(f"{manifest_path} has no schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(
            f"{manifest_path} has schema_version {version!r}; this tf_shopee reads version "
            f"{SCHEMA_VERSION}: convert the CSV again with this version"
        )

    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(
        isinstance(shard, dict) and isinstance(shard.get("file"), str) for shard in shards
    ):
        raise UserError(f"{manifest_path}: 'shards' must be a list of {{'file': ...}} objects")
    for shard in shards:
        # A shard name with a folder part would let a manifest point outside its own folder.
        if Path(shard["file"]).name != shard["file"]:
            raise UserError(f"{manifest_path}: shard name {shard['file']!r} is not a plain name")
        shard_path = directory / shard["file"]
        if not shard_path.is_file():
            raise UserError(f"{manifest_path} lists {shard['file']}, which is missing")
        # Free to check (a stat), and it catches a truncated copy before any record is read.
        recorded_bytes = shard.get("bytes")
        if recorded_bytes is not None and shard_path.stat().st_size != recorded_bytes:
            raise UserError(
                f"{shard_path} has {shard_path.stat().st_size} bytes but {manifest_path} records "
                f"{recorded_bytes}: the shard is damaged (a truncated copy?); copy it again or "
                "convert the CSV again with --overwrite"
            )
        if verify_checksums and sha256_file(shard_path) != shard.get("sha256"):
            raise UserError(f"{shard_path} does not match the sha256 in {manifest_path}")
    return manifest


def damaged_shards(directory: str | os.PathLike) -> list[str]:
    """The shards of a converted folder whose sha256 differs from the manifest's (reads them)."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    return [
        shard["file"]
        for shard in manifest["shards"]
        if sha256_file(directory / shard["file"]) != shard.get("sha256")
    ]


@contextlib.contextmanager
def name_damaged_shards(directory: str | os.PathLike):
    """Turn TensorFlow's ``DataLossError`` (a corrupt or truncated record) met while reading
    ``directory`` into a :class:`UserError` that names the shards failing their checksum."""
    try:
        yield
    except Exception as error:
        tensorflow = sys.modules.get("tensorflow")
        if tensorflow is None or not isinstance(error, tensorflow.errors.DataLossError):
            raise
        message = (getattr(error, "message", None) or str(error)).strip().splitlines()[0]
        damaged = damaged_shards(directory)
        which = (
            f"shard(s) failing the sha256 recorded in {MANIFEST_NAME}: {', '.join(damaged)}"
            if damaged
            else f"every shard still matches its sha256 in {MANIFEST_NAME}"
        )
        raise UserError(
            f"cannot read the TFRecords in {directory} ({message}); {which}. Copy the folder "
            "again, or convert the CSV again with --overwrite"
        ) from None


def shard_paths(directory: str | os.PathLike) -> list[str]:
    """The shard files of a converted folder, in manifest order, as path strings."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    return [str(directory / shard["file"]) for shard in manifest["shards"]]


def load_label_map(directory: str | os.PathLike) -> dict[int, int]:
    """``{label_group: dense label index}`` from ``directory/label_map.json``.

    Raises:
        UserError: when the folder is unlabelled (a test set has no label map) or the file is bad.
    """
    directory = Path(directory)
    manifest = load_manifest(directory)
    label_map_path = directory / LABEL_MAP_NAME
    if not manifest.get("has_labels", False):
        raise UserError(f"{directory} was converted from a CSV without label_group: no label map")
    if not label_map_path.is_file():
        raise UserError(f"{label_map_path} not found")
    try:
        payload = json.loads(label_map_path.read_text(encoding="utf-8"))
        return {int(label_group): int(index) for label_group, index in payload.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, ValueError) as error:
        raise UserError(f"{label_map_path} is not a JSON object of integers: {error}") from None
