"""The loop of one training run (:class:`TrainingRun`): resume, epochs of train steps,
precise BatchNorm, validation, checkpoints (latest, best, untrained), history, export."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import keras
import tensorflow as tf

from tf_shopee import distribute
from tf_shopee.data.pipeline import make_dataset
from tf_shopee.errors import UserError
from tf_shopee.export import export_model
from tf_shopee.io_utils import write_json_atomic
from tf_shopee.models import build_embedding_model
from tf_shopee.training.data import catalog_mix, model_batch
from tf_shopee.training.evaluation import (
    embed_dataset,
    embedding_function,
    recalibrate_batch_norm,
    threshold_sweep,
)
from tf_shopee.training.run_log import Progress, RunLog, StopRequest
from tf_shopee.training.trainer import MAX_STEPS_PER_CALL, TrainStepOutputs
from tf_shopee.training.workdir import (
    BEST_CHECKPOINT_DIR,
    CHECKPOINT_DIR,
    THRESHOLDS_FILE,
    UNTRAINED_CHECKPOINT_DIR,
    UNTRAINED_THRESHOLDS_FILE,
    WORKER_TEMP_DIR,
    read_json,
    restore_checkpoint,
)

# How long one call of the compiled train function should last once its speed is known.
CALL_TARGET_SECONDS = 10.0


class TrainingRun:
    """One training run's loop state; built by :func:`~tf_shopee.training.job.train_and_evaluate`,
    which then calls :meth:`fit` and :meth:`export`."""

    def __init__(
        self,
        *,
        config,
        workdir,
        strategy,
        chief,
        facts,
        trainer,
        text_preprocessor,
        steps_per_epoch,
        global_batch_size,
    ):

        self.config = config
        self.workdir = workdir
        self.strategy = strategy
        self.chief = chief
        self.facts = facts
        self.trainer = trainer
        self.text_preprocessor = text_preprocessor
        self.steps_per_epoch = steps_per_epoch
        self.global_batch_size = global_batch_size
        self.stopped_early = False
        self.calls = 0  # calls of the compiled train function in this process
        self.first_call_seconds = None
        self.seconds_per_step = None  # of the latest call after the first
        self.last_save = _now()  # for train.checkpoint_every_minutes
        self.log = RunLog(workdir, chief)
        task_type, task_id = distribute.task_identity(strategy)
        self.write_root = workdir if chief else workdir / WORKER_TEMP_DIR / f"{task_type}_{task_id}"
        self.checkpoint = trainer.checkpoint()
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            str(self.write_root / CHECKPOINT_DIR),
            max_to_keep=2,
            step_counter=trainer.global_step,
        )
        self.best_checkpoint = tf.train.Checkpoint(embedding_model=trainer.embedding_model)
        self.best_manager = tf.train.CheckpointManager(
            self.best_checkpoint, str(self.write_root / BEST_CHECKPOINT_DIR), max_to_keep=1
        )
        self.untrained_manager = tf.train.CheckpointManager(
            self.best_checkpoint, str(self.write_root / UNTRAINED_CHECKPOINT_DIR), max_to_keep=1
        )
        self.validate = bool(config.train.validate and facts.validation_examples > 0)
        self.catalog = catalog_mix(config, facts, say=self.log.say)
        self.current_image_size = config.data.image_size
        self.embed = embedding_function(trainer.embedding_model)  # traced once, not per epoch

    # -- checkpoints ---------------------------------------------------------------------------

    def _save(self, manager) -> None:
        manager.save(checkpoint_number=int(self.trainer.global_step.numpy()))
        self.last_save = _now()
        if not self.chief:
            # MultiWorkerMirroredStrategy pattern: every worker saves, only the chief's copy stays.
            shutil.rmtree(self.write_root, ignore_errors=True)

    def _resume(self) -> None:
        latest = tf.train.latest_checkpoint(str(self.workdir / CHECKPOINT_DIR))
        if latest is None:
            return
        restore_checkpoint(self.checkpoint, latest, "training")
        self.log.say(
            f"resumed from {latest}: epoch {int(self.trainer.epoch.numpy()) + 1}, step "
            f"{int(self.trainer.step_in_epoch.numpy())} of {self.steps_per_epoch}"
        )

    # -- data ------------------------------------------------------------------------------------

    def image_size(self, epoch: int) -> int:
        """The photos' side in epoch ``epoch`` (0-based): the final size for the last
        ``train.final_epochs`` epochs when ``train.final_image_size`` is set."""
        train = self.config.train
        if train.final_image_size and epoch >= train.epochs - train.final_epochs:
            return train.final_image_size
        return self.config.data.image_size

    def _train_iterator(self, epoch: int, skip_steps: int):
        config = self.config
        self.current_image_size = self.image_size(epoch)
        kind = config.model.kind
        with_image = kind.uses_images

        def dataset_fn(input_context):
            dataset = make_dataset(
                self.facts.directory,
                training=True,
                global_batch_size=self.global_batch_size,
                image_size=self.current_image_size if with_image else None,
                exclude_folds=self.facts.train_folds_excluded,
                with_image=with_image,
                text_preprocessor=self.text_preprocessor,
                augment=config.data.augment,
                shuffle_buffer=config.data.shuffle_buffer,
                repeat=True,
                deterministic=config.data.deterministic,
                # A per-epoch seed: a resumed epoch sees the same order (when deterministic).
                seed=config.train.seed * 1000 + epoch,
                class_balanced=config.data.class_balanced,
                label_counts=self.facts.label_counts or None,
                cache=config.data.cache,
                input_context=input_context,
                catalog=self.catalog,
            )
            dataset = dataset.map(model_batch(kind))
            if skip_steps:
                batches_per_step = (
                    input_context.num_replicas_in_sync // input_context.num_input_pipelines
                )
                dataset = dataset.skip(skip_steps * batches_per_step)
            return dataset

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def _plain_dataset(self, *, folds=None, exclude_folds=None):
        """One un-augmented, unshuffled pass over some folds (for validation or precise BN)."""
        kind = self.config.model.kind
        with_image = kind.uses_images
        return make_dataset(
            self.facts.directory,
            training=False,
            global_batch_size=self.global_batch_size,
            image_size=self.current_image_size if with_image else None,
            folds=folds,
            exclude_folds=exclude_folds,
            with_image=with_image,
            text_preprocessor=self.text_preprocessor,
            augment=False,
            repeat=False,
            deterministic=True,
        )

    def _validation_dataset(self):
        return self._plain_dataset(folds=self.facts.validation_folds)

    def _recalibrate_batch_norm(self) -> tuple[int, float]:
        """Precise BatchNorm on un-augmented training batches
        (``train.batch_norm_recalibration_batches``); returns (batches used, seconds)."""
        batches = self.config.train.batch_norm_recalibration_batches
        if batches <= 0:
            return 0, 0.0
        dataset = self._plain_dataset(exclude_folds=self.facts.train_folds_excluded)
        started = time.perf_counter()
        used = recalibrate_batch_norm(
            self.trainer.embedding_model, dataset, self.config.model.kind, batches
        )
        return used, time.perf_counter() - started

    # -- validation ------------------------------------------------------------------------------

    def _run_validation(self) -> dict:
        started = time.perf_counter()
        progress = Progress(
            self.log.say, "validation: embedded", self.facts.validation_examples, "postings",
            self.config.train.log_every_seconds, clock=_now,
        )
        embeddings, labels = embed_dataset(
            self.trainer.embedding_model, self._validation_dataset(), self.config.model.kind,
            progress=progress.update, embed=self.embed,
        )
        result = threshold_sweep(embeddings, labels)
        if distribute.is_multi_worker(self.strategy):
            # Identical in theory; averaged so every worker takes the same best-checkpoint
            # decision even if float round-off differs (checkpoint saves must match up).
            result["best_f1"] = _mean_over_workers(self.strategy, result["best_f1"])
        result["seconds"] = time.perf_counter() - started
        return result

    # -- the loop --------------------------------------------------------------------------------

    def fit(self) -> dict:
        trainer = self.trainer
        config = self.config
        epochs = config.train.epochs
        self._resume()
        start_epoch = int(trainer.epoch.numpy())
        start_step = int(trainer.step_in_epoch.numpy())
        if start_step >= self.steps_per_epoch:  # steps_per_epoch shrank since the checkpoint
            start_epoch, start_step = start_epoch + 1, 0
            trainer.epoch.assign(start_epoch)
            trainer.step_in_epoch.assign(0)
        self.log.trim_to(start_epoch)
        self.log.record_start(
            {
                "epoch": start_epoch + 1,
                "step_in_epoch": start_step,
                "global_step": int(trainer.global_step.numpy()),
                "time": time.time(),
            }
        )
        fresh = start_epoch == 0 and start_step == 0 and int(trainer.global_step.numpy()) == 0
        if start_epoch >= epochs and not fresh:
            self.log.say(f"the run is complete ({start_epoch} epochs): nothing to train")
        self.log.say(
            f"training {config.model.kind} model: {self.facts.train_examples} postings, "
            f"{self.facts.num_classes} label groups, {self.steps_per_epoch} steps/epoch of "
            f"{self.global_batch_size} ({self.strategy.num_replicas_in_sync} replicas), "
            f"{trainer.training_model.count_params():,} parameters"
        )
        untrained = None
        if fresh:
            # The untrained baseline is measured like every epoch: with BatchNorm statistics
            # estimated from the data when recalibration is on. The initial placeholders
            # (mean 0, variance 1) make a random network an arbitrary function of its pixels.
            recalibrated, _ = self._recalibrate_batch_norm()
            if recalibrated:
                self.log.say(f"epoch 0 (untrained): BatchNorm statistics from {recalibrated} "
                             "batches")
            self._save(self.untrained_manager)
        if self.validate and fresh:
            untrained = self._run_validation()
            if self.chief:
                write_json_atomic(
                    self.workdir / UNTRAINED_THRESHOLDS_FILE,
                    {
                        "source": "validation fold",
                        "epoch": 0,
                        "validation_fold": config.data.validation_fold,
                        **untrained,
                    },
                )
            self.log.say(
                f"epoch 0 (untrained): validation F1 {untrained['best_f1']:.4f} at threshold "
                f"{untrained['best_threshold']:.2f} ({untrained['postings']} postings)"
            )
            self.log.record_epoch(
                {
                    "epoch": 0,
                    "validation_f1": untrained["best_f1"],
                    "validation_threshold": untrained["best_threshold"],
                }
            )
        elif self.validate:
            untrained = next(
                (
                    {"best_f1": record["validation_f1"]}
                    for record in self.log.history["epochs"]
                    if record["epoch"] == 0
                ),
                None,
            )

        last = {}
        with StopRequest() as stop:
            for epoch in range(start_epoch, epochs):
                last = self._train_epoch(epoch, start_step if epoch == start_epoch else 0, stop)
                if last is None:
                    self.stopped_early = True
                    break
        return self._summary(last or {}, untrained)

    def _chunk_size(self) -> int:
        """Steps for the next call of the compiled train function.

        The process's first call runs one step (it traces, and with XLA compiles, the step), so
        the first progress line comes early; after that a call lasts about
        ``CALL_TARGET_SECONDS`` (never longer than the progress interval), so progress lines and
        time-based checkpoints are not held up by long calls. Multi-worker runs keep a fixed
        size: every worker must make the same calls.
        """
        if self.calls == 0:
            return 1
        if distribute.is_multi_worker(self.strategy) or self.seconds_per_step is None:
            return MAX_STEPS_PER_CALL if self.calls > 1 else 1
        target = min(CALL_TARGET_SECONDS, self.config.train.log_every_seconds)
        return int(min(MAX_STEPS_PER_CALL, max(1, target // max(self.seconds_per_step, 1e-6))))

    def _checkpoint_due_by_time(self) -> bool:
        interval = self.config.train.checkpoint_every_minutes * 60
        due = interval > 0 and _now() - self.last_save >= interval
        if distribute.is_multi_worker(self.strategy):
            # One decision for all workers: their saves must match up.
            due = _mean_over_workers(self.strategy, float(due)) > 0
        return due

    def _train_epoch(self, epoch: int, skip_steps: int, stop) -> dict | None:
        trainer = self.trainer
        config = self.config
        every = config.train.checkpoint_every_steps
        iterator = self._train_iterator(epoch, skip_steps)
        trainer.epoch.assign(epoch)
        trainer.step_in_epoch.assign(skip_steps)
        step = skip_steps
        totals = TrainStepOutputs(0.0, 0.0, 0.0, 0)
        train_seconds = 0.0
        # Throughput leaves out the process's first call, which traces (and with XLA compiles)
        # the step, unless it is the only call of the epoch.
        timed_seconds, timed_steps = 0.0, 0
        progress = Progress(
            self.log.say, f"epoch {epoch + 1}/{config.train.epochs} step", self.steps_per_epoch,
            "examples", config.train.log_every_seconds, done=skip_steps,
            unit_scale=self.global_batch_size, clock=_now,
        )
        window_loss, window_steps = 0.0, 0
        while step < self.steps_per_epoch:
            chunk = min(self.steps_per_epoch - step, self._chunk_size())
            if every > 0:
                chunk = min(chunk, every - step % every)
            first_call = self.calls == 0
            if first_call:
                self.log.say(
                    "building the train step (the first call traces the model"
                    + (" and XLA compiles it" if config.train.jit_compile else "")
                    + "; this can take a minute)"
                )
            started = time.perf_counter()
            outputs = trainer.train_steps(iterator, chunk)
            seconds = time.perf_counter() - started
            self.calls += 1
            train_seconds += seconds
            if first_call:
                self.first_call_seconds = seconds
            else:
                timed_seconds += seconds
                timed_steps += chunk
                self.seconds_per_step = seconds / chunk
            step += chunk
            window_loss, window_steps = window_loss + outputs.loss_sum, window_steps + chunk
            note = ""
            if first_call:
                # Its time is tracing, not speed: the rate starts after it.
                progress.restart(step)
                note = f" (the first call built the step in {seconds:.1f} s)"
            if progress.update(step, f": loss {window_loss / window_steps:.4f}{note}",
                               force=first_call):
                window_loss, window_steps = 0.0, 0
            totals = TrainStepOutputs(
                totals.loss_sum + outputs.loss_sum,
                totals.correct + outputs.correct,
                totals.gradient_norm_sum + outputs.gradient_norm_sum,
                totals.steps + chunk,
            )
            if not math.isfinite(outputs.loss_sum):
                raise UserError(
                    f"the loss became {outputs.loss_sum} at step {int(trainer.global_step.numpy())}"
                    ": lower the learning rate (train.learning_rate) or check the data"
                )
            if step < self.steps_per_epoch and (
                (every > 0 and step % every == 0)
                or stop.requested
                or self._checkpoint_due_by_time()
            ):
                self._save(self.manager)
                self.log.say(
                    f"epoch {epoch + 1} step {step}/{self.steps_per_epoch}: loss "
                    f"{outputs.loss_sum / chunk:.4f} (checkpoint saved)"
                )
            if stop.requested and step < self.steps_per_epoch:
                return None

        examples = totals.steps * self.global_batch_size
        if timed_steps == 0:
            timed_seconds, timed_steps = train_seconds, totals.steps
        backbone_lr, head_lr = trainer.current_learning_rates()
        record = {
            "epoch": epoch + 1,
            "global_step": int(trainer.global_step.numpy()),
            "steps": totals.steps,
            "resumed_at_step": skip_steps,
            "loss": totals.loss_sum / max(totals.steps, 1),
            "accuracy": totals.correct / max(examples, 1),
            "gradient_norm": totals.gradient_norm_sum / max(totals.steps, 1),
            "learning_rate": backbone_lr,
            "head_learning_rate": head_lr,
            "examples_per_second": (
                timed_steps * self.global_batch_size / timed_seconds if timed_seconds else 0.0
            ),
            "train_seconds": train_seconds,
            "first_call_seconds": self.first_call_seconds,
        }
        message = (
            f"epoch {epoch + 1}/{config.train.epochs}: loss {record['loss']:.4f} accuracy "
            f"{record['accuracy']:.4f} lr {backbone_lr:.2e} (head {head_lr:.2e}) "
            f"{record['examples_per_second']:.1f} examples/s"
        )
        # Before validating and saving, so the best checkpoint and the export carry the
        # recalibrated statistics.
        recalibrated, recalibration_seconds = self._recalibrate_batch_norm()
        if recalibrated:
            record["batch_norm_recalibration_batches"] = recalibrated
            message += (
                f" | BatchNorm statistics from {recalibrated} batches "
                f"({recalibration_seconds:.1f} s)"
            )
        if self.validate:
            result = self._run_validation()
            record.update(
                validation_f1=result["best_f1"],
                validation_threshold=result["best_threshold"],
                validation_seconds=result["seconds"],
            )
            improved = result["best_f1"] > float(trainer.best_f1.numpy())
            if improved:
                trainer.best_f1.assign(result["best_f1"])
                self._save(self.best_manager)
                if self.chief:
                    write_json_atomic(
                        self.workdir / THRESHOLDS_FILE,
                        {
                            "source": "validation fold",
                            "epoch": epoch + 1,
                            "validation_fold": config.data.validation_fold,
                            **result,
                        },
                    )
            message += (
                f" | validation F1 {result['best_f1']:.4f} at {result['best_threshold']:.2f}"
                + (" (best so far)" if improved else "")
            )
        else:
            # No validation: the newest weights are the ones to export.
            self._save(self.best_manager)
        # History first: a kill between the two leaves a record the checkpoint does not cover,
        # which the resumed run trims and writes again (the other order would lose the record).
        self.log.record_epoch(record)
        trainer.epoch.assign(epoch + 1)
        trainer.step_in_epoch.assign(0)
        self._save(self.manager)
        self.log.say(message)
        return record

    def _summary(self, last: dict, untrained: dict | None) -> dict:
        thresholds = read_json(self.workdir / THRESHOLDS_FILE, None) if self.validate else None
        if thresholds and untrained and thresholds["best_f1"] < untrained["best_f1"]:
            self.log.say(
                f"WARNING: the best trained epoch (validation F1 {thresholds['best_f1']:.4f}) is "
                f"worse than the untrained model ({untrained['best_f1']:.4f}): train longer, "
                "check the learning rate, or start from pretrained weights"
            )
        return {
            "epochs": int(self.trainer.epoch.numpy()),
            "global_step": int(self.trainer.global_step.numpy()),
            "loss": last.get("loss"),
            "accuracy": last.get("accuracy"),
            "examples_per_second": last.get("examples_per_second"),
            "validation_f1": last.get("validation_f1"),
            "best_f1": thresholds["best_f1"] if thresholds else None,
            "best_threshold": thresholds["best_threshold"] if thresholds else None,
            "best_epoch": thresholds["epoch"] if thresholds else None,
            "untrained_f1": untrained["best_f1"] if untrained else None,
            "stopped_early": self.stopped_early,
        }

    # -- export ----------------------------------------------------------------------------------

    def export(
        self,
        export_dir: Path,
        run_name: str,
        vocabulary_size,
        previous_policy,
        *,
        untrained: bool = False,
    ) -> Path:
        """Export the best checkpoint's weights (or the untrained ones) in float32, built
        outside the strategy."""
        checkpoint_dir = UNTRAINED_CHECKPOINT_DIR if untrained else BEST_CHECKPOINT_DIR
        thresholds_file = UNTRAINED_THRESHOLDS_FILE if untrained else THRESHOLDS_FILE
        checkpoint = tf.train.latest_checkpoint(str(self.workdir / checkpoint_dir))
        if checkpoint is None:
            raise UserError(
                f"no checkpoint in {self.workdir / checkpoint_dir} to export"
                + (
                    " (the untrained weights are kept only by a run started fresh)"
                    if untrained
                    else ""
                )
            )
        # A float32 copy on the default strategy: serving graphs should not carry distributed
        # variables, and float32 serves everywhere (CPUs have no fast float16).
        keras.mixed_precision.set_global_policy("float32")
        image_size = self.config.train.export_image_size(self.config.data.image_size)
        try:
            export_copy = build_embedding_model(
                self.config.model,
                load_pretrained_weights=False,
                image_size=image_size,
                vocabulary_size=vocabulary_size,
            )
            restore_checkpoint(
                tf.train.Checkpoint(embedding_model=export_copy), checkpoint, checkpoint_dir
            )
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        thresholds = read_json(self.workdir / thresholds_file, None) if self.validate else None
        metadata = {
            "num_classes": self.facts.num_classes,
            "threshold": thresholds["best_threshold"] if thresholds else None,
            "validation_f1": thresholds["best_f1"] if thresholds else None,
            "epoch": thresholds["epoch"] if thresholds else None,
            "trained": not untrained,
            "run_name": run_name,
            "workdir": str(self.workdir),
            "checkpoint": checkpoint,
        }
        path = export_model(
            export_copy,
            kind=self.config.model.kind,
            export_dir=export_dir,
            image_size=image_size,
            text_preprocessor=self.text_preprocessor,
            metadata=metadata,
            config=self.config,
            thresholds=thresholds,
        )
        self.log.say(f"exported {'the untrained model ' if untrained else ''}{path}")
        return path


def _now() -> float:
    """The clock of time-based checkpoints and progress lines (the tests replace it)."""
    return time.monotonic()


def _mean_over_workers(strategy, value: float) -> float:
    per_replica = strategy.run(lambda: tf.constant(value, tf.float32))
    total = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)
    return float(total.numpy())
