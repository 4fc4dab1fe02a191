"""The neighbour sources that need no trained model, built together: titles and image_phash.

Three sources come out, each a :class:`~tf_shopee.neighbours.Neighbours` over the same postings
(self-matching), to be thresholded and united by :mod:`tf_shopee.matching.decision`:

``tfidf``
    word TF-IDF over the cleaned titles (:func:`~tf_shopee.neighbours.tfidf.clean_title`), with
    one round of sparse neighbourhood blending (:func:`~tf_shopee.matching.blend.blend_rows`):
    each title vector is mixed with those of its TF-IDF neighbours scoring at least
    ``blend_threshold`` *and* of its near-identical-photo neighbours (phash within
    ``blend_phash_distance`` bits), then the neighbours are searched again. Listings of one
    product that share a photo but few words get close, and so do their own neighbours.
``phash``
    image_phash Hamming neighbours (score ``1 - hamming / 64``) up to ``phash_max_distance``.
``phash_text``
    the ``phash`` neighbours whose (unblended) titles also agree, TF-IDF cosine at least
    ``agreement_min_cosine``: a dozen bits apart two photos are mostly different products, but
    not when their titles share words too.

On the real Shopee titles (``benchmarks/quality_real.py``) the shipped decision
:data:`tf_shopee.matching.decision.DEFAULT_DECISION` (TF-IDF alone, locally scaled, thresholds
following the pool size, min2) scores 0.819 mean F1 on the held-out fold 0 and 0.747 on the full
train set, against 0.780 and 0.697 for the plain TF-IDF (>= 0.55, min2) + phash (<= 8 bits)
union; settings and decision were chosen on GroupKFold folds 1+2 only.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Sequence

from tf_shopee.errors import UserError
from tf_shopee.matching.blend import blend_rows
from tf_shopee.matching.sources import PHASH, PHASH_TEXT, TFIDF
from tf_shopee.neighbours import Neighbours
from tf_shopee.neighbours.phash import phash_neighbours
from tf_shopee.neighbours.tfidf import filter_by_cosine, sparse_top_k, tfidf_vectors

logger = logging.getLogger("tf_shopee.matching")


@dataclass(frozen=True)
class ModelFreeSettings:
    """How the model-free sources are built (not their thresholds: see
    :mod:`tf_shopee.matching.decision`).

    Attributes:
        clean_titles: decode byte escapes and HTML entities in titles before TF-IDF.
        blend_threshold: TF-IDF neighbours scoring at least this are blended into each title
            vector; ``None`` switches blending off (plain TF-IDF neighbours).
        blend_phash_distance: phash neighbours within this many bits are blended in as well
            (weighted by their phash score); ``None`` leaves them out.
        blend_agreement_distance: ``phash_text`` neighbours (titles agree) within this many bits
            are blended in as well; ``None`` leaves them out.
        phash_max_distance: phash neighbours further than this are dropped (the largest distance
            any threshold may ask for).
        agreement_min_cosine: lowest title cosine of a ``phash_text`` neighbour.
        k: neighbours kept per posting in each source.
    """

    clean_titles: bool = True
    blend_threshold: float | None = 0.65
    blend_phash_distance: int | None = 4
    blend_agreement_distance: int | None = 14
    phash_max_distance: int = 20
    agreement_min_cosine: float = 0.25
    k: int = 51

    def to_dict(self) -> dict:
        """The settings as JSON-ready data."""
        return asdict(self)


DEFAULT_SETTINGS = ModelFreeSettings()


@dataclass
class ModelFreeState:
    """Everything the model-free sources are made of, kept so that new postings can be scored
    against a catalogue later (:mod:`tf_shopee.catalog`).

    Attributes:
        vectorizer: the fitted scikit-learn ``TfidfVectorizer`` (vocabulary and idf of the titles),
            or ``None`` when no title has a word.
        vectors: (N, F) L2-normalised TF-IDF rows of the cleaned titles.
        blended: the same rows after neighbourhood blending (``vectors`` when blending is off).
        sources: the ``tfidf``, ``phash`` and ``phash_text`` neighbours (see the module docstring).
    """

    vectorizer: object
    vectors: object
    blended: object
    sources: dict


def model_free_sources(
    titles: Sequence[str],
    hex_hashes: Sequence | None = None,
    *,
    settings: ModelFreeSettings = DEFAULT_SETTINGS,
    max_chunk_mb: float = 256,
) -> dict[str, Neighbours]:
    """Build the ``tfidf``, ``phash`` and ``phash_text`` neighbours of a set of postings.

    Args:
        titles: one title per posting (missing titles count as empty and match nothing).
        hex_hashes: the postings' image_phash values (16 hex digits); ``None`` when the data has
            none, in which case only ``tfidf`` is returned (blended with TF-IDF neighbours only).
        settings: see :class:`ModelFreeSettings`.
        max_chunk_mb: memory budget of one chunk of each similarity search.

    Returns:
        ``{"tfidf": ..., "phash": ..., "phash_text": ...}`` (the phash ones only with hashes), all
        self-matching over the postings in input order.

    Raises:
        UserError: when titles and hashes differ in length, or on a bad setting.
    """
    return model_free_state(
        titles, hex_hashes, settings=settings, max_chunk_mb=max_chunk_mb
    ).sources


def model_free_state(
    titles: Sequence[str],
    hex_hashes: Sequence | None = None,
    *,
    settings: ModelFreeSettings = DEFAULT_SETTINGS,
    max_chunk_mb: float = 256,
) -> ModelFreeState:
    """:func:`model_free_sources` with the fitted TF-IDF vectorizer and the (blended) title
    vectors it was computed from; same arguments."""

    if hex_hashes is not None and len(hex_hashes) != len(titles):
        raise UserError(f"{len(titles)} titles but {len(hex_hashes)} image_phash values")
    if settings.blend_threshold is not None and not 0.0 < settings.blend_threshold <= 1.0:
        raise UserError(f"blend_threshold must be in (0, 1], got {settings.blend_threshold}")
    vectors, _, vectorizer = tfidf_vectors(
        titles, clean_titles=settings.clean_titles, return_vectorizer=True
    )
    text = sparse_top_k(vectors, vectors, k=settings.k, max_chunk_mb=max_chunk_mb)
    sources: dict[str, Neighbours] = {}
    image = agreement = None
    if hex_hashes is not None:
        image = phash_neighbours(
            hex_hashes,
            k=settings.k,
            max_distance=settings.phash_max_distance,
            max_chunk_mb=max_chunk_mb,
        )
        agreement = filter_by_cosine(image, vectors, settings.agreement_min_cosine)
    blended = vectors
    if vectorizer is None:
        # No title has a term (all empty or punctuation): nothing to blend, tfidf finds nothing.
        logger.warning("none of the %d titles has a word TF-IDF can use (two letters or digits): "
                       "the tfidf source matches nothing", len(titles))
    graphs = blending_graphs(settings, text, image, agreement) if vectorizer is not None else []
    if graphs:
        blended = blend_rows(vectors, graphs)
        text = sparse_top_k(blended, blended, k=settings.k, max_chunk_mb=max_chunk_mb)
    sources[TFIDF] = text
    if image is not None:
        sources[PHASH] = image
        sources[PHASH_TEXT] = agreement
    return ModelFreeState(vectorizer=vectorizer, vectors=vectors, blended=blended, sources=sources)


def blending_graphs(
    settings: ModelFreeSettings,
    text: Neighbours,
    image: Neighbours | None,
    agreement: Neighbours | None,
) -> list[tuple[Neighbours, float]]:
    """The ``(neighbours, threshold)`` graphs a title vector is blended over (empty when blending
    is off): its TF-IDF neighbours, near-identical photos, and photos whose titles agree."""
    if settings.blend_threshold is None:
        return []
    graphs = [(text, settings.blend_threshold)]
    if image is not None and settings.blend_phash_distance is not None:
        graphs.append((image, 1.0 - settings.blend_phash_distance / 64))
    if agreement is not None and settings.blend_agreement_distance is not None:
        graphs.append((agreement, 1.0 - settings.blend_agreement_distance / 64))
    return graphs
