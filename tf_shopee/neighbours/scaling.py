"""Local scaling: scores made relative to how crowded each posting's neighbourhood is.

A fixed similarity threshold does not survive a change of catalogue size. In a pool three times
larger every posting has more look-alikes of other products, so the scores of its nearest
non-matches rise, and a threshold chosen on the small pool lets them in. On the real Shopee
titles the best TF-IDF threshold is about 0.56 inside one GroupKFold(3) fold (11,418 postings)
and 0.84 on all 34,250 (``benchmarks/quality_transfer.py``).

Local scaling judges each pair against the background of its two postings instead::

    scaled(i, j) = score(i, j) - beta * (background(i) + background(j)) / 2

where ``background(i)`` is the mean score of posting ``i``'s :data:`DEFAULT_WINDOW` nearest
*other* postings (its nearest neighbours, duplicates or not). A pair matches when its scaled
score reaches the threshold: a posting in a crowded neighbourhood needs a higher raw score. When
the pool grows, backgrounds rise with it and the effective threshold follows, which is why
thresholds chosen on a small labelled set transfer to a bigger catalogue. ``beta = 0`` is a plain
fixed threshold; the threshold search (:mod:`tf_shopee.matching.search`) chooses ``beta`` per
source.

This is the cross-domain similarity local scaling (CSLS) of Conneau et al., "Word Translation
Without Parallel Data" (2018), with the mean over a small window of nearest neighbours as the
local density and a tunable weight.

Everything here maps :class:`~tf_shopee.neighbours.Neighbours` to :class:`Neighbours`, so it works
for self-matching (a set against itself) and for queries against a catalogue: there the query's
background comes from its catalogue neighbours and the catalogue item's from the catalogue's own
self-matching neighbours.
"""

from __future__ import annotations

import numpy as np

from tf_shopee.errors import UserError
from tf_shopee.neighbours import Neighbours

# The background of a posting: the mean score of its nearest other postings at these ranks
# (0 = the nearest other). Chosen on fold 1 of the real Shopee titles (the 5 nearest gave the best
# fold-1 F1 of the windows (0,5), (0,10), (1,5), (1,10), (1,20), (2,8), (3,12), (5,15), (5,25),
# (8,20), (10,30), (20,50) for TF-IDF alone); see benchmarks/quality_transfer.py.
DEFAULT_WINDOW = (0, 5)


def other_slots(neighbours: Neighbours, *, self_matching: bool) -> np.ndarray:
    """Boolean (N, k) mask of the real neighbour slots that are not the query itself."""
    real = (neighbours.indices >= 0) & np.isfinite(neighbours.scores)
    if not self_matching:
        return real
    rows = np.arange(neighbours.num_queries, dtype=np.int32)[:, np.newaxis]
    return real & (neighbours.indices != rows)


def background_scores(
    neighbours: Neighbours,
    *,
    self_matching: bool = True,
    window: tuple[int, int] = DEFAULT_WINDOW,
) -> np.ndarray:
    """Each query's background: the mean score of its other neighbours at ranks ``window``.

    Args:
        neighbours: any source's neighbours, rows sorted by decreasing score.
        self_matching: the neighbours of a set against itself (the query's own slot is skipped).
        window: ``(first, stop)`` ranks among the other neighbours, 0 being the nearest.

    Returns:
        float32 (N,) array. A row with fewer neighbours averages what it has; a row with none gets
        0 (nothing crowds it).

    Raises:
        UserError: for an empty or negative window, or one past the neighbour lists' length.
    """
    first, stop = (int(value) for value in window)
    if not 0 <= first < stop:
        raise UserError(f"background window must satisfy 0 <= first < stop, got {window}")
    if stop > neighbours.k:
        raise UserError(
            f"background window {window} needs {stop} neighbours but the lists hold {neighbours.k}"
        )
    others = other_slots(neighbours, self_matching=self_matching)
    rank = np.cumsum(others, axis=1) - 1
    inside = others & (rank >= first) & (rank < stop)
    counts = inside.sum(axis=1)
    totals = np.where(inside, neighbours.scores, 0.0).sum(axis=1, dtype=np.float64)
    return np.where(counts > 0, totals / np.maximum(counts, 1), 0.0).astype(np.float32)


def local_scaling(
    neighbours: Neighbours,
    beta: float,
    query_background: np.ndarray,
    catalog_background: np.ndarray | None = None,
) -> Neighbours:
    """Neighbours rescored as ``score - beta * (background(query) + background(neighbour)) / 2``.

    Args:
        neighbours: the neighbours to rescore.
        beta: weight of the background, at least 0 (0 returns the scores unchanged).
        query_background: (N,) background of each query row (:func:`background_scores`).
        catalog_background: background of each catalogue row the indices point into; ``None``
            for self-matching, where it is ``query_background``.

    Returns:
        New :class:`Neighbours` with the scaled scores, each row re-sorted by decreasing scaled
        score (ties keep their order), padding kept at the end.

    Raises:
        UserError: for a negative or non-finite beta or backgrounds of the wrong length.
    """
    beta = float(beta)
    if not np.isfinite(beta) or beta < 0:
        raise UserError(f"local scaling weight beta must be a finite number >= 0, got {beta}")
    query_background = np.asarray(query_background, dtype=np.float32)
    if query_background.shape != (neighbours.num_queries,):
        raise UserError(
            f"{query_background.shape[0]} query backgrounds for {neighbours.num_queries} rows"
        )
    catalog_background = (
        query_background if catalog_background is None
        else np.asarray(catalog_background, dtype=np.float32)
    )
    real = neighbours.indices >= 0
    if real.any() and neighbours.indices.max() >= catalog_background.shape[0]:
        raise UserError("neighbours point past the last catalogue background")
    if beta == 0:
        return Neighbours(neighbours.indices.copy(), neighbours.scores.copy())
    neighbour_background = np.where(
        real, catalog_background[np.clip(neighbours.indices, 0, None)], 0.0
    )
    shift = np.float32(beta / 2) * (query_background[:, np.newaxis] + neighbour_background)
    scaled = np.where(real, neighbours.scores - shift, -np.inf).astype(np.float32)
    order = np.argsort(-scaled, axis=1, kind="stable")
    return Neighbours(
        np.take_along_axis(neighbours.indices, order, axis=1),
        np.take_along_axis(scaled, order, axis=1),
    )
