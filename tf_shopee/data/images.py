"""One posting's photo, checked and made storable: the image half of CSV → TFRecord conversion.

:func:`process_image` reads a row's file (inside the image folder only), checks its header
(decompression bombs), decodes it completely and returns the JPEG bytes to store: the file itself
when it is a JPEG within ``max_side``, otherwise a re-encoded, downscaled RGB/L JPEG, with the
photo's perceptual hash when the CSV lacks one. :func:`image_results` runs it over many rows in a
process pool. :func:`image_problem` is the same check for callers that embed photos straight from
files (predict.py --images).

This module runs in worker processes: it stays free of TensorFlow, and imports Pillow lazily.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

# Decompression-bomb limit checked from the header before decoding: 50 megapixels still admits
# 48 MP phone photos while refusing the gigapixel PNGs such attacks use.
DEFAULT_MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class ImageOptions:
    """How images are checked and stored."""

    images_root: str  # realpath of the image folder
    max_side: int
    max_pixels: int
    jpeg_quality: int


@dataclass
class ImageResult:
    """What one worker returns for one row: the stored image, or why the row was rejected."""

    row: int
    image: bytes = b""
    height: int = 0
    width: int = 0
    phash: str = ""
    reencoded: bool = False
    reject_reason: str | None = None


class _Rejected(Exception):
    """Internal: the row's image cannot be used; the message is the reject reason."""


_worker_options: ImageOptions | None = None


def _initialise_worker(options: ImageOptions) -> None:
    global _worker_options
    _worker_options = options
    from PIL import Image

    # Our own header check (max_pixels) replaces Pillow's warning/error thresholds, which would
    # otherwise fire at a different size than the one the user chose.
    Image.MAX_IMAGE_PIXELS = None


def _resolve_image_path(image_name: str, images_root: str) -> str:
    if not image_name:
        raise _Rejected("empty image path")
    if (
        PurePosixPath(image_name).is_absolute()
        or PureWindowsPath(image_name).is_absolute()
        or PureWindowsPath(image_name).drive
    ):
        raise _Rejected(f"absolute image path {image_name!r} (paths must be inside --images)")
    if ".." in PurePosixPath(image_name.replace("\\", "/")).parts:
        raise _Rejected(f"image path {image_name!r} escapes the image folder ('..')")
    real_path = os.path.realpath(os.path.join(images_root, image_name))
    if os.path.commonpath([real_path, images_root]) != images_root:
        raise _Rejected(
            f"image path {image_name!r} escapes the image folder (symlink to {real_path})"
        )
    return real_path


