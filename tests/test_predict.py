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
    from tf_shopee.synthetic import generate_dataset

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


def run_predict(*arguments, check=True, in_process=True):
    """Run predict.py's ``main`` with these arguments; return what a finished process would give
    (returncode, stdout, stderr).

    In this process by default: a fresh interpreter costs TensorFlow's start-up every time, and
    ``main`` is exactly what the script calls (an unexpected exception, the traceback a user would
    see, fails the test). ``in_process=False`` runs the real script once in a while.
    """
    arguments = ["--quiet", *map(str, arguments)]
    if in_process:
        import contextlib
        import io

        from tf_shopee.predict import main

        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                main(arguments)
                returncode = 0
            except SystemExit as exit_request:
                returncode = exit_request.code
        completed = subprocess.CompletedProcess(arguments, returncode, stdout.getvalue(),
                                                stderr.getvalue())
    else:
        completed = subprocess.run(
            [sys.executable, str(REPOSITORY / "predict.py"), *arguments],
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
    completed = run_predict("--csv", csv_path, "--out", out, "--evaluate", "--report", report_path,
                            in_process=False)  # the real script, once
    assert "combined" in completed.stdout
    assert "Traceback" not in completed.stderr

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


def test_phash_threshold_is_given_in_bits(synthetic_set, tmp_path, hamming_distances):
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
    from tf_shopee.matching.decision import THRESHOLDS_FORMAT, THRESHOLDS_FORMAT_VERSION

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
    from tf_shopee.matching.options import PredictOptions
    from tf_shopee.predict import build_argument_parser, options_from_arguments

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
                "--out", tmp_path / "a.csv", "--inb-neighbours", "3,all")
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
    assert report["options"]["inb_neighbours"] == [3, None]


@pytest.mark.parametrize("flag, value, message", [
    ("--inb-neighbours", "1", "from 2 to k"),
    ("--inb-neighbours", "ten", "not a neighbour count"),
    ("--inb-grid", "0.2,1.5", "in [0, 1]"),
])
def test_bad_blending_options_are_refused(tmp_path, capsys, flag, value, message):
    from tf_shopee.predict import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--csv", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "o.csv"), flag,
              value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


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


def embed_titles_once(synthetic_set, exported_models, tmp_path):
    """Embed the set's titles with the text model, caching in tmp_path/cache; return
    (embed again: a function, the first embeddings, the cache files)."""
    from tf_shopee.export import load_exported
    from tf_shopee.matching.embedding import embed_postings
    from tf_shopee.matching.options import PredictOptions
    from tf_shopee.matching.postings import read_postings

    options = PredictOptions(csv=str(synthetic_set / "data" / "train.csv"),
                             cache_dir=str(tmp_path / "cache"), progress=False)
    postings = read_postings(**options.postings_arguments())
    model = load_exported(exported_models["text"])
    first = embed_postings(model, postings, cache_dir=options.cache_dir, progress=False)
    return (lambda: embed_postings(model, postings, cache_dir=options.cache_dir, progress=False),
            first,
            list((tmp_path / "cache").glob("*.npy")))


def test_query_embeddings_cache_is_reused(synthetic_set, exported_models, tmp_path):
    embed_again, first, cached = embed_titles_once(synthetic_set, exported_models, tmp_path)
    assert len(cached) == 1
    np.save(cached[0], np.zeros_like(first))  # prove the second call reads the cache
    second = embed_again()
    assert np.all(second == 0)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("missing_column", "required column(s) title"),
        ("duplicate_id", "duplicate posting_id"),
        ("missing_csv", "CSV file not found"),
        ("wrong_image_folder", "is --images the right folder?"),
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
    csv_path = tmp_path / "input.csv"
    arguments = ["--csv", csv_path, "--out", tmp_path / "out.csv"]
    if problem == "missing_column":
        frame = frame.drop(columns=["title"])
    elif problem == "duplicate_id":
        frame.loc[5, "posting_id"] = frame.loc[2, "posting_id"]
    elif problem == "missing_csv":
        arguments[1] = tmp_path / "absent.csv"
    elif problem == "wrong_image_folder":  # none of the photos is there (one missing is not fatal)
        (tmp_path / "empty").mkdir()
        arguments += ["--images", tmp_path / "empty", "--model", exported_models["image"]]
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


