"""One training run from start to export: :func:`train_and_evaluate`.

It

1. picks the strategy (:mod:`tf_shopee.distribute`), the mixed-precision policy and the seed;
2. reads the TFRecord folder's manifest (label count, folds); when the workdir already holds a
   run, checks that it is the same model on data with the same labels, to resume it;
3. builds the embedding model, the ArcFace training model and two AdamW optimizers (the "arc_face"
   head learns ``head_learning_rate_multiplier`` times faster) inside the strategy scope, then
   writes the resolved config to ``<workdir>/config.json`` (after the build: a bad backbone or
   weights file leaves nothing behind that a corrected command would take for another run);
4. runs the custom loop of :class:`~tf_shopee.training.trainer.Trainer`;
5. checkpoints (``tf.train.CheckpointManager``) every ``train.checkpoint_every_steps`` steps and at
   each epoch end, with the epoch and the step inside the epoch, so a killed run restarted with
   the same command continues where it stopped;
6. optionally re-estimates the BatchNorm moving statistics from un-augmented training batches
   (``train.batch_norm_recalibration_batches``, "precise BatchNorm"), then validates after each
   epoch (and once before training, for the untrained baseline): embeds the held-out fold, finds
   each posting's nearest neighbours, sweeps the cosine threshold and reports the best mean F1;
   the best epoch's weights are kept in a separate checkpoint;
7. exports the best weights as a raw-input SavedModel (:mod:`tf_shopee.export`).
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from tf_shopee import distribute
from tf_shopee.config import RunConfig
from tf_shopee.data.manifest import name_damaged_shards
from tf_shopee.errors import UserError
from tf_shopee.io_utils import write_json_atomic
from tf_shopee.models import build_embedding_model, build_training_model
from tf_shopee.training.data import DataFacts, read_data_facts, training_titles
from tf_shopee.training.optimization import scaled_learning_rate
from tf_shopee.training.run import TrainingRun
from tf_shopee.training.trainer import Trainer, check_jit_supported
from tf_shopee.training.workdir import (
    CONFIG_FILE,
    FINAL_METRICS_FILE,
    RUN_STATE_FILE,
    VOCABULARY_FILE,
    check_outputs,
    check_resumable,
    clear_workdir,
    finished_run,
)


def check_zero_epoch_export(config: RunConfig) -> None:
    """``--epochs 0`` exports the model as initialised: refuse a model that would put a layer
    only training sets (a randomly initialised projection, GeM's learnable power, a fusion
    layer) on top of pretrained weights, and name the flags that export the pretrained
    features themselves.

    A model that is random by request (``--weights none``, a text backbone from scratch) is
    exported as asked: nothing pretrained is lost under its random layers.

    Why: on the grocery shelf photos against their 81 catalogue images, recall@1 of the
    ImageNet EfficientNet-Lite0 is 0.224 under the default random projection and 0.280 with the
    average-pooled features themselves.
    """
    kind = config.model.kind
    if kind == "image":
        image = config.model.image
        untrained = [flag for flag, wrong in (
            ("--set model.image.projection=none", image.projection != "none"),
            ("--set model.image.pooling=avg", image.pooling != "avg")) if wrong]
        if image.weights != "none" and untrained:
            raise UserError(
                "--epochs 0 exports the model as initialised, but this image model puts layers "
                f"only training sets on the pretrained {image.backbone} features (projection "
                f"{image.projection!r}, pooling {image.pooling!r}): they would be exported "
                "untrained and lose quality (recall@1 of grocery shelf photos against the "
                "catalogue: 0.224 with a random projection, 0.280 without). Export the "
                f"pretrained features themselves with {' '.join(untrained)}, or train at "
                "least one epoch.")
    elif kind == "text":
        text = config.model.text
        if text.backbone != "scratch" and text.projection != "none":
            raise UserError(
                "--epochs 0 exports the model as initialised, but this text model puts a "
                "randomly initialised projection (Dense + BatchNorm) on the pretrained "
                f"{text.backbone} encoder: it would be exported untrained. Export the "
                "mean-pooled encoder output itself with --set model.text.projection=none, or "
                "train at least one epoch.")
    elif kind == "multimodal" and not (config.model.image.weights == "none"
                                       and config.model.text.backbone == "scratch"):
        raise UserError(
            "--epochs 0 exports the model as initialised, but a multimodal model joins its "
            "towers with a fusion layer only training sets: export an image model and a text "
            "model with --epochs 0 instead (predict.py combines them), or train at least one "
            "epoch.")


def train_and_evaluate(
    config: RunConfig,
    workdir: str | os.PathLike,
    *,
    export_dir: str | os.PathLike | None = None,
    untrained_export_dir: str | os.PathLike | None = None,
    overwrite_workdir: bool = False,
    strategy=None,
) -> dict:
    """Train ``config`` in ``workdir`` (resuming what is there), validate, export; see the module
    docstring for the steps and the workdir layout.

    Args:
        config: the resolved run configuration (validated here).
        workdir: the run's folder; created when missing.
        export_dir: where the SavedModel goes; default ``saved_models/<run name>``, the run name
            being ``config.name`` or the workdir's folder name. ``""`` skips the export.
        untrained_export_dir: when given, also export the model as it was before training
            (same architecture and preprocessing, its own validation threshold): the baseline
            a trained model is compared with.
        overwrite_workdir: delete a previous run's files in ``workdir`` first.
        strategy: a ready strategy (default: ``get_strategy(config.train.strategy)``).

    Returns:
        Final metrics: epochs, steps, last loss/accuracy, best validation F1 / threshold / epoch,
        the untrained model's F1, throughput, export folder.
    """

    config.validate()
    workdir = Path(workdir).absolute()
    if config.data.tfrecords:
        config.data.tfrecords = str(Path(config.data.tfrecords).absolute())
    for name in ("catalog_csv", "catalog_images"):
        if getattr(config.data, name):
            setattr(config.data, name, str(Path(getattr(config.data, name)).absolute()))
    run_name = config.name or workdir.name
    if export_dir is None:
        export_dir = Path("saved_models") / run_name
    exports = {
        "--export": export_dir,
        "the untrained export": untrained_export_dir,
    }
    exports = {name: Path(path).absolute() for name, path in exports.items() if path}
    if config.train.epochs == 0 and "--export" in exports:
        check_zero_epoch_export(config)

    if strategy is None:
        strategy = distribute.get_strategy(config.train.strategy, tpu_address=config.train.tpu)
    if config.train.jit_compile:
        check_jit_supported(strategy)
    chief = distribute.is_chief(strategy)
    facts = read_data_facts(config)
    if chief:
        # Before anything is trained: an export that cannot be written, or that would replace
        # another run's model, is found now, not after the last epoch.
        check_outputs(config, workdir, exports)
    if chief and overwrite_workdir and workdir.exists():
        clear_workdir(workdir)
    distribute.barrier(strategy)
    resuming = check_resumable(workdir, config, facts.num_classes)
    if resuming:
        finished = finished_run(workdir, config, exports)
        if finished is not None:
            return finished

    replicas = strategy.num_replicas_in_sync
    global_batch_size = config.train.batch_size * replicas
    steps_per_epoch = config.train.steps_per_epoch or facts.train_examples // global_batch_size
    if steps_per_epoch < 1:
        raise UserError(
            f"{facts.train_examples} training postings make no full batch of {global_batch_size} "
            f"({config.train.batch_size} per replica x {replicas} replicas): lower --batch-size"
        )
    total_steps = steps_per_epoch * config.train.epochs
    warmup_steps = int(round(config.train.warmup_epochs * steps_per_epoch))
    learning_rate = scaled_learning_rate(config.train.learning_rate, global_batch_size)

    keras.utils.set_random_seed(config.train.seed)
    previous_policy = keras.mixed_precision.global_policy()
    policy_name = "float32"
    if config.train.mixed_precision:
        policy_name = distribute.mixed_precision_policy_name(strategy)
    keras.mixed_precision.set_global_policy(policy_name)
    try:
        text_preprocessor = None
        if config.model.kind.uses_titles:
            with name_damaged_shards(facts.directory):
                text_preprocessor = _text_preprocessor(
                    config, facts, workdir, strategy, chief=chief, resuming=resuming
                )
        vocabulary_size = getattr(text_preprocessor, "vocabulary_size", None)
        with strategy.scope():
            # A bad backbone, preset or weights file fails here, before config.json is written
            # (so fixing the flag and running again is not taken for a different run).
            # A run that changes resolution (train.final_image_size) builds the model for any
            # size; its export is built for the final one.
            changes_size = config.train.final_image_size and config.train.final_epochs > 0
            embedding_model = build_embedding_model(
                config.model, image_size=None if changes_size else config.data.image_size,
                vocabulary_size=vocabulary_size
            )
            training_model = build_training_model(
                embedding_model,
                config.model,
                num_classes=facts.num_classes,
                steps_per_epoch=steps_per_epoch,
            )
            trainer = Trainer(
                strategy,
                embedding_model,
                training_model,
                kind=config.model.kind,
                global_batch_size=global_batch_size,
                learning_rate=learning_rate,
                head_learning_rate_multiplier=config.train.head_learning_rate_multiplier,
                weight_decay=config.train.weight_decay,
                warmup_steps=warmup_steps,
                total_steps=total_steps,
                gradient_clip_norm=config.train.gradient_clip_norm,
                loss_scaling=policy_name == "mixed_float16",
                jit_compile=config.train.jit_compile,
            )
        if chief:
            workdir.mkdir(parents=True, exist_ok=True)
            if not resuming:
                config.save(workdir / CONFIG_FILE)
            write_json_atomic(
                workdir / RUN_STATE_FILE,
                {
                    "num_classes": facts.num_classes,
                    "steps_per_epoch": steps_per_epoch,
                    "global_batch_size": global_batch_size,
                    "replicas": replicas,
                    "strategy": type(strategy).__name__,
                    "mixed_precision_policy": policy_name,
                    "train_examples": facts.train_examples,
                    "validation_examples": facts.validation_examples,
                },
            )
        run = TrainingRun(
            config=config,
            workdir=workdir,
            strategy=strategy,
            chief=chief,
            facts=facts,
            trainer=trainer,
            text_preprocessor=text_preprocessor,
            steps_per_epoch=steps_per_epoch,
            global_batch_size=global_batch_size,
        )
        with name_damaged_shards(facts.directory):
            metrics = run.fit()
        metrics.update(
            policy=policy_name,
            global_batch_size=global_batch_size,
            replicas=replicas,
            export_dir=None,
        )
        if "--export" in exports and chief and not run.stopped_early:
            # --epochs 0 exports the model as initialised (e.g. ImageNet zero-shot).
            metrics["export_dir"] = str(
                run.export(
                    exports["--export"],
                    run_name,
                    vocabulary_size,
                    previous_policy,
                    untrained=config.train.epochs == 0,
                )
            )
        if "the untrained export" in exports and chief and not run.stopped_early:
            metrics["untrained_export_dir"] = str(
                run.export(
                    exports["the untrained export"],
                    f"{run_name}_untrained",
                    vocabulary_size,
                    previous_policy,
                    untrained=True,
                )
            )
        if chief:
            write_json_atomic(workdir / FINAL_METRICS_FILE, metrics)
        return metrics
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _text_preprocessor(
    config: RunConfig, facts: DataFacts, workdir: Path, strategy, *, chief: bool, resuming: bool
):
    """The title tokenizer; a scratch model learns its WordPiece vocabulary at the first start.

    The vocabulary goes to ``model.text.vocabulary`` when set (reused if it exists), else to
    ``<workdir>/vocabulary.txt``, which is reused only when resuming: a fresh run relearns it, so
    a file left by a failed start with other settings never leaks in.
    """
    # Imported only for text models: it loads tensorflow-text and keras-hub.
    from tf_shopee.models.text import build_title_preprocessor

    text = config.model.text
    if text.backbone != "scratch":
        return build_title_preprocessor(text)
    if text.vocabulary:
        vocabulary_path = Path(text.vocabulary)
        reuse = vocabulary_path.is_file()
    else:
        vocabulary_path = workdir / VOCABULARY_FILE
        reuse = resuming and vocabulary_path.is_file()
    if chief and not reuse:
        if vocabulary_path.exists():
            vocabulary_path.unlink()
        vocabulary_path.parent.mkdir(parents=True, exist_ok=True)
        build_title_preprocessor(
            text, titles=training_titles(facts), vocabulary_path=str(vocabulary_path)
        )
    # Every worker reads the chief's file, so all of them tokenize the same way.
    distribute.barrier(strategy)
    return build_title_preprocessor(text, vocabulary_path=str(vocabulary_path))
