"""The multimodal model: image tower + text tower → concatenation → one embedding.

Each tower produces its own ``embedding_dim``-wide embedding (after its BatchNorm); the two are
concatenated and projected to the final ``embedding_dim`` by Dense + BatchNorm, and the result is
trained with the ArcFace head like the single-tower models.
"""

from __future__ import annotations

import keras

from tf_shopee.config import ModelConfig
from tf_shopee.models.image import build_image_tower


def build_multimodal_model(
    model_config: ModelConfig,
    *,
    image_size: int,
    vocabulary_size: int | None = None,
    load_pretrained_weights: bool = True,
) -> keras.Model:
    """Build the image + title embedding model.

    Args:
        model_config: the ``model`` section; ``image`` and ``text`` configure the towers and
            ``embedding_dim`` is the width of both tower embeddings and of the output.
        image_size: side of the square input images in pixels.
        vocabulary_size: size of the title vocabulary (needed by a text tower trained from
            scratch; None for a keras-hub preset, which brings its own).
        load_pretrained_weights: False builds both towers' architectures without loading (or
            downloading) pretrained weights, for restoring a checkpoint into them.

    Returns:
        A ``keras.Model`` named ``multimodal_embedding_model``: ``{"image": float32 [B, S, S, 3]
        in 0..255, "token_ids": int32 [B, L], "padding_mask": int32 [B, L]}`` → float32
        ``[B, embedding_dim]`` (after BatchNorm, not L2-normalised). The towers are the nested
        models ``image_tower`` and ``text_tower``.
    """
    # Imported here: engineer G's text module pulls in tensorflow-text and keras-hub models.
    from tf_shopee.models.text import build_text_tower

    embedding_dim = model_config.embedding_dim
    image_tower = build_image_tower(
        model_config.image,
        image_size=image_size,
        embedding_dim=embedding_dim,
        load_pretrained_weights=load_pretrained_weights,
    )
    text_tower = build_text_tower(
        model_config.text,
        embedding_dim=embedding_dim,
        vocabulary_size=vocabulary_size,
        load_pretrained_weights=load_pretrained_weights,
    )
    image_tower.name = "image_tower"
    text_tower.name = "text_tower"

    inputs = {**fresh_inputs_like(image_tower), **fresh_inputs_like(text_tower)}
    image_embedding = image_tower({"image": inputs["image"]})
    text_embedding = text_tower({name: inputs[name] for name in text_tower.input})
    joint = keras.layers.Concatenate(name="joint_concat", dtype="float32")(
        [image_embedding, text_embedding]
    )
    embedding = keras.layers.Dense(embedding_dim, name="joint_dense")(joint)
    # float32 output even under mixed precision: embeddings are compared by cosine downstream.
    embedding = keras.layers.BatchNormalization(name="joint_bn", dtype="float32")(embedding)
    return keras.Model(inputs, embedding, name="multimodal_embedding_model")


def fresh_inputs_like(model: keras.Model) -> dict[str, keras.KerasTensor]:
    """New ``keras.Input`` tensors with the names, shapes and dtypes of a dict-input model's."""
    model_inputs = model.input
    if not isinstance(model_inputs, dict):
        raise TypeError(f"model {model.name} must take a dict of named inputs")
    return {
        name: keras.Input(tensor.shape[1:], dtype=tensor.dtype, name=name)
        for name, tensor in model_inputs.items()
    }
