"""Nearest-neighbour sources that share one output form, :class:`Neighbours`.

Every source — learned embeddings (``tf_shopee.matching.topk``), TF-IDF over titles
(``tf_shopee.neighbours.tfidf``) and image_phash Hamming distance (``tf_shopee.neighbours.phash``)
— returns the same thing, so thresholds, min2, blending and unions treat them alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Neighbours:
    """The k nearest catalog items of each query, best first.

    Attributes:
        indices: int32 array (num_queries, k): catalog row of each neighbour, -1 where a query has
            fewer than k candidates (padding sits at the end of the row).
        scores: float32 array (num_queries, k): similarity of each neighbour, higher is closer
            (cosine for embeddings and TF-IDF, ``1 - hamming / 64`` for phash); ``-inf`` at padding.
            Each row is sorted in decreasing score.
    """

    indices: np.ndarray
    scores: np.ndarray

    def __post_init__(self):
        self.indices = np.asarray(self.indices, dtype=np.int32)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if self.indices.shape != self.scores.shape or self.indices.ndim != 2:
            raise ValueError(
                f"indices {self.indices.shape} and scores {self.scores.shape} "
                "must be equal 2-D shapes"
            )

    @property
    def num_queries(self) -> int:
        """Number of query rows."""
        return self.indices.shape[0]

    @property
    def k(self) -> int:
        """Number of neighbour slots per row."""
        return self.indices.shape[1]

    def without_queries(self, rows) -> "Neighbours":
        """These lists with the lists of query ``rows`` emptied (query-vs-catalogue neighbours
        of queries a source has no real data for, such as an unusable photo)."""
        rows = np.asarray(sorted(rows), dtype=np.int64)
        if rows.size == 0:
            return self
        indices, scores = self.indices.copy(), self.scores.copy()
        indices[rows], scores[rows] = -1, -np.inf
        return Neighbours(indices, scores)

    def without_rows(self, rows) -> "Neighbours":
        """These self-matching lists with ``rows`` left out of the source: their own lists are
        empty (a posting still matches itself) and no other list holds them.

        For postings a source has no real data for, such as an image model and a posting whose
        photo is unusable: they are matched by the other sources only.
        """
        rows = np.asarray(sorted(rows), dtype=np.int64)
        if rows.size == 0:
            return self
        indices = self.indices.copy()
        scores = self.scores.copy()
        drop = np.isin(indices, rows)
        drop[rows[rows < self.num_queries]] = True
        indices[drop] = -1
        scores[drop] = -np.inf
        # Padding goes back to the end of each row, the order of the rest kept.
        order = np.argsort(-scores, axis=1, kind="stable")
        return Neighbours(
            np.take_along_axis(indices, order, axis=1), np.take_along_axis(scores, order, axis=1)
        )

def subset_neighbours(neighbours: Neighbours, keep: np.ndarray) -> Neighbours:
    """Self-matching neighbours of the rows where ``keep`` is true, among those rows only.

    Rows and indices are renumbered to the kept rows (in order); neighbours outside the subset
    are dropped and the survivors move forward, padding the row end. Used to simulate a smaller
    pool from the neighbours of a bigger one: exact for neighbours that depend only on the two
    postings (cosines of embeddings, phash distances), as long as the lists are long enough.
    """
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (neighbours.num_queries,):
        raise ValueError(f"keep has shape {keep.shape}, expected ({neighbours.num_queries},)")
    kept_rows = np.flatnonzero(keep)
    renumbered = np.full(keep.shape[0], -1, dtype=np.int64)
    renumbered[kept_rows] = np.arange(kept_rows.shape[0])
    indices = neighbours.indices[kept_rows]
    scores = neighbours.scores[kept_rows]
    inside = (indices >= 0) & keep[np.clip(indices, 0, None)]
    order = np.argsort(~inside, axis=1, kind="stable")
    new_indices = np.where(inside, renumbered[np.clip(indices, 0, None)], -1)
    return Neighbours(
        np.take_along_axis(new_indices, order, axis=1),
        np.take_along_axis(np.where(inside, scores, -np.inf), order, axis=1),
    )
