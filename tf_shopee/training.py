"""Training: the ArcFace embedding model under a ``tf.distribute`` strategy, resumable, exported.

``train.py`` (:func:`main`) turns the command line into a :class:`~tf_shopee.config.RunConfig`
and calls :func:`train_and_evaluate`, which

1. picks the strategy (:mod:`tf_shopee.distribute`), the mixed-precision policy and the seed;
2. reads the TFRecord folder's manifest (label count, folds); when the workdir already holds a
   run, checks that it is the same model on data with the same labels, to resume it;
3. builds the embedding model, the ArcFace training model and two AdamW optimizers (the "arc_face"
   head learns ``head_learning_rate_multiplier`` times faster) inside the strategy scope, then
   writes the resolved config to ``<workdir>/config.json`` (after the build: a bad backbone or
   weights file leaves nothing behind that a corrected command would take for another run);
4. runs a custom loop: ``strategy.run`` of one replica step inside a ``tf.function`` that runs up to
   :data:`MAX_STEPS_PER_CALL` steps per call, gradients summed over replicas once, clipped by
   their global norm, then applied (float16 on GPUs adds dynamic loss scaling);
5. checkpoints (``tf.train.CheckpointManager``) every ``train.checkpoint_every_steps`` steps and at
   each epoch end, with the epoch and the step inside the epoch, so a killed run restarted with
   the same command continues where it stopped;
6. optionally re-estimates the BatchNorm moving statistics from un-augmented training batches
   (``train.batch_norm_recalibration_batches``, "precise BatchNorm"), then validates after each
   epoch (and once before training, for the untrained baseline): embeds the
   held-out fold, finds each posting's nearest neighbours, sweeps the cosine threshold and
   reports the best mean F1; the best epoch's weights are kept in a separate checkpoint;
7. exports the best weights as a raw-input SavedModel (:mod:`tf_shopee.export`).

Workdir layout::

    config.json          the resolved RunConfig (written at the first start)
    run_state.json       label count, steps per epoch and other facts a resume must agree with
    history.json         one record per epoch (loss, accuracy, lr, throughput, validation F1) and
                         one per process start (where it resumed)
    vocabulary.txt       WordPiece vocabulary of a scratch text model (learned at the first start)
    checkpoints/         the latest training state (model, optimizers, counters)
    checkpoints/best/    the embedding model of the best validation epoch
    checkpoints/untrained/  the embedding model before training (a baseline to export)
    thresholds.json      the best epoch's threshold sweep
    untrained_thresholds.json  the same sweep for the untrained model
    tensorboard/         TensorBoard event files
    final_metrics.json   what train_and_evaluate returned

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

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tf_shopee import distribute
from tf_shopee.config import MODEL_KINDS, RunConfig, tiny_overrides
from tf_shopee.data.manifest import load_manifest
from tf_shopee.data.pipeline import dataset_size, make_dataset
from tf_shopee.errors import UserError, exit_on_user_error
from tf_shopee.export import export_model
from tf_shopee.io_utils import write_json_atomic
from tf_shopee.matching import matches_from_neighbours, top_k_neighbours
from tf_shopee.metrics import mean_f1_from_matches
from tf_shopee.models import build_embedding_model, build_training_model

# Steps run by one call of the compiled training function (Keras' steps_per_execution): fewer
# Python round trips, which matters on TPUs. Checkpoints and epoch ends also end a call.
MAX_STEPS_PER_CALL = 50

# Cosine thresholds swept on the validation fold; finer near 1, where an untrained (or
# collapsed) model's neighbours all sit.
VALIDATION_THRESHOLDS = tuple(np.round(np.arange(0.0, 1.0, 0.02), 2).tolist()) + (
    0.99,
    0.995,
    0.999,
)
# Neighbours looked up per validation posting: Shopee groups have at most 51 postings.
VALIDATION_NEIGHBOURS = 51

IMAGE_INPUTS = ("image",)
TEXT_INPUTS = ("token_ids", "padding_mask")

# Settings a resumed run must share with the run that wrote the workdir: they change the
# variables in the checkpoint or the meaning of the validation split.
STRUCTURAL_KEYS = (
    "model.kind",
    "model.embedding_dim",
    "model.image.backbone",
    "model.image.pooling",
    "model.text.backbone",
    "model.text.vocabulary",
    "model.text.sequence_length",
    "model.text.lowercase",
    "model.text.vocabulary_size",
    "model.text.num_layers",
    "model.text.hidden_dim",
    "model.text.num_heads",
    "model.text.intermediate_dim",
    "data.image_size",
    "data.validation_fold",
)

CONFIG_FILE = "config.json"
RUN_STATE_FILE = "run_state.json"
HISTORY_FILE = "history.json"
VOCABULARY_FILE = "vocabulary.txt"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT_DIR = os.path.join("checkpoints", "best")
UNTRAINED_CHECKPOINT_DIR = os.path.join("checkpoints", "untrained")
THRESHOLDS_FILE = "thresholds.json"
UNTRAINED_THRESHOLDS_FILE = "untrained_thresholds.json"
TENSORBOARD_DIR = "tensorboard"
FINAL_METRICS_FILE = "final_metrics.json"
WORKER_TEMP_DIR = ".worker_temp"
# What --overwrite-workdir deletes: only files this module writes, never the whole folder.
WORKDIR_OUTPUTS = (
    CONFIG_FILE,
    RUN_STATE_FILE,
    HISTORY_FILE,
    VOCABULARY_FILE,
    CHECKPOINT_DIR,
    THRESHOLDS_FILE,
    UNTRAINED_THRESHOLDS_FILE,
    TENSORBOARD_DIR,
    FINAL_METRICS_FILE,
    WORKER_TEMP_DIR,
)


def input_names(kind: str) -> tuple[str, ...]:
    """The embedding model's input keys for a model kind."""
    return {
        "image": IMAGE_INPUTS,
        "text": TEXT_INPUTS,
        "multimodal": IMAGE_INPUTS + TEXT_INPUTS,
    }[kind]


