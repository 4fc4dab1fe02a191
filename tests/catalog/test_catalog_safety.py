"""The catalogue index against several writers and readers, kills in the middle of a swap,
tampered manifests and hostile image paths (issue 21, "What broke" 1, 2, 6, 7)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from catalog_helpers import REPOSITORY, run_main

from tf_shopee.catalog.cli import main as catalog_main
from tf_shopee.catalog.index import BuildOptions, add_to_index, build_index, load_index
from tf_shopee.errors import UserError


def _text_options(csv: Path, out: Path | str = "", **extra) -> BuildOptions:
    return BuildOptions(csv=str(csv), out=str(out), progress=False, **extra)


def test_two_writers_at_once_lose_no_rows(catalogue_set, tmp_path, monkeypatch, capsys):
    """Two ``catalog add`` at the same time: the second waits for the first and adds to its
    result (the old code let the last rename win: the first one's rows were gone)."""
    from tf_shopee.catalog import index as catalog_index

    frame = pd.read_csv(catalogue_set / "all.csv", dtype=str)
    frame.iloc[:60].to_csv(tmp_path / "base.csv", index=False)
    frame.iloc[60:80].to_csv(tmp_path / "first.csv", index=False)
    frame.iloc[80:100].to_csv(tmp_path / "second.csv", index=False)
    out = tmp_path / "index"
    build_index(_text_options(tmp_path / "base.csv", out))
    original = catalog_index.model_free_state
    inside = threading.Event()

    def slow(*args, **kwargs):  # a long step between reading the index and writing it
        inside.set()
        time.sleep(1.5)
        return original(*args, **kwargs)

    monkeypatch.setattr(catalog_index, "model_free_state", slow)
    errors = []

    def add(csv):
        try:
            add_to_index(str(out), _text_options(csv))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    first = threading.Thread(target=add, args=(tmp_path / "first.csv",))
    first.start()
    assert inside.wait(60)
    # Meanwhile a writer that will not wait is told who holds the index.
    status, _, stderr = run_main(catalog_main, ["add", "--index", out, "--csv",
                                                tmp_path / "second.csv", "--no-wait"], capsys)
    assert status == 2 and "is writing the catalogue index" in stderr and "pid" in stderr
    second = threading.Thread(target=add, args=(tmp_path / "second.csv",))
    second.start()
    first.join()
    second.join()
    assert not errors
    index = load_index(out, verify_checksums=True)
    assert sorted(index.posting_ids) == sorted(frame["posting_id"])


# A ``catalog build --overwrite`` killed (SIGKILL) right after the first rename of its swap: the
# old index is renamed away, the new one not yet in place.
_KILLED_BUILD = """
import os, signal, sys
from pathlib import Path
from tf_shopee import io_utils
from tf_shopee.catalog.index import BuildOptions, build_index

out, csv = sys.argv[1], sys.argv[2]
original = os.replace

def replace(source, destination):
    original(source, destination)
    if Path(destination).name.startswith(f".{Path(out).name}.old-"):
        os.kill(os.getpid(), signal.SIGKILL)

io_utils.os.replace = replace
build_index(BuildOptions(csv=csv, out=out, overwrite=True, progress=False))
"""


def test_a_swap_killed_between_its_renames_is_rolled_back(catalogue_set, tmp_path):
    out = tmp_path / "index"
    build_index(_text_options(catalogue_set / "part_a.csv", out))
    before = load_index(out).posting_ids
    killed = subprocess.run([sys.executable, "-c", _KILLED_BUILD, str(out),
                             str(catalogue_set / "all.csv")], cwd=REPOSITORY, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    # What the kill left: no index, the old one and the new one under hidden names.
    assert not out.exists()
    assert {path.name.split("-")[0] for path in tmp_path.iterdir() if path.is_dir()} == {
        ".index.old", ".index.partial"}
    # A reader restores the previous version (the killed build never said it succeeded).
    assert load_index(out).posting_ids == before
    assert sorted(path.name for path in tmp_path.iterdir()) == [".index.lock", "index"]
    # A copy left by a kill just after a swap is removed by the next writer.
    stale = tmp_path / f".index.old-{_dead_pid()}"
    shutil.copytree(out, stale)
    add_to_index(str(out), _text_options(catalogue_set / "part_b.csv"))
    assert not stale.exists() and len(load_index(out)) == 100


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_readers_see_one_version_while_writers_swap(catalogue_set, tmp_path):
    """Loads running during repeated rebuilds (60 and 100 rows) each see one whole version."""
    frame = pd.read_csv(catalogue_set / "all.csv", dtype=str)
    frame.iloc[:60].to_csv(tmp_path / "small.csv", index=False)
    out = tmp_path / "index"
    build_index(_text_options(tmp_path / "small.csv", out))
    stop, seen, failures = threading.Event(), set(), []

    def read():
        while not stop.is_set():
            try:
                index = load_index(out)
                assert index.manifest["rows"] == len(index.posting_ids)
                assert index.tfidf_vectors.shape[0] == len(index)
                assert index.tfidf_vectors.shape[1] == len(index.vectorizer.idf_)
                seen.add(len(index))
            except Exception as error:  # noqa: BLE001 - collected and shown
                failures.append(repr(error))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_ in range(8):
            csv = catalogue_set / "all.csv" if round_ % 2 == 0 else tmp_path / "small.csv"
            build_index(_text_options(csv, out, overwrite=True))
    finally:
        stop.set()
        reader.join()
    assert not failures, failures[:3]
    assert seen == {60, 100}


def test_manifest_paths_stay_inside_the_index(catalogue_set, tmp_path):
    out = tmp_path / "index"
    build_index(_text_options(catalogue_set / "part_a.csv", out))
    manifest = json.loads((out / "manifest.json").read_text())
    outside = tmp_path / "outside.npy"
    shutil.copyfile(out / "tfidf" / "idf.npy", outside)
    for path in ("/etc/passwd", "../outside.npy", "tfidf/../../outside.npy"):
        edited = json.loads(json.dumps(manifest))
        edited["tfidf"]["idf"] = path
        edited["files"][path] = edited["files"].pop("tfidf/idf.npy")
        (out / "manifest.json").write_text(json.dumps(edited))
        with pytest.raises(UserError, match="not a path inside the index folder"):
            load_index(out)
    # A symlink inside the folder that points out is not followed.
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "tfidf" / "idf.npy").unlink()
    (out / "tfidf" / "idf.npy").symlink_to(outside)
    with pytest.raises(UserError, match="not a plain file inside its folder"):
        load_index(out)


def test_rejected_photos_are_never_read_for_thumbnails_or_phash(catalogue_set, tmp_path,
                                                               monkeypatch):
    """Rows whose image is ``../secret/x.jpg``, an absolute path, or a symlink out of the image
    folder got the outside file's thumbnail and phash, served by the app; now nothing."""
    from tf_shopee.catalog import index as catalog_index

    images = tmp_path / "images"
    shutil.copytree(catalogue_set / "data" / "train_images", images)
    secret = tmp_path / "secret"
    secret.mkdir()
    frame = pd.read_csv(catalogue_set / "part_a.csv", dtype=str).drop(columns="image_phash")
    shutil.copyfile(images / frame["image"][0], secret / "x.jpg")
    (images / "link.jpg").symlink_to(secret / "x.jpg")
    frame.loc[1, "image"] = "../secret/x.jpg"
    frame.loc[2, "image"] = str(secret / "x.jpg")
    frame.loc[3, "image"] = "link.jpg"
    frame.to_csv(tmp_path / "catalogue.csv", index=False)
    opened = []
    original = catalog_index._image_bytes
    monkeypatch.setattr(catalog_index, "_image_bytes", lambda postings, row: (
        opened.append(row), original(postings, row))[1])
    out = tmp_path / "index"
    build_index(BuildOptions(csv=str(tmp_path / "catalogue.csv"), images=str(images),
                             out=str(out), progress=False))
    assert not {1, 2, 3} & set(opened) and 0 in opened
    index = load_index(out)
    for row in (1, 2, 3):
        assert index.thumbnail(row) is None and index.image_phashes[row] == ""
    assert index.thumbnail(0) is not None and index.image_phashes[0]


def test_same_size_damage_is_a_clear_message(catalogue_set, tmp_path):
    out = tmp_path / "index"
    build_index(_text_options(catalogue_set / "part_a.csv", out))
    pristine = tmp_path / "pristine"
    shutil.copytree(out, pristine)
    vocabulary = out / "tfidf" / "vocabulary.json"
    text = vocabulary.read_bytes()
    vocabulary.write_bytes(text[:10] + b"\x00\xff" + text[12:])  # same size
    completed = _predict(out, catalogue_set, tmp_path)
    assert completed.returncode == 2, completed.stderr
    assert "tfidf/vocabulary.json cannot be read" in completed.stderr
    assert "Traceback" not in completed.stderr
    shutil.rmtree(out)
    shutil.copytree(pristine, out)
    postings = out / "postings.csv"
    lines = postings.read_text().splitlines(keepends=True)
    label = lines[5].rstrip("\n").rsplit(",", 1)[1]
    lines[5] = lines[5].replace(label, "x" * len(label))  # same size, not a label any more
    postings.write_text("".join(lines))
    completed = _predict(out, catalogue_set, tmp_path)
    assert completed.returncode == 2 and "postings.csv label_group" in completed.stderr
    assert "Traceback" not in completed.stderr


def _predict(index: Path, catalogue_set: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "predict.py", "--catalog", str(index), "--csv",
                           str(catalogue_set / "queries.csv"), "--out",
                           str(tmp_path / "matches.csv"), "--quiet"],
                          capture_output=True, text=True, cwd=REPOSITORY)