# --------------------------------------------------------------------------------------------
# Nothing a user gives loses data (issue 12): outputs vs inputs, bad images, ids, encodings,
# damaged caches and shards. In-process calls of predict's main: no TensorFlow start-up each.


def predict_main(capsys, *arguments) -> tuple[int, str, str]:
    """Run predict's ``main`` in this process; return (exit status, stdout, stderr)."""
    from tf_shopee.predict import main

    try:
        main(["--quiet", *map(str, arguments)])
        status = 0
    except SystemExit as exit_request:
        status = exit_request.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def read_rows(path: Path) -> list[list[str]]:
    import csv

    with open(path, encoding="utf-8", newline="") as stream:
        return list(csv.reader(stream))


@pytest.mark.parametrize("case", ["out_is_csv", "report_is_csv", "out_is_a_model_file",
                                  "out_is_an_image", "search_over_thresholds", "out_is_report"])
def test_an_output_never_overwrites_an_input(synthetic_set, exported_models, tmp_path, capsys,
                                             case):
    import shutil

    csv_path = tmp_path / "input.csv"
    csv_path.write_bytes((synthetic_set / "data" / "train.csv").read_bytes())
    images = tmp_path / "images"
    shutil.copytree(synthetic_set / "data" / "train_images", images)
    first_image = pd.read_csv(csv_path, dtype=str)["image"][0]
    model = tmp_path / "model"
    shutil.copytree(exported_models["text"], model)
    thresholds = tmp_path / "search" / "thresholds.json"
    thresholds.parent.mkdir()
    thresholds.write_text('{"not": "read"}')
    arguments = {
        "out_is_csv": ["--out", csv_path],
        "report_is_csv": ["--out", tmp_path / "out.csv", "--report", csv_path],
        "out_is_a_model_file": ["--out", model / "saved_model.pb", "--model", model],
        "out_is_an_image": ["--out", images / first_image, "--images", images],
        "search_over_thresholds": ["--out", tmp_path / "out.csv", "--thresholds", thresholds,
                                   "--search-thresholds", thresholds.parent, "--evaluate"],
        "out_is_report": ["--out", tmp_path / "same.csv", "--report", tmp_path / "same.csv"],
    }[case]
    protected = {path: path.read_bytes() for path in
                 (csv_path, thresholds, images / first_image, model / "saved_model.pb")}
    status, _, error = predict_main(capsys, "--csv", csv_path, *arguments)
    assert status == 2, error
    assert "same file" in error or "overwrite" in error
    assert {path: path.read_bytes() for path in protected} == protected


def test_ids_are_kept_verbatim_and_quoted(synthetic_set, tmp_path, capsys):
    frame = pd.read_csv(synthetic_set / "data" / "train.csv", dtype=str).head(40)
    special = ["NA", "null", "a,b", 'say"cheese"', "NaN"]
    frame.loc[: len(special) - 1, "posting_id"] = special
    frame.loc[0, "title"] = "NaN"
    # Spreadsheets and pandas write an integer column holding a gap as floats.
    frame["label_group"] = frame["label_group"] + ".0"
    csv_path = tmp_path / "odd_ids.csv"
    frame.to_csv(csv_path, index=False)
    status, _, error = predict_main(capsys, "--csv", csv_path, "--out", tmp_path / "sub.csv",
                                    "--evaluate", "--no-phash")
    assert status == 0, error
    rows = read_rows(tmp_path / "sub.csv")
    assert rows[0] == ["posting_id", "matches"]
    assert [row[0] for row in rows[1:]] == frame["posting_id"].tolist()
    assert all(len(row) == 2 and row[1].split()[0] == row[0] for row in rows[1:])

    from tf_shopee.matching.postings import read_postings

    postings = read_postings(csv=str(csv_path))
    assert postings.titles[0] == "NaN"  # text, not a missing value
    assert postings.label_groups.tolist() == [int(float(value)) for value in frame["label_group"]]


def test_convert_and_predict_read_a_csv_the_same_way(tmp_path):
    from tf_shopee.data.convert import convert_csv
    from tf_shopee.matching.postings import read_postings

    csv_path = tmp_path / "odd.csv"
    csv_path.write_text('posting_id,title,label_group\nNA,NaN,1\nnull,null,1.0\n"a,b",x,2\n'
                        'c,"",2\n', encoding="utf-8")
    postings = read_postings(csv=str(csv_path))
    convert_csv(csv_path, None, tmp_path / "records", folds=2, workers=1, progress=False)
    converted = read_postings(tfrecords=str(tmp_path / "records"), csv=str(csv_path))
    assert postings.posting_ids == converted.posting_ids == ["NA", "null", "a,b", "c"]
    assert postings.titles == converted.titles == ["NaN", "null", "x", ""]
    assert postings.label_groups.tolist() == converted.label_groups.tolist() == [1, 1, 2, 2]


