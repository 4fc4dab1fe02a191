"""ArcFace layer: NumPy reference, margin warm-up, serialisation, training, mixed precision, XLA,
and the step counter under MirroredStrategy."""

import math

import numpy as np
import pytest
import tensorflow as tf

# MirroredStrategy needs two logical CPU devices, which can only be configured before the
# TensorFlow runtime starts: do it at import (collection) time, check at test time.
try:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
    )
except RuntimeError:
    pass  # the runtime already started (another test module configured it first)

import keras  # noqa: E402

from tf_shopee.models.arc_face import ArcFace  # noqa: E402

NUM_CLASSES = 6
EMBEDDING_DIM = 8


def reference_logits(embeddings, kernel, labels, *, scale, margin, easy_margin=False,
                     label_smoothing=0.0, training=True):
    """ArcFace written from the paper with arccos, independently of the layer's identities."""
    embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    kernel = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    cosine = np.clip(embeddings @ kernel, -1 + 1e-7, 1 - 1e-7).astype(np.float64)
    if not training or labels is None:
        return scale * cosine
    theta = np.arccos(cosine)
    with_margin = np.cos(theta + margin)
    if easy_margin:
        target = np.where(cosine > 0, with_margin, cosine)
    else:
        fallback = cosine - math.sin(margin) * margin
        target = np.where(theta + margin <= math.pi, with_margin, fallback)
    one_hot = np.eye(NUM_CLASSES)[labels]
    mask = (1 - label_smoothing) * one_hot + label_smoothing / NUM_CLASSES
    return scale * (mask * target + (1 - mask) * cosine)


def make_batch(seed=0, batch=8):
    """Embeddings, class centres and labels where half the rows have theta + m > pi."""
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(batch, EMBEDDING_DIM)).astype(np.float32)
    kernel = rng.normal(size=(EMBEDDING_DIM, NUM_CLASSES)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=batch).astype(np.int32)
    # Odd rows: put the true class centre almost opposite the embedding (theta close to pi).
    for row in range(1, batch, 2):
        kernel[:, labels[row]] = -embeddings[row] + 0.01 * rng.normal(size=EMBEDDING_DIM)
        labels[row + 1:][labels[row + 1:] == labels[row]] = (labels[row] + 1) % NUM_CLASSES
    return embeddings, kernel, labels


def built_layer(kernel, **kwargs):
    layer = ArcFace(NUM_CLASSES, **kwargs)
    layer.build((None, EMBEDDING_DIM))
    layer.kernel.assign(kernel)
    return layer


@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_matches_numpy_reference_including_theta_plus_margin_past_pi(easy_margin, label_smoothing):
    embeddings, kernel, labels = make_batch()
    margin = 0.5
    layer = built_layer(kernel, scale=30.0, margin=margin, easy_margin=easy_margin,
                        label_smoothing=label_smoothing)
    logits = layer(embeddings, labels, training=True).numpy()
    expected = reference_logits(embeddings, kernel, labels, scale=30.0, margin=margin,
                                easy_margin=easy_margin, label_smoothing=label_smoothing)

    normalised = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    centres = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    true_theta = np.arccos(np.sum(normalised * centres[:, labels].T, axis=1))
    assert (true_theta + margin > math.pi).sum() >= 2, "the fallback region must be exercised"
    assert (true_theta + margin < math.pi / 2).sum() >= 1, "the ordinary region too"
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_margin_changes_only_the_true_class_logit():
    embeddings, kernel, labels = make_batch(seed=3)
    layer = built_layer(kernel, scale=10.0, margin=0.3)
    with_margin = layer(embeddings, labels, training=True).numpy()
    plain = layer(embeddings, labels, training=False).numpy()
    changed = ~np.isclose(with_margin, plain, atol=1e-6)
    np.testing.assert_array_equal(changed, np.eye(NUM_CLASSES, dtype=bool)[labels])
    rows = np.arange(len(labels))
    assert np.all(with_margin[rows, labels] < plain[rows, labels])