def _build_as_nobody(csv: str, out: str, queue) -> None:
    os.setgid(65534)
    os.setuid(65534)
    try:
        build_index(BuildOptions(csv=csv, out=out, progress=False))
        queue.put("built")
    except UserError as error:
        queue.put(f"UserError: {error}")
    except Exception as error:  # noqa: BLE001 - the old code's traceback, reported
        queue.put(f"{type(error).__name__}: {error}")


def test_a_read_only_parent_is_refused_before_any_work(catalogue_set):
    """As root, a read-only folder is still writable: the build runs as user nobody."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a build as another user")
    root = Path(tempfile.mkdtemp(prefix="tf_shopee_read_only_"))
    try:
        root.chmod(0o755)
        shutil.copyfile(catalogue_set / "part_a.csv", root / "catalogue.csv")
        (root / "catalogue.csv").chmod(0o644)
        (root / "locked").mkdir(mode=0o555)
        (root / "locked").chmod(0o555)
        queue = multiprocessing.get_context("fork").Queue()
        process = multiprocessing.get_context("fork").Process(
            target=_build_as_nobody,
            args=(str(root / "catalogue.csv"), str(root / "locked" / "index"), queue))
        process.start()
        process.join(120)
        answer = queue.get(timeout=10)
        assert answer.startswith("UserError:") and "is not writable" in answer, answer
    finally:
        shutil.rmtree(root)


def test_thresholds_for_sources_the_catalogue_lacks_are_refused(catalogue_set, tiny_models,
                                                                 tmp_path, capsys):
    status, _, stderr = run_main(catalog_main, [
        "build", "--csv", catalogue_set / "part_a.csv", "--images",
        catalogue_set / "data" / "train_images", "--model", tiny_models["image"],
        "--threshold", "text=0.5", "--out", tmp_path / "index", "--quiet"], capsys)
    assert status == 2
    assert "--threshold text=0.5: this catalogue has no source 'text'" in stderr
    assert not (tmp_path / "index").exists()


def test_every_title_empty_or_punctuation_builds_and_matches_by_the_photos(catalogue_set,
                                                                          tmp_path, capsys,
                                                                          caplog):
    frame = pd.read_csv(catalogue_set / "all.csv", dtype=str)
    frame["title"] = ["" if row % 2 else "!!! ..." for row in range(len(frame))]
    frame.to_csv(tmp_path / "untitled.csv", index=False)
    out = tmp_path / "index"
    status, _, stderr = run_main(catalog_main, ["build", "--csv", tmp_path / "untitled.csv",
                                                "--out", out], capsys)
    assert status == 0, stderr
    assert "none of the 100 titles has a word" in caplog.text
    index = load_index(out)
    assert index.vectorizer is None and index.image_phashes is not None
    from tf_shopee.predict import main as predict_main

    status, _, stderr = run_main(predict_main, ["--csv", tmp_path / "untitled.csv", "--out",
                                                tmp_path / "matches.csv", "--quiet"], capsys)
    assert status == 0, stderr
    assert len(pd.read_csv(tmp_path / "matches.csv")) == 100


def test_the_encoding_the_message_names_is_a_flag(catalogue_set, tmp_path, capsys, caplog):
    frame = pd.read_csv(catalogue_set / "part_a.csv", dtype=str)
    frame.loc[0, "title"] = "Kaos Café €5"
    frame.to_csv(tmp_path / "cp1252.csv", index=False, encoding="cp1252")
    status, _, stderr = run_main(catalog_main, ["build", "--csv", tmp_path / "cp1252.csv",
                                                "--out", tmp_path / "a"], capsys)
    assert status == 0 and "pass --encoding NAME" in caplog.text
    status, _, stderr = run_main(catalog_main, ["build", "--csv", tmp_path / "cp1252.csv",
                                                "--encoding", "cp1252", "--out",
                                                tmp_path / "b"], capsys)
    assert status == 0, stderr
    assert load_index(tmp_path / "b").titles[0] == "Kaos Café €5"
    assert np.array_equal(load_index(tmp_path / "a").posting_ids,
                          load_index(tmp_path / "b").posting_ids)


def test_damaged_or_foreign_savedmodels_are_refused_when_loaded(catalogue_set, tiny_models,
                                                               tmp_path, capsys):
    """A SavedModel whose variables file is cut in half (an IndexError before), and a plain
    SavedModel with our metadata file copied in (every photo "cannot decode" before)."""
    import tensorflow as tf

    half = tmp_path / "half"
    shutil.copytree(tiny_models["image"], half)
    data = next((half / "variables").glob("variables.data*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])

    class Plain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def serve(self, features):
            return {"out": features * 2}

    plain = Plain()
    tf.saved_model.save(plain, str(tmp_path / "plain"),
                        signatures={"serving_default": plain.serve})
    shutil.copyfile(tiny_models["image"] / "tf_shopee_export.json",
                    tmp_path / "plain" / "tf_shopee_export.json")
    for model, message in [(half, "cannot load the SavedModel"),
                           (tmp_path / "plain", "is not a tf_shopee image export")]:
        status, _, stderr = run_main(catalog_main, [
            "build", "--csv", catalogue_set / "part_a.csv", "--images",
            catalogue_set / "data" / "train_images", "--model", model, "--out",
            tmp_path / f"index_{model.name}", "--quiet"], capsys)
        assert status == 2 and message in stderr, stderr


def test_a_manifest_edited_to_drop_its_models_is_refused(catalogue_set, tiny_models, tmp_path):
    """``models: []`` silently dropped the model sources: the index answered without them."""
    out = tmp_path / "index"
    build_index(BuildOptions(csv=str(catalogue_set / "part_a.csv"),
                             images=str(catalogue_set / "data" / "train_images"),
                             models=[str(tiny_models["image"])], out=str(out), progress=False))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["models"] = []
    (out / "manifest.json").write_text(json.dumps(manifest))
    completed = _predict(out, catalogue_set, tmp_path)
    assert completed.returncode == 2
    assert "model sources cannot be dropped or added by editing its manifest" in completed.stderr
