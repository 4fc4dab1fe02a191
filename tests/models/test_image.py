"""Image tower: backbone families, input normalisation, GeM, freezing, weights files, keras-hub
presets, errors, mixed precision. Tiny sizes only (32-64 px, efficientnet_tiny where possible)."""

import dataclasses
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_shopee.config import MIN_IMAGE_SIZE, ImageModelConfig
from tf_shopee.errors import UserError
from tf_shopee.models import image as image_module
from tf_shopee.models.image import (
    IMAGE_BACKBONES,
    CaffePreprocessing,
    GeneralizedMeanPooling2D,
    build_image_tower,
    get_backbone,
)

TINY = ImageModelConfig(backbone="efficientnet_tiny", weights="none", pooling="gem",
                        dropout=0.0, trainable="all")


def tiny_config(**changes):
    return dataclasses.replace(TINY, **changes)


@pytest.fixture(scope="module")
def tiny_tower():
    """One efficientnet_tiny tower shared by the tests that only read it."""
    return build_image_tower(TINY, image_size=64, embedding_dim=8)


def random_images(batch=2, size=64, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(batch, size, size, 3)).astype(
        np.float32
    )


@pytest.mark.parametrize(
    "backbone, image_size, first_layer_of_last_stage",
    [
        ("efficientnet_tiny", 64, "block7a_"),
        ("efficientnet_b0", 32, "block7a_"),
        ("efficientnetv2_b0", 32, "block6a_"),
        ("efficientnet_lite0", 32, "block7a_"),
        ("resnet50", 32, "conv5_block1_"),
    ],
)
def test_each_family_builds_embeds_and_freezes_its_last_stage(
    backbone, image_size, first_layer_of_last_stage
):
    config = tiny_config(backbone=backbone, trainable="last_block")
    tower = build_image_tower(config, image_size=image_size, embedding_dim=12)
    assert tower.name == "image_tower"
    assert list(tower.input) == ["image"]
    assert tuple(tower.input["image"].shape) == (None, image_size, image_size, 3)
    embeddings = tower({"image": random_images(size=image_size)}, training=False)
    assert embeddings.shape == (2, 12)
    assert embeddings.dtype == tf.float32
    assert np.isfinite(embeddings.numpy()).all()

    backbone_layers = get_backbone(tower).layers
    with_weights = [layer for layer in backbone_layers if layer.weights]
    trainable_names = [layer.name for layer in with_weights if layer.trainable]
    frozen_names = [layer.name for layer in with_weights if not layer.trainable]
    assert trainable_names[0].startswith(first_layer_of_last_stage)
    assert frozen_names and trainable_names
    # Every trainable layer comes after every frozen one (the last stage and the top).
    positions = {layer.name: index for index, layer in enumerate(backbone_layers)}
    assert max(positions[name] for name in frozen_names) < min(
        positions[name] for name in trainable_names
    )


@pytest.mark.parametrize(
    "mode, first_trainable_stage",
    [("last_block", "block7a_"), ("last_2_blocks", "block6a_"), ("last_3_blocks", "block5a_"),
     ("last_9_blocks", "normalization")],  # more stages than there are: everything
)
def test_last_n_blocks_trains_the_last_n_stages(mode, first_trainable_stage):
    tower = build_image_tower(tiny_config(trainable=mode), image_size=64, embedding_dim=8)
    layers = [layer for layer in get_backbone(tower).layers if layer.weights]
    trainable = [layer.name for layer in layers if layer.trainable]
    assert trainable[0].startswith(first_trainable_stage)
    assert trainable == [layer.name for layer in layers][len(layers) - len(trainable):]
    with pytest.raises(UserError, match="last_N_blocks"):
        build_image_tower(tiny_config(trainable="last_0_blocks"), image_size=64, embedding_dim=8)


def test_every_listed_backbone_name_resolves_to_a_builder():
    assert {"efficientnet_tiny", "efficientnet_b0", "efficientnet_b7", "efficientnetv2_b0",
            "efficientnetv2_s", "efficientnetv2_l", "resnet50", "efficientnet_lite0",
            "efficientnet_lite1", "efficientnet_lite2"} <= set(IMAGE_BACKBONES)
    for name, spec in IMAGE_BACKBONES.items():
        assert spec.family in ("efficientnet", "efficientnetv2", "efficientnet_lite",
                               "resnet"), name
        if spec.application is not None:
            assert callable(getattr(keras.applications, spec.application)), name