def test_sub_centers_use_each_class_nearest_centre():
    """Sub-center ArcFace equals plain ArcFace on the kernel of each class's nearest sub-centre
    (columns class-major: class j owns columns j*k .. j*k + k - 1)."""
    k = 3
    embeddings, kernel, labels = make_batch(seed=5)
    rng = np.random.default_rng(5)
    sub_kernel = rng.normal(size=(EMBEDDING_DIM, NUM_CLASSES * k)).astype(np.float32)
    layer = ArcFace(NUM_CLASSES, scale=30.0, margin=0.5, sub_centers=k)
    layer.build((None, EMBEDDING_DIM))
    assert tuple(layer.kernel.shape) == (EMBEDDING_DIM, NUM_CLASSES * k)
    layer.kernel.assign(sub_kernel)
    logits = layer(embeddings, labels, training=True).numpy()
    assert logits.shape == (len(labels), NUM_CLASSES)
    normalised = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    centres = sub_kernel / np.linalg.norm(sub_kernel, axis=0, keepdims=True)
    cosines = (normalised @ centres).reshape(len(labels), NUM_CLASSES, k)
    for row, label in enumerate(labels):
        nearest = sub_kernel[:, label * k + int(np.argmax(cosines[row, label]))]
        expected = reference_logits(embeddings[row:row + 1], np.stack(
            [sub_kernel[:, c * k + int(np.argmax(cosines[row, c]))] if c != label else nearest
             for c in range(NUM_CLASSES)], axis=1), labels[row:row + 1], scale=30.0, margin=0.5)
        np.testing.assert_allclose(logits[row], expected[0], rtol=1e-4, atol=1e-4)
    assert ArcFace.from_config(layer.get_config()).sub_centers == k
    with pytest.raises(ValueError, match="sub_centers"):
        ArcFace(NUM_CLASSES, sub_centers=0)


def test_inference_returns_scaled_cosine_without_counting_steps():
    embeddings, kernel, labels = make_batch(seed=1)
    layer = built_layer(kernel, scale=16.0, margin=0.4)
    expected = reference_logits(embeddings, kernel, None, scale=16.0, margin=0.4)
    np.testing.assert_allclose(layer(embeddings).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer(embeddings, labels, training=False).numpy(), expected,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer(embeddings, training=True).numpy(), expected,
                               rtol=1e-5, atol=1e-5)
    assert int(layer.step.numpy()) == 0


def test_margin_warms_up_linearly_then_stays():
    embeddings, kernel, labels = make_batch(seed=2)
    layer = built_layer(kernel, scale=30.0, margin=0.5, initial_margin=0.1, warmup_steps=4)
    expected_margins = [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5]
    for step, margin in enumerate(expected_margins):
        assert int(layer.step.numpy()) == step
        assert float(layer.current_margin()) == pytest.approx(margin, abs=1e-6)
        logits = layer(embeddings, labels, training=True).numpy()
        expected = reference_logits(embeddings, kernel, labels, scale=30.0, margin=margin)
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert float(layer.current_margin(step=2)) == pytest.approx(0.3, abs=1e-6)


def test_no_warmup_when_initial_margin_is_absent_or_steps_zero():
    assert float(ArcFace(3, margin=0.4).current_margin(step=0)) == pytest.approx(0.4)
    assert float(ArcFace(3, margin=0.4, initial_margin=0.1).current_margin(step=0)) == (
        pytest.approx(0.4)
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 0},
        {"num_classes": 2.5},
        {"num_classes": 3, "scale": 0.0},
        {"num_classes": 3, "margin": -0.1},
        {"num_classes": 3, "margin": 2.0},
        {"num_classes": 3, "initial_margin": 1.6},
        {"num_classes": 3, "warmup_steps": -1},
        {"num_classes": 3, "label_smoothing": 1.0},
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        ArcFace(**kwargs)


def test_config_round_trip_and_keras_saving(tmp_path):
    layer = ArcFace(NUM_CLASSES, scale=20.0, margin=0.35, initial_margin=0.1, warmup_steps=7,
                    easy_margin=True, label_smoothing=0.05, name="arc_face")
    config = layer.get_config()
    clone = ArcFace.from_config(config)
    assert clone.get_config() == config
    for key in ("num_classes", "scale", "margin", "initial_margin", "warmup_steps",
                "easy_margin", "label_smoothing"):
        assert getattr(clone, key) == getattr(layer, key)

    embeddings_input = keras.Input((EMBEDDING_DIM,), name="embeddings")
    labels_input = keras.Input((), dtype="int32", name="label")
    model = keras.Model({"embeddings": embeddings_input, "label": labels_input},
                        layer(embeddings_input, labels_input))
    embeddings, _, labels = make_batch(seed=4)
    layer(embeddings, labels, training=True)  # advance the step counter: it must be saved
    path = tmp_path / "arc_face.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    loaded_layer = loaded.get_layer("arc_face")
    assert isinstance(loaded_layer, ArcFace)
    assert loaded_layer.get_config() == config
    assert int(loaded_layer.step.numpy()) == 1
    inputs = {"embeddings": embeddings, "label": labels}
    np.testing.assert_allclose(loaded(inputs).numpy(), model(inputs).numpy(), rtol=1e-6)


