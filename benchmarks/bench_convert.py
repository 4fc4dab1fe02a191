#!/usr/bin/env python3
"""Throughput of CSV → TFRecord conversion (postings/s), 1 image worker vs 2.

Protocol: generate synthetic mini-Shopee sets with ``python -m tf_shopee.synthetic`` at two
photo sizes, then time :func:`tf_shopee.data.convert.convert_csv` on each with ``--workers 1`` and
``--workers 2`` (``--overwrite``, no progress bar, default ``--max-side 512``):

* 256 px photos are JPEGs under --max-side, so they are checked (fully decoded) and stored byte
  for byte: the cheap path.
* 768 px photos are larger than --max-side, so each is decoded, downscaled to 512 px and
  re-encoded: the path real Shopee photos (mostly 640-1024 px) take.

TensorFlow is imported before the clock starts (it is a one-off start-up cost of several seconds);
the worker pool start-up is inside the timing because every run pays it. Each configuration runs
``--repeats`` times and the best time is kept, because the machine may be shared. CPU seconds
(this process plus its joined workers) are recorded too, with the load average: on a shared
machine the wall-clock gain of a second worker only shows when the other core is idle.

    python -m benchmarks.bench_convert --postings 400
    # → benchmarks/results/bench_convert.json and a table on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_convert.json"


def generate(out_dir: Path, postings: int, seed: int, image_size: int) -> None:
    """Write out_dir/train.csv and out_dir/train_images with the project's synthetic generator."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tf_shopee.synthetic",
            "--out",
            str(out_dir),
            "--postings",
            str(postings),
            "--seed",
            str(seed),
            "--image-size",
            str(image_size),
            "--quiet",
        ],
        check=True,
    )


def time_conversion(csv_path: Path, images_dir: Path, out_dir: Path, workers: int) -> dict:
    """Convert once with ``workers`` image processes; return seconds and manifest counts."""
    from tf_shopee.data.convert import convert_csv

    started = time.perf_counter()
    cpu_started = _cpu_seconds()
    manifest = convert_csv(
        csv_path, images_dir, out_dir, folds=5, overwrite=True, workers=workers, progress=False
    )
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": _cpu_seconds() - cpu_started,
        "counts": manifest["counts"],
    }


def _cpu_seconds() -> float:
    """CPU time of this process plus its finished children (the image workers, once joined)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    """Run the benchmark and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postings", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[256, 768])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep the synthetic sets here and reuse them on the next run (default: temporary)",
    )
    arguments = parser.parse_args()

    import tensorflow as tf  # the one-off import, kept out of the timings

    load_average_at_start = [round(value, 2) for value in os.getloadavg()]

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_convert_") as scratch:
        scratch = Path(scratch)
        for image_size in arguments.image_sizes:
            name = f"synthetic_{arguments.postings}_{arguments.seed}_{image_size}"
            data_dir = (arguments.data_dir or scratch) / name
            csv_path = data_dir / "train.csv"
            if not csv_path.exists():
                generate(data_dir, arguments.postings, arguments.seed, image_size)
            for workers in (1, 2):
                runs = [
                    time_conversion(csv_path, data_dir / "train_images", scratch / "out", workers)
                    for _ in range(arguments.repeats)
                ]
                best = min(runs, key=lambda run: run["seconds"])
                written = best["counts"]["written"]
                rows.append(
                    {
                        "image_size": image_size,
                        "workers": workers,
                        "postings": written,
                        "reencoded_images": best["counts"]["reencoded_images"],
                        "seconds": round(best["seconds"], 3),
                        "all_seconds": [round(run["seconds"], 3) for run in runs],
                        "cpu_seconds": round(best["cpu_seconds"], 3),
                        "postings_per_second": round(written / best["seconds"], 1),
                        # What the same work would reach with a core to itself.
                        "postings_per_cpu_second": round(written / best["cpu_seconds"], 1),
                    }
                )
                print(
                    f"{image_size:>4} px  workers={workers}  {written} postings  "
                    f"{best['seconds']:.2f} s (cpu {best['cpu_seconds']:.2f} s)  "
                    f"{written / best['seconds']:.1f} postings/s",
                    flush=True,
                )

    speedups = {}
    for image_size in arguments.image_sizes:
        by_workers = {row["workers"]: row for row in rows if row["image_size"] == image_size}
        speedups[str(image_size)] = round(by_workers[1]["seconds"] / by_workers[2]["seconds"], 2)
    results = {
        "benchmark": "CSV -> TFRecord conversion throughput (convert_csv)",
        "protocol": __doc__.split("\n\n")[1:4],
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            # Other jobs on a shared machine slow every run down: recorded so numbers can be
            # read in context.
            "load_average_at_start": load_average_at_start,
            "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
        },
        "postings_requested": arguments.postings,
        "seed": arguments.seed,
        "results": rows,
        "speedup_2_workers_over_1": speedups,
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"speed-up of 2 workers over 1: {speedups}; wrote {arguments.output}")


if __name__ == "__main__":
    main()
