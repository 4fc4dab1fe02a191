"""The code base stays ruff-clean (rules E, F, I; settings in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (make install puts it in .venv)")
    completed = subprocess.run([ruff, "check", "."], cwd=REPOSITORY, capture_output=True,
                               text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
