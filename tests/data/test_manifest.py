"""The manifest reader: what it accepts, and the message for each way a folder can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tf_shopee.data.manifest import load_label_map, load_manifest, shard_paths
from tf_shopee.data.schema import SCHEMA_VERSION
from tf_shopee.errors import UserError
from tf_shopee.io_utils import sha256_file


def write_folder(directory: Path, *, labelled: bool = True, **overrides) -> dict:
    """A hand-made converted folder: two shard files, manifest.json and (optionally) a label map."""
    directory.mkdir(parents=True, exist_ok=True)
    shards = []
    for index, content in enumerate((b"first shard", b"second shard")):
        name = f"train-{index:05d}-of-00002.tfrec"
        (directory / name).write_bytes(content)
        shards.append({"file": name, "sha256": sha256_file(directory / name), "examples": 1})
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "split": "train" if labelled else "test",
        "has_labels": labelled,
        "shards": shards,
    }
    manifest.update(overrides)
    (directory / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    if labelled:
        (directory / "label_map.json").write_text('{"249114794": 1, "7": 0}', encoding="utf-8")
    return manifest


def test_valid_folder_reads_back(tmp_path):
    written = write_folder(tmp_path / "data")
    assert load_manifest(tmp_path / "data", verify_checksums=True) == written
    assert shard_paths(tmp_path / "data") == [
        str(tmp_path / "data" / "train-00000-of-00002.tfrec"),
        str(tmp_path / "data" / "train-00001-of-00002.tfrec"),
    ]
    assert load_label_map(str(tmp_path / "data")) == {249114794: 1, 7: 0}


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: None, "TFRecord folder not found"),
        (lambda d: write_folder(d) and (d / "manifest.json").unlink(), "is not a finished conv"),
        (lambda d: write_folder(d) and (d / "manifest.json").write_text("{oops"), "not valid JSON"),
        (lambda d: write_folder(d) and (d / "manifest.json").write_text("[1]"), "a JSON object"),
        (lambda d: write_folder(d, schema_version=None), "has no schema_version"),
        (lambda d: write_folder(d, schema_version=99), "has schema_version 99"),
        (lambda d: write_folder(d, shards="x"), "'shards' must be a list"),
        (
            lambda d: write_folder(d) and (d / "train-00001-of-00002.tfrec").unlink(),
            "lists train-00001-of-00002.tfrec, which is missing",
        ),
        (lambda d: write_folder(d, shards=[{"file": "../x.tfrec"}]), "is not a plain name"),
    ],
)
def test_broken_folders_are_user_errors(tmp_path, damage, message):
    directory = tmp_path / "data"
    damage(directory)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_manifest(directory)
    with pytest.raises(UserError):
        shard_paths(directory)


def test_checksums_are_verified_only_on_request(tmp_path):
    directory = tmp_path / "data"
    write_folder(directory)
    (directory / "train-00000-of-00002.tfrec").write_bytes(b"changed")
    load_manifest(directory)  # the fast path does not read shard contents
    with pytest.raises(UserError, match="does not match the sha256"):
        load_manifest(directory, verify_checksums=True)


def test_label_map_errors(tmp_path):
    unlabelled = tmp_path / "test_set"
    write_folder(unlabelled, labelled=False)
    with pytest.raises(UserError, match="without label_group: no label map"):
        load_label_map(unlabelled)
    labelled = tmp_path / "train_set"
    write_folder(labelled)
    (labelled / "label_map.json").write_text('{"a": "b"}')
    with pytest.raises(UserError, match="not a JSON object of integers"):
        load_label_map(labelled)
    (labelled / "label_map.json").unlink()
    with pytest.raises(UserError, match="label_map.json not found"):
        load_label_map(labelled)