def _open_image(data: bytes, image_name: str, max_pixels: int):
    """A lazily decoded Pillow image of ``data``, its header checked; raises _Rejected."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise _Rejected(f"{image_name} is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _Rejected(f"{image_name} is not an image in a format Pillow reads") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise _Rejected(f"corrupt image {image_name}: {error}") from None
    width, height = image.size
    # Checked from the header, before any pixel is decoded (decompression bombs).
    if width * height > max_pixels:
        image.close()
        raise _Rejected(
            f"image {image_name} is {width}x{height} = {width * height} pixels, over the "
            f"--max-pixels limit {max_pixels} (decompression bomb?)"
        )
    if width < 1 or height < 1:
        image.close()
        raise _Rejected(f"image {image_name} has size {width}x{height}")
    return image


def image_problem(
    data: bytes, image_name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> str | None:
    """Why ``data`` cannot serve as a posting's photo, or None when it decodes completely.

    The check convert_tfrecords.py applies to every image, for callers that embed photos
    straight from files (predict.py --images). JPEGs are decoded at 1/8 scale: every byte is
    still read, so a truncated file is caught, at a fraction of the cost.
    """
    try:
        image = _open_image(data, image_name, max_pixels)
        with image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.size[0] // 8), max(1, image.size[1] // 8)))
            image.load()
    except _Rejected as rejected:
        return str(rejected)
    except MemoryError:
        return f"image {image_name} does not fit in memory"
    except Exception as error:  # noqa: BLE001 - any decoder failure means a bad image
        return f"corrupt image {image_name}: {type(error).__name__}: {error}"
    return None


def _load_image(image_name: str, options: ImageOptions, need_phash: bool) -> ImageResult:
    from PIL import Image

    real_path = _resolve_image_path(image_name, options.images_root)
    try:
        status = os.stat(real_path)
    except FileNotFoundError:
        raise _Rejected(f"image file not found: {image_name}") from None
    except OSError as error:
        raise _Rejected(f"unreadable image file {image_name}: {error.strerror}") from None
    if not stat.S_ISREG(status.st_mode):
        raise _Rejected(f"{image_name} is not a regular file")
    try:
        with open(real_path, "rb") as stream:
            data = stream.read()
    except OSError as error:
        raise _Rejected(f"unreadable image file {image_name}: {error.strerror}") from None

    image = _open_image(data, image_name, options.max_pixels)
    with image:
        width, height = image.size
        image_format = image.format
        longest_side = max(width, height)
        target_size = None
        if longest_side > options.max_side:
            scale = options.max_side / longest_side
            target_size = (max(1, round(width * scale)), max(1, round(height * scale)))
            if image_format == "JPEG" and not need_phash:
                # Decode at 1/2, 1/4 or 1/8 scale in the DCT (never below target_size): several
                # times faster for big photos, and the whole file is still read and checked.
                # Not when a phash is computed: it must see the full photo, as Kaggle's did.
                image.draft(None, target_size)
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise _Rejected(f"corrupt image {image_name}: {error}") from None

        phash = ""
        if need_phash:
            import imagehash

            phash = str(imagehash.phash(image))

        keep_original = (
            image_format == "JPEG" and target_size is None and image.mode in ("RGB", "L", "CMYK")
        )
        if keep_original:
            return ImageResult(row=-1, image=data, height=height, width=width, phash=phash)

        converted = _to_storable_mode(image)
        if target_size is not None and converted.size != target_size:
            converted = converted.resize(target_size, Image.Resampling.LANCZOS)
        output = io.BytesIO()
        converted.save(output, format="JPEG", quality=options.jpeg_quality)
        stored_width, stored_height = converted.size
        return ImageResult(
            row=-1,
            image=output.getvalue(),
            height=stored_height,
            width=stored_width,
            phash=phash,
            reencoded=True,
        )


def _to_storable_mode(image):
    """An RGB or L copy of ``image`` that JPEG can hold; transparency composited on white."""
    from PIL import Image

    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of letting convert() clip at 255.
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        return Image.fromarray(np.clip(values / peak * 255.0, 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def process_image(task: tuple[int, str, bool]) -> ImageResult:
    """Read, check and (if needed) re-encode one row's image; never raises for a bad image.

    ``task`` is ``(row, image_name, need_phash)``; options come from the worker initialiser.
    """
    row, image_name, need_phash = task
    assert _worker_options is not None, "process_image needs _initialise_worker first"
    try:
        result = _load_image(image_name, _worker_options, need_phash)
    except _Rejected as rejected:
        return ImageResult(row=row, reject_reason=str(rejected))
    except MemoryError:
        return ImageResult(row=row, reject_reason=f"image {image_name} does not fit in memory")
    except Exception as error:  # noqa: BLE001 - any decoder failure is a bad image, not a crash
        return ImageResult(
            row=row, reject_reason=f"corrupt image {image_name}: {type(error).__name__}: {error}"
        )
    result.row = row
    return result


def image_results(tasks, options: ImageOptions, workers: int):
    """Yield ImageResults in task order, from a process pool when workers > 1."""
    if workers == 1 or len(tasks) < 2:
        _initialise_worker(options)
        for task in tasks:
            yield process_image(task)
        return
    import multiprocessing

    # spawn, not fork: the parent may already hold TensorFlow's threads, which fork copies badly.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_initialise_worker, initargs=(options,)) as pool:
        yield from pool.imap(process_image, tasks, chunksize=8)
