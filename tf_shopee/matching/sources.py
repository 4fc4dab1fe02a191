"""Sources: the lists of neighbours a run matches with, their names and kinds, and the
embeddings behind them.

Every source gives each posting its nearest postings (:class:`tf_shopee.neighbours.Neighbours`):

* one per exported model, named by its kind (``image``, ``text``, ``multimodal``; a second model
  of one kind is ``kind:<folder name>``);
* ``concat``: the image and text embeddings concatenated (when both kinds are present);
* ``tfidf``: the titles (:mod:`tf_shopee.matching.model_free`);
* ``phash`` and ``phash_text``: photos a few bits apart, and those whose titles also agree.

This module is the one place those names, their kinds and the embedding of postings by every
model (plus the concatenation) are defined: predict.py, the catalogue and its queries use it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tf_shopee.errors import UserError
from tf_shopee.matching.embedding import DEFAULT_BATCH_SIZE, embed_postings
from tf_shopee.matching.postings import Postings
from tf_shopee.matching.topk import as_embeddings, l2_normalise
from tf_shopee.models.kind import MODEL_KINDS, ModelKind
from tf_shopee.neighbours import Neighbours

logger = logging.getLogger(__name__)

COMBINED = "combined"  # the union of the sources a decision keeps, with min2: the submission
CONCAT = "concat"
TFIDF = "tfidf"
PHASH = "phash"
PHASH_TEXT = "phash_text"

# Every kind of source: one per model kind, their concatenation, the model-free ones.
SOURCE_KINDS = (*MODEL_KINDS, CONCAT, TFIDF, PHASH, PHASH_TEXT)
# Sources made of embeddings (they can be blended with their neighbours).
EMBEDDING_KINDS = (*MODEL_KINDS, CONCAT)
# Sources whose thresholds are Hamming distances in bits.
PHASH_KINDS = (PHASH, PHASH_TEXT)


def source_kind(name: str) -> str:
    """The kind of a source name: ``"text"`` for ``"text"`` and ``"text:bert"``."""
    return name.split(":", 1)[0]


def is_phash_source(name: str) -> bool:
    """Whether a source's thresholds are phash Hamming distances in bits."""
    return source_kind(name) in PHASH_KINDS


def check_source_name(name, *, where: str) -> str:
    """``name`` when it names a kind of source a run can build; UserError otherwise."""
    if not isinstance(name, str) or source_kind(name) not in SOURCE_KINDS:
        raise UserError(
            f"{where}: unknown source {name!r}; sources are {', '.join(SOURCE_KINDS)} "
            "(two models of one kind: '<kind>:<model folder name>')"
        )
    return name


def model_source_name(kind: ModelKind, directory: str | Path, taken: Sequence[str]) -> str:
    """The source name of a model: its kind, or ``kind:<folder name>`` when a model of the same
    kind already has the plain name.

    Raises:
        UserError: when that name is taken too (two models of one kind in folders of one name).
    """
    name = str(kind)
    if name in taken:
        name = f"{kind}:{Path(directory).name}"
    if name in taken:
        raise UserError(f"--model {directory}: two models would both be called {name!r}")
    return name


def concat_parts(kinds: Mapping[str, ModelKind]) -> list[str] | None:
    """The (image, text) source names whose concatenation forms ``concat``: the first image and
    the first text model, in order; None without both."""
    image = [name for name, kind in kinds.items() if kind is ModelKind.IMAGE]
    text = [name for name, kind in kinds.items() if kind is ModelKind.TEXT]
    return [image[0], text[0]] if image and text else None


def concat_embeddings(*embeddings_list, weights: Sequence[float] | None = None) -> np.ndarray:
    """Concatenate several embeddings of the same postings into one normalised embedding.

    Each part is L2-normalised, scaled by ``sqrt(weight)``, the parts are concatenated and the
    result renormalised. The cosine of two concatenated embeddings is then the weighted mean of
    the parts' cosines, ``sum(w_m * cos_m) / sum(w_m)`` (the 1st-place "comb" embedding: image and
    text evidence that are both moderate add up). Match it as a source of its own.

    Args:
        *embeddings_list: (N, D_m) arrays with the same N.
        weights: one non-negative weight per part (default: all equal).

    Returns:
        (N, sum D_m) float32, L2-normalised (an all-zero row stays zero).
    """
    if not embeddings_list:
        raise UserError("concat_embeddings needs at least one embedding matrix")
    parts = [
        as_embeddings(part, f"embeddings {number}") for number, part in enumerate(embeddings_list)
    ]
    num_rows = parts[0].shape[0]
    for number, part in enumerate(parts):
        if part.shape[0] != num_rows:
            raise UserError(
                f"embeddings {number} has {part.shape[0]} rows, embeddings 0 has {num_rows}"
            )
    if weights is None:
        weights = [1.0] * len(parts)
    weights = [float(weight) for weight in weights]
    if len(weights) != len(parts):
        raise UserError(f"got {len(weights)} weights for {len(parts)} embedding matrices")
    if any(weight < 0 or not math.isfinite(weight) for weight in weights) or sum(weights) == 0:
        raise UserError(f"weights must be finite, non-negative and not all zero, got {weights}")
    scaled = [l2_normalise(part) * math.sqrt(weight) for part, weight in zip(parts, weights)]
    return l2_normalise(np.concatenate(scaled, axis=1))


