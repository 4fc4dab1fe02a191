"""Shared fixtures of the catalogue tests: a small synthetic set split into catalogue parts and
queries, and tiny untrained exported models."""

from __future__ import annotations

import pandas as pd
import pytest
from catalog_helpers import export_tiny_model


@pytest.fixture(scope="session")
def catalogue_set(tmp_path_factory):
    """120 synthetic postings (64 px photos): part_a.csv (rows 0-79), part_b.csv (80-99),
    all.csv (0-99, the catalogue) and queries.csv (100-119)."""
    from tf_shopee.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("catalogue")
    generate_dataset(root / "data", postings=120, seed=5, image_size=64, workers=1)
    frame = pd.read_csv(root / "data" / "train.csv", dtype=str)
    frame.iloc[:80].to_csv(root / "part_a.csv", index=False)
    frame.iloc[80:100].to_csv(root / "part_b.csv", index=False)
    frame.iloc[:100].to_csv(root / "all.csv", index=False)
    frame.iloc[100:].to_csv(root / "queries.csv", index=False)
    return root


@pytest.fixture(scope="session")
def tiny_models(catalogue_set):
    """An untrained tiny image model and text model, plus "other_image": the image model's copy
    with other metadata, hence another identity (a model the index was not built with)."""
    import json
    import shutil

    titles = pd.read_csv(catalogue_set / "data" / "train.csv")["title"].tolist()
    models = catalogue_set / "saved_models"
    exports = {
        "image": export_tiny_model("image", models / "image", titles, seed=0),
        "text": export_tiny_model("text", models / "text", titles, seed=0),
    }
    other = models / "other_image"
    shutil.copytree(exports["image"], other)
    metadata = json.loads((other / "tf_shopee_export.json").read_text())
    metadata["run_name"] = "another run"
    (other / "tf_shopee_export.json").write_text(json.dumps(metadata))
    exports["other_image"] = other
    return exports
