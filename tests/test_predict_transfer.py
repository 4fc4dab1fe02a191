"""predict.py --search-thresholds runs the transfer test by default, records it in the thresholds
file and prints its table; --evaluate with that file prints it again."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from tf_shopee.predict import main as predict_main

WORDS = ["kopi", "teh", "sabun", "kaos", "tas", "sepatu", "celana", "jaket", "botol", "piring",
         "gelas", "sendok", "lampu", "kabel", "buku", "pensil"]


def labelled_csv(path, groups: int = 80, seed: int = 0):
    """Titles of ``groups`` products (2-4 postings each): a product's words, a few of which
    other products share, plus noise; photo hashes near the product's."""
    rng = np.random.default_rng(seed)
    rows = []
    for group in range(groups):
        words = list(rng.choice(WORDS, 3, replace=False)) + [f"model{group}"]
        bits = rng.integers(0, 2, 64)
        for copy in range(rng.integers(2, 5)):
            title = " ".join([*words, *rng.choice(WORDS, 2)])
            flipped = bits.copy()
            flipped[rng.integers(0, 64, 3)] ^= 1
            rows.append({"posting_id": f"p{group}_{copy}", "title": title,
                         "image_phash": f"{int(''.join(map(str, flipped)), 2):016x}",
                         "label_group": group})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_the_search_ships_the_transfer_tests_choice_and_prints_why(tmp_path, capsys):
    csv = labelled_csv(tmp_path / "labelled.csv")
    search = tmp_path / "search"
    predict_main(["--csv", str(csv), "--search-thresholds", str(search), "--out",
                  str(tmp_path / "m.csv"), "--evaluate", "--quiet"])
    printed = capsys.readouterr().out
    payload = json.loads((search / "thresholds.json").read_text())
    test = payload["transfer"]
    assert set(test["methods"]) == {"local+size", "local", "size", "shift", "count", "fixed"}
    assert test["tested"] and not test["forced"]
    best = max(entry["transferred_f1"] for entry in test["methods"].values())
    assert test["methods"][test["chosen"]]["transferred_f1"] == best
    assert payload["decision"]["method"] == test["chosen"]
    # No model, no blending: one decision serves both uses.
    assert payload["uses"] == {"self-matching": "decision", "catalogue": "decision"}
    assert "transferred F1" in printed and f"{test['chosen']}" in printed
    # Applying the file elsewhere prints the table it was chosen by.
    predict_main(["--csv", str(labelled_csv(tmp_path / "other.csv", seed=1)), "--thresholds",
                  str(search / "thresholds.json"), "--out", str(tmp_path / "o.csv"),
                  "--evaluate", "--quiet"])
    assert "<- shipped" in capsys.readouterr().out


def test_a_search_on_a_models_training_folds_is_named(tmp_path):
    """The transfer test cannot see that a model's cosines are tighter on its training
    products: a search on them is named (warning and thresholds file)."""
    import shutil

    from tf_shopee.predict import build_argument_parser, models_trained_on_search_postings
    from tf_shopee.predict import options_from_arguments as options_of

    export, workdir, tfrecords = tmp_path / "export", tmp_path / "run", tmp_path / "tfrecords"
    for folder in (export, workdir, tfrecords):
        folder.mkdir()
    (export / "tf_shopee_export.json").write_text(json.dumps({
        "format": "tf_shopee.embedding_model", "format_version": 1, "kind": "text",
        "embedding_dim": 8, "inputs": ["titles"], "workdir": str(workdir)}))
    (export / "saved_model.pb").write_bytes(b"")  # only the metadata is read here
    (workdir / "config.json").write_text(json.dumps({"data": {
        "tfrecords": str(tfrecords), "validation_fold": 0, "holdout_folds": "2"}}))

    def trained(*flags):
        options = options_of(build_argument_parser().parse_args(
            ["--tfrecords", str(tfrecords), *flags, "--model", str(export), "--out",
             str(tmp_path / "m.csv")]))
        return models_trained_on_search_postings(options)

    assert trained("--fold", "1") == [str(export)]
    assert trained() == [str(export)]  # every fold, training folds included
    assert trained("--fold", "0") == [] and trained("--fold", "2") == []
    shutil.rmtree(workdir)  # the training run is gone: nothing to tell
    assert trained("--fold", "1") == []
