"""Helpers of the catalogue tests (a module of its own name: ``conftest`` is ambiguous when
several test folders have one)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
