"""Nearest-neighbour sources that share one output form, :class:`Neighbours`.

Every source — learned embeddings (``tf_shopee.matching``), TF-IDF over titles
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
