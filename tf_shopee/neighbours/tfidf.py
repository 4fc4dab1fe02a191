"""TF-IDF title neighbours: a matching source that needs no trained model.

Titles are turned into L2-normalised scikit-learn TF-IDF vectors (word or ``char_wb`` n-grams);
the cosine similarity of two titles is the dot product of their sparse vectors. The queries are
multiplied by the transposed catalog in row chunks (sparse × sparse, so only pairs sharing a term
are ever touched) and the exact top-k of each row is read straight from the sparse product,
without densifying it:

1. a histogram of each row's scores (one ``np.bincount`` over the whole chunk) gives, per row, the
   score bucket that holds its k-th best candidate;
2. only the entries at or above that bucket survive (a little more than k per row) and are sorted
   exactly by (row, score descending, catalog index ascending).

Densifying each chunk and running ``np.argpartition`` or ``tf.math.top_k`` over it, the usual
pattern, spends most of its time on the roughly 95 % of pairs that share no word; see
``benchmarks/quality_real.py`` for the measured times.

Candidates are the catalog titles sharing at least one term with the query: a pair with cosine 0
is never a neighbour, so rows are padded with ``-1`` / ``-inf`` when fewer than ``k`` candidates
exist. An empty (or all-stop-word) title therefore has no neighbours at all, itself included.
In self-matching a posting is its own neighbour (cosine 1) like any other candidate.
"""

from __future__ import annotations

import html
import math
import re
from typing import Sequence

import numpy as np
import scipy.sparse as sparse

from tf_shopee.errors import UserError
from tf_shopee.neighbours import Neighbours

ANALYZERS = ("word", "char", "char_wb")

# Bytes the chunk's sparse product may need per stored pair: float32 score, int32 column, int64
# row id and bucket code, and the survivor mask; used to turn --max-chunk-mb into rows per chunk.
_BYTES_PER_PRODUCT_ENTRY = 32
# Histogram resolution of the per-row cut-off; finer buckets leave fewer survivors to sort.
_SCORE_BUCKETS = 1024


def tfidf_neighbours(
    titles: Sequence[str],
    *,
    k: int = 51,
    analyzer: str = "word",
    ngram_range: tuple[int, int] = (1, 1),
    max_features: int | None = None,
    max_chunk_mb: float = 256,
    min_score: float | None = None,
    vectorizer=None,
    catalog_titles: Sequence[str] | None = None,
    clean_titles: bool = False,
) -> Neighbours:
    """Return the ``k`` most similar catalog titles of each title by TF-IDF cosine similarity.

    Args:
        titles: the query titles. Missing values (``None``, NaN) count as empty titles.
        k: neighbours per query (rows are padded with ``-1`` / ``-inf`` beyond the candidates).
        analyzer: ``"word"``, ``"char"`` or ``"char_wb"`` (scikit-learn ``TfidfVectorizer``).
        ngram_range: n-gram lengths, e.g. ``(1, 1)`` for words or ``(3, 5)`` for characters.
        max_features: keep only the most frequent terms (``None``: all).
        max_chunk_mb: memory budget of one chunk of the sparse product; sets the rows per chunk.
        min_score: drop neighbours whose cosine is below this (also makes the search faster).
        vectorizer: an optional scikit-learn vectorizer to use instead of the ``analyzer`` /
            ``ngram_range`` / ``max_features`` arguments. A fitted one only transforms; an
            unfitted one is cloned and fitted on the catalog. Its rows are L2-normalised here.
        catalog_titles: match ``titles`` against these instead of against themselves; the
            vocabulary and IDF weights are then learned from the catalog.
        clean_titles: undo the byte escapes and HTML entities of scraped titles first
            (:func:`clean_title`).

    Returns:
        :class:`Neighbours` with indices into the catalog (``titles`` itself when no catalog).

    Raises:
        UserError: on a bad option or a title that is not a string.

    Example:
        >>> result = tfidf_neighbours(["red shoe", "red shoes", "blue hat"], k=2)
        >>> result.indices.tolist()
        [[0, 1], [1, 0], [2, -1]]
    """
    if k < 1:
        raise UserError(f"k must be at least 1, got {k}")
    if max_chunk_mb <= 0:
        raise UserError(f"max_chunk_mb must be positive, got {max_chunk_mb}")
    query_vectors, catalog_vectors = tfidf_vectors(
        titles,
        catalog=catalog_titles,
        analyzer=analyzer,
        ngram_range=ngram_range,
        max_features=max_features,
        vectorizer=vectorizer,
        clean_titles=clean_titles,
    )
    return sparse_top_k(
        query_vectors, catalog_vectors, k=k, max_chunk_mb=max_chunk_mb, min_score=min_score
    )


