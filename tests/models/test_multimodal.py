"""Model entry points (tf_shopee.models.build_embedding_model / build_training_model) for the
image, text and multimodal kinds, the multimodal model under MirroredStrategy, and config errors.
Tiny towers only: efficientnet_tiny at 64 px and a 2-layer BERT of width 16."""

import keras
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

from tf_shopee.config import RunConfig, tiny_overrides  # noqa: E402
from tf_shopee.errors import UserError  # noqa: E402
from tf_shopee.models import (  # noqa: E402
    build_embedding_model,
    build_training_model,
    margin_warmup_steps,
)
from tf_shopee.models.arc_face import ArcFace  # noqa: E402

IMAGE_SIZE = 64
SEQUENCE_LENGTH = 12
VOCABULARY_SIZE = 50
NUM_CLASSES = 5
EMBEDDING_DIM = 16
INPUT_NAMES = {
    "image": {"image"},
    "text": {"token_ids", "padding_mask"},
    "multimodal": {"image", "token_ids", "padding_mask"},
}


def model_config(kind, *extra):
    config = RunConfig().override(tiny_overrides(kind))
    config.override([
        f"model.kind={kind}",
        f"model.embedding_dim={EMBEDDING_DIM}",
        "model.image.dropout=0",
        f"model.text.sequence_length={SEQUENCE_LENGTH}",
        "model.text.hidden_dim=16",
        "model.text.intermediate_dim=32",
        "model.text.num_heads=2",
        "model.text.num_layers=2",
        "model.arc_face.initial_margin=0.1",
        "model.arc_face.margin_warmup_epochs=2",
        *extra,
    ])
    return config.validate().model