def scaled_learning_rate(base_learning_rate: float, global_batch_size: int) -> float:
    """``train.learning_rate`` is for a global batch of 64; scale it linearly (Goyal et al.)."""
    return base_learning_rate * global_batch_size / 64.0


# ----------------------------------------------------------------------------------------------
# Optimisation pieces
# ----------------------------------------------------------------------------------------------


def make_warmup_cosine_schedule(peak_learning_rate: float, warmup_steps: int, total_steps: int):
    """Linear warm-up from 0 to ``peak_learning_rate`` over ``warmup_steps``, then cosine to 0."""
    from keras import ops

    class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up then cosine decay to zero at ``total_steps``."""

        def __init__(self, peak_learning_rate, warmup_steps, total_steps):
            self.peak_learning_rate = float(peak_learning_rate)
            self.warmup_steps = int(warmup_steps)
            self.total_steps = int(total_steps)

        def __call__(self, step):
            step = ops.cast(step, "float32")
            # step + 1: the very first update already gets a (small) non-zero rate.
            warm = self.peak_learning_rate * (step + 1.0) / float(max(self.warmup_steps, 1))
            decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
            progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
            cosine = self.peak_learning_rate * 0.5 * (1.0 + ops.cos(math.pi * progress))
            return ops.where(step < self.warmup_steps, warm, cosine)

        def get_config(self):
            return {
                "peak_learning_rate": self.peak_learning_rate,
                "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps,
            }

    return WarmupCosineDecay(peak_learning_rate, warmup_steps, total_steps)


def make_optimizer(learning_rate, weight_decay: float, variables, *, name: str):
    """AdamW that expects gradients already summed over replicas, built for ``variables``.

    Keras 3 optimizers all-reduce gradients themselves inside ``apply_gradients``. The training
    step needs the reduced gradients earlier (for global-norm clipping and the loss-scale check),
    so it reduces them once itself and this optimizer skips its own reduction: one all-reduce per
    step instead of two, and clipping by the true global norm. Biases and normalisation
    parameters (rank <= 1) get no weight decay.

    Must be called inside the strategy scope (the slots are created here by ``build``).
    """
    from keras.src.backend.tensorflow.optimizer import TFOptimizer

    if not hasattr(TFOptimizer, "_all_reduce_sum_gradients"):
        raise RuntimeError(
            f"keras {keras.__version__}: TFOptimizer._all_reduce_sum_gradients is gone; "
            "tf_shopee.training.make_optimizer must be updated for this Keras version"
        )

    class AdamWOnReducedGradients(keras.optimizers.AdamW):
        """AdamW whose gradients arrive already summed over replicas."""

        def _all_reduce_sum_gradients(self, grads_and_vars):
            return list(grads_and_vars)

    optimizer = AdamWOnReducedGradients(
        learning_rate=learning_rate, weight_decay=weight_decay, name=name
    )
    optimizer.exclude_from_weight_decay(var_list=[v for v in variables if len(v.shape) <= 1])
    optimizer.build(variables)
    return optimizer


class DynamicLossScale:
    """Dynamic loss scaling for float16 training (doubles every 2000 finite steps, halves on
    overflow), shared by both optimizers so one scale governs the whole gradient.

    Keras' LossScaleOptimizer wraps a single optimizer; the two-optimizer step needs the scale
    outside them. Create inside the strategy scope.
    """

    def __init__(self, initial_scale: float = 2.0**15, growth_steps: int = 2000):
        on_first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.scale = tf.Variable(
            initial_scale,
            dtype=tf.float32,
            trainable=False,
            aggregation=on_first,
            name="loss_scale",
        )
        self.good_steps = tf.Variable(
            0, dtype=tf.int64, trainable=False, aggregation=on_first, name="loss_scale_good_steps"
        )
        self.growth_steps = growth_steps

    def update(self, finite):
        """Grow or shrink the scale after a step whose gradients were ``finite`` or not."""

        def on_finite():
            grow = self.good_steps >= self.growth_steps - 1
            self.scale.assign(tf.where(grow, self.scale * 2.0, self.scale))
            self.good_steps.assign(tf.where(grow, tf.constant(0, tf.int64), self.good_steps + 1))
            return tf.constant(True)

        def on_overflow():
            self.scale.assign(tf.maximum(self.scale * 0.5, 1.0))
            self.good_steps.assign(0)
            return tf.constant(False)

        return tf.cond(finite, on_finite, on_overflow)


def _scale_gradient(gradient, factor):
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(gradient.values * factor, gradient.indices, gradient.dense_shape)
    return gradient * factor


def _all_finite(gradients):
    checks = [
        tf.reduce_all(tf.math.is_finite(g.values if isinstance(g, tf.IndexedSlices) else g))
        for g in gradients
    ]
    return tf.reduce_all(tf.stack(checks))


def _check_jit_supported(strategy) -> None:
    """XLA cannot compile a synchronised replica step on CPU-only mirrored strategies.

    On GPUs, MirroredStrategy and MultiWorkerMirroredStrategy update variables without
    ``merge_call`` inside XLA; on CPU devices they need ``merge_call``, which cannot run inside a
    compiled function (and mirrored variables on logical CPU devices are placed on the first
    one). A one-device strategy compiles fine on the CPU.
    """
    if isinstance(strategy, tf.distribute.OneDeviceStrategy | tf.distribute.TPUStrategy):
        return
    if distribute.device_kind(strategy) == "cpu":
        raise UserError(
            f"--jit-compile is not supported with {type(strategy).__name__} on CPU devices "
            "(XLA cannot compile the cross-replica update there); it works with --strategy "
            "one_device on the CPU, and with mirrored / multi_worker on GPUs"
        )


@dataclass
class TrainStepOutputs:
    """Totals over the steps of one call of :meth:`Trainer.train_steps`."""

    loss_sum: float
    correct: float
    gradient_norm_sum: float
    steps: int


class Trainer:
    """The distributed train step: models, optimizers, counters, loss scaling.

    Built inside ``strategy.scope()`` by :func:`build_trainer`; usable on its own (tests build one
    around any embedding/training model pair).

    Args:
        strategy: the ``tf.distribute.Strategy``.
        embedding_model: inputs dict → embedding.
        training_model: embedding inputs + "label" → ArcFace logits; has a layer "arc_face".
        kind: image | text | multimodal (selects the batch keys fed to the model).
        global_batch_size: examples per step over all replicas.
        learning_rate: peak learning rate of the backbone (already scaled to the global batch).
        head_learning_rate_multiplier: the "arc_face" layer's learning rate factor.
        weight_decay: AdamW decoupled weight decay.
        warmup_steps, total_steps: the learning-rate schedule.
        gradient_clip_norm: clip the summed gradient to this global norm (<= 0: no clipping).
        loss_scaling: dynamic loss scaling (float16 training).
        jit_compile: compile the replica step with XLA.
    """

    def __init__(
        self,
        strategy,
        embedding_model,
        training_model,
        *,
        kind: str,
        global_batch_size: int,
        learning_rate: float,
        head_learning_rate_multiplier: float,
        weight_decay: float,
        warmup_steps: int,
        total_steps: int,
        gradient_clip_norm: float,
        loss_scaling: bool = False,
        jit_compile: bool = False,
    ):

        self.strategy = strategy
        self.embedding_model = embedding_model
        self.training_model = training_model
        self.kind = kind
        self.global_batch_size = global_batch_size
        self.gradient_clip_norm = gradient_clip_norm
        self.jit_compile = jit_compile
        try:
            head = training_model.get_layer("arc_face")
        except ValueError:
            raise RuntimeError("the training model has no layer named 'arc_face'") from None
        head_ids = {id(v) for v in head.trainable_variables}
        self.head_variables = list(head.trainable_variables)
        self.backbone_variables = [
            v for v in training_model.trainable_variables if id(v) not in head_ids
        ]
        self.learning_rate_schedule = make_warmup_cosine_schedule(
            learning_rate, warmup_steps, total_steps
        )
        self.head_learning_rate_schedule = make_warmup_cosine_schedule(
            learning_rate * head_learning_rate_multiplier, warmup_steps, total_steps
        )
        self.backbone_optimizer = make_optimizer(
            self.learning_rate_schedule, weight_decay, self.backbone_variables, name="backbone"
        )
        self.head_optimizer = make_optimizer(
            self.head_learning_rate_schedule, weight_decay, self.head_variables, name="head"
        )
        self.loss_scale = DynamicLossScale() if loss_scaling else None
        on_first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.global_step = tf.Variable(
            0, dtype=tf.int64, trainable=False, aggregation=on_first, name="global_step"
        )
        self.epoch = tf.Variable(
            0, dtype=tf.int64, trainable=False, aggregation=on_first, name="epoch"
        )
        self.step_in_epoch = tf.Variable(
            0, dtype=tf.int64, trainable=False, aggregation=on_first, name="step_in_epoch"
        )
        self.best_f1 = tf.Variable(
            -1.0, dtype=tf.float32, trainable=False, aggregation=on_first, name="best_f1"
        )
        self._train_function = None
        if jit_compile:
            _check_jit_supported(strategy)

    # The checkpointed state: everything a resumed run needs to continue exactly.
    def checkpoint(self):
        """A ``tf.train.Checkpoint`` of the model, optimizers and counters."""

        state = dict(
            training_model=self.training_model,
            backbone_optimizer=self.backbone_optimizer,
            head_optimizer=self.head_optimizer,
            global_step=self.global_step,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            best_f1=self.best_f1,
        )
        if self.loss_scale is not None:
            state.update(
                loss_scale=self.loss_scale.scale, loss_scale_good_steps=self.loss_scale.good_steps
            )
        return tf.train.Checkpoint(**state)

    def current_learning_rates(self) -> tuple[float, float]:
        """(backbone, head) learning rates at the current step."""
        step = self.backbone_optimizer.iterations
        return (
            float(self.learning_rate_schedule(step)),
            float(self.head_learning_rate_schedule(step)),
        )

    def _forward_backward(self, batch):
        """Loss, correct count and gradients of one replica's batch (the XLA-compiled part)."""
        labels = batch["label"]
        inputs = {key: batch[key] for key in input_names(self.kind)}
        inputs["label"] = labels
        variables = self.backbone_variables + self.head_variables
        with tf.GradientTape() as tape:
            logits = tf.cast(self.training_model(inputs, training=True), tf.float32)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=logits
            )
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch_size)
            if self.training_model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.training_model.losses))
            scaled_loss = loss * self.loss_scale.scale if self.loss_scale is not None else loss
        gradients = tape.gradient(scaled_loss, variables)
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.float32))
        return loss, correct, gradients

    def _replica_step(self, batch):
        variables = self.backbone_variables + self.head_variables
        loss, correct, gradients = self._forward_backward(batch)
        # Variables no path from the loss reaches (e.g. a preset's unused pooler) are left out,
        # as Keras' own optimizers do.
        used = [index for index, gradient in enumerate(gradients) if gradient is not None]
        if not used:
            raise RuntimeError("no trainable variable receives a gradient from the loss")
        # One all-reduce: the optimizers skip theirs (see make_optimizer). Token-embedding
        # gradients stay sparse (IndexedSlices): the strategies all-gather them, far cheaper
        # than reducing a dense 119k-row multilingual vocabulary table every step.
        gradients = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, [gradients[index] for index in used]
        )
        finite = None
        if self.loss_scale is not None:
            inverse_scale = 1.0 / self.loss_scale.scale
            gradients = [_scale_gradient(g, inverse_scale) for g in gradients]
            finite = _all_finite(gradients)
        if self.gradient_clip_norm > 0:
            gradients, gradient_norm = tf.clip_by_global_norm(gradients, self.gradient_clip_norm)
        else:
            gradient_norm = tf.linalg.global_norm(gradients)
        backbone_count = len(self.backbone_variables)
        backbone = [
            (gradient, variables[index])
            for gradient, index in zip(gradients, used)
            if index < backbone_count
        ]
        head = [
            (gradient, variables[index])
            for gradient, index in zip(gradients, used)
            if index >= backbone_count
        ]
        if self.loss_scale is None:
            self._apply(backbone, head)
        else:
            self._apply_if_finite(backbone, head, finite)
        replicas = tf.cast(tf.distribute.get_replica_context().num_replicas_in_sync, tf.float32)
        # Divided by the replica count so that the SUM over replicas gives the value once.
        return loss, correct, gradient_norm / replicas

    def _apply(self, backbone, head):
        """Apply (gradient, variable) pairs of the backbone and of the ArcFace head."""
        if backbone:
            self.backbone_optimizer.apply_gradients(backbone)
        if head:
            self.head_optimizer.apply_gradients(head)

    def _apply_if_finite(self, backbone, head, finite):
        # A cond whose branch calls merge_call (apply_gradients does) is not allowed in replica
        # context under most strategies; do the cond in cross-replica context like Keras'
        # LossScaleOptimizer.
        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            tf.cond(
                finite,
                lambda: self._apply_and_true(backbone, head),
                lambda: tf.constant(False),
            )
            self.loss_scale.update(finite)
            return

        def cross_replica(distribution, backbone, head, finite):
            finite = distribution.experimental_local_results(finite)[0]

            def apply():
                distribution.extended.call_for_each_replica(self._apply, args=(backbone, head))
                return tf.constant(True)

            tf.cond(finite, apply, lambda: tf.constant(False))
            self.loss_scale.update(finite)

        tf.distribute.get_replica_context().merge_call(cross_replica, args=(backbone, head, finite))

    def _apply_and_true(self, backbone, head):
        self._apply(backbone, head)
        return tf.constant(True)

    def train_steps(self, iterator, steps: int) -> TrainStepOutputs:
        """Run ``steps`` training steps on batches from a distributed ``iterator``."""

        if self._train_function is None:
            replica_step = self._replica_step
            if self.jit_compile and not isinstance(self.strategy, tf.distribute.TPUStrategy):
                # The whole replica step, updates included, as Keras does (a TPU compiles
                # everything anyway).
                replica_step = tf.function(replica_step, jit_compile=True)
            strategy = self.strategy

            @tf.function
            def train_function(iterator, steps):
                loss_sum = tf.constant(0.0)
                correct = tf.constant(0.0)
                norm_sum = tf.constant(0.0)
                for _ in tf.range(steps):
                    per_replica = strategy.run(replica_step, args=(next(iterator),))
                    loss, step_correct, norm = (
                        strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                        for value in per_replica
                    )
                    loss_sum += loss
                    correct += step_correct
                    norm_sum += norm
                    self.global_step.assign_add(1)
                    self.step_in_epoch.assign_add(1)
                return loss_sum, correct, norm_sum

            self._train_function = train_function
        loss_sum, correct, norm_sum = self._train_function(iterator, tf.constant(steps, tf.int32))
        return TrainStepOutputs(float(loss_sum), float(correct), float(norm_sum), steps)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def embed_dataset(embedding_model, dataset, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised embeddings and labels of every posting of a (finite) batched dataset.

    Runs the model outside ``strategy.run`` (one device): every worker of a multi-worker run
    gets the whole fold, so they all reach the same validation result.
    """

    names = input_names(kind)

    @tf.function(reduce_retracing=True)
    def embed(inputs):
        embeddings = tf.cast(embedding_model(inputs, training=False), tf.float32)
        return tf.math.l2_normalize(embeddings, axis=1)

    embeddings, labels = [], []
    for batch in dataset:
        embeddings.append(embed({key: batch[key] for key in names}).numpy())
        labels.append(batch["label"].numpy())
    if not embeddings:
        return np.zeros((0, int(embedding_model.output_shape[-1])), np.float32), np.zeros(0, int)
    return np.concatenate(embeddings), np.concatenate(labels)


def recalibrate_batch_norm(embedding_model, dataset, kind: str, batches: int) -> int:
    """Precise BatchNorm: re-estimate BatchNorm moving statistics from training batches.

    Every trainable ``BatchNormalization`` layer of ``embedding_model`` gets, as its moving mean
    and variance, the plain average of the batch statistics it sees over the first ``batches``
    batches of ``dataset`` (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021). Dropout is
    switched off meanwhile so that it does not inflate the variances. Frozen BatchNorm layers
    (``trainable=False``, e.g. a frozen backbone) keep their statistics: Keras runs them in
    inference mode. Nothing else changes: weights, optimizer state and step counters are
    untouched.

    Runs eagerly outside ``strategy.run``, like :func:`embed_dataset`, so every replica (and
    every worker, which reads the same batches) ends up with the same statistics.

    Args:
        embedding_model: the Keras embedding model (image, text or multimodal tower).
        dataset: batched, un-augmented training data (a dict per batch).
        kind: ``image``, ``text`` or ``multimodal``: which inputs the model takes.
        batches: how many batches to average over.

    Returns:
        The number of batches actually used (fewer when the dataset is shorter).
    """
    # Keras' walk over every tracked sublayer: unlike ``model.layers`` it also reaches layers
    # held inside custom layers (the Dropout of a keras-hub transformer block, for instance).
    norm_layers = [
        layer for layer in embedding_model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if not norm_layers or batches <= 0:
        return 0
    dropout_layers = [
        layer for layer in embedding_model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.Dropout)
    ]
    saved_momenta = [layer.momentum for layer in norm_layers]
    saved_rates = [layer.rate for layer in dropout_layers]
    names = input_names(kind)
    used = 0
    try:
        for layer in dropout_layers:
            layer.rate = 0.0
        for batch in dataset.take(batches):
            # momentum k / (k + 1) makes the moving value the running mean of the k + 1
            # batch statistics seen so far (the first batch replaces the old value outright).
            for layer in norm_layers:
                layer.momentum = used / (used + 1.0)
            embedding_model({key: batch[key] for key in names}, training=True)
            used += 1
    finally:
        for layer, momentum in zip(norm_layers, saved_momenta):
            layer.momentum = momentum
        for layer, rate in zip(dropout_layers, saved_rates):
            layer.rate = rate
    return used


def threshold_sweep(
    embeddings: np.ndarray, labels: np.ndarray, thresholds=VALIDATION_THRESHOLDS
) -> dict:
    """Mean F1 of cosine-threshold matching at each threshold, and the best one.

    Each posting matches the (up to 50) neighbours whose cosine is >= the threshold, itself
    included; F1 is the Kaggle mean F1 against the label groups.
    """

    neighbours = top_k_neighbours(embeddings, k=min(VALIDATION_NEIGHBOURS, len(embeddings)))
    sweep = []
    for threshold in thresholds:
        matches = matches_from_neighbours(neighbours, float(threshold))
        sweep.append((float(threshold), float(mean_f1_from_matches(matches, labels))))
    best_threshold, best_f1 = max(sweep, key=lambda item: (item[1], -item[0]))
    return {
        "best_threshold": best_threshold,
        "best_f1": best_f1,
        "sweep": [{"threshold": t, "f1": f} for t, f in sweep],
        "postings": int(len(labels)),
    }


# ----------------------------------------------------------------------------------------------
# Workdir state
# ----------------------------------------------------------------------------------------------


def _get_path(config: RunConfig, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _write_json(path: Path, payload) -> None:
    write_json_atomic(path, payload)


def _read_json(path: Path, default=None):
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(
            f"{path} is not valid JSON ({error}); delete it or pass --overwrite-workdir"
        ) from None


def clear_workdir(workdir: Path) -> None:
    """Delete what a previous run wrote into ``workdir`` (only the files this module writes)."""
    for name in WORKDIR_OUTPUTS:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def check_resumable(workdir: Path, config: RunConfig, num_classes: int) -> bool:
    """True when ``workdir`` holds a run to resume; UserError when it holds an incompatible one."""
    saved_path = workdir / CONFIG_FILE
    if not saved_path.is_file():
        return False
    saved = RunConfig.load(saved_path)
    kind = config.model.kind
    relevant = [
        key
        for key in STRUCTURAL_KEYS
        if not (key.startswith("model.image.") and kind == "text")
        and not (key.startswith("model.text.") and kind == "image")
        and not (key == "data.image_size" and kind == "text")
    ]
    differences = [
        f"{key}: {_get_path(saved, key)!r} in the workdir, {_get_path(config, key)!r} now"
        for key in relevant
        if _get_path(saved, key) != _get_path(config, key)
    ]
    if differences:
        raise UserError(
            f"{workdir} holds a different run ({'; '.join(differences)}): use another --workdir "
            "or pass --overwrite-workdir to delete that run and start over"
        )
    state = _read_json(workdir / RUN_STATE_FILE, {}) or {}
    saved_classes = state.get("num_classes")
    if saved_classes is not None and saved_classes != num_classes:
        raise UserError(
            f"the data {config.data.tfrecords} has {num_classes} label groups but the model in "
            f"{workdir} was trained with {saved_classes}: its ArcFace head cannot be reused. Use "
            "another --workdir, or pass --overwrite-workdir to start over"
        )
    changed = [
        key
        for key, value in _flatten(config.to_dict()).items()
        if _flatten(saved.to_dict()).get(key) != value
    ]
    if changed:
        print(f"resuming {workdir} with changed settings: {', '.join(changed)}", file=sys.stderr)
    return True


def _flatten(payload: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in payload.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _restore(checkpoint, path: str, what: str) -> None:
    """Restore a checkpoint; an unreadable or mismatching one is a UserError naming it."""

    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except Exception as error:  # a damaged file fails in many ways (OpError,
        # IndexError "Read less bytes than requested", DecodeError, AssertionError, ...)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise UserError(
            f"cannot restore the {what} checkpoint {path} (files {path}.index, "
            f"{path}.data-*): {first_line}. Delete it to fall back to an older one, or pass "
            "--overwrite-workdir to start the run over"
        ) from None


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


@dataclass
class DataFacts:
    """What the manifest says about the training data."""

    directory: str
    manifest: dict
    num_classes: int
    num_folds: int
    train_folds_excluded: list[int] | None
    validation_folds: list[int] | None
    train_examples: int
    validation_examples: int
    label_counts: list[int] = field(default_factory=list)


def read_data_facts(config: RunConfig) -> DataFacts:
    """Load the manifest of ``config.data.tfrecords`` and check it can train ``config``."""

    directory = config.data.tfrecords
    if not directory:
        raise UserError("no training data: pass --data TFRECORD_DIR")
    manifest = load_manifest(directory)
    if not manifest.get("has_labels"):
        raise UserError(f"{directory} has no labels (a test set): training needs label_group")
    if config.model.kind in ("image", "multimodal") and not manifest.get("has_images"):
        raise UserError(
            f"{directory} is text-only (converted without images): train --model text on it"
        )
    num_classes = int(manifest["num_labels"])
    num_folds = int(manifest.get("num_folds", 0))
    fold = config.data.validation_fold
    if fold >= 0:
        if num_folds < 2:
            raise UserError(
                f"{directory} has {num_folds} folds: validation needs at least 2 "
                "(convert with --folds, or train on everything with --validation-fold -1)"
            )
        if fold >= num_folds:
            raise UserError(
                f"--validation-fold {fold} is out of range: {directory} has folds "
                f"0..{num_folds - 1}"
            )
        excluded, validation = [fold], [fold]
        train_examples = dataset_size(manifest, exclude_folds=excluded)
        validation_examples = dataset_size(manifest, folds=validation)
    else:
        excluded, validation = None, None
        train_examples = dataset_size(manifest)
        validation_examples = 0
    return DataFacts(
        directory=directory,
        manifest=manifest,
        num_classes=num_classes,
        num_folds=num_folds,
        train_folds_excluded=excluded,
        validation_folds=validation,
        train_examples=train_examples,
        validation_examples=validation_examples,
        label_counts=list(manifest.get("label_counts") or []),
    )


def _training_titles(facts: DataFacts) -> list[str]:
    dataset = make_dataset(
        facts.directory,
        training=False,
        global_batch_size=1024,
        image_size=None,
        exclude_folds=facts.train_folds_excluded,
        with_image=False,
        repeat=False,
    )
    titles = []
    for batch in dataset:
        titles.extend(title.decode("utf-8", "replace") for title in batch["title"].numpy())
    return titles


def _model_batch(kind: str):
    """Keep only what the replicas need: strings cannot be sent to TPUs, and are not used."""
    keys = input_names(kind) + ("label",)
    return lambda batch: {key: batch[key] for key in keys}


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


class _StopRequest:
    """Turns SIGTERM (preemption, ``kill``) into a checkpoint at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True
        print("SIGTERM: saving a checkpoint and stopping", file=sys.stderr, flush=True)

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _write_scalar(name: str, value: float, step: int) -> None:
    """``tf.summary.scalar`` without the tensorboard package (TF does not depend on it): the
    same tensor with the "scalars" plugin metadata, which TensorBoard reads as a scalar."""

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR,
    )
    tf.summary.write(name, tf.constant(float(value), tf.float32), step=step, metadata=metadata)


