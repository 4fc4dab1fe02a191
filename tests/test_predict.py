"""predict.py end to end on a small synthetic set: model-free sources, exported models, TFRecord
input, threshold search, and the bad inputs a user can give it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tf_shopee.metrics import mean_f1, true_matches

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory):
    """200 synthetic postings (64 px photos) and their TFRecords with 4 folds."""
    from tf_shopee.data.convert import convert_csv
    from tf_shopee.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("predict")
    generate_dataset(root / "data", postings=200, seed=3, image_size=64, workers=1)
    convert_csv(root / "data" / "train.csv", root / "data" / "train_images", root / "tfrecords",
                folds=4, progress=False, workers=1)
    return root


@pytest.fixture(scope="module")
def exported_models(synthetic_set):
    """An untrained tiny image model and text model, exported as predict reads them."""
    from tf_shopee.config import RunConfig, tiny_overrides
    from tf_shopee.export import export_model
    from tf_shopee.models import build_embedding_model
    from tf_shopee.models.text import build_title_preprocessor

    titles = pd.read_csv(synthetic_set / "data" / "train.csv")["title"].tolist()
    exports = {}
    for kind in ("image", "text"):
        config = RunConfig(name=f"test_{kind}").override(tiny_overrides(kind))
        config.override([f"model.kind={kind}", "model.embedding_dim=16"])
        preprocessor = None
        vocabulary_size = None
        if kind == "text":
            preprocessor = build_title_preprocessor(
                config.model.text, titles=titles,
                vocabulary_path=str(synthetic_set / "vocabulary.txt"),
            )
            vocabulary_size = preprocessor.vocabulary_size
        model = build_embedding_model(config.model, image_size=config.data.image_size,
                                      vocabulary_size=vocabulary_size)
        exports[kind] = export_model(
            model, kind=kind, export_dir=synthetic_set / "saved_models" / kind,
            image_size=config.data.image_size, text_preprocessor=preprocessor,
            metadata={"threshold": 0.9, "run_name": config.name}, config=config,
        )
    return exports


def run_predict(*arguments, check=True):
    """Run ``predict.py`` as a user does; return the completed process."""
    completed = subprocess.run(
        [sys.executable, str(REPOSITORY / "predict.py"), "--quiet", *map(str, arguments)],
        capture_output=True, text=True, cwd=REPOSITORY,
    )
    if check and completed.returncode != 0:
        raise AssertionError(f"predict.py failed:\n{completed.stdout}\n{completed.stderr}")
    return completed


def read_submission(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_model_free_prediction_writes_submission_and_report(synthetic_set, tmp_path):
    csv_path = synthetic_set / "data" / "train.csv"
    out = tmp_path / "submission.csv"
    report_path = tmp_path / "report.json"
    completed = run_predict("--csv", csv_path, "--out", out, "--evaluate", "--report", report_path)
    assert "combined" in completed.stdout

    frame = pd.read_csv(csv_path, dtype={"posting_id": str})
    submission = read_submission(out)
    assert list(submission.columns) == ["posting_id", "matches"]
    assert submission["posting_id"].tolist() == frame["posting_id"].tolist()
    predicted = [matches.split() for matches in submission["matches"]]
    for posting_id, matches in zip(frame["posting_id"], predicted):
        assert matches[0] == posting_id  # self first
        assert 1 <= len(matches) <= 50
        assert len(set(matches)) == len(matches)

    report = json.loads(report_path.read_text())
    assert report["rows"] == len(frame)
    assert report["sources"] == ["tfidf", "phash", "phash_text"]
    # The shipped decision keeps TF-IDF only; the table lists the others without an F1.
    assert report["used_sources"] == ["tfidf"]
    assert set(report["f1"]) == {"tfidf", "combined"}
    assert set(report["thresholds"]) == {"tfidf"}
    assert "left out of the union" in completed.stdout
    # The reported combined F1 is the F1 of the submission actually written.
    truth = true_matches(frame["posting_id"].tolist(), frame["label_group"].tolist())
    assert report["f1"]["combined"] == pytest.approx(mean_f1(predicted, truth), abs=1e-9)
    # Each posting matching only itself is the trivial floor; every source must beat it.
    self_only = mean_f1([[posting_id] for posting_id in frame["posting_id"]], truth)
    assert report["f1"]["combined"] > self_only + 0.1


def test_zipped_csv_gives_the_same_submission(synthetic_set, tmp_path):
    import zipfile

    csv_path = synthetic_set / "data" / "train.csv"
    zipped = tmp_path / "train.csv.zip"  # how Kaggle ships train.csv
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.write(csv_path, "train.csv")
    run_predict("--csv", csv_path, "--out", tmp_path / "plain.csv", "--no-phash")
    run_predict("--csv", zipped, "--out", tmp_path / "zipped.csv", "--no-phash")
    assert (tmp_path / "plain.csv").read_bytes() == (tmp_path / "zipped.csv").read_bytes()


def test_threshold_override_changes_matches(synthetic_set, tmp_path):
    csv_path = synthetic_set / "data" / "train.csv"
    counts = {}
    for value in ("0.3", "1.0"):
        out = tmp_path / f"tfidf_{value}.csv"
        run_predict("--csv", csv_path, "--out", out, "--no-phash", "--no-min2",
                    "--threshold", f"tfidf={value}")
        counts[value] = sum(len(matches.split()) for matches in read_submission(out)["matches"])
    # Only identical titles reach cosine 1.0; 0.3 lets many more pairs in.
    assert counts["1.0"] < counts["0.3"]


def test_phash_threshold_is_given_in_bits(synthetic_set, tmp_path):
    from tf_shopee.neighbours.phash import hamming_distances

    csv_path = synthetic_set / "data" / "train.csv"
    out = tmp_path / "phash.csv"
    report_path = tmp_path / "report.json"
    run_predict("--csv", csv_path, "--out", out, "--no-tfidf", "--no-min2",
                "--threshold", "phash=8", "--evaluate", "--report", report_path)
    frame = pd.read_csv(csv_path, dtype={"posting_id": str, "image_phash": str})
    distances = hamming_distances(frame["image_phash"].tolist(), frame["image_phash"].tolist())
    ids = frame["posting_id"].to_numpy()
    for row, matches in enumerate(read_submission(out)["matches"]):
        expected = set(ids[distances[row] <= 8][:50])
        assert set(matches.split()) == expected | {ids[row]}
    report = json.loads(report_path.read_text())
    assert report["thresholds"] == {"phash": 8}
    assert report["threshold_origin"]["phash"] == "--threshold"


def test_search_can_leave_a_source_out_and_the_table_says_so(synthetic_set, tmp_path):
    from tf_shopee.thresholds import THRESHOLDS_FORMAT, THRESHOLDS_FORMAT_VERSION

    csv_path = synthetic_set / "data" / "train.csv"
    thresholds = tmp_path / "thresholds.json"
    decision = {"method": "fixed", "sources": ["tfidf"],
                "rules": {"tfidf": {"threshold": 0.6}, "phash": {"threshold": 3}},
                "min2": None}
    thresholds.write_text(json.dumps({"format": THRESHOLDS_FORMAT,
                                      "format_version": THRESHOLDS_FORMAT_VERSION,
                                      "decision": decision}))
    report_path = tmp_path / "report.json"
    completed = run_predict("--csv", csv_path, "--out", tmp_path / "out.csv", "--evaluate",
                            "--thresholds", thresholds, "--report", report_path)
    report = json.loads(report_path.read_text())
    assert report["used_sources"] == ["tfidf"]
    assert set(report["f1"]) == {"tfidf", "combined"}
    assert report["f1"]["combined"] == pytest.approx(report["f1"]["tfidf"])  # min2 off
    rows = {line.split()[0]: line for line in completed.stdout.splitlines() if line.strip()}
    assert "left out of the union" in rows["phash"]
    assert "0." not in rows["phash"] and "2.000" not in rows["phash"]  # no F1, no fake value
    assert f"{report['f1']['tfidf']:.4f}" in rows["tfidf"]


def test_command_line_defaults_are_the_library_defaults():
    from tf_shopee.predict import PredictOptions, build_argument_parser, options_from_arguments

    assert options_from_arguments(build_argument_parser().parse_args([])) == PredictOptions()


def test_search_thresholds_writes_file_that_predict_reads(synthetic_set, tmp_path):
    csv_path = synthetic_set / "data" / "train.csv"
    search_dir = tmp_path / "search"
    report_path = tmp_path / "report.json"
    run_predict("--csv", csv_path, "--out", tmp_path / "a.csv", "--evaluate",
                "--search-thresholds", search_dir, "--report", report_path)
    payload = json.loads((search_dir / "thresholds.json").read_text())
    assert (search_dir / "thresholds.png").stat().st_size > 1000
    searched = json.loads(report_path.read_text())
    assert searched["thresholds"] == pytest.approx(payload["thresholds"])
    # Feeding the file back reproduces the same matches.
    run_predict("--csv", csv_path, "--out", tmp_path / "b.csv", "--thresholds",
                search_dir / "thresholds.json")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_a_search_with_models_is_reproduced_by_its_thresholds_file(synthetic_set,
                                                                   exported_models, tmp_path):
    # The search tries blending the model sources (with and without the photo graph); the file
    # must make predict.py blend and match exactly as the search scored.
    arguments = ["--tfrecords", synthetic_set / "tfrecords", "--model", exported_models["text"],
                 "--model", exported_models["image"], "--cache-dir", tmp_path / "cache",
                 "--evaluate"]
    searched = tmp_path / "searched.json"
    run_predict(*arguments, "--search-thresholds", tmp_path / "search", "--report", searched,
                "--out", tmp_path / "a.csv")
    payload = json.loads((tmp_path / "search" / "thresholds.json").read_text())
    assert {"text", "image", "concat", "tfidf", "phash", "phash_text"} <= set(payload["sources"])
    report = json.loads(searched.read_text())
    assert report["f1"]["combined"] == pytest.approx(payload["f1"], abs=1e-9)
    assert report["f1"]["combined"] >= payload["best_single"]["f1"] - 1e-12
    applied = tmp_path / "applied.json"
    run_predict(*arguments, "--thresholds", tmp_path / "search" / "thresholds.json",
                "--report", applied, "--out", tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert json.loads(applied.read_text())["inb"] == report["inb"]


def test_exported_models_from_images_and_tfrecords_agree(synthetic_set, exported_models,
                                                         tmp_path):
    csv_path = synthetic_set / "data" / "train.csv"
    models = ["--model", exported_models["image"], "--model", exported_models["text"]]
    from_images = tmp_path / "images.csv"
    report_path = tmp_path / "report.json"
    run_predict("--csv", csv_path, "--images", synthetic_set / "data" / "train_images", *models,
                "--out", from_images, "--evaluate", "--report", report_path,
                "--cache-dir", tmp_path / "cache")
    report = json.loads(report_path.read_text())
    assert {"image", "text", "concat", "tfidf", "phash", "phash_text"} == set(report["sources"])
    assert {"image", "text", "concat", "tfidf", "combined"} == set(report["f1"])
    assert report["threshold_origin"]["image"] == "model export"
    # recall@1 is reported for the embedding sources only.
    assert set(report["recall_at_1"]) == {"image", "text", "concat"}
    assert 0.0 < report["recall_at_1"]["text"] <= 1.0
    assert report["min2"]["source"] == "concat"
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2

    # The same postings read from the TFRecords (same JPEG bytes) give the same submission.
    from_records = tmp_path / "records.csv"
    run_predict("--tfrecords", synthetic_set / "tfrecords", "--csv", csv_path, *models,
                "--out", from_records, "--cache-dir", tmp_path / "cache2")
    assert from_images.read_bytes() == from_records.read_bytes()


def test_fold_selection_matches_only_inside_the_fold(synthetic_set, tmp_path):
    out = tmp_path / "fold.csv"
    run_predict("--tfrecords", synthetic_set / "tfrecords", "--fold", "1", "--out", out)
    manifest = json.loads((synthetic_set / "tfrecords" / "manifest.json").read_text())
    submission = read_submission(out)
    assert len(submission) == manifest["fold_counts"]["1"]
    inside = set(submission["posting_id"])
    assert all(set(matches.split()) <= inside for matches in submission["matches"])


def test_query_embeddings_cache_is_reused(synthetic_set, exported_models, tmp_path):
    from tf_shopee.export import load_exported
    from tf_shopee.predict import PredictOptions, embed_postings, read_postings

    options = PredictOptions(csv=str(synthetic_set / "data" / "train.csv"),
                             cache_dir=str(tmp_path / "cache"), progress=False)
    postings = read_postings(options)
    model = load_exported(exported_models["text"])
    first = embed_postings(model, postings, options)
    cached = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 1
    np.save(cached[0], np.zeros_like(first))  # prove the second call reads the cache
    second = embed_postings(model, postings, options)
    assert np.all(second == 0)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("missing_column", "lacks required column(s) title"),
        ("duplicate_id", "appears more than once"),
        ("missing_csv", "CSV file not found"),
        ("missing_image", "missing or outside"),
        ("not_an_export", "is not a tf_shopee export"),
        ("image_model_without_images", "give --images"),
        ("evaluate_without_labels", "need labels"),
        ("bad_threshold", "--threshold expects SOURCE=VALUE"),
        ("unknown_fold", "has folds 0..3"),
    ],
)
def test_bad_input_gets_a_message_and_exit_2(synthetic_set, exported_models, tmp_path, problem,
                                             expected):
    frame = pd.read_csv(synthetic_set / "data" / "train.csv", dtype=str)
    images = synthetic_set / "data" / "train_images"
    csv_path = tmp_path / "input.csv"
    arguments = ["--csv", csv_path, "--out", tmp_path / "out.csv"]
    if problem == "missing_column":
        frame = frame.drop(columns=["title"])
    elif problem == "duplicate_id":
        frame.loc[5, "posting_id"] = frame.loc[2, "posting_id"]
    elif problem == "missing_csv":
        arguments[1] = tmp_path / "absent.csv"
    elif problem == "missing_image":
        frame.loc[7, "image"] = "no_such_file.jpg"
        arguments += ["--images", images, "--model", exported_models["image"]]
    elif problem == "not_an_export":
        (tmp_path / "random_folder").mkdir()
        arguments += ["--model", tmp_path / "random_folder"]
    elif problem == "image_model_without_images":
        arguments += ["--model", exported_models["image"]]
    elif problem == "evaluate_without_labels":
        frame = frame.drop(columns=["label_group"])
        arguments += ["--evaluate"]
    elif problem == "bad_threshold":
        arguments += ["--threshold", "tfidf"]
    elif problem == "unknown_fold":
        arguments = ["--tfrecords", synthetic_set / "tfrecords", "--fold", "9",
                     "--out", tmp_path / "out.csv"]
    frame.to_csv(csv_path, index=False)
    completed = run_predict(*arguments, check=False)
    assert completed.returncode == 2, completed.stderr
    assert expected in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("unknown_source", "unknown source 'tfdif'"),
        ("absent_source", "this run has no source 'phash'"),
        ("nan_threshold", "give a finite number"),
        ("negative_threshold", "between 0 and 1"),
        ("fractional_bits", "whole number from 0 to 64"),
        ("file_unknown_source", "unknown source 'textt'"),
        ("file_absent_source", "which this run does not build"),
        ("file_nan_threshold", "give a finite number"),
        ("file_beta_on_phash", "takes no scaling"),
    ],
)
def test_bad_thresholds_fail_before_anything_is_embedded(synthetic_set, exported_models, tmp_path,
                                                         capsys, problem, expected):
    from tf_shopee.predict import main

    arguments = ["--csv", synthetic_set / "data" / "train.csv", "--out", tmp_path / "out.csv",
                 "--quiet", "--cache-dir", tmp_path / "cache"]
    if problem == "unknown_source":
        arguments += ["--threshold", "tfdif=0.5"]
    elif problem == "absent_source":
        arguments += ["--no-phash", "--threshold", "phash=8"]
    elif problem == "nan_threshold":
        arguments += ["--threshold", "tfidf=nan"]
    elif problem == "negative_threshold":
        arguments += ["--threshold", "tfidf=-0.2"]
    elif problem == "fractional_bits":
        arguments += ["--threshold", "phash=0.9"]
    else:
        rules = {"file_unknown_source": {"textt": {"threshold": 0.5}},
                 "file_absent_source": {"text": {"threshold": 0.5}},
                 "file_nan_threshold": {"tfidf": {"threshold": float("nan")}},
                 "file_beta_on_phash": {"phash": {"threshold": 4, "beta": 0.5}}}[problem]
        thresholds = tmp_path / "thresholds.json"
        thresholds.write_text(json.dumps({
            "format": "tf_shopee.thresholds", "format_version": 2,
            "decision": {"sources": list(rules), "rules": rules, "min2": None}}))
        # An image model is given: the error must come before it embeds anything.
        arguments += ["--thresholds", thresholds, "--images",
                      synthetic_set / "data" / "train_images", "--model", exported_models["image"]]
    with pytest.raises(SystemExit) as exit_info:
        main([str(argument) for argument in arguments])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "cache").exists(), "nothing may be embedded before the error"
