"""Shared fixtures of the catalogue tests: a small synthetic set split into catalogue parts and
queries, and tiny untrained exported models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPOSITORY = Path(__file__).resolve().parents[2]


def export_tiny_model(kind: str, directory: Path, titles: list[str], *, seed: int = 0,
                      threshold: float = 0.9) -> Path:
    """Export an untrained tiny model of ``kind`` (16-d embeddings) as train.py would."""
    import keras

    from tf_shopee.config import RunConfig, tiny_overrides
    from tf_shopee.export import export_model
    from tf_shopee.models import build_embedding_model
    from tf_shopee.models.text import build_title_preprocessor

    keras.utils.set_random_seed(seed)
    config = RunConfig(name=f"catalog_{kind}_{seed}").override(tiny_overrides(kind))
    config.override([f"model.kind={kind}", "model.embedding_dim=16"])
    preprocessor = vocabulary_size = None
    if kind == "text":
        preprocessor = build_title_preprocessor(
            config.model.text, titles=titles, vocabulary_path=str(directory.parent /
                                                                  f"vocabulary-{seed}.txt"))
        vocabulary_size = preprocessor.vocabulary_size
    model = build_embedding_model(config.model, image_size=config.data.image_size,
                                  vocabulary_size=vocabulary_size)
    return export_model(model, kind=kind, export_dir=directory, image_size=config.data.image_size,
                        text_preprocessor=preprocessor,
                        metadata={"threshold": threshold, "run_name": config.name},
                        config=config)


@pytest.fixture(scope="session")
def catalogue_set(tmp_path_factory):
    """120 synthetic postings (64 px photos): part_a.csv (rows 0-79), part_b.csv (80-99),
    all.csv (0-99, the catalogue) and queries.csv (100-119)."""
    from tf_shopee.data.synthetic import generate_dataset

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


def run_tool(*arguments, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python ARGUMENTS`` from the repository root as a user does."""
    completed = subprocess.run([sys.executable, *map(str, arguments)], capture_output=True,
                               text=True, cwd=REPOSITORY)
    if check and completed.returncode != 0:
        raise AssertionError(f"{arguments} failed:\n{completed.stdout}\n{completed.stderr}")
    return completed


def run_main(main, arguments, capsys) -> tuple[int, str, str]:
    """Call a command-line ``main`` in this process (no second TensorFlow start-up); return
    (exit status, stdout, stderr)."""
    status = 0
    try:
        main([str(argument) for argument in arguments])
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err