def make_batch(kind, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    features = {}
    if kind in ("image", "multimodal"):
        features["image"] = rng.uniform(0, 255, (batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(
            np.float32
        )
    if kind in ("text", "multimodal"):
        lengths = rng.integers(1, SEQUENCE_LENGTH + 1, size=batch)
        mask = (np.arange(SEQUENCE_LENGTH)[None, :] < lengths[:, None]).astype(np.int32)
        features["token_ids"] = (rng.integers(1, VOCABULARY_SIZE, (batch, SEQUENCE_LENGTH))
                                 * mask).astype(np.int32)
        features["padding_mask"] = mask
    labels = (np.arange(batch) % NUM_CLASSES).astype(np.int32)
    return features, labels


def build_both(kind, *extra, steps_per_epoch=3):
    config = model_config(kind, *extra)
    embedding_model = build_embedding_model(config, image_size=IMAGE_SIZE,
                                            vocabulary_size=VOCABULARY_SIZE)
    training_model = build_training_model(embedding_model, config, num_classes=NUM_CLASSES,
                                          steps_per_epoch=steps_per_epoch)
    return config, embedding_model, training_model


@pytest.mark.parametrize("kind", ["image", "text", "multimodal"])
def test_entry_points_build_each_kind_and_one_fit_step_trains_the_shared_embedding(kind):
    keras.utils.set_random_seed(0)
    config, embedding_model, training_model = build_both(kind)

    assert set(embedding_model.input) == INPUT_NAMES[kind]
    assert set(training_model.input) == INPUT_NAMES[kind] | {"label"}
    assert training_model.input["label"].dtype == "int32"
    features, labels = make_batch(kind)
    embeddings = embedding_model(features, training=False)
    assert embeddings.shape == (4, EMBEDDING_DIM) and embeddings.dtype == tf.float32

    head = training_model.get_layer("arc_face")
    assert isinstance(head, ArcFace)
    assert (head.num_classes, head.scale, head.margin, head.initial_margin) == (
        NUM_CLASSES, config.arc_face.scale, config.arc_face.margin, 0.1)
    assert head.warmup_steps == margin_warmup_steps(config, 3) == 6

    # Eager: tracing the train step of a CNN costs far more than running one step of it; the
    # compiled (graph) step is exercised by the MirroredStrategy test below.
    training_model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    dense_name = {"image": "embedding_dense", "text": "text_embedding",
                  "multimodal": "joint_dense"}[kind]
    dense = embedding_model.get_layer(dense_name)
    kernel_before = dense.kernel.numpy().copy()
    loss = training_model.train_on_batch({**features, "label": labels}, labels)
    assert np.isfinite(loss)
    assert int(head.step.numpy()) == 1
    assert not np.allclose(dense.kernel.numpy(), kernel_before)  # the embedding model trained
    logits = training_model({**features, "label": labels}, training=False)
    assert logits.shape == (4, NUM_CLASSES) and logits.dtype == tf.float32


def test_multimodal_concatenates_both_towers_into_one_embedding():
    _, embedding_model, _ = build_both("multimodal")
    assert {"image_tower", "text_tower"} <= {layer.name for layer in embedding_model.layers}
    concat = embedding_model.get_layer("joint_concat")
    assert concat.output.shape == (None, 2 * EMBEDDING_DIM)
    features, _ = make_batch("multimodal")
    base = embedding_model(features).numpy()
    other_titles = dict(features, token_ids=make_batch("multimodal", seed=1)[0]["token_ids"])
    other_images = dict(features, image=features["image"][::-1].copy())
    assert not np.allclose(embedding_model(other_titles).numpy(), base)  # titles matter
    assert not np.allclose(embedding_model(other_images).numpy(), base)  # images matter


def save_two_block_image_preset(directory):
    """A two-block keras-hub EfficientNet saved as a local preset directory.

    Tracing a train step under MirroredStrategy costs time per layer, and efficientnet_tiny has
    ~100 layers; this backbone keeps the distributed test to seconds while still being a real
    (keras-hub preset) image tower.
    """
    import keras_hub

    keras_hub.models.EfficientNetBackbone(
        stackwise_width_coefficients=[1.0, 1.0], stackwise_depth_coefficients=[1.0, 1.0],
        stackwise_kernel_sizes=[3, 3], stackwise_num_repeats=[1, 1],
        stackwise_input_filters=[8, 8], stackwise_output_filters=[8, 16],
        stackwise_expansion_ratios=[1, 2], stackwise_squeeze_and_excite_ratios=[0.25, 0.25],
        stackwise_strides=[1, 2], stackwise_block_types=["v1", "v1"],
        stackwise_force_input_filters=[0, 0], stackwise_nores_option=[False, False],
        input_shape=(None, None, 3),
    ).save_to_preset(str(directory))
    return str(directory)


@pytest.mark.slow  # tracing a distributed train step of two towers: ~20 s of CPU
def test_multimodal_trains_under_mirrored_strategy_over_two_cpu_devices(tmp_path):
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("two logical CPU devices could not be configured in this session")
    preset = save_two_block_image_preset(tmp_path / "image_preset")
    # ReductionToOneDevice: the default collective all-reduce clashes with the collective keys
    # of another MirroredStrategy created earlier in the same pytest process.
    strategy = tf.distribute.MirroredStrategy(
        [device.name for device in devices[:2]],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )
    keras.utils.set_random_seed(1)
    with strategy.scope():
        _, embedding_model, training_model = build_both(
            "multimodal", f"model.image.backbone={preset}", "model.image.weights=imagenet",
            steps_per_epoch=2,
        )
        training_model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    features, labels = make_batch("multimodal", batch=8)
    dataset = tf.data.Dataset.from_tensor_slices(({**features, "label": labels}, labels))
    history = training_model.fit(dataset.batch(4, drop_remainder=True), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert int(training_model.get_layer("arc_face").step.numpy()) == 2
    assert embedding_model(features).shape == (8, EMBEDDING_DIM)


def test_embeddings_and_logits_are_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        _, embedding_model, training_model = build_both("multimodal")
        features, labels = make_batch("multimodal")
        assert embedding_model(features, training=True).dtype == tf.float32
        logits = training_model({**features, "label": labels}, training=True)
        assert logits.dtype == tf.float32
        assert np.isfinite(logits.numpy()).all()
    finally:
        keras.config.set_dtype_policy(previous)


def test_no_warmup_when_configured_off():
    config = model_config("image", "model.arc_face.margin_warmup_epochs=0")
    assert margin_warmup_steps(config, 100) == 0


@pytest.mark.parametrize(
    "kind, num_classes, steps_per_epoch, extra, message",
    [
        ("image", 0, 3, [], "label groups"),
        ("image", 3, 0, [], "steps per epoch"),
        ("image", 3, 3, ["model.arc_face.margin=2.0"], "model.arc_face"),
        ("image", 3, 3, ["model.arc_face.label_smoothing=1.0"], "model.arc_face"),
    ],
)
def test_bad_training_settings_are_user_errors(kind, num_classes, steps_per_epoch, extra,
                                               message):
    config = model_config(kind, *extra)
    embedding_model = build_embedding_model(config, image_size=IMAGE_SIZE,
                                            load_pretrained_weights=False)
    with pytest.raises(UserError, match=message):
        build_training_model(embedding_model, config, num_classes=num_classes,
                             steps_per_epoch=steps_per_epoch)


def test_unknown_kind_is_a_user_error():
    config = model_config("image")
    config.kind = "audio"
    with pytest.raises(UserError, match="model.kind"):
        build_embedding_model(config, image_size=IMAGE_SIZE)