def tfidf_vectors(
    titles: Sequence[str],
    *,
    catalog: Sequence[str] | None = None,
    analyzer: str = "word",
    ngram_range: tuple[int, int] = (1, 1),
    max_features: int | None = None,
    vectorizer=None,
    clean_titles: bool = False,
    return_vectorizer: bool = False,
) -> tuple:
    """L2-normalised float32 TF-IDF rows of ``titles`` and of ``catalog`` (``titles`` when None).

    The vectorizer is fitted on the catalog (see :func:`tfidf_neighbours` for the arguments).
    When every title is empty (no vocabulary) both matrices have zero columns. With
    ``return_vectorizer`` the fitted vectorizer (``None`` for an empty vocabulary) comes third.
    """
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize
    from sklearn.utils.validation import check_is_fitted

    queries = _as_title_list(titles, "titles")
    corpus = queries if catalog is None else _as_title_list(catalog, "catalog_titles")
    if clean_titles:
        queries = [clean_title(title) for title in queries]
        corpus = queries if catalog is None else [clean_title(title) for title in corpus]
    if vectorizer is None:
        if analyzer not in ANALYZERS:
            raise UserError(f"analyzer must be one of {ANALYZERS}, got {analyzer!r}")
        low, high = ngram_range
        if not 1 <= low <= high:
            raise UserError(
                f"ngram_range must be (low, high) with 1 <= low <= high, got {ngram_range}"
            )
        vectorizer = TfidfVectorizer(
            analyzer=analyzer, ngram_range=(low, high), max_features=max_features, dtype=np.float32
        )
        fitted = False
    else:
        try:
            check_is_fitted(vectorizer)
            fitted = True
        except NotFittedError:
            vectorizer = clone(vectorizer)
            fitted = False
    try:
        if fitted:
            catalog_vectors = vectorizer.transform(corpus)
        else:
            catalog_vectors = vectorizer.fit_transform(corpus)
    except ValueError as error:
        if "empty vocabulary" not in str(error):
            raise
        # Nothing but empty or stop-word titles: no pair shares a term, so nothing matches.
        empty = sparse.csr_matrix((len(corpus), 0), dtype=np.float32)
        result = (sparse.csr_matrix((len(queries), 0), dtype=np.float32), empty)
        return (*result, None) if return_vectorizer else result
    query_vectors = catalog_vectors if catalog is None else vectorizer.transform(queries)

    def prepare(matrix) -> sparse.csr_matrix:
        return normalize(sparse.csr_matrix(matrix, dtype=np.float32), norm="l2", copy=False)

    result = (prepare(query_vectors), prepare(catalog_vectors))
    return (*result, vectorizer) if return_vectorizer else result


