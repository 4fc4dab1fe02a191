"""Decoding photos with a pixel limit: catalogue thumbnails and phashes, and the web app's
uploads.

A compressed photo says its size in its header, and decoding it costs width × height × 3 bytes
whatever the file's size: a 316 KB PNG of 10,000 × 10,000 pixels takes 300 MB. So the header is
read first (:func:`PIL.Image.open` decodes nothing), a JPEG is asked to decode at a reduced scale
(``draft``: the DCT is evaluated at 1/2, 1/4 or 1/8 size, so a 50-megapixel phone photo costs a
few megabytes), and whatever is still over :data:`MAX_PIXELS` is refused before any pixel is
decoded. Every failure (not an image, truncated, too large) is a :class:`PhotoError` with a
sentence for the user.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from tf_shopee.errors import UserError

# The most pixels decoded for one photo (after a JPEG's reduced-scale decode): 24 megapixels,
# a 6000 × 4000 photo, 72 MB as RGB.
MAX_PIXELS = 24_000_000
# Side of the copy of an upload the models and the phash see: models read 96-512 px, the phash
# 32 px; 1024 keeps every model's input exact while bounding the work.
QUERY_SIDE = 1024
# Side of the thumbnail shown for a query.
SHOWN_SIDE = 174
# Formats the models' decoder (tf.io.decode_image) reads as they are.
_MODEL_FORMATS = ("JPEG", "PNG")
# Pillow warns from 89 megapixels on; photos are refused far below that here (MAX_PIXELS), so its
# warning would only repeat, in the log, what the refusal says.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError,
                  Image.DecompressionBombError)


class PhotoError(UserError):
    """A photo that cannot be used; the message says why."""


def decode_photo(data: bytes, *, side: int | None = None, max_pixels: int = MAX_PIXELS,
                 name: str = "the photo") -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``data`` into an RGB image, refusing more than ``max_pixels`` before decoding.

    Args:
        data: the file's bytes.
        side: when given, a JPEG is decoded at the smallest reduced scale whose sides are still
            at least ``side`` (the result may be larger than ``side``; resize it after).
        max_pixels: the most pixels decoded.
        name: the photo, for messages.

    Returns:
        ``(image, (width, height))``: the decoded RGB image and the photo's own size.

    Raises:
        PhotoError: not an image Pillow reads, truncated, or too many pixels.
    """
    if not data:
        raise PhotoError(f"{name} is empty")
    try:
        image = Image.open(io.BytesIO(data))
        size = image.size
        if side is not None and image.format == "JPEG":
            image.draft("RGB", (side, side))
        width, height = image.size
        if width * height > max_pixels:
            raise PhotoError(
                f"{name} is {size[0]:,} × {size[1]:,} pixels ({size[0] * size[1] / 1e6:.0f} "
                f"megapixels); photos of up to {max_pixels / 1e6:.0f} megapixels are read (JPEGs "
                "of any size: they are decoded at a reduced scale)")
        image.load()
        if image.mode != "RGB":
            image = image.convert("RGB")
        return image, size
    except PhotoError:
        raise
    except Image.DecompressionBombError:  # Pillow's own check, at open, far above ours
        raise PhotoError(f"{name} has hundreds of megapixels; photos of up to "
                         f"{max_pixels / 1e6:.0f} megapixels are read (JPEGs of any size: they "
                         "are decoded at a reduced scale)") from None
    except _DECODE_ERRORS as error:
        reason = str(error).split("\n")[0][:200] or type(error).__name__
        raise PhotoError(f"{name} is not a photo that can be read (JPEG, PNG, GIF, BMP or "
                         f"WebP): {reason}") from None


def jpeg_bytes(image: Image.Image, side: int, *, quality: int = 85) -> bytes:
    """A JPEG of ``image`` fitted into ``side`` × ``side``."""
    copy = image.copy()
    copy.thumbnail((side, side))
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclass
class QueryPhoto:
    """An uploaded photo, decoded once: what the models read, its phash and what is shown.

    Attributes:
        model_bytes: the upload itself when it is a JPEG or PNG of at most :data:`QUERY_SIDE`
            pixels a side (so the app embeds exactly what ``predict.py`` would), else a JPEG of
            it fitted into :data:`QUERY_SIDE`.
        phash: its 64-bit perceptual hash (16 hex digits), as the catalogue's are computed.
        shown: a small JPEG for the results page.
        size: the photo's own width and height.
    """

    model_bytes: bytes
    phash: str
    shown: bytes
    size: tuple[int, int]


def prepare_query_photo(data: bytes) -> QueryPhoto:
    """Decode an upload once (:func:`decode_photo`) and derive everything a search needs.

    Raises:
        PhotoError: see :func:`decode_photo`.
    """
    import imagehash

    image, size = decode_photo(data, side=QUERY_SIDE, name="the uploaded file")
    with Image.open(io.BytesIO(data)) as header:
        kept_as_is = header.format in _MODEL_FORMATS and max(size) <= QUERY_SIDE
    model_bytes = data if kept_as_is else jpeg_bytes(image, QUERY_SIDE, quality=95)
    return QueryPhoto(model_bytes=model_bytes, phash=str(imagehash.phash(image)),
                      shown=jpeg_bytes(image, SHOWN_SIDE), size=size)