def test_efficientnet_normalises_inputs_with_imagenet_statistics(tiny_tower):
    backbone = get_backbone(tiny_tower)
    normalization = next(
        layer for layer in backbone.layers if isinstance(layer, keras.layers.Normalization)
    )
    probe = keras.Model(backbone.input, normalization.output)
    images = random_images()
    expected = (images / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(probe(images).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_caffe_preprocessing_matches_keras_resnet50_preprocess_input():
    images = random_images(size=32)
    expected = keras.applications.resnet50.preprocess_input(images.copy())
    np.testing.assert_allclose(CaffePreprocessing()(images).numpy(), expected, rtol=1e-5,
                               atol=1e-4)
    assert CaffePreprocessing.from_config(CaffePreprocessing().get_config()).mean_bgr == (
        103.939, 116.779, 123.68)


def test_gem_matches_numpy_reference_and_clamps_negatives():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)  # half of them negative
    layer = GeneralizedMeanPooling2D(p=3.0, epsilon=1e-6)
    expected = np.mean(np.maximum(features, 1e-6) ** 3.0, axis=(1, 2)) ** (1.0 / 3.0)
    np.testing.assert_allclose(layer(features).numpy(), expected, rtol=1e-5, atol=1e-6)
    positive = np.abs(features)
    np.testing.assert_allclose(GeneralizedMeanPooling2D(p=1.0)(positive).numpy(),
                               positive.mean(axis=(1, 2)), rtol=1e-5)


def test_gem_exponent_is_learned_and_round_trips_its_config():
    layer = GeneralizedMeanPooling2D(p=3.0)
    features = tf.constant(np.random.default_rng(2).uniform(0.1, 2.0, (2, 3, 3, 4)), tf.float32)
    with tf.GradientTape() as tape:
        output = tf.reduce_sum(layer(features))
    (gradient,) = tape.gradient(output, [layer.exponent.value])
    assert layer.trainable_weights == [layer.exponent]
    assert abs(float(gradient)) > 0
    model = keras.Sequential([keras.Input((3, 3, 4)), layer, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.train_on_batch(features, np.ones((2, 1), np.float32))
    assert float(layer.exponent.numpy()) != pytest.approx(3.0)

    frozen = GeneralizedMeanPooling2D(p=4.0, trainable_p=False, name="gem")
    clone = GeneralizedMeanPooling2D.from_config(frozen.get_config())
    assert (clone.p, clone.epsilon, clone.trainable_p, clone.name) == (4.0, 1e-6, False, "gem")
    clone.build((None, 3, 3, 4))
    assert clone.trainable_weights == []
    with pytest.raises(ValueError):
        GeneralizedMeanPooling2D(p=0.5)


def test_freeze_modes_set_trainable_flags_and_frozen_batchnorm_keeps_its_statistics():
    tower = build_image_tower(tiny_config(trainable="head"), image_size=64, embedding_dim=8)
    backbone = get_backbone(tower)
    head_names = {"gem_pooling", "embedding_dense", "embedding_bn"}
    assert backbone.trainable_weights == []
    assert not any(layer.trainable for layer in backbone.layers)  # frozen BN: inference mode
    assert {w.path.split("/")[0] for w in tower.trainable_weights} == head_names

    tower = build_image_tower(tiny_config(trainable="last_block"), image_size=64, embedding_dim=8)
    backbone = get_backbone(tower)
    stem_bn = backbone.get_layer("stem_bn")
    top_bn = backbone.get_layer("top_bn")
    assert not stem_bn.trainable and top_bn.trainable
    stem_before = stem_bn.moving_variance.numpy().copy()
    top_before = top_bn.moving_variance.numpy().copy()
    tower({"image": random_images(batch=4)}, training=True)
    np.testing.assert_array_equal(stem_bn.moving_variance.numpy(), stem_before)  # inference
    assert not np.allclose(top_bn.moving_variance.numpy(), top_before)  # batch statistics

    tower = build_image_tower(tiny_config(trainable="all"), image_size=64, embedding_dim=8)
    assert all(layer.trainable for layer in get_backbone(tower).layers)
    assert len(tower.trainable_weights) > len(head_names) + 50
    with pytest.raises(UserError, match="trainable"):
        build_image_tower(tiny_config(trainable="everything"), image_size=64, embedding_dim=8)


def test_local_weights_file_loads_into_another_tower(tmp_path, tiny_tower):
    source = tiny_tower
    path = tmp_path / "tiny_backbone.weights.h5"
    get_backbone(source).save_weights(path)
    keras.utils.set_random_seed(123)  # different random init for the target
    target = build_image_tower(tiny_config(weights=str(path)), image_size=64, embedding_dim=8)
    images = random_images()
    np.testing.assert_allclose(
        get_backbone(target)(images, training=False).numpy(),
        get_backbone(source)(images, training=False).numpy(),
        rtol=1e-5, atol=1e-5,
    )
    # The head was initialised afresh, so the match above comes from the file, not the seed.
    assert not np.allclose(target.get_layer("embedding_dense").kernel.numpy(),
                           source.get_layer("embedding_dense").kernel.numpy())


def test_legacy_h5_weights_file_from_the_keras_download_cache_loads(tmp_path, tiny_tower):
    # keras.applications downloads *_notop.h5 files in the legacy HDF5 layout; offline users
    # copy exactly those files around.
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    source = tiny_tower
    path = tmp_path / "efficientnet_tiny_notop.h5"
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, get_backbone(source))
    target = build_image_tower(tiny_config(weights=str(path)), image_size=64, embedding_dim=8)
    images = random_images()
    np.testing.assert_allclose(get_backbone(target)(images).numpy(),
                               get_backbone(source)(images).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Skipping nested container")
def test_missing_or_unfitting_weights_file_is_a_user_error(tmp_path):
    missing = tmp_path / "nowhere" / "b0.weights.h5"
    with pytest.raises(UserError, match="nowhere/b0.weights.h5"):
        build_image_tower(tiny_config(weights=str(missing)), image_size=64, embedding_dim=8)
    unrelated = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path / "dense.weights.h5"
    unrelated.save_weights(path)
    with pytest.raises(UserError, match="does not fit backbone 'efficientnet_tiny'"):
        build_image_tower(tiny_config(weights=str(path)), image_size=64, embedding_dim=8)


def test_imagenet_download_failure_explains_the_offline_alternative(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(UserError) as caught:
        build_image_tower(tiny_config(backbone="efficientnet_b0", weights="imagenet"),
                          image_size=32, embedding_dim=8)
    message = str(caught.value)
    assert "efficientnet_b0" in message and "Name or service not known" in message
    assert "save_weights" in message and "model.image.weights" in message
    assert "efficientnet_lite0" in message  # the pretrained backbone that works offline


def test_tiny_has_no_imagenet_weights():
    with pytest.raises(UserError, match="no ImageNet weights"):
        build_image_tower(tiny_config(weights="imagenet"), image_size=64, embedding_dim=8)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(UserError) as caught:
        build_image_tower(tiny_config(backbone="efficientnet_b9"), image_size=64,
                          embedding_dim=8)
    message = str(caught.value)
    assert "efficientnet_b9" in message
    assert "efficientnet_tiny" in message and "resnet50" in message and "keras-hub" in message
    with pytest.raises(UserError, match="directory not found: /nowhere/preset"):
        build_image_tower(tiny_config(backbone="/nowhere/preset"), image_size=64,
                          embedding_dim=8)


@pytest.mark.parametrize(
    "changes, option",
    [({"pooling": "max"}, "pooling"), ({"trainable": "some"}, "trainable"),
     ({"dropout": 1.5}, "dropout"), ({"gem_p": 0.0}, "gem_p"),
     ({"projection": "mlp"}, "projection")],
)
def test_bad_options_are_user_errors_naming_the_option(changes, option):
    with pytest.raises(UserError, match=f"model.image.{option}"):
        build_image_tower(tiny_config(**changes), image_size=64, embedding_dim=8)


def test_an_image_size_below_the_projects_minimum_is_a_programming_error():
    # The configuration refuses it with a UserError when read; the tower checks the same bound.
    with pytest.raises(ValueError, match=f"at least {MIN_IMAGE_SIZE} pixels"):
        build_image_tower(TINY, image_size=MIN_IMAGE_SIZE - 1, embedding_dim=8)


def test_random_weights_warn_loudly_once_unless_only_the_architecture_is_wanted(
    caplog, monkeypatch
):
    import tf_shopee.errors

    monkeypatch.setattr(tf_shopee.errors, "_WARNED", set())  # what earlier tests warned
    with caplog.at_level(logging.WARNING, logger=image_module.__name__):
        build_image_tower(TINY, image_size=64, embedding_dim=8, load_pretrained_weights=False)
    assert "RANDOM" not in caplog.text
    with caplog.at_level(logging.WARNING, logger=image_module.__name__):
        for _ in range(2):  # a run builds the tower for training, the baseline and the export
            build_image_tower(TINY, image_size=64, embedding_dim=8)
    assert caplog.text.count("RANDOM weights") == 1
    assert "!!!!!!!!" in caplog.text  # a banner: loud


def test_embedding_is_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        tower = build_image_tower(tiny_config(trainable="all"), image_size=64, embedding_dim=8)
        assert get_backbone(tower).get_layer("stem_conv").compute_dtype == "bfloat16"
        embeddings = tower({"image": random_images()}, training=True)
        assert embeddings.dtype == tf.float32
        assert np.isfinite(embeddings.numpy()).all()
    finally:
        keras.config.set_dtype_policy(previous)


def test_tower_saves_and_loads_as_a_keras_file(tmp_path, tiny_tower):
    tower = tiny_tower
    path = tmp_path / "tower.keras"
    tower.save(path)
    loaded = keras.saving.load_model(path)
    images = {"image": random_images()}
    np.testing.assert_allclose(loaded(images).numpy(), tower(images).numpy(), rtol=1e-5,
                               atol=1e-5)


def small_keras_hub_preset(directory):
    """Save a two-stage keras-hub EfficientNet and its image converter as a local preset."""
    import keras_hub

    backbone = keras_hub.models.EfficientNetBackbone(
        stackwise_width_coefficients=[1.0, 1.0], stackwise_depth_coefficients=[1.0, 1.0],
        stackwise_kernel_sizes=[3, 3], stackwise_num_repeats=[1, 1],
        stackwise_input_filters=[8, 8], stackwise_output_filters=[8, 16],
        stackwise_expansion_ratios=[1, 2], stackwise_squeeze_and_excite_ratios=[0.25, 0.25],
        stackwise_strides=[1, 2], stackwise_block_types=["v1", "v1"],
        stackwise_force_input_filters=[0, 0], stackwise_nores_option=[False, False],
        input_shape=(None, None, 3),
    )
    backbone.save_to_preset(str(directory))
    converter = keras_hub.layers.EfficientNetImageConverter(
        image_size=(32, 32), scale=1 / 127.5, offset=-1.0
    )
    converter.save_to_preset(str(directory))
    return backbone


def test_local_keras_hub_preset_directory_with_its_own_preprocessing(tmp_path):
    saved = small_keras_hub_preset(tmp_path / "hub_preset")
    config = tiny_config(backbone=str(tmp_path / "hub_preset"), weights="imagenet",
                         trainable="last_block")
    tower = build_image_tower(config, image_size=32, embedding_dim=8)
    images = random_images(size=32)
    np.testing.assert_allclose(
        get_backbone(tower)(images / 127.5 - 1.0).numpy(),
        saved(images / 127.5 - 1.0).numpy(), rtol=1e-5, atol=1e-5,
    )  # the preset's weights were loaded
    rescaling = tower.get_layer("preset_rescaling")
    np.testing.assert_allclose(rescaling(images).numpy(), images / 127.5 - 1.0, rtol=1e-5,
                               atol=1e-5)
    assert tower({"image": images}).shape == (2, 8)
    trainable = [layer.name for layer in get_backbone(tower).layers if layer.trainable]
    assert trainable[0].startswith("block2a_")


def test_broken_preset_directory_is_a_user_error(tmp_path):
    (tmp_path / "not_a_preset").mkdir()
    with pytest.raises(UserError, match="could not load keras-hub preset"):
        build_image_tower(tiny_config(backbone=str(tmp_path / "not_a_preset")), image_size=32,
                          embedding_dim=8)