def embed_sources(
    models: Mapping[str, object],
    postings: Postings,
    *,
    use_concat: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    cache_dir: str = "",
    progress: bool = True,
    skip_missing_inputs: bool = False,
    views=None,
) -> dict[str, np.ndarray]:
    """Embed ``postings`` with every model, and add ``concat`` when an image and a text model
    are both present (and ``use_concat``).

    Args:
        models: source name → loaded export (:func:`tf_shopee.export.load_exported`).
        postings: what to embed; photos that cannot be used are recorded in ``bad_images``.
        use_concat: add the ``concat`` source.
        batch_size, cache_dir, progress: see :func:`tf_shopee.matching.embedding.embed_postings`.
        skip_missing_inputs: leave out models whose input the postings lack (a title-only
            catalogue query has no photo), instead of an error.
        views: test-time views of the photos (a :class:`~tf_shopee.data.views.ViewSpec`),
            averaged per posting; used by image models only.

    Returns:
        source name → (N, D) float32 L2-normalised embeddings.
    """
    has_titles = any(title.strip() for title in postings.titles)
    embeddings, kinds = {}, {}
    for name, model in models.items():
        kind = ModelKind(model.kind)
        lacks = ((kind.uses_images and not postings.has_images)
                 or (kind.uses_titles and not has_titles))
        if skip_missing_inputs and lacks:
            continue
        embeddings[name] = embed_postings(
            model, postings, batch_size=batch_size, cache_dir=cache_dir, progress=progress,
            views=views if kind is ModelKind.IMAGE else None)
        kinds[name] = kind
    viewed = views is not None and views.count > 1
    if viewed and ModelKind.IMAGE not in kinds.values():
        logger.warning("--tta applies to image models only: %s embedded without test-time views",
                       ", ".join(f"{name} ({kind})" for name, kind in kinds.items()) or "nothing")
    parts = concat_parts(kinds) if use_concat else None
    if parts:
        embeddings[CONCAT] = concat_embeddings(*(embeddings[name] for name in parts))
    return embeddings


def image_based_sources(kinds: Mapping[str, ModelKind]) -> set[str]:
    """The embedding sources that depend on the photos (and ``concat`` when one does)."""
    names = {name for name, kind in kinds.items() if kind.uses_images}
    return names | {CONCAT} if names else names


@dataclass
class Sources:
    """Neighbours per source, and the embeddings of the embedding sources (for blending).

    Attributes:
        neighbours: source name → its neighbours of every posting.
        embeddings: embedding source name → (N, D) embeddings.
        model_thresholds: model source name → the threshold its export carries (validation).
        image_based: embedding sources that depend on photos: postings whose photo cannot be
            used are left out of their neighbours (``bad_rows``).
        bad_rows: those postings' rows.
    """

    neighbours: dict = field(default_factory=dict)
    embeddings: dict = field(default_factory=dict)
    model_thresholds: dict = field(default_factory=dict)
    image_based: set = field(default_factory=set)
    bad_rows: tuple = ()

    def usable(self, name: str, neighbours: Neighbours) -> Neighbours:
        """``neighbours`` of source ``name`` without the postings whose photo cannot be used,
        when the source is built on photos."""
        if name in self.image_based and self.bad_rows:
            return neighbours.without_rows(self.bad_rows)
        return neighbours


@dataclass
class PlannedSources:
    """The sources a run will build, known before any model is loaded or any embedding made.

    Attributes:
        names: every source name, in the order they are built.
        model_dirs: model source name → its export folder.
        model_thresholds: model source name → the threshold its export carries.
    """

    names: list[str]
    model_dirs: dict[str, str] = field(default_factory=dict)
    model_thresholds: dict[str, float] = field(default_factory=dict)


def plan_sources(
    model_metadata: Sequence[tuple[str, dict]],
    *,
    has_phashes: bool,
    use_tfidf: bool = True,
    use_phash: bool = True,
    use_concat: bool = True,
) -> PlannedSources:
    """The names of the sources a self-matching run builds.

    Args:
        model_metadata: ``(export folder, export metadata)`` per ``--model``, in order.
        has_phashes: whether the postings carry image_phash values.
        use_tfidf, use_phash, use_concat: the switches of the run.

    Raises:
        UserError: when nothing would be built.
    """
    planned = PlannedSources(names=[])
    kinds: dict[str, ModelKind] = {}
    for model_dir, metadata in model_metadata:
        kind = ModelKind.parse(metadata["kind"], where=f"model {model_dir}")
        name = model_source_name(kind, model_dir, planned.names)
        planned.names.append(name)
        planned.model_dirs[name] = model_dir
        kinds[name] = kind
        if metadata.get("threshold") is not None:
            planned.model_thresholds[name] = metadata["threshold"]
    if use_concat and concat_parts(kinds):
        planned.names.append(CONCAT)
    has_phashes = use_phash and has_phashes
    if use_tfidf:
        planned.names.append(TFIDF)
        if has_phashes:
            planned.names += [PHASH, PHASH_TEXT]
    elif has_phashes:
        planned.names.append(PHASH)
    if not planned.names:
        raise UserError(
            "nothing to match with: give --model, or keep TF-IDF (drop --no-tfidf), or a CSV with "
            "image_phash"
        )
    return planned
