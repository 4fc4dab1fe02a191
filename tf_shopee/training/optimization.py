"""Optimisation pieces of the training loop: learning-rate scaling and schedule, AdamW on
gradients already reduced over replicas, and dynamic loss scaling for float16."""

from __future__ import annotations

import math

import keras
import tensorflow as tf


def scaled_learning_rate(base_learning_rate: float, global_batch_size: int) -> float:
    """``train.learning_rate`` is for a global batch of 64; scale it linearly (Goyal et al.)."""
    return base_learning_rate * global_batch_size / 64.0


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


def scale_gradient(gradient, factor):
    """``gradient * factor`` for dense tensors and ``IndexedSlices`` alike."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(gradient.values * factor, gradient.indices, gradient.dense_shape)
    return gradient * factor


def all_finite(gradients):
    """A scalar bool tensor: every gradient (dense or sparse) is finite."""
    checks = [
        tf.reduce_all(tf.math.is_finite(g.values if isinstance(g, tf.IndexedSlices) else g))
        for g in gradients
    ]
    return tf.reduce_all(tf.stack(checks))
