"""The distributed train step (:class:`Trainer`): forward/backward per replica, one all-reduce,
global-norm clipping, two AdamW optimizers (backbone and ArcFace head), float16 loss scaling,
optional XLA."""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from tf_shopee import distribute
from tf_shopee.errors import UserError
from tf_shopee.models.kind import ModelKind
from tf_shopee.training.optimization import (
    DynamicLossScale,
    all_finite,
    make_optimizer,
    make_warmup_cosine_schedule,
    scale_gradient,
)

# Steps run by one call of the compiled training function (Keras' steps_per_execution): fewer
# Python round trips, which matters on TPUs. Checkpoints and epoch ends also end a call.
MAX_STEPS_PER_CALL = 50

IMAGE_INPUTS = ("image",)
TEXT_INPUTS = ("token_ids", "padding_mask")


def input_names(kind: ModelKind) -> tuple[str, ...]:
    """The embedding model's input keys for a model kind."""
    kind = ModelKind(kind)
    return (IMAGE_INPUTS if kind.uses_images else ()) + (TEXT_INPUTS if kind.uses_titles else ())


def check_jit_supported(strategy) -> None:
    """Raise UserError where XLA cannot compile the step.

    XLA cannot compile a synchronised replica step on CPU-only mirrored strategies.

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

    Built inside ``strategy.scope()`` by :func:`tf_shopee.training.job.train_and_evaluate`;
    usable on its own (tests build one around any embedding/training model pair).

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
            check_jit_supported(strategy)

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
            gradients = [scale_gradient(g, inverse_scale) for g in gradients]
            finite = all_finite(gradients)
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