class _Log:
    """Console + history.json + TensorBoard; only the chief writes files."""

    def __init__(self, workdir: Path, chief: bool):
        self.workdir = workdir
        self.chief = chief
        self.history = _read_json(workdir / HISTORY_FILE, None) or {"starts": [], "epochs": []}
        if chief:
            self.writer = tf.summary.create_file_writer(str(workdir / TENSORBOARD_DIR))
        else:
            self.writer = tf.summary.create_noop_writer()

    def say(self, message: str) -> None:
        if self.chief:
            print(message, flush=True)

    def trim_to(self, completed_epochs: int) -> None:
        """Drop epoch records the restored checkpoint does not cover (killed after writing)."""
        self.history["epochs"] = [
            record for record in self.history["epochs"] if record["epoch"] <= completed_epochs
        ]

    def record_start(self, record: dict) -> None:
        self.history["starts"].append(record)
        self._save()

    def record_epoch(self, record: dict) -> None:
        self.history["epochs"] = [
            existing for existing in self.history["epochs"] if existing["epoch"] != record["epoch"]
        ] + [record]
        self._save()

        with self.writer.as_default():
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    _write_scalar(key, value, record["epoch"])
            self.writer.flush()

    def _save(self) -> None:
        if self.chief:
            _write_json(self.workdir / HISTORY_FILE, self.history)


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
    run_name = config.name or workdir.name
    if export_dir is None:
        export_dir = Path("saved_models") / run_name

    if strategy is None:
        strategy = distribute.get_strategy(config.train.strategy, tpu_address=config.train.tpu)
    if config.train.jit_compile:
        _check_jit_supported(strategy)
    chief = distribute.is_chief(strategy)
    facts = read_data_facts(config)
    if chief and overwrite_workdir and workdir.exists():
        clear_workdir(workdir)
    distribute.barrier(strategy)
    resuming = check_resumable(workdir, config, facts.num_classes)

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
        if config.model.kind in ("text", "multimodal"):
            text_preprocessor = _text_preprocessor(
                config, facts, workdir, strategy, chief=chief, resuming=resuming
            )
        vocabulary_size = getattr(text_preprocessor, "vocabulary_size", None)
        with strategy.scope():
            # A bad backbone, preset or weights file fails here, before config.json is written
            # (so fixing the flag and running again is not taken for a different run).
            embedding_model = build_embedding_model(
                config.model, image_size=config.data.image_size, vocabulary_size=vocabulary_size
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
            _write_json(
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
        run = _Run(
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
        metrics = run.fit()
        metrics.update(
            policy=policy_name,
            global_batch_size=global_batch_size,
            replicas=replicas,
            export_dir=None,
        )
        if export_dir != "" and chief and not run.stopped_early:
            metrics["export_dir"] = str(
                run.export(Path(export_dir), run_name, vocabulary_size, previous_policy)
            )
        if untrained_export_dir and chief and not run.stopped_early:
            metrics["untrained_export_dir"] = str(
                run.export(
                    Path(untrained_export_dir),
                    f"{run_name}_untrained",
                    vocabulary_size,
                    previous_policy,
                    untrained=True,
                )
            )
        if chief:
            _write_json(workdir / FINAL_METRICS_FILE, metrics)
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
            text, titles=_training_titles(facts), vocabulary_path=str(vocabulary_path)
        )
    # Every worker reads the chief's file, so all of them tokenize the same way.
    distribute.barrier(strategy)
    return build_title_preprocessor(text, vocabulary_path=str(vocabulary_path))


class _Run:
    """One training run's loop state (see :func:`train_and_evaluate`)."""

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
        self.log = _Log(workdir, chief)
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

    # -- checkpoints ---------------------------------------------------------------------------

    def _save(self, manager) -> None:
        manager.save(checkpoint_number=int(self.trainer.global_step.numpy()))
        if not self.chief:
            # MultiWorkerMirroredStrategy pattern: every worker saves, only the chief's copy stays.
            shutil.rmtree(self.write_root, ignore_errors=True)

    def _resume(self) -> None:
        latest = tf.train.latest_checkpoint(str(self.workdir / CHECKPOINT_DIR))
        if latest is None:
            return
        _restore(self.checkpoint, latest, "training")
        self.log.say(
            f"resumed from {latest}: epoch {int(self.trainer.epoch.numpy()) + 1}, step "
            f"{int(self.trainer.step_in_epoch.numpy())} of {self.steps_per_epoch}"
        )

    # -- data ------------------------------------------------------------------------------------

    def _train_iterator(self, epoch: int, skip_steps: int):
        config = self.config
        kind = config.model.kind
        with_image = kind in ("image", "multimodal")

        def dataset_fn(input_context):
            dataset = make_dataset(
                self.facts.directory,
                training=True,
                global_batch_size=self.global_batch_size,
                image_size=config.data.image_size if with_image else None,
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
            )
            dataset = dataset.map(_model_batch(kind))
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
        with_image = kind in ("image", "multimodal")
        return make_dataset(
            self.facts.directory,
            training=False,
            global_batch_size=self.global_batch_size,
            image_size=self.config.data.image_size if with_image else None,
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
        embeddings, labels = embed_dataset(
            self.trainer.embedding_model, self._validation_dataset(), self.config.model.kind
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
                _write_json(
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
        with _StopRequest() as stop:
            for epoch in range(start_epoch, epochs):
                last = self._train_epoch(epoch, start_step if epoch == start_epoch else 0, stop)
                if last is None:
                    self.stopped_early = True
                    break
        return self._summary(last or {}, untrained)

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
        while step < self.steps_per_epoch:
            chunk = min(self.steps_per_epoch - step, MAX_STEPS_PER_CALL)
            if every > 0:
                chunk = min(chunk, every - step % every)
            first_call = self.calls == 0
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
            step += chunk
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
                (every > 0 and step % every == 0) or stop.requested
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
                    _write_json(
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
        thresholds = _read_json(self.workdir / THRESHOLDS_FILE, None) if self.validate else None
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
        try:
            export_copy = build_embedding_model(
                self.config.model,
                load_pretrained_weights=False,
                image_size=self.config.data.image_size,
                vocabulary_size=vocabulary_size,
            )
            _restore(tf.train.Checkpoint(embedding_model=export_copy), checkpoint, checkpoint_dir)
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        thresholds = _read_json(self.workdir / thresholds_file, None) if self.validate else None
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
            image_size=self.config.data.image_size,
            text_preprocessor=self.text_preprocessor,
            metadata=metadata,
            config=self.config,
            thresholds=thresholds,
        )
        self.log.say(f"exported {'the untrained model ' if untrained else ''}{path}")
        return path


def _mean_over_workers(strategy, value: float) -> float:
    per_replica = strategy.run(lambda: tf.constant(value, tf.float32))
    total = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)
    return float(total.numpy())


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


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
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch size PER REPLICA; the global batch is this x replicas",
    )
    parser.add_argument("--image-size", type=int, default=None, help="image side in pixels")
    parser.add_argument("--embedding-dim", type=int, default=None)
    parser.add_argument(
        "--backbone",
        default=None,
        help="image backbone name (image, multimodal) or text preset name / "
        "local preset directory / 'scratch' (text)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="image backbone weights: imagenet | none | path to a .weights.h5",
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
    config.model.kind = args.model
    if args.tiny:
        config.override(tiny_overrides(args.model))
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
        tower = "text" if args.model == "text" else "image"
        named[f"model.{tower}.backbone"] = args.backbone
    if args.weights is not None:
        if args.model == "text":
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
