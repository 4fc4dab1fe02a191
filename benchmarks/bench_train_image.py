#!/usr/bin/env python3
"""Image fine-tuning throughput: the project's training step against Keras ``model.fit``.

Protocol. The same model — the image tower of ``--backbone`` (ImageNet weights, average pooling,
BatchNorm projection, frozen backbone BatchNorm, the last ``--trainable`` stages trained: the
grocery recipe of configs/grocery_lite0_arcface.json) with the ArcFace head over 54 classes —
trains on the same batches: ``--batch-size`` random 0..255 images of
``--image-size`` px and random labels, held in memory and repeated (no decoding, no augmentation:
only the step is measured). Two ways:

* ``trainer``: :class:`tf_shopee.training.Trainer` (what ``train.py`` runs): one-device strategy,
  one gradient all-reduce, global-norm clipping at 1.0, AdamW for the backbone and AdamW ×10 for
  the head, up to 50 steps per ``tf.function`` call;
* ``keras_fit``: ``model.compile(AdamW(global_clipnorm=1.0), SparseCategoricalCrossentropy
  (from_logits=True))`` then ``model.fit`` (Keras' default ``jit_compile="auto"``, which is off on
  a CPU-only machine; ``steps_per_execution`` 1, the default).

Each run is its own subprocess (the two never share a thread pool), and the runs alternate
``trainer, keras_fit, trainer, keras_fit, ...`` ``--repeat`` times so that a change in the machine's
load hits both. In every run ``--warmup-steps`` steps (the tracing call) come first and are not
timed; then ``--steps`` steps are timed: wall seconds and the process's CPU seconds (which move
less than wall time when other jobs share the cores). The best run of each method is reported,
and the ratio trainer / keras_fit of images per second (wall) and of CPU seconds per image.

    python -m benchmarks.bench_train_image --json benchmarks/results/bench_train_image.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPOSITORY, RESULTS, command_line

DEFAULT_JSON = RESULTS / "bench_train_image.json"
METHODS = ("trainer", "keras_fit")
NUM_CLASSES = 54


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _models(args):
    from tf_shopee.config import ModelConfig
    from tf_shopee.models import build_embedding_model, build_training_model

    config = ModelConfig(kind="image", embedding_dim=512)
    config.image.backbone = args.backbone
    config.image.weights = "imagenet"
    config.image.pooling = "avg"
    config.image.projection = "bn"
    config.image.freeze_batch_norm = True
    config.image.trainable = args.trainable
    config.image.dropout = 0.0
    embedding_model = build_embedding_model(config, image_size=args.image_size)
    training_model = build_training_model(
        embedding_model, config, num_classes=NUM_CLASSES, steps_per_epoch=100
    )
    return embedding_model, training_model


def _batches(args):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch_size * 4, args.image_size, args.image_size, 3),
                          dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, args.batch_size * 4).astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices(
        {"image": tf.cast(images, tf.float32), "label": labels}
    )
    return dataset.batch(args.batch_size, drop_remainder=True).cache().repeat()


def run_trainer(args) -> tuple[float, float]:
    import tensorflow as tf

    from tf_shopee.training import Trainer

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        embedding_model, training_model = _models(args)
        trainer = Trainer(
            strategy, embedding_model, training_model, kind="image",
            global_batch_size=args.batch_size, learning_rate=1e-4,
            head_learning_rate_multiplier=10.0, weight_decay=1e-4, warmup_steps=0,
            total_steps=args.steps + args.warmup_steps, gradient_clip_norm=1.0,
        )
    iterator = iter(strategy.experimental_distribute_dataset(_batches(args)))
    trainer.train_steps(iterator, args.warmup_steps)
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    remaining = args.steps
    while remaining:  # as train.py: at most 50 steps per call
        chunk = min(remaining, 50)
        trainer.train_steps(iterator, chunk)
        remaining -= chunk
    return time.perf_counter() - started, _cpu_seconds() - cpu_started


def run_keras_fit(args) -> tuple[float, float]:
    import keras

    _, training_model = _models(args)
    training_model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=1e-4,
                                         global_clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    dataset = _batches(args).map(lambda batch: (batch, batch["label"]))
    training_model.fit(dataset, steps_per_epoch=args.warmup_steps, epochs=1, verbose=0)
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    training_model.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0)
    return time.perf_counter() - started, _cpu_seconds() - cpu_started


def worker(args) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tf_shopee  # noqa: F401  (TensorFlow environment defaults, oneDNN)

    runner = {"trainer": run_trainer, "keras_fit": run_keras_fit}[args.worker]
    seconds, cpu_seconds = runner(args)
    images = args.steps * args.batch_size
    return {
        "method": args.worker,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "images_per_second": round(images / seconds, 2),
        "cpu_seconds_per_image": round(cpu_seconds / images, 5),
    }


def spawn(method: str, args) -> dict:
    command = [
        sys.executable, "-m", "benchmarks.bench_train_image", "--worker", method,
        "--backbone", args.backbone,
        "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
        "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps),
        "--trainable", args.trainable,
    ]
    environment = dict(os.environ)
    load_before = os.getloadavg()[0]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment,
                               cwd=REPOSITORY)
    if completed.returncode != 0:
        raise SystemExit(f"{method} failed:\n{completed.stderr[-3000:]}")
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    report["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"{method:10s} {report['images_per_second']:7.2f} images/s  "
          f"{report['cpu_seconds_per_image'] * 1000:7.1f} CPU ms/image  "
          f"(load {report['load_average'][0]:.1f} → {report['load_average'][1]:.1f})", flush=True)
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--trainable", default="last_5_blocks",
                        help="model.image.trainable of both (default: the grocery recipe's)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed first steps")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each method")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="results file")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    result = {
        "protocol": "see the module docstring",
        "command": command_line("bench_train_image", argv),
        "settings": {key: getattr(args, key) for key in
                     ("backbone", "image_size", "batch_size", "trainable", "steps",
                      "warmup_steps", "repeat")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_before": [round(value, 2) for value in os.getloadavg()],
        "runs": [],
    }
    for _ in range(args.repeat):
        for method in METHODS:
            result["runs"].append(spawn(method, args))
    best = {
        method: max((run for run in result["runs"] if run["method"] == method),
                    key=lambda run: run["images_per_second"])
        for method in METHODS
    }
    fastest_cpu = {
        method: min(run["cpu_seconds_per_image"] for run in result["runs"]
                    if run["method"] == method)
        for method in METHODS
    }
    result["best"] = best
    result["ratio_trainer_to_fit_images_per_second"] = round(
        best["trainer"]["images_per_second"] / best["keras_fit"]["images_per_second"], 3
    )
    result["ratio_trainer_to_fit_cpu_seconds_per_image"] = round(
        fastest_cpu["trainer"] / fastest_cpu["keras_fit"], 3
    )
    result["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    print(f"trainer / keras_fit: {result['ratio_trainer_to_fit_images_per_second']:.3f}x images/s "
          f"(best run each), {result['ratio_trainer_to_fit_cpu_seconds_per_image']:.3f}x CPU "
          "seconds per image")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(args.json).with_suffix(".json.tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    temporary.replace(args.json)


if __name__ == "__main__":
    main()
