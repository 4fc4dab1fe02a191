"""``python -m tf_shopee.beam embed`` on the DirectRunner (2 worker processes): the same numbers
as embedding in-process, its consumers (predict.py and the catalogue with --embeddings), refused
outputs, and a run killed midway then resumed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from beam_helpers import TWO_WORKERS, embed_arguments

from tf_shopee.errors import UserError
from tf_shopee.export import model_fingerprint
from tf_shopee.matching.postings import read_postings
from tf_shopee.matching.precomputed import load_embeddings, read_manifest, read_tfidf

REPOSITORY = Path(__file__).resolve().parents[2]
BROKEN = {3, 7, 11}


def _sources(beam_set) -> dict[str, str]:
    return {"image": str(beam_set["image"]), "text": str(beam_set["text"])}


def test_embeddings_equal_the_in_process_ones_and_bad_photos_cost_their_row(beam_set, embedded):
    from tf_shopee.export import load_exported
    from tf_shopee.matching.sources import embed_sources

    root = beam_set["root"]
    in_process = read_postings(csv=str(root / "no_phash.csv"), images=str(beam_set["images"]))
    models = {name: load_exported(path) for name, path in _sources(beam_set).items()}
    expected = embed_sources(models, in_process, batch_size=8, progress=False)
    read_back = read_postings(csv=str(root / "no_phash.csv"))  # no --images: nothing embedded
    loaded = load_embeddings(embedded["out"], _sources(beam_set), read_back)
    assert set(loaded) == set(expected) == {"image", "text", "concat"}
    for name in expected:
        assert np.abs(loaded[name] - expected[name]).max() <= 1e-5, name
    assert set(read_back.bad_images) == set(in_process.bad_images) == BROKEN
    assert read_back.bad_images == in_process.bad_images  # the same reasons, word for word
    broken = sorted(BROKEN)
    assert not loaded["image"][broken].any()  # zeros, as in-process
    assert (np.abs(loaded["text"][broken]).sum(axis=1) > 0).all()  # their titles still count

    manifest = embedded["manifest"]
    assert manifest == read_manifest(embedded["out"])
    assert [entry["fingerprint"] for entry in manifest["models"]] == [
        model_fingerprint(beam_set["image"]), model_fingerprint(beam_set["text"])]
    assert manifest["dimensions"] == {"image": 16, "text": 16}
    assert manifest["counts"] == {"postings": 96, "embedded": {"image": 93, "text": 96},
                                  "bad_photos": 3, "phashes_computed": 17}
    listed = {photo["posting_id"]: photo["reason"] for photo in manifest["bad_photos"]}
    assert listed == {in_process.posting_ids[row]: reason
                      for row, reason in in_process.bad_images.items()}
    assert len(manifest["shards"]) == 6
    assert not (embedded["out"] / "inputs").exists()


def test_tfidf_state_equals_the_catalogue_fit(beam_set, embedded):
    from tf_shopee.matching.model_free import model_free_state

    titles = pd.read_csv(beam_set["root"] / "all.csv", keep_default_na=False)["title"].tolist()
    vectorizer = model_free_state(titles).vectorizer
    terms, idf = read_tfidf(embedded["out"], embedded["manifest"])
    assert terms == sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
    np.testing.assert_allclose(idf, vectorizer.idf_, rtol=1e-6)


def test_predict_with_embeddings_scores_exactly_as_embedding_in_process(beam_set, embedded,
                                                                         tmp_path):
    from tf_shopee.predict import main as predict_main

    root = beam_set["root"]
    common = ["--csv", str(root / "no_phash.csv"), "--model", str(beam_set["image"]),
              "--model", str(beam_set["text"]), "--evaluate", "--quiet", "--batch-size", "8"]
    in_process = predict_main([*common, "--images", str(beam_set["images"]),
                               "--out", str(tmp_path / "in_process.csv"),
                               "--cache-dir", str(tmp_path / "cache")])
    from_beam = predict_main([*common, "--embeddings", str(embedded["out"]),
                              "--out", str(tmp_path / "from_beam.csv"),
                              "--cache-dir", str(tmp_path / "beam_cache")])
    assert from_beam["f1"] == in_process["f1"]
    assert from_beam["recall_at_1"] == in_process["recall_at_1"]
    assert from_beam["bad_images"] == [dict(item, image=None) for item in
                                       in_process["bad_images"]]
    assert (tmp_path / "from_beam.csv").read_text() == (tmp_path / "in_process.csv").read_text()
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # the in-process run embedded
    assert not (tmp_path / "beam_cache").exists()  # the other one did not


def test_catalogue_with_embeddings_equals_the_catalogue_embedding_itself(beam_set, embedded,
                                                                         tmp_path):
    from tf_shopee.catalog.index import BuildOptions, add_to_index, build_index, load_index
    from tf_shopee.predict import main as predict_main

    root = beam_set["root"]
    models = [str(beam_set["image"]), str(beam_set["text"])]

    def options(csv, out="", **extra):
        return BuildOptions(csv=str(root / csv), out=str(out), models=models, progress=False,
                            thumbnails=False, **extra)

    build_index(options("part_a.csv", tmp_path / "embedded_itself", images=str(
        beam_set["images"])))
    add_to_index(str(tmp_path / "embedded_itself"), options("part_b.csv",
                                                            images=str(beam_set["images"])))
    build_index(options("part_a.csv", tmp_path / "from_beam", embeddings=str(embedded["out"])))
    add_to_index(str(tmp_path / "from_beam"), options("part_b.csv",
                                                      embeddings=str(embedded["out"])))
    itself, from_beam = load_index(tmp_path / "embedded_itself"), load_index(
        tmp_path / "from_beam")
    assert from_beam.posting_ids == itself.posting_ids
    assert from_beam.image_phashes == itself.image_phashes  # the pipeline computed the blanks
    for name in itself.embeddings:
        assert np.abs(from_beam.embeddings[name] - itself.embeddings[name]).max() <= 1e-5
    assert from_beam.vectorizer.vocabulary_ == itself.vectorizer.vocabulary_

    def query(index, *extra):
        out = tmp_path / f"{index}_matches.csv"
        report = predict_main(["--catalog", str(tmp_path / index), "--csv",
                               str(root / "queries.csv"), "--out", str(out), "--evaluate",
                               "--quiet", "--cache-dir", str(tmp_path / "cache"), *extra])
        return report, out.read_text()

    report_itself, matches_itself = query("embedded_itself", "--images", str(beam_set["images"]))
    report_beam, matches_beam = query("from_beam", "--embeddings", str(embedded["out"]))
    assert matches_beam == matches_itself
    assert report_beam["f1"] == report_itself["f1"]
    assert report_beam["recall_at_1"] == report_itself["recall_at_1"]

    # An IVF-PQ index of the same catalogue: every cell probed and every candidate rescored
    # exactly at this size, so its matches are the exact search's.
    build_index(options("part_a.csv", tmp_path / "pq", embeddings=str(embedded["out"]),
                        ann="always", ann_index="ivf_pq"))
    add_to_index(str(tmp_path / "pq"), options("part_b.csv", embeddings=str(embedded["out"])))
    assert {entry["kind"] for entry in load_index(tmp_path / "pq").manifest["ann"].values()} == {
        "ivf_pq"}
    report_pq, matches_pq = query("pq", "--embeddings", str(embedded["out"]), "--search", "ann")
    assert set(report_pq["search"].values()) == {"ann"}
    assert matches_pq == matches_beam


def test_refuses_another_model_and_incomplete_shards(beam_set, embedded, tmp_path):
    postings = read_postings(csv=str(beam_set["root"] / "all.csv"))
    with pytest.raises(UserError, match="is not a model the embeddings .* were made with"):
        load_embeddings(embedded["out"], {"image": str(beam_set["other_image"])}, postings)
    damaged = tmp_path / "damaged"
    shutil.copytree(embedded["out"], damaged)
    shard = damaged / embedded["manifest"]["shards"][2]["file"]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(UserError, match="incomplete or damaged shard"):
        load_embeddings(damaged, _sources(beam_set), postings)
    shard.unlink()
    with pytest.raises(UserError, match="is missing .incomplete shards"):
        load_embeddings(damaged, _sources(beam_set), postings)
    (damaged / "manifest.json").unlink()
    with pytest.raises(UserError, match="interrupted or has not finished"):
        load_embeddings(damaged, _sources(beam_set), postings)
    more = read_postings(csv=str(beam_set["root"] / "all.csv"))
    more.posting_ids[5] = "not_embedded"
    with pytest.raises(UserError, match="1 of the 96 postings have no embeddings"):
        load_embeddings(embedded["out"], _sources(beam_set), more)


def test_command_line_refuses_bad_input_without_a_traceback(beam_set, tmp_path):
    from tf_shopee.beam.cli import main

    root = beam_set["root"]
    for arguments, message in [
        (embed_arguments(beam_set, "all.csv", tmp_path / "out", "--shard-size", "12"),
         "--shard-size must be a positive multiple of --batch-size"),
        (["embed", "--csv", str(root / "all.csv"), "--model", str(beam_set["image"]),
          "--out", str(tmp_path / "out")], "an image model needs the photos"),
        (embed_arguments(beam_set, "all.csv", beam_set["images"] / "inside"),
         "would overwrite or sit inside an input"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(arguments)
        assert exit_.value.code == 2


def test_help_explains_every_flag():
    from tf_shopee.beam.cli import build_argument_parser

    parser = build_argument_parser()
    embed = parser._subparsers._group_actions[0].choices["embed"]
    for action in embed._actions:
        assert action.help, action.option_strings
    text = embed.format_help()
    for flag in ("--csv", "--images", "--tfrecords", "--fold", "--model", "--out", "--runner",
                 "--direct_num_workers", "--shard-size", "--batch-size", "--threads"):
        assert flag in text


def _shard_digests(out: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted((out / "shards").iterdir())}


def test_a_killed_run_resumes_to_the_identical_output(beam_set, embedded, tmp_path):
    """Kill the whole run (launcher and workers) once some shards are written; no finished-
    looking half shard, no manifest; the same command again completes it, byte for byte the
    uninterrupted run's output, without embedding the finished shards again."""
    out = tmp_path / "embeddings"
    command = [sys.executable, "-m", "tf_shopee.beam",
               *embed_arguments(beam_set, "no_phash.csv", out, *TWO_WORKERS)]
    process = subprocess.Popen(command, cwd=REPOSITORY, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if len(list((out / "shards").glob("shard-*.json"))) >= 1:
                break
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished = {path.stem for path in (out / "shards").glob("shard-*.json")}
    assert 1 <= len(finished) < 6, "the run finished before it could be killed midway"
    assert not (out / "manifest.json").exists()
    expected = _shard_digests(embedded["out"])
    for path in (out / "shards").glob("shard-*"):
        # Every file under a final name is whole: the one of the uninterrupted run.
        if path.suffix == ".tfrecord":
            assert expected[path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(UserError, match="interrupted or has not finished"):
        read_manifest(out)

    resumed = subprocess.run([value for value in command if value != "--quiet"],
                             cwd=REPOSITORY, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(finished)} shard(s) finished by a previous run are kept" in resumed.stderr
    assert _shard_digests(out) == expected
    manifest = json.loads((out / "manifest.json").read_text())
    assert {key: value for key, value in manifest.items() if key != "input"} == {
        key: value for key, value in embedded["manifest"].items() if key != "input"}
    assert not (out / "inputs").exists()
