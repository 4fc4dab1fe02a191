"""Neighbourhood blending (INB, query expansion): one implementation for every source.

Each row becomes the L2-normalised, similarity-weighted sum of itself and its neighbours::

    v_i' = normalise(v_i + sum_j w_ij v_j),   w_ij = max over graphs of s_ij (s_ij >= threshold)

Postings of one product pull each other together, so the match step that follows separates
groups better: the post-processing of the 1st-place Shopee solution, and query expansion /
database-side augmentation from image retrieval ("From Embeddings to Matches", Kaggle discussion
238136). Several neighbour graphs may vote, e.g. a source's own neighbours and the photos a few
bits apart, so two postings of one product that share the same photo but few words pull each
other (and their neighbours) together.

The same function blends dense embeddings (``image``, ``text``, ``concat``) and sparse TF-IDF
title vectors (:mod:`tf_shopee.matching.model_free`); :func:`blend_query_rows` blends catalogue
queries with their catalogue neighbours exactly as a posting is blended in self-matching.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sparse

from tf_shopee.errors import UserError
from tf_shopee.neighbours import Neighbours

# Photos at most this many bits apart are blended into an embedding source when the search tries
# blending with the photo graph (the model-free TF-IDF source's setting).
BLEND_PHASH_BITS = 4


def graph_weights(
    graphs: Sequence[tuple[Neighbours, float]],
    num_rows: int,
    num_columns: int,
    *,
    self_matching: bool,
) -> sparse.csr_matrix:
    """(rows, columns) blending weights: per pair the highest score over ``graphs`` of a neighbour
    scoring at least that graph's threshold (a row's own index is skipped in self-matching)."""
    weights = sparse.csr_matrix((num_rows, num_columns), dtype=np.float32)
    for neighbours, threshold in graphs:
        if neighbours.num_queries != num_rows:
            raise UserError(
                f"a blending graph has {neighbours.num_queries} rows but there are {num_rows} "
                "vectors to blend"
            )
        selected = (neighbours.scores >= threshold) & (neighbours.indices >= 0)
        if self_matching:
            rows = np.arange(num_rows, dtype=np.int32)[:, np.newaxis]
            selected &= neighbours.indices != rows
        row_ids, slots = np.nonzero(selected)
        graph = sparse.csr_matrix(
            (neighbours.scores[row_ids, slots], (row_ids, neighbours.indices[row_ids, slots])),
            shape=(num_rows, num_columns),
            dtype=np.float32,
        )
        graph.sum_duplicates()
        weights = weights.maximum(graph)
    return weights


def blend_rows(vectors, graphs: Sequence[tuple[Neighbours, float]]):
    """One round of blending of the rows of ``vectors`` over self-matching neighbour ``graphs``.

    Args:
        vectors: (N, F) L2-normalised rows: a dense array (embeddings) or a sparse matrix
            (TF-IDF titles, too wide to densify).
        graphs: ``(neighbours, threshold)`` pairs of self-matching neighbours of the same N rows;
            neighbours scoring ``>= threshold`` (other than the row itself) are blended in.

    Returns:
        (N, F) float32 rows, L2-normalised (an all-zero row stays zero): a dense array for dense
        input, CSR for sparse input.
    """
    from sklearn.preprocessing import normalize  # scikit-learn costs a second at import

    dense = not sparse.issparse(vectors)
    matrix = sparse.csr_matrix(vectors, dtype=np.float32)
    num_rows = matrix.shape[0]
    weights = graph_weights(graphs, num_rows, num_rows, self_matching=True)
    weights = weights + sparse.identity(num_rows, dtype=np.float32, format="csr")
    blended = normalize(weights @ matrix, norm="l2", copy=False).astype(np.float32)
    return np.asarray(blended.todense(), dtype=np.float32) if dense else blended


def blend_query_rows(
    query_vectors: sparse.spmatrix,
    catalog_vectors: sparse.spmatrix,
    graphs: Sequence[tuple[Neighbours, float]],
) -> sparse.csr_matrix:
    """:func:`blend_rows` for queries against a catalogue: each query row becomes
    ``normalise(q + sum_j w_qj c_j)`` over its catalogue neighbours ``j`` in ``graphs``
    (neighbours of the queries, indices into ``catalog_vectors``), with the catalogue rows as
    they were before the catalogue's own blending, exactly as a posting is blended in
    self-matching."""
    from sklearn.preprocessing import normalize

    query_vectors = sparse.csr_matrix(query_vectors, dtype=np.float32)
    catalog_vectors = sparse.csr_matrix(catalog_vectors, dtype=np.float32)
    weights = graph_weights(
        graphs, query_vectors.shape[0], catalog_vectors.shape[0], self_matching=False
    )
    blended = query_vectors + weights @ catalog_vectors
    return normalize(sparse.csr_matrix(blended), norm="l2", copy=False).astype(np.float32)


def blend_embeddings(embeddings: np.ndarray, neighbours: Neighbours, threshold: float, *,
                     phash_neighbours: Neighbours | None = None, phash_bits: float | None = None,
                     max_neighbours: int | None = None) -> np.ndarray:
    """One round of blending of an embedding source: each embedding becomes the normalised sum of
    itself and its neighbours scoring at least ``threshold`` (among its ``max_neighbours``
    nearest, itself included, when given), weighted by their scores, and (with ``phash_bits``)
    of the postings whose photos are at most that many bits apart (weighted by their phash
    score), as the model-free TF-IDF source blends titles.

    Raises:
        UserError: blending with photos asked for without phash neighbours.
    """
    if max_neighbours is not None:
        neighbours = Neighbours(neighbours.indices[:, :max_neighbours],
                                neighbours.scores[:, :max_neighbours])
    graphs = [(neighbours, threshold)]
    if phash_bits is not None:
        if phash_neighbours is None:
            raise UserError("blending with phash neighbours needs image_phash values (and no "
                            "--no-phash)")
        graphs.append((phash_neighbours, 1.0 - phash_bits / 64))
    return blend_rows(embeddings, graphs)
