"""ArcFace: the additive angular margin classification head used to train embedding models.

The head exists only while training. It turns an embedding into class logits
``scale * cos(theta_j)`` for every class ``j``, except for the true class ``y`` whose logit is
``scale * cos(theta_y + margin)``: the embedding has to sit ``margin`` radians closer to its class
centre than to any other one, which is what makes cosine similarity between embeddings a good
match score afterwards.
"""

from __future__ import annotations

import math

import keras
from keras import ops

# cos(theta) is clipped to [-1 + eps, 1 - eps]: the derivative of sqrt(1 - cos^2) is infinite at
# |cos| = 1, and float32 matmuls of unit vectors can land a hair outside [-1, 1].
_COSINE_EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="tf_shopee")
class ArcFace(keras.layers.Layer):
    """Additive angular margin (ArcFace) logits for training embeddings.

    Both the embeddings and the class centres (the layer's ``kernel``, one unit column per class)
    are L2-normalised, so ``cos(theta) = embedding . centre``. While training with labels the
    true class gets ``cos(theta + m)``; when ``theta + m`` would pass pi (where ``cos(theta + m)``
    stops decreasing in theta) the paper's fallback ``cos(theta) - m * sin(m)`` is used instead,
    or with ``easy_margin`` the margin is applied only where ``cos(theta) > 0``.

    The margin can warm up linearly from ``initial_margin`` to ``margin`` over ``warmup_steps``
    training calls: ArcFace often fails to converge when started at m = 0.5, and the 1st-place
    Shopee solution raised its margin during training. The step counter is a non-trainable
    int64 weight (``step``) that the layer increments by one on every training call, the way
    BatchNormalization updates its moving statistics. Keeping the counter inside the layer
    (instead of reading ``optimizer.iterations``) means the schedule works the same in
    ``fit``, in a custom ``tf.function`` loop and under ``jit_compile``, needs no optimizer
    reference, and is saved and restored with the model's weights, so a resumed run continues
    its warm-up. Its aggregation is ``"only_first_replica"``: under ``MirroredStrategy`` every
    replica adds 1 but the counter advances once per global step, exactly like
    ``optimizer.iterations``. A training step that calls the layer twice advances it twice.

    Label smoothing follows the Shopee ``ArcMarginProduct(ls_eps=...)`` head: the one-hot mask
    that chooses between ``cos(theta + m)`` and ``cos(theta)`` becomes
    ``(1 - label_smoothing) * one_hot + label_smoothing / num_classes``, so the logits already
    carry the smoothing and the loss is a plain sparse categorical cross-entropy on logits.

    Sub-center ArcFace keeps ``sub_centers`` centres per class and uses, for each class, the one
    nearest the embedding (``cos(theta_j) = max_k embedding . centre_jk``): a class whose photos
    come in a few distinct looks (a pile of apples, one apple in a hand) need not squeeze them onto
    one centre, and a mislabelled photo settles on a sub-centre of its own instead of pulling the
    class's only centre towards it.

    Without labels, or when not training, the layer returns plain scaled cosine logits
    ``scale * cos(theta)`` (no margin): validation losses are then comparable across epochs.

    The layer computes in float32 unless a ``dtype`` is given explicitly, also under a
    ``mixed_float16``/``mixed_bfloat16`` global policy: the margin arithmetic on cosines near 1
    loses all precision in 16-bit floats, and the softmax over many classes wants float32 logits.

    Args:
        num_classes: int. Number of classes (label groups); the width of the logits.
        scale: float. The ``s`` of the paper: logits are ``scale * cosine``. Defaults to 30.
        margin: float. The additive angular margin ``m`` in radians, in ``[0, pi/2)``, reached
            after the warm-up. Defaults to 0.5.
        initial_margin: float or None. The margin at step 0; it rises linearly to ``margin``
            over ``warmup_steps``. None (the default) means ``margin`` from the start.
        warmup_steps: int. Number of training calls over which the margin warms up; 0 disables
            the warm-up. Defaults to 0.
        easy_margin: bool. Apply the margin only where ``cos(theta) > 0`` instead of using the
            ``theta + m > pi`` fallback. Defaults to False.
        label_smoothing: float in ``[0, 1)``. Smoothing of the margin mask (see above).
            Defaults to 0.
        sub_centers: int. Centres per class (sub-center ArcFace); 1 is plain ArcFace.
            Defaults to 1.
        kernel_initializer: initializer of the class centres. Defaults to ``"glorot_uniform"``.
        **kwargs: other keyword arguments passed to ``keras.layers.Layer``, including ``name``
            and ``dtype``.

    Call arguments:
        embeddings: float tensor ``[batch, embedding_dim]``. Need not be normalised.
        labels: optional int tensor ``[batch]`` (or ``[batch, 1]``) of class indices in
            ``[0, num_classes)``. The margin is applied only when labels are given and
            ``training`` is true.
        training: bool. Whether the layer is called in training mode; the margin step counter
            advances only then.

    Returns:
        float32 logits ``[batch, num_classes]``.

    Example:

    ```python
    embeddings = keras.Input((64,))
    labels = keras.Input((), dtype="int32")
    logits = ArcFace(num_classes=100, initial_margin=0.2, warmup_steps=1000)(embeddings, labels)
    model = keras.Model([embeddings, labels], logits)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ```

    Reference:
        - [Deng et al., 2019. ArcFace: Additive Angular Margin Loss for Deep Face Recognition](
          https://arxiv.org/abs/1801.07698) (CVPR 2019)
        - [Deng et al., 2020. Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy
          Web Faces](https://www.ecva.net/papers/eccv_2020/papers_ECCV/papers/123560715.pdf)
          (ECCV 2020)
    """

    def __init__(
        self,
        num_classes,
        scale=30.0,
        margin=0.5,
        initial_margin=None,
        warmup_steps=0,
        easy_margin=False,
        label_smoothing=0.0,
        kernel_initializer="glorot_uniform",
        sub_centers=1,
        **kwargs,
    ):
        # float32 by default even under a mixed global policy (see the class docstring).
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int. Received: {num_classes!r}")
        if not scale > 0:
            raise ValueError(f"`scale` must be positive. Received: scale={scale!r}")
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"`margin` must be in [0, pi/2). Received: margin={margin!r}")
        if initial_margin is not None and not 0.0 <= initial_margin < math.pi / 2:
            raise ValueError(
                f"`initial_margin` must be None or in [0, pi/2). Received: {initial_margin!r}"
            )
        if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ValueError(
                f"`warmup_steps` must be a non-negative int. Received: {warmup_steps!r}"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"`label_smoothing` must be in [0, 1). Received: {label_smoothing!r}"
            )
        if isinstance(sub_centers, bool) or not isinstance(sub_centers, int) or sub_centers < 1:
            raise ValueError(f"`sub_centers` must be a positive int. Received: {sub_centers!r}")
        self.num_classes = num_classes
        self.sub_centers = sub_centers
        self.scale = float(scale)
        self.margin = float(margin)
        self.initial_margin = None if initial_margin is None else float(initial_margin)
        self.warmup_steps = int(warmup_steps)
        self.easy_margin = bool(easy_margin)
        self.label_smoothing = float(label_smoothing)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, embeddings_shape, labels_shape=None):
        embedding_dim = embeddings_shape[-1]
        if embedding_dim is None:
            raise ValueError("ArcFace needs a known embedding dimension (last axis).")
        self.kernel = self.add_weight(
            name="kernel",
            shape=(embedding_dim, self.num_classes * self.sub_centers),
            initializer=self.kernel_initializer,
            trainable=True,
        )
        self.step = self.add_weight(
            name="step",
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )

    def current_margin(self, step=None):
        """The margin used at ``step`` (default: the layer's current step) as a float32 tensor."""
        if step is None:
            step = self.step
        start = self.margin if self.initial_margin is None else self.initial_margin
        if self.warmup_steps == 0 or start == self.margin:
            return ops.convert_to_tensor(self.margin, dtype="float32")
        progress = ops.minimum(ops.cast(step, "float32") / float(self.warmup_steps), 1.0)
        return start + (self.margin - start) * progress

    def call(self, embeddings, labels=None, training=None):
        embeddings = ops.cast(embeddings, self.compute_dtype)
        kernel = ops.cast(self.kernel, self.compute_dtype)
        cosine = ops.matmul(
            _l2_normalize(embeddings, axis=-1), _l2_normalize(kernel, axis=0)
        )
        if self.sub_centers > 1:
            # Columns are class-major: class j's sub-centres are columns j*k .. j*k + k - 1.
            cosine = ops.max(
                ops.reshape(cosine, (-1, self.num_classes, self.sub_centers)), axis=-1
            )
        cosine = ops.clip(cosine, -1.0 + _COSINE_EPSILON, 1.0 - _COSINE_EPSILON)
        if labels is None or not training:
            return self.scale * cosine

        margin = ops.cast(self.current_margin(), self.compute_dtype)
        self.step.assign_add(ops.cast(1, "int64"))
        cos_margin = ops.cos(margin)
        sin_margin = ops.sin(margin)
        sine = ops.sqrt(ops.maximum(1.0 - ops.square(cosine), 0.0))
        cosine_plus_margin = cosine * cos_margin - sine * sin_margin  # cos(theta + m)
        if self.easy_margin:
            target = ops.where(cosine > 0.0, cosine_plus_margin, cosine)
        else:
            # theta + m > pi  <=>  cos(theta) < cos(pi - m): past that point cos(theta + m)
            # would increase with theta, so fall back to the linear cos(theta) - m sin(m).
            threshold = ops.cos(math.pi - margin)
            fallback = cosine - ops.sin(math.pi - margin) * margin
            target = ops.where(cosine > threshold, cosine_plus_margin, fallback)

        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        mask = ops.one_hot(labels, self.num_classes, dtype=self.compute_dtype)
        if self.label_smoothing > 0.0:
            mask = (1.0 - self.label_smoothing) * mask + self.label_smoothing / self.num_classes
        return self.scale * (mask * target + (1.0 - mask) * cosine)

    def compute_output_shape(self, embeddings_shape, labels_shape=None):
        return tuple(embeddings_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "scale": self.scale,
                "margin": self.margin,
                "initial_margin": self.initial_margin,
                "warmup_steps": self.warmup_steps,
                "easy_margin": self.easy_margin,
                "label_smoothing": self.label_smoothing,
                "sub_centers": self.sub_centers,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config


def _l2_normalize(values, axis):
    # keras.ops.normalize exists but its epsilon handling differs across Keras versions; this
    # is the x / max(|x|, eps) form every backend agrees on.
    norm = ops.sqrt(ops.sum(ops.square(values), axis=axis, keepdims=True))
    return values / ops.maximum(norm, 1e-12)