def sparse_top_k(
    query_vectors: sparse.spmatrix,
    catalog_vectors: sparse.spmatrix,
    *,
    k: int = 51,
    max_chunk_mb: float = 256,
    min_score: float | None = None,
) -> Neighbours:
    """Exact top-k inner products between the rows of two sparse matrices.

    Only stored (non-zero) products are candidates. Ties are broken by the lower catalog index, as
    ``tf.math.top_k`` does, so the result is deterministic.

    Args:
        query_vectors: (num_queries, num_features) sparse matrix.
        catalog_vectors: (num_catalog, num_features) sparse matrix.
        k: neighbours per query.
        max_chunk_mb: memory budget of one chunk of the product.
        min_score: keep only products at or above this value.
    """
    query_vectors = sparse.csr_matrix(query_vectors, dtype=np.float32)
    catalog_transposed = sparse.csr_matrix(catalog_vectors, dtype=np.float32).T.tocsr()
    num_queries, num_catalog = query_vectors.shape[0], catalog_transposed.shape[1]
    if query_vectors.shape[1] != catalog_transposed.shape[0]:
        raise ValueError(
            f"queries have {query_vectors.shape[1]} features, catalog {catalog_transposed.shape[0]}"
        )
    indices = np.full((num_queries, k), -1, dtype=np.int32)
    scores = np.full((num_queries, k), -np.inf, dtype=np.float32)
    if num_queries == 0 or num_catalog == 0:
        return Neighbours(indices, scores)
    # Budget for the worst case (every pair shares a term) so memory stays bounded on any input.
    bytes_per_query_row = num_catalog * _BYTES_PER_PRODUCT_ENTRY
    chunk_rows = max(1, int(max_chunk_mb * 2**20 // bytes_per_query_row))
    for start in range(0, num_queries, chunk_rows):
        stop = min(start + chunk_rows, num_queries)
        product = (query_vectors[start:stop] @ catalog_transposed).tocsr()
        chunk_indices, chunk_scores = _csr_row_top_k(product, k, min_score)
        indices[start:stop] = chunk_indices
        scores[start:stop] = chunk_scores
    return Neighbours(indices, scores)


def _csr_row_top_k(
    product: sparse.csr_matrix, k: int, min_score: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k stored entries of each row of a CSR matrix, padded with -1 / -inf."""
    num_rows = product.shape[0]
    values = product.data
    columns = product.indices
    row_counts = np.diff(product.indptr)
    row_ids = np.repeat(np.arange(num_rows, dtype=np.int32), row_counts)
    if min_score is not None:
        keep = values >= min_score
        values, columns, row_ids = values[keep], columns[keep], row_ids[keep]
        row_counts = np.bincount(row_ids, minlength=num_rows)
    if values.size and row_counts.max() > k:
        values, columns, row_ids = _histogram_prune(values, columns, row_ids, num_rows, k)
    # Exact order of the survivors: row, then score descending, then column ascending.
    order = np.lexsort((columns, -values, row_ids))
    values, columns, row_ids = values[order], columns[order], row_ids[order]
    first_of_row = np.searchsorted(row_ids, np.arange(num_rows))
    rank = np.arange(row_ids.size) - first_of_row[row_ids]
    keep = rank < k
    out_indices = np.full((num_rows, k), -1, dtype=np.int32)
    out_scores = np.full((num_rows, k), -np.inf, dtype=np.float32)
    out_indices[row_ids[keep], rank[keep]] = columns[keep]
    out_scores[row_ids[keep], rank[keep]] = values[keep]
    return out_indices, out_scores


def _histogram_prune(values, columns, row_ids, num_rows: int, k: int):
    """Drop entries that cannot be in their row's top k, using one score histogram per row.

    Each row keeps every entry in the buckets down to (and including) the one where its count of
    better-or-equal entries first reaches ``k``; nothing that belongs to the top k is dropped.
    """
    low = values.min()
    high = values.max()
    scale = np.float32((_SCORE_BUCKETS - 1) / (high - low) if high > low else 0.0)
    # Higher score → lower bucket number, so a forward cumulative sum counts better entries.
    # float32 and int32 arithmetic: this runs over every stored pair of the chunk.
    buckets = ((high - values) * scale).astype(np.int32)
    np.clip(buckets, 0, _SCORE_BUCKETS - 1, out=buckets)
    codes = row_ids.astype(np.int64) * _SCORE_BUCKETS + buckets
    histogram = np.bincount(codes, minlength=num_rows * _SCORE_BUCKETS)
    better_or_equal = np.cumsum(histogram.reshape(num_rows, _SCORE_BUCKETS), axis=1)
    # First bucket where the running count reaches k; rows with fewer than k keep everything.
    cutoff = np.argmax(better_or_equal >= k, axis=1).astype(np.int32)
    cutoff[better_or_equal[:, -1] < k] = _SCORE_BUCKETS - 1
    keep = buckets <= cutoff[row_ids]
    return values[keep], columns[keep], row_ids[keep]


def _as_title_list(titles, name: str) -> list[str]:
    """Titles as a list of strings; ``None`` and NaN become ``""``, other non-strings are errors."""
    cleaned = []
    for row, title in enumerate(titles):
        if isinstance(title, str):
            cleaned.append(title)
        elif title is None or (isinstance(title, float) and math.isnan(title)):
            cleaned.append("")
        else:
            raise UserError(f"{name}[{row}] is {type(title).__name__} {title!r}, expected a string")
    return cleaned


# A run of literal byte escapes such as "\xe2\x9d\xa4" (how the scraped Shopee titles spell
# emoji and accented letters; 671 of the 34,250 real titles have them).
_BYTE_ESCAPES = re.compile(r"(?:\\x[0-9a-fA-F]{2})+")


def clean_title(title: str) -> str:
    """Undo the encodings scraped Shopee titles carry, so they tokenise like the visible text.

    Literal UTF-8 byte escapes (``"Nescafe \\\\xc3\\\\x89clair"``) are decoded (``"Nescafe
    Éclair"``) and HTML entities (``&amp;``) unescaped. Without this, every emoji becomes the
    tokens ``xe2``, ``x9d``, ... which then make unrelated titles look alike.

    Example:
        >>> clean_title("\\\\xe2\\\\x9d\\\\xa4 RATU &amp; co")
        '❤ RATU & co'
    """

    def decode(match: re.Match) -> str:
        raw = bytes(int(pair, 16) for pair in match.group(0).split("\\x")[1:])
        return raw.decode("utf-8", errors="replace")

    return html.unescape(_BYTE_ESCAPES.sub(decode, title))


def filter_by_cosine(
    neighbours: Neighbours,
    query_vectors: sparse.spmatrix,
    min_cosine: float,
    *,
    catalog_vectors: sparse.spmatrix | None = None,
) -> Neighbours:
    """Keep only the neighbours whose vectors' cosine (dot product) is at least ``min_cosine``.

    Used to ask another source for agreement, e.g. phash neighbours a dozen bits apart are mostly
    different products, but those whose titles also share words are mostly the same one. Scores
    are left as they were; removed entries are replaced by moving the survivors forward and
    padding the row end with ``-1`` / ``-inf``.

    Args:
        neighbours: any source's neighbours of the query rows.
        query_vectors: (num_queries, F) L2-normalised sparse rows (e.g. from :func:`tfidf_vectors`).
        min_cosine: lowest accepted cosine between a query and a neighbour.
        catalog_vectors: rows the neighbour indices point into (default: ``query_vectors``).
    """
    query_vectors = sparse.csr_matrix(query_vectors, dtype=np.float32)
    catalog_vectors = (
        query_vectors
        if catalog_vectors is None
        else sparse.csr_matrix(catalog_vectors, dtype=np.float32)
    )
    indices, scores = neighbours.indices, neighbours.scores
    if query_vectors.shape[0] != neighbours.num_queries:
        raise UserError(
            f"{query_vectors.shape[0]} query vectors for {neighbours.num_queries} neighbour rows"
        )
    row_ids, slots = np.nonzero(indices >= 0)
    columns = indices[row_ids, slots]
    cosines = np.asarray(
        query_vectors[row_ids].multiply(catalog_vectors[columns]).sum(axis=1)
    ).ravel()
    keep = np.zeros(indices.shape, dtype=bool)
    keep[row_ids, slots] = cosines >= min_cosine
    # A stable sort on "dropped" moves the kept slots forward in their original order.
    order = np.argsort(~keep, axis=1, kind="stable")
    kept_indices = np.take_along_axis(np.where(keep, indices, -1), order, axis=1)
    kept_scores = np.take_along_axis(np.where(keep, scores, -np.inf), order, axis=1)
    return Neighbours(kept_indices, kept_scores)