CP1252_TITLES = ["Café crème 250 g", "Jus d'orange pressé – 1 l", "Crème brûlée ×2", "Bière"]


@pytest.mark.parametrize("encoding", ["cp1252", "latin-1"])
def test_a_legacy_encoded_csv_keeps_its_accents(tmp_path, capsys, caplog, encoding):
    from tf_shopee.data.convert import convert_csv
    from tf_shopee.data.schema import parse_postings  # noqa: F401  (TF is loaded anyway)
    from tf_shopee.matching.postings import read_postings

    titles = CP1252_TITLES if encoding == "cp1252" else [t.replace("–", "-").replace("×", "x")
                                                         for t in CP1252_TITLES]
    csv_path = tmp_path / "accents.csv"
    lines = ["posting_id,title,label_group"] + [f"p{i},{t},{i % 2}" for i, t in enumerate(titles)]
    csv_path.write_bytes(("\n".join(lines) + "\n").encode(encoding))

    status, _, error = predict_main(capsys, "--csv", csv_path, "--out", tmp_path / "sub.csv",
                                    "--report", tmp_path / "report.json", "--no-phash")
    assert status == 0, error
    assert "not UTF-8: decoded as cp1252" in caplog.text  # a warning: shown although --quiet
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["csv_encoding"]["name"] == "cp1252"
    assert read_postings(csv=str(csv_path)).titles == titles
    # Named explicitly: decoded with that codec, no guessing.
    explicit = read_postings(csv=str(csv_path), encoding="latin-1")
    assert explicit.encoding.chosen_by == "--encoding"

    manifest = convert_csv(csv_path, None, tmp_path / "records", folds=2, workers=1,
                           progress=False)
    assert manifest["encoding"]["name"] == "cp1252"
    assert manifest["encoding"]["replaced_titles"] == 0
    assert "decoded as cp1252" in capsys.readouterr().err  # progress=False is --quiet
    converted = read_postings(tfrecords=str(tmp_path / "records"), csv=str(csv_path))
    assert converted.titles == titles


def _damage_images(synthetic_set, tmp_path) -> tuple[Path, Path, dict[str, str]]:
    """A copy of the set's images with a truncated JPEG, an empty file, a text file named .jpg
    and a missing file; returns (csv, image folder, posting_id → what was done)."""
    import shutil

    frame = pd.read_csv(synthetic_set / "data" / "train.csv", dtype=str)
    images = tmp_path / "images"
    shutil.copytree(synthetic_set / "data" / "train_images", images)
    damage = {}
    for row, how in zip((3, 10, 20, 30), ("truncated", "empty", "not_an_image", "missing")):
        name = frame["image"][row]
        path = images / name
        if how == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif how == "empty":
            path.write_bytes(b"")
        elif how == "not_an_image":
            path.write_text("this is not a photo")
        else:
            frame.loc[row, "image"] = "gone.jpg"
        # Re-posted photos: every posting showing a damaged file is affected.
        sharing = [row] if how == "missing" else frame.index[frame["image"] == name]
        damage.update({frame["posting_id"][other]: how for other in sharing})
    csv_path = tmp_path / "train.csv"
    frame.to_csv(csv_path, index=False)
    return csv_path, images, damage


