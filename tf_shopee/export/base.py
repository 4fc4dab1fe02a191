"""What every loaded embedding model offers beyond ``embed``: pixels in, and several views of a
photo (test-time augmentation, catalogue-side augmentation).

Both model backends, the SavedModel (:class:`~tf_shopee.export.saved_model.ExportedModel`) and
LiteRT (:class:`~tf_shopee.export.litert.LiteRTModel`), have ``kind``, ``embedding_dim``,
``threshold``, ``metadata``, ``directory`` (the export's path: a folder or a ``.tflite`` file),
``fingerprint`` and ``embed(images=..., titles=..., batch_size=...)``. Image models also have
``image_size`` and ``embed_pixels(pixels)``; this mixin builds :meth:`embed_views` on it.
"""

from __future__ import annotations

import numpy as np

from tf_shopee.errors import UserError
from tf_shopee.models.kind import ModelKind


def as_bytes(value, what: str) -> bytes:
    """An image or title as bytes (str is UTF-8 encoded; None is empty)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if value is None:
        return b""
    raise UserError(f"each {what} must be bytes or str, got {type(value).__name__}")


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), float32."""
    features = np.asarray(features, np.float32)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


class ViewEmbedder:
    """Mixin: :meth:`embed_views` for image models that have ``embed_pixels``."""

    kind: ModelKind
    embedding_dim: int
    image_size: int

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """float32 ``[B, S, S, 3]`` (0..255) → float32 ``[B, D]`` features, not normalised."""
        raise NotImplementedError

    def embed_views(self, images, spec, batch_size: int = 64) -> np.ndarray:
        """Embed several views of each photo (:mod:`tf_shopee.data.views`).

        Args:
            images: encoded photos (bytes; empty bytes give black views).
            spec: a :class:`~tf_shopee.data.views.ViewSpec`.
            batch_size: pixel images per model call.

        Returns:
            float32 ``[N, V, D]``, every view's embedding L2-normalised.
        """
        from tf_shopee.data.views import make_views

        if self.kind is not ModelKind.IMAGE:
            raise UserError(f"views (test-time or catalogue augmentation) need an image model; "
                            f"{self.directory} is a {self.kind} model")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        images = [as_bytes(image, "image") for image in images]
        count = spec.count
        result = np.zeros((len(images), count, self.embedding_dim), np.float32)
        photos_per_call = max(1, batch_size // count)
        for start in range(0, len(images), photos_per_call):
            chunk = images[start:start + photos_per_call]
            views = make_views(chunk, spec, self.image_size)
            flat = views.reshape((-1, self.image_size, self.image_size, 3))
            features = l2_normalise(self.embed_pixels(flat))
            result[start:start + len(chunk)] = features.reshape((len(chunk), count, -1))
        return result
