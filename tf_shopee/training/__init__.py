"""Training: the ArcFace embedding model under a ``tf.distribute`` strategy, resumable, exported.

``train.py`` (:func:`~tf_shopee.training.cli.main`) turns the command line into a
:class:`~tf_shopee.config.RunConfig` and calls :func:`train_and_evaluate`. The package holds one
job per module:

- :mod:`~tf_shopee.training.job` — :func:`train_and_evaluate`: strategy, precision, data facts,
  model build, resume check, then the run and the export;
- :mod:`~tf_shopee.training.run` — :class:`~tf_shopee.training.run.TrainingRun`, the loop of one
  run: resume, epochs, precise BatchNorm, validation, checkpoints, history, export;
- :mod:`~tf_shopee.training.trainer` — :class:`Trainer`, the distributed train step;
- :mod:`~tf_shopee.training.optimization` — learning-rate schedule, AdamW on reduced gradients,
  loss scaling;
- :mod:`~tf_shopee.training.evaluation` — validation embedding, threshold sweep, precise
  BatchNorm;
- :mod:`~tf_shopee.training.workdir` — the run folder's files and resume checks;
- :mod:`~tf_shopee.training.data` — what the manifest says about the training data;
- :mod:`~tf_shopee.training.run_log` — console, history.json, TensorBoard, SIGTERM;
- :mod:`~tf_shopee.training.cli` — the ``train.py`` command line.

Resuming mid-epoch: the data order of epoch ``e`` is drawn from seed ``1000 * train.seed + e``; a
resumed epoch rebuilds it and skips the batches already trained on (they are read and decoded
again, not trained on). With ``data.deterministic`` the rest of the epoch is exactly what the
interrupted run would have seen; without it (the faster default) it is an equally random
remainder. SIGTERM (a preempted VM, ``kill``) saves a checkpoint at the next step boundary and
exits with status 143.

Limits: ``--jit-compile`` compiles the whole replica step (as Keras does) and works on one device
(CPU or GPU) and with mirrored / multi_worker on GPUs; with mirrored or multi_worker on CPU devices
it is refused (XLA cannot compile their cross-replica update there). Validation embeds the fold
outside ``strategy.run``, on one device of each worker (every worker computes the same result).
Multi-worker runs assume a filesystem shared by the workers (the chief writes, the others read
the chief's vocabulary and checkpoints).
"""

import importlib

# Where each public name lives. Imported on first use, so ``train.py --help`` (which loads
# tf_shopee.training.cli) answers without importing TensorFlow.
_PUBLIC_NAMES = {
    "build_argument_parser": "cli",
    "config_from_arguments": "cli",
    "main": "cli",
    "embed_dataset": "evaluation",
    "recalibrate_batch_norm": "evaluation",
    "threshold_sweep": "evaluation",
    "train_and_evaluate": "job",
    "DynamicLossScale": "optimization",
    "make_optimizer": "optimization",
    "make_warmup_cosine_schedule": "optimization",
    "scaled_learning_rate": "optimization",
    "Trainer": "trainer",
    "input_names": "trainer",
}


def __getattr__(name: str):
    if name not in _PUBLIC_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_PUBLIC_NAMES[name]}")
    return getattr(module, name)


__all__ = [
    "DynamicLossScale",
    "Trainer",
    "build_argument_parser",
    "config_from_arguments",
    "embed_dataset",
    "input_names",
    "main",
    "make_optimizer",
    "make_warmup_cosine_schedule",
    "recalibrate_batch_norm",
    "scaled_learning_rate",
    "threshold_sweep",
    "train_and_evaluate",
]