def test_one_fit_step_reduces_the_loss():
    embeddings, _, labels = make_batch(seed=5, batch=16)
    keras.utils.set_random_seed(0)
    layer = ArcFace(NUM_CLASSES, scale=30.0, margin=0.5)
    embeddings_input = keras.Input((EMBEDDING_DIM,), name="embeddings")
    labels_input = keras.Input((), dtype="int32", name="label")
    hidden = keras.layers.Dense(EMBEDDING_DIM, name="projection")(embeddings_input)
    model = keras.Model({"embeddings": embeddings_input, "label": labels_input},
                        layer(hidden, labels_input))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    inputs = {"embeddings": embeddings, "label": labels}
    before = float(loss(labels, model(inputs, training=True)))
    model.train_on_batch(inputs, labels)
    after = float(loss(labels, model(inputs, training=True)))
    assert after < before
    assert int(layer.step.numpy()) == 3  # two direct training calls and one fit step


def test_logits_are_float32_under_mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        layer = ArcFace(NUM_CLASSES)
        assert layer.compute_dtype == "float32"
        embeddings = tf.random.normal((4, EMBEDDING_DIM), dtype=tf.bfloat16)
        logits = layer(embeddings, tf.constant([0, 1, 2, 3]), training=True)
        assert logits.dtype == tf.float32
        assert layer.kernel.dtype == "float32"
        explicit = ArcFace(NUM_CLASSES, dtype="mixed_bfloat16")
        assert explicit.compute_dtype == "bfloat16"  # an explicit dtype is respected
    finally:
        keras.config.set_dtype_policy(previous)


def test_runs_inside_jit_compiled_function_and_matches_eager():
    embeddings, kernel, labels = make_batch(seed=6)
    eager_layer = built_layer(kernel, margin=0.5, initial_margin=0.2, warmup_steps=3)
    compiled_layer = built_layer(kernel, margin=0.5, initial_margin=0.2, warmup_steps=3)

    @tf.function(jit_compile=True)
    def compiled(batch_embeddings, batch_labels):
        return compiled_layer(batch_embeddings, batch_labels, training=True)

    for _ in range(2):
        np.testing.assert_allclose(compiled(embeddings, labels).numpy(),
                                   eager_layer(embeddings, labels, training=True).numpy(),
                                   rtol=1e-4, atol=1e-4)
    assert int(compiled_layer.step.numpy()) == 2


def test_step_counter_advances_once_per_step_under_mirrored_strategy():
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("two logical CPU devices could not be configured in this session")
    # ReductionToOneDevice: the default collective all-reduce clashes with the collective keys
    # of another MirroredStrategy created earlier in the same pytest process.
    strategy = tf.distribute.MirroredStrategy(
        [device.name for device in devices[:2]],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )
    embeddings, _, labels = make_batch(seed=7, batch=8)
    with strategy.scope():
        embeddings_input = keras.Input((EMBEDDING_DIM,), name="embeddings")
        labels_input = keras.Input((), dtype="int32", name="label")
        layer = ArcFace(NUM_CLASSES, margin=0.5, initial_margin=0.1, warmup_steps=10,
                        name="arc_face")
        model = keras.Model({"embeddings": embeddings_input, "label": labels_input},
                            layer(keras.layers.Dense(EMBEDDING_DIM)(embeddings_input),
                                  labels_input))
        model.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dataset = tf.data.Dataset.from_tensor_slices(
        ({"embeddings": embeddings, "label": labels}, labels)
    ).batch(4, drop_remainder=True)
    history = model.fit(dataset, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert int(layer.step.numpy()) == 4  # 2 epochs x 2 global steps, not x 2 replicas
    assert int(model.optimizer.iterations.numpy()) == 4
