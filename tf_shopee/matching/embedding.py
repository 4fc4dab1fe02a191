"""Embedding postings with exported models: batches, unusable photos, and a cache on disk.

:func:`embed_postings` is the one place a model is called on postings (predict.py, the catalogue
index and its queries all go through it). A photo that cannot be used costs only its own row: it
gets a zero embedding and a reason in ``postings.bad_images``, and its title and phash still
match it. Embeddings are cached by model identity and data identity, so choosing other
thresholds never embeds again.

Image models may embed several views of each photo (:mod:`tf_shopee.data.views`): test-time
augmentation averages them into one embedding (``views=parse_tta("flip,crop")``), catalogue-side
augmentation keeps them apart (:func:`embed_postings_views`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tf_shopee.data.images import image_problem
from tf_shopee.errors import UserError
from tf_shopee.export import model_fingerprint
from tf_shopee.io_utils import atomic_path, write_json_atomic
from tf_shopee.matching.postings import Postings
from tf_shopee.models.kind import ModelKind

logger = logging.getLogger("tf_shopee.matching")

DEFAULT_BATCH_SIZE = 64


def embed_postings(model, postings: Postings, *, batch_size: int = DEFAULT_BATCH_SIZE,
                   cache_dir: str = "", progress: bool = True, views=None) -> np.ndarray:
    """Embed ``postings`` with one loaded export (:func:`tf_shopee.export.load_exported`).

    Returns L2-normalised float32 embeddings, one row per posting. A posting whose image cannot
    be used (missing, empty, truncated, not an image) gets a row of zeros from an image or
    multimodal model and is added to ``postings.bad_images`` with the reason; the run goes on.
    Embeddings are cached in ``cache_dir`` (when given) under a key made of the model's identity
    and the data's, so running predict again with other thresholds does not embed again; a cache
    file that cannot be read is reported and replaced.

    Args:
        model: a loaded export (``kind``, ``directory``, ``embedding_dim``, ``embed``).
        postings: what to embed; ``bad_images`` is filled in.
        batch_size: postings per model call.
        cache_dir: folder of the embedding cache; empty: no cache.
        progress: show a progress bar.
        views: a :class:`~tf_shopee.data.views.ViewSpec` (image models): each photo's embedding
            is the normalised mean of its views' (test-time augmentation); None or a plain spec:
            the photo as the model's serving graph decodes it.
    """
    views = _checked_views(model, views)
    kind = ModelKind(model.kind)
    uses_images = kind.uses_images
    if uses_images and not postings.has_images:
        raise UserError(
            f"model {model.directory} is a {kind} model: give --images DIR (with an 'image' column "
            "in the CSV) or --tfrecords DIR converted with images"
        )
    cache_path = None
    if cache_dir:
        key = f"{_model_key(model)}-{postings.data_key()}"
        if views is not None:
            key += f"-views_{views.describe().replace(',', '_').replace('=', '')}"
        cache_path = Path(cache_dir) / f"{kind}-{key}.npy"
        cached = _read_cache(cache_path, (len(postings), model.embedding_dim), uses_images)
        if cached is not None:
            embeddings, bad_images = cached
            postings.bad_images.update(bad_images)
            logger.info("%s: embeddings read from cache %s", kind, cache_path)
            return embeddings
    started = time.perf_counter()
    embeddings = _embed_in_batches(model, kind, postings, batch_size=batch_size,
                                   progress=progress, views=views)
    if views is not None:
        from tf_shopee.data.views import mean_of_views

        embeddings = mean_of_views(embeddings)
    seconds = time.perf_counter() - started
    logger.info("%s: embedded %d postings%s in %.1f s (%.1f/s)", kind, len(postings),
                "" if views is None else f" ({views.count} views each: {views.describe()})",
                seconds, len(postings) / max(seconds, 1e-9))
    if cache_path is not None:
        if uses_images:
            # Written before the embeddings, which mark the entry complete.
            write_json_atomic(_bad_images_path(cache_path),
                              {str(row): reason for row, reason in postings.bad_images.items()})
        with atomic_path(cache_path) as temporary:
            with open(temporary, "wb") as stream:
                np.save(stream, embeddings)
    return embeddings


def _bad_images_path(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.stem + ".bad_images.json")


def _read_cache(cache_path: Path, shape: tuple[int, int], uses_images: bool):
    """``(embeddings, bad images)`` from a cache entry, or None when there is none or it is
    damaged (then a warning says so and the postings are embedded again)."""
    if not cache_path.is_file():
        return None
    try:
        embeddings = np.load(cache_path, allow_pickle=False)
        bad_images = {}
        if uses_images:
            payload = json.loads(_bad_images_path(cache_path).read_text(encoding="utf-8"))
            bad_images = {int(row): str(reason) for row, reason in payload.items()}
        problem = None
        if embeddings.shape != shape or embeddings.dtype != np.float32:
            problem = f"holds {embeddings.dtype} {embeddings.shape}, expected float32 {shape}"
        elif not np.isfinite(embeddings).all():
            problem = "holds NaN or infinity"
        elif uses_images and set(np.flatnonzero(~embeddings.any(axis=1))) != set(bad_images):
            problem = "does not agree with its list of unusable images"
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways
        problem = f"cannot be read ({type(error).__name__}: {error})"
    if problem is None:
        return embeddings, bad_images
    logger.warning("embedding cache %s %s: embedding again", cache_path, problem)
    return None


def embed_postings_views(model, postings: Postings, views, *,
                         batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True
                         ) -> np.ndarray:
    """float32 ``[N, V, D]``: every view of every posting's photo, each L2-normalised
    (catalogue-side augmentation: the views are searched as one item). Unusable photos get
    zeros and a reason in ``postings.bad_images``, as in :func:`embed_postings`."""
    views = _checked_views(model, views, plain_allowed=True)
    kind = ModelKind(model.kind)
    if not postings.has_images:
        raise UserError(f"model {model.directory}: catalogue views need photos (--images DIR "
                        "or TFRecords with images)")
    started = time.perf_counter()
    embeddings = _embed_in_batches(model, kind, postings, batch_size=batch_size,
                                   progress=progress, views=views)
    logger.info("%s: embedded %d postings x %d views (%s) in %.1f s", kind, len(postings),
                views.count, views.describe(), time.perf_counter() - started)
    return embeddings


def _checked_views(model, views, plain_allowed: bool = False):
    """``views`` when the model can embed them; None for no views at all."""
    if views is None or (views.is_plain and not plain_allowed):
        return None
    if model.kind != ModelKind.IMAGE or not hasattr(model, "embed_views"):
        raise UserError(f"test-time and catalogue views need an image model; {model.directory} "
                        f"is a {model.kind} model (drop --tta / --catalog-augment for it)")
    return views


def _model_key(model) -> str:
    """Identity of an export (a SavedModel folder or a ``.tflite`` file): its fingerprint."""
    fingerprint = getattr(model, "fingerprint", None) or model_fingerprint(model.directory)
    return fingerprint[:16]


def _embed_in_batches(model, kind: ModelKind, postings: Postings, *, batch_size: int,
                      progress: bool, views=None) -> np.ndarray:
    total = len(postings)
    uses_images, uses_titles = kind.uses_images, kind.uses_titles
    shape = (total, model.embedding_dim) if views is None else (total, views.count,
                                                                 model.embedding_dim)
    embeddings = np.zeros(shape, np.float32)

    def embed(images, titles):
        if views is not None:
            return model.embed_views(images, views, batch_size=batch_size)
        return model.embed(images=images, titles=titles, batch_size=batch_size)

    with tqdm(total=total, desc=f"embed {kind}", unit="posting",
              disable=not progress) as bar:
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            rows = list(range(start, stop))
            images = None
            if uses_images:
                rows, images = _usable_images(postings, rows)
            if rows:
                titles = [postings.titles[row] for row in rows] if uses_titles else None
                try:
                    embeddings[rows] = embed(images, titles)
                except UserError:
                    raise
                except Exception as error:
                    if not uses_images:
                        raise UserError(
                            f"cannot embed the titles of postings {postings.posting_ids[start]}"
                            f"..{postings.posting_ids[stop - 1]}: {_first_line(error)}"
                        ) from None
                    # An image Pillow reads but TensorFlow's decoder does not: find it.
                    for row, image in zip(rows, images):
                        try:
                            embeddings[row] = embed(
                                [image], [postings.titles[row]] if uses_titles else None)[0]
                        except Exception as row_error:  # noqa: BLE001
                            postings.bad_images[row] = (
                                f"{_image_name(postings, row)}: TensorFlow cannot decode it "
                                f"({_first_line(row_error)})"
                            )
            bar.update(stop - start)
    return embeddings


def _first_line(error: Exception) -> str:
    text = (getattr(error, "message", None) or str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _image_name(postings: Postings, row: int) -> str:
    if postings.image_names is not None:
        return postings.image_names[row]
    return f"the TFRecord image of posting {postings.posting_ids[row]}"


def _usable_images(postings: Postings, rows: list[int]) -> tuple[list[int], list[bytes]]:
    """The rows among ``rows`` whose image decodes, and their bytes; the others are recorded in
    ``postings.bad_images`` with the reason."""
    usable, images = [], []
    for row in rows:
        if row in postings.bad_images:
            continue
        name = _image_name(postings, row)
        if postings.image_bytes is not None:
            data = postings.image_bytes[row]
        else:
            try:
                with open(postings.image_paths[row], "rb") as stream:
                    data = stream.read()
            except OSError as error:
                postings.bad_images[row] = f"cannot read {name}: {error.strerror}"
                continue
        problem = image_problem(data, name)
        if problem is not None:
            postings.bad_images[row] = problem
            continue
        usable.append(row)
        images.append(data)
    return usable, images