def test_bad_images_do_not_lose_the_run(synthetic_set, exported_models, tmp_path, capsys,
                                        caplog):
    csv_path, images, damage = _damage_images(synthetic_set, tmp_path)
    out, report_path = tmp_path / "sub.csv", tmp_path / "report.json"
    status, _, error = predict_main(
        capsys, "--csv", csv_path, "--images", images, "--model", exported_models["image"],
        "--model", exported_models["text"], "--out", out, "--report", report_path,
        "--evaluate", "--cache-dir", tmp_path / "cache")
    assert status == 0, error
    frame = pd.read_csv(csv_path, dtype=str)
    submission = read_submission(out)
    assert submission["posting_id"].tolist() == frame["posting_id"].tolist()  # every posting
    report = json.loads(report_path.read_text())
    listed = {item["posting_id"]: item for item in report["bad_images"]}
    assert set(listed) == set(damage)
    reasons = {damage[posting_id]: item["reason"] for posting_id, item in listed.items()}
    assert "empty" in reasons["empty"]
    assert "corrupt" in reasons["truncated"] or "truncated" in reasons["truncated"]
    assert "not an image" in reasons["not_an_image"]
    assert "not found" in reasons["missing"]
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    for posting_id in damage:  # named by a warning: on the console, also with --quiet
        assert any(posting_id in warning for warning in warnings)
    # A bad posting matches nothing through the photo sources but keeps its title matches.
    from tf_shopee.matching.options import PredictOptions
    from tf_shopee.matching.postings import read_postings
    from tf_shopee.predict import compute_sources

    options = PredictOptions(csv=str(csv_path), images=str(images),
                             models=[str(exported_models["image"]), str(exported_models["text"])],
                             cache_dir=str(tmp_path / "cache"), progress=False)
    postings = read_postings(**options.postings_arguments())
    sources = compute_sources(postings, options)
    assert set(postings.bad_images) == {frame.index[frame["posting_id"] == p][0] for p in damage}
    for row in postings.bad_images:
        for name in ("image", "concat"):
            assert (sources.neighbours[name].indices[row] == -1).all()
            assert row not in sources.neighbours[name].indices
        assert (sources.neighbours["text"].indices[row] >= 0).sum() > 1
    # The cache remembers which images were bad.
    assert {int(row) for row in json.loads(next((tmp_path / "cache").glob(
        "image-*.bad_images.json")).read_text())} == set(postings.bad_images)


def test_a_damaged_embedding_cache_is_embedded_again(synthetic_set, exported_models, tmp_path,
                                                     caplog):
    embed_again, first, (cached,) = embed_titles_once(synthetic_set, exported_models, tmp_path)
    cached.write_bytes(cached.read_bytes()[:100])  # a half-written file
    with caplog.at_level("WARNING", logger="tf_shopee.predict"):
        again = embed_again()
    assert "embedding again" in caplog.text
    np.testing.assert_allclose(again, first, atol=1e-6)
    assert np.load(cached).shape == first.shape  # replaced by a good entry


@pytest.mark.parametrize("damage", ["truncated", "flipped_byte"])
def test_a_damaged_shard_is_named(synthetic_set, tmp_path, capsys, damage):
    import shutil

    records = tmp_path / "records"
    shutil.copytree(synthetic_set / "tfrecords", records)
    manifest = json.loads((records / "manifest.json").read_text())
    shard = records / manifest["shards"][-1]["file"]
    payload = bytearray(shard.read_bytes())
    if damage == "truncated":
        shard.write_bytes(bytes(payload[: len(payload) - 100]))
    else:
        payload[len(payload) // 2] ^= 0xFF  # same size: only the record checksums can tell
        shard.write_bytes(bytes(payload))
    status, _, error = predict_main(capsys, "--tfrecords", records, "--out", tmp_path / "o.csv")
    assert status == 2, error
    assert shard.name in error
    assert not (tmp_path / "o.csv").exists()


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


def test_a_model_without_a_threshold_gets_one_from_the_search(synthetic_set, exported_models,
                                                              tmp_path, capsys):
    # An export of an untrained model (train.py --epochs 0) has no validation threshold.
    import shutil

    model = tmp_path / "zero_shot"
    shutil.copytree(exported_models["image"], model)
    metadata = json.loads((model / "tf_shopee_export.json").read_text())
    metadata["threshold"] = None
    (model / "tf_shopee_export.json").write_text(json.dumps(metadata))
    arguments = ["--tfrecords", synthetic_set / "tfrecords", "--model", model, "--no-tfidf",
                 "--no-phash", "--cache-dir", tmp_path / "cache", "--out", tmp_path / "o.csv"]
    status, _, error = predict_main(capsys, *arguments)
    assert status == 2 and "no threshold for source(s) image" in error
    status, _, error = predict_main(capsys, *arguments, "--threshold", "image=0.6")
    assert status == 0, error
    report = tmp_path / "report.json"
    status, _, error = predict_main(capsys, *arguments, "--evaluate", "--report", report,
                                    "--search-thresholds", tmp_path / "search")
    assert status == 0, error
    assert json.loads(report.read_text())["used_sources"] == ["image"]
