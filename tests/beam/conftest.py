"""Fixtures of the Beam pipeline tests: a small synthetic set with broken photos, tiny untrained
exported models, and one pipeline run on the DirectRunner with 2 worker processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "catalog"))

pytest.importorskip("apache_beam")

from beam_helpers import TWO_WORKERS, embed_arguments  # noqa: E402
from catalog_helpers import export_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def beam_set(tmp_path_factory):
    """96 synthetic postings (64 px photos) whose photos 3 (truncated), 7 (not an image) and 11
    (missing) cannot be used; ``no_phash.csv``: the same rows with image_phash blanked for the
    first 20; of those, ``part_a.csv`` (rows 0-63) and ``part_b.csv`` (64-79); ``queries.csv``
    (80-95)."""
    from tf_shopee.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("beam_set")
    generate_dataset(root / "data", postings=96, seed=11, image_size=64, workers=1)
    frame = pd.read_csv(root / "data" / "train.csv", dtype=str, keep_default_na=False)
    images = root / "data" / "train_images"
    truncated = images / frame.loc[3, "image"]
    truncated.write_bytes(truncated.read_bytes()[:200])
    (images / frame.loc[7, "image"]).write_bytes(b"this is not a photo")
    (images / frame.loc[11, "image"]).unlink()
    frame.to_csv(root / "all.csv", index=False)
    blanked = frame.copy()
    blanked.loc[:19, "image_phash"] = ""
    blanked.to_csv(root / "no_phash.csv", index=False)
    blanked.iloc[:64].to_csv(root / "part_a.csv", index=False)
    blanked.iloc[64:80].to_csv(root / "part_b.csv", index=False)
    frame.iloc[80:].to_csv(root / "queries.csv", index=False)
    titles = frame["title"].tolist()
    models = root / "saved_models"
    (root / "other").mkdir()
    return {
        "root": root, "images": images,
        "image": export_tiny_model("image", models / "image", titles, seed=0),
        "text": export_tiny_model("text", models / "text", titles, seed=0),
        "other_image": export_tiny_model("image", models / "other" / "image", titles, seed=1),
    }


@pytest.fixture(scope="session")
def embedded(beam_set, tmp_path_factory):
    """``beam embed`` of no_phash.csv (every posting) on the DirectRunner, 2 worker processes."""
    from tf_shopee.beam.cli import main

    out = tmp_path_factory.mktemp("embedded") / "embeddings"
    manifest = main(embed_arguments(beam_set, "no_phash.csv", out, *TWO_WORKERS))
    return {"out": out, "manifest": manifest}
