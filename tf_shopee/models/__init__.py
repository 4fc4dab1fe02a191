"""Embedding models and the ArcFace training model built around them.

The embedding model (image, text or multimodal) is what gets exported and served; the training
model adds the ArcFace head, which exists only while training (keras-hub's Backbone vs Task).

``build_embedding_model(model_config, image_size=..., vocabulary_size=...)`` takes dict inputs by
kind (image: ``{"image"}``; text: ``{"token_ids", "padding_mask"}``; multimodal: all three) and
returns float32 ``[B, embedding_dim]`` embeddings, after BatchNorm and not L2-normalised.
``build_training_model(embedding_model, model_config, num_classes=..., steps_per_epoch=...)``
adds an int32 ``"label"`` input and returns float32 ArcFace logits; its ArcFace layer is named
``"arc_face"``. Train it with ``keras.losses.SparseCategoricalCrossentropy(from_logits=True)``
(label smoothing, when configured, is already applied by the layer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tf_shopee.errors import UserError
from tf_shopee.models.kind import ModelKind

if TYPE_CHECKING:
    import keras

    from tf_shopee.config import ModelConfig

ARC_FACE_LAYER_NAME = "arc_face"
LABEL_INPUT_NAME = "label"

__all__ = [
    "ARC_FACE_LAYER_NAME",
    "LABEL_INPUT_NAME",
    "build_embedding_model",
    "build_training_model",
    "margin_warmup_steps",
]


def build_embedding_model(
    model_config: "ModelConfig",
    *,
    image_size: int,
    vocabulary_size: int | None = None,
    load_pretrained_weights: bool = True,
) -> "keras.Model":
    """Build the embedding model selected by ``model_config.kind``.

    Args:
        model_config: the ``model`` section of the run configuration.
        image_size: side of the square input images in pixels (ignored by text models).
        vocabulary_size: title vocabulary size for a text tower trained from scratch
            (``TitlePreprocessor.vocabulary_size``); None for keras-hub presets.
        load_pretrained_weights: False builds the architecture without loading (or
            downloading) pretrained weights and without the random-weights warning, for
            restoring a checkpoint into it.

    Returns:
        A ``keras.Model`` from a dict of inputs to float32 ``[B, embedding_dim]``.

    Raises:
        UserError: unknown kind, backbone or option.
    """
    kind = ModelKind.parse(model_config.kind, where="model.kind")
    if kind is ModelKind.IMAGE:
        from tf_shopee.models.image import build_image_tower

        return build_image_tower(
            model_config.image,
            image_size=image_size,
            embedding_dim=model_config.embedding_dim,
            load_pretrained_weights=load_pretrained_weights,
        )
    if kind is ModelKind.TEXT:
        from tf_shopee.models.text import build_text_tower

        return build_text_tower(
            model_config.text,
            embedding_dim=model_config.embedding_dim,
            vocabulary_size=vocabulary_size,
            load_pretrained_weights=load_pretrained_weights,
        )
    from tf_shopee.models.multimodal import build_multimodal_model

    return build_multimodal_model(
        model_config,
        image_size=image_size,
        vocabulary_size=vocabulary_size,
        load_pretrained_weights=load_pretrained_weights,
    )


def margin_warmup_steps(model_config: "ModelConfig", steps_per_epoch: int) -> int:
    """Training steps over which the ArcFace margin rises (``margin_warmup_epochs`` × steps)."""
    return max(0, int(round(model_config.arc_face.margin_warmup_epochs * steps_per_epoch)))


def build_training_model(
    embedding_model: "keras.Model",
    model_config: "ModelConfig",
    *,
    num_classes: int,
    steps_per_epoch: int,
) -> "keras.Model":
    """Wrap an embedding model with the ArcFace head for training.

    Args:
        embedding_model: a model from :func:`build_embedding_model` (shared, not copied: training
            this model trains it).
        model_config: the ``model`` section; ``arc_face`` holds scale, margin, margin warm-up,
            easy margin and label smoothing.
        num_classes: number of label groups in the training data.
        steps_per_epoch: optimizer steps per epoch; the margin warms up from
            ``arc_face.initial_margin`` to ``arc_face.margin`` over
            ``arc_face.margin_warmup_epochs × steps_per_epoch`` steps.

    Returns:
        A ``keras.Model`` named ``training_model``: the embedding model's inputs plus
        ``"label"`` int32 ``[B]`` → ArcFace logits float32 ``[B, num_classes]``. The head is the
        layer named ``"arc_face"``.

    Raises:
        UserError: no classes, a bad step count or a bad ``model.arc_face`` option.
    """
    import keras

    from tf_shopee.models.arc_face import ArcFace
    from tf_shopee.models.multimodal import fresh_inputs_like

    if num_classes < 1:
        raise UserError(f"the training data has {num_classes} label groups; need at least 1")
    if steps_per_epoch < 1:
        raise UserError(f"steps per epoch must be at least 1, got {steps_per_epoch}")
    arc_face_config = model_config.arc_face
    try:
        head = ArcFace(
            num_classes=int(num_classes),
            scale=arc_face_config.scale,
            margin=arc_face_config.margin,
            initial_margin=arc_face_config.initial_margin,
            warmup_steps=margin_warmup_steps(model_config, steps_per_epoch),
            easy_margin=arc_face_config.easy_margin,
            label_smoothing=arc_face_config.label_smoothing,
            sub_centers=arc_face_config.sub_centers,
            name=ARC_FACE_LAYER_NAME,
        )
    except ValueError as error:
        raise UserError(f"bad model.arc_face option: {error}") from None

    inputs = fresh_inputs_like(embedding_model)
    embedding = embedding_model(inputs)
    labels = keras.Input((), dtype="int32", name=LABEL_INPUT_NAME)
    logits = head(embedding, labels)
    return keras.Model({**inputs, LABEL_INPUT_NAME: labels}, logits, name="training_model")
