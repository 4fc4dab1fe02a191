"""Embeddings → neighbours → match lists: the chunked cosine top-k, thresholds with min2, and
unions of several sources' lists (the post-processing of the winning Shopee solutions).

Everything here works on L2-normalised float32 embeddings, so the inner product is the cosine
similarity, and returns or consumes :class:`tf_shopee.neighbours.Neighbours` (the form every
neighbour source shares) or per-query match lists (int arrays of catalog rows, self first).

How :func:`top_k_neighbours` finds the exact top-k, tile by tile with TensorFlow ops, in memory
bounded by ``max_chunk_mb`` whatever the number of postings:

* Self-matching is symmetric, so only the tiles on and above the diagonal are multiplied (about
  half of the N × N × D product); each tile feeds the neighbour lists of its rows *and* of its
  columns (the transposed direction is read from the same tile, never materialised).
* Each row keeps its best ``k`` candidates so far. A later tile can only change a row's list where
  a score reaches the row's current k-th best (and ``min_score``), and after the first tiles that
  is a handful of scores per row. A max over each group of 8 rows of every column (one cheap pass
  over the tile) locates them; only those groups are gathered, checked and merged. A full
  ``tf.math.top_k`` over a tile is needed only when too many scores pass (a row's first tile when
  no bound is known yet, a very low ``min_score``). With ``min_score`` set to the lowest threshold
  in use, as prediction does, almost nothing but the matches themselves is ever extracted.
* The diagonal tiles are searched first: the k-th best score of a row inside its own tile is a
  lower bound of its final k-th best, which makes the first off-diagonal tiles sparse as well.
* Ties: tiles are visited row-major (tile row I, then tile columns J > I ascending) and a row's
  diagonal result is merged when its tile row starts, so every row receives its candidates in
  increasing index order; all merges are stable ``top_k`` calls with the older (lower-index)
  candidates first, hence equal scores are broken by the lower catalog index, exactly as a stable
  sort of the whole similarity row would.

The result is exact: identical to a brute-force sort of the full similarity matrix apart from the
float rounding of the dot products (tiles are multiplied separately, so the last bit of a score may
differ from one large matmul). Speed and memory against FAISS and NumPy are measured by
``benchmarks/bench_matching.py``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from tf_shopee.errors import UserError
from tf_shopee.neighbours import Neighbours

DEFAULT_K = 51  # 50 matches (the competition's cap) plus the posting itself
DEFAULT_MAX_MATCHES = 50
DEFAULT_MAX_CHUNK_MB = 256

# Bytes of working memory per similarity-tile element. The dense path of a symmetric tile holds the
# float32 tile and, per direction, a boolean mask and a masked float32 copy given to top_k (one of
# them transposed): 18 bytes; the peak resident memory measured with benchmarks/bench_matching.py
# grows by about twice that per tile element (TensorFlow's allocator keeps freed blocks around).
_BYTES_PER_TILE_ELEMENT = 36
# Tiles are multiples of this many rows: the group size of the block maxima below.
_TILE_ALIGNMENT = 8
# Measured on these 2 CPU cores (CPU seconds of the whole search at N = 16,384): 1024-row tiles
# cost about 20 % more than 2048, 4096 no less, so a generous budget only costs memory.
_FASTEST_TILE = 2048
# The sparse path gathers the 8 scores of every candidate group; when more than this fraction of a
# tile has to be checked, one top_k over the whole tile is cheaper (and bounded in memory).
_SPARSE_HIT_FRACTION = 1 / 16


def tile_size_for_budget(max_chunk_mb: float, *, cap: int = _FASTEST_TILE) -> int:
    """Rows (and columns) of one similarity tile so that a tile step fits in ``max_chunk_mb``.

    One step holds a ``tile × tile`` float32 similarity block and, in the worst case (a tile whose
    every score must go through ``tf.math.top_k``), a boolean mask and a masked copy of it for each
    of its two directions; measured peak memory grows by about 36 bytes per block element, which
    is what the budget is divided by. The tile is rounded down to a multiple of 8 and capped at
    ``cap`` (the fastest size measured here; bigger tiles only cost memory).

    Raises:
        UserError: when the budget is not positive or too small for an 8 × 8 tile.
    """
    if not (isinstance(max_chunk_mb, (int, float)) and math.isfinite(max_chunk_mb)):
        raise UserError(f"max_chunk_mb must be a positive number, got {max_chunk_mb!r}")
    if max_chunk_mb <= 0:
        raise UserError(f"max_chunk_mb must be positive, got {max_chunk_mb}")
    budget_bytes = max_chunk_mb * 1024 * 1024
    tile = int(math.sqrt(budget_bytes / _BYTES_PER_TILE_ELEMENT))
    tile -= tile % _TILE_ALIGNMENT
    if tile < _TILE_ALIGNMENT:
        minimum_mb = _BYTES_PER_TILE_ELEMENT * _TILE_ALIGNMENT**2 / 1024 / 1024
        raise UserError(f"max_chunk_mb={max_chunk_mb} is too small (at least {minimum_mb:.4f} MB)")
    return max(_TILE_ALIGNMENT, min(tile, cap))


def as_embeddings(array, name: str) -> np.ndarray:
    """A C-contiguous float32 (rows, dim) copy-free view when possible; UserError on bad rows."""
    try:
        matrix = np.ascontiguousarray(array, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise UserError(f"{name} must be a numeric (rows, dim) array: {error}") from None
    if matrix.ndim != 2:
        raise UserError(f"{name} must be a 2-D array (rows, dim), got shape {matrix.shape}")
    if matrix.shape[1] == 0:
        raise UserError(f"{name} has zero columns")
    finite_rows = np.isfinite(matrix).all(axis=1)
    if not finite_rows.all():
        bad_row = int(np.flatnonzero(~finite_rows)[0])
        raise UserError(f"{name} row {bad_row} contains NaN or infinity")
    return matrix


def top_k_neighbours(
    embeddings,
    *,
    k: int = DEFAULT_K,
    catalog=None,
    max_chunk_mb: float = DEFAULT_MAX_CHUNK_MB,
    min_score: float | None = None,
) -> Neighbours:
    """Exact cosine top-k of each embedding, computed in memory-bounded TensorFlow tiles.

    Args:
        embeddings: (N, D) L2-normalised float array, the queries. Scores are inner products, so
            unnormalised inputs give inner-product (not cosine) neighbours.
        k: neighbours kept per query (default 51: the posting itself plus at most 50 matches).
        catalog: (M, D) embeddings to search in; ``None`` searches ``embeddings`` themselves
            (self-matching: each posting normally finds itself first with score ≈ 1). Use a catalog
            to match new postings against an existing set.
        max_chunk_mb: working-memory budget of one tile step in MiB (the tile side follows from
            :func:`tile_size_for_budget`); the output arrays (N × k) are not counted.
        min_score: when given, only scores ≥ ``min_score`` are kept (the rest of a row is
            padding). Pass the lowest threshold in use: fewer candidates make the search faster,
            and thresholded match lists come out identical to those of the full top-k.

    Returns:
        :class:`Neighbours` with ``indices`` int32 (N, k) into the catalog (or into
        ``embeddings``), -1 padded at the end of a row when fewer than ``k`` catalog rows exist
        (or pass ``min_score``), and ``scores`` float32 (N, k), ``-inf`` at padding, each row sorted
        by decreasing score with equal scores in increasing index order.

    Raises:
        UserError: for non-finite rows, mismatched dimensions, ``k < 1`` or a bad ``max_chunk_mb``.

    Example:
        >>> neighbours = top_k_neighbours(image_embeddings, k=51, min_score=0.5)
        >>> matches = matches_from_neighbours(neighbours, threshold=0.6)
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    tile = tile_size_for_budget(max_chunk_mb)
    floor = -np.inf
    if min_score is not None:
        try:
            floor = float(min_score)
        except (TypeError, ValueError):
            floor = math.nan
        if not math.isfinite(floor):
            raise UserError(f"min_score must be a finite number or None, got {min_score!r}")
    queries = as_embeddings(embeddings, "embeddings")
    self_matching = catalog is None
    catalog_matrix = queries if self_matching else as_embeddings(catalog, "catalog")
    if catalog_matrix.shape[1] != queries.shape[1]:
        raise UserError(
            f"catalog has dimension {catalog_matrix.shape[1]} but embeddings have "
            f"{queries.shape[1]}"
        )
    num_queries, num_catalog = queries.shape[0], catalog_matrix.shape[0]
    if num_queries == 0 or num_catalog == 0:
        return Neighbours(
            np.full((num_queries, k), -1, dtype=np.int32),
            np.full((num_queries, k), -np.inf, dtype=np.float32),
        )
    if self_matching:
        scores, indices = _self_top_k(queries, k=k, tile=tile, floor=floor)
    else:
        scores, indices = _catalog_top_k(queries, catalog_matrix, k=k, tile=tile, floor=floor)
    indices[np.isneginf(scores)] = -1
    return Neighbours(indices, scores)


def _self_top_k(matrix: np.ndarray, *, k: int, tile: int, floor: float):
    """Symmetric tiled search: diagonal tiles first (they give every row a lower bound on its k-th
    best score), then the tiles above the diagonal row-major, each feeding its rows and columns."""
    import tensorflow as tf

    kernels = _tile_kernels()
    num_rows = matrix.shape[0]
    best_scores = np.full((num_rows, k), -np.inf, dtype=np.float32)
    best_indices = np.full((num_rows, k), -1, dtype=np.int32)
    floor_bounds = np.full(num_rows, floor, dtype=np.float32)
    # Tiles are handed to TensorFlow one at a time: converting the whole matrix would copy it
    # (transiently twice), which is memory the chunk budget does not allow for.
    blocks = [slice(start, min(start + tile, num_rows)) for start in range(0, num_rows, tile)]

    # Pass 1: each row's best within its own diagonal tile. They are merged into the running lists
    # only when the row-major pass reaches that tile (keeping candidate columns in ascending order
    # for the tie rule), but their k-th best already bounds which scores can matter anywhere.
    diagonal_scores = np.empty_like(best_scores)
    diagonal_indices = np.empty_like(best_indices)
    for rows in blocks:
        block, padding = _aligned_block(matrix[rows])
        scores, indices, bounds = _pad_lists(
            best_scores[rows], best_indices[rows], floor_bounds[rows], padding
        )
        size = rows.stop - rows.start
        # The padded block asks; only its real rows are candidates.
        scores, indices = kernels.rows(block, block[:size], rows.start, scores, indices, bounds)
        diagonal_scores[rows] = scores.numpy()[:size]
        diagonal_indices[rows] = indices.numpy()[:size]
    bounds = np.maximum(diagonal_scores[:, k - 1], floor_bounds)

    # Pass 2: tile row I merges its diagonal result, then tiles (I, J > I) left to right.
    for position, rows in enumerate(blocks):
        scores, indices = kernels.merge(
            best_scores[rows], best_indices[rows], diagonal_scores[rows], diagonal_indices[rows]
        )
        best_scores[rows], best_indices[rows] = scores.numpy(), indices.numpy()
        row_block = tf.convert_to_tensor(matrix[rows])
        for columns in blocks[position + 1 :]:
            row_scores, row_indices, column_scores, column_indices = kernels.symmetric(
                row_block, tf.convert_to_tensor(matrix[columns]), rows.start, columns.start,
                best_scores[rows], best_indices[rows], bounds[rows],
                best_scores[columns], best_indices[columns], bounds[columns],
            )  # fmt: skip
            best_scores[rows], best_indices[rows] = row_scores.numpy(), row_indices.numpy()
            best_scores[columns] = column_scores.numpy()
            best_indices[columns] = column_indices.numpy()
    return best_scores, best_indices


def _catalog_top_k(queries: np.ndarray, catalog: np.ndarray, *, k: int, tile: int, floor: float):
    """Query-vs-catalog tiled search: each query tile sweeps the catalog tiles left to right."""
    import tensorflow as tf

    kernels = _tile_kernels()
    num_queries, num_catalog = queries.shape[0], catalog.shape[0]
    best_scores = np.full((num_queries, k), -np.inf, dtype=np.float32)
    best_indices = np.full((num_queries, k), -1, dtype=np.int32)
    floor_bounds = np.full(num_queries, floor, dtype=np.float32)
    for row_start in range(0, num_queries, tile):
        rows = slice(row_start, min(row_start + tile, num_queries))
        query_block, padding = _aligned_block(queries[rows])
        scores, indices, bounds = _pad_lists(
            best_scores[rows], best_indices[rows], floor_bounds[rows], padding
        )
        for column_start in range(0, num_catalog, tile):
            catalog_block = tf.convert_to_tensor(catalog[column_start : column_start + tile])
            scores, indices = kernels.rows(
                query_block, catalog_block, column_start, scores, indices, bounds
            )
        size = rows.stop - rows.start
        best_scores[rows], best_indices[rows] = scores.numpy()[:size], indices.numpy()[:size]
    return best_scores, best_indices


def _aligned_block(block: np.ndarray):
    """The block as a tensor with zero rows appended up to a multiple of the group size, and the
    number of rows added (their lists get an infinite bound: they collect nothing)."""
    import tensorflow as tf

    padding = -block.shape[0] % _TILE_ALIGNMENT
    if padding:
        block = np.concatenate([block, np.zeros((padding, block.shape[1]), np.float32)])
    return tf.convert_to_tensor(block), padding


def _pad_lists(scores: np.ndarray, indices: np.ndarray, bounds: np.ndarray, padding: int):
    """Neighbour lists and bounds extended by ``padding`` empty rows that can take nothing."""
    if not padding:
        return scores, indices, bounds
    return (
        np.concatenate([scores, np.full((padding, scores.shape[1]), -np.inf, np.float32)]),
        np.concatenate([indices, np.full((padding, indices.shape[1]), -1, np.int32)]),
        np.concatenate([bounds, np.full(padding, np.inf, np.float32)]),
    )


class _TileKernels:
    """The tile-step tf.functions.

    Each call gets the two blocks of embeddings whose product is the tile, and the offsets of their
    first rows. Shapes are dynamic so one trace serves every tile size (the last tile of a set is
    smaller), k and dimension; a trace costs about a second on 2 cores. The per-row arrays (best
    scores and indices so far, bounds) are the slices of the rows a tile feeds; ``bounds`` holds,
    per row, a score known to be ≤ its final k-th best (and ≥ ``min_score``), so anything below it
    can be skipped.
    """

    def __init__(self, sparse_hit_fraction: float):
        import tensorflow as tf

        self.sparse_hit_fraction = sparse_hit_fraction
        block = tf.TensorSpec([None, None], tf.float32)
        start = tf.TensorSpec([], tf.int32)
        scores = tf.TensorSpec([None, None], tf.float32)
        indices = tf.TensorSpec([None, None], tf.int32)
        lists = [scores, indices, tf.TensorSpec([None], tf.float32)]
        self.rows = tf.function(self._rows, input_signature=[block, block, start, *lists])
        self.symmetric = tf.function(
            self._symmetric, input_signature=[block, block, start, start, *lists, *lists]
        )
        self.merge = tf.function(_merge_lists, input_signature=[scores, indices, scores, indices])

    def _rows(self, query_block, catalog_block, column_start, *row_lists):
        import tensorflow as tf

        similarity = tf.matmul(query_block, catalog_block, transpose_b=True)
        new_lists, _ = _update_lists(
            similarity, 0, column_start, row_lists, None, self.sparse_hit_fraction
        )
        return new_lists

    def _symmetric(self, row_block, column_block, row_start, column_start, *lists):
        # lists: row scores, indices, bounds, then column scores, indices, bounds.
        import tensorflow as tf

        similarity = tf.matmul(row_block, column_block, transpose_b=True)
        new_rows, new_columns = _update_lists(
            similarity, row_start, column_start, lists[:3], lists[3:], self.sparse_hit_fraction
        )
        return (*new_rows, *new_columns)


_KERNELS: dict[float, _TileKernels] = {}


def _tile_kernels() -> _TileKernels:
    # Keyed by the (module-level) sparse/dense switch so tests can force either merge path.
    if _SPARSE_HIT_FRACTION not in _KERNELS:
        _KERNELS[_SPARSE_HIT_FRACTION] = _TileKernels(_SPARSE_HIT_FRACTION)
    return _KERNELS[_SPARSE_HIT_FRACTION]


def _merge_lists(scores, indices, other_scores, other_indices):
    """Best k of two neighbour lists; on equal scores the first list's entries win."""
    import tensorflow as tf

    k = tf.shape(scores)[1]
    best = tf.math.top_k(tf.concat([scores, other_scores], axis=1), k)
    candidates = tf.concat([indices, other_indices], axis=1)
    return best.values, tf.gather(candidates, best.indices, batch_dims=1)


# Rows per group of the block maxima that locate a tile's few useful scores. A max over 8
# consecutive rows is the cheapest full pass over a tile that TF offers (contiguous, vectorised):
# about a third of a single compare + tf.where. Row blocks are multiples of it.
_GROUP_ROWS = _TILE_ALIGNMENT


def _update_lists(similarity, row_start, column_start, row_lists, column_lists, hit_fraction):
    """Merge a similarity tile into the lists owned by its rows and (optionally) its columns.

    Row i of the tile owns a list whose candidates are catalog indices ``column_start + j``;
    with ``column_lists`` column j also owns one, whose candidates are ``row_start + i`` (the
    transposed direction of a symmetric tile, without materialising the transpose). Each
    ``*_lists`` is (scores, indices, bounds) of the owners. The tile's row count is a multiple of
    ``_GROUP_ROWS`` (padding rows carry an infinite bound, so they take nothing and give nothing
    to lists that matter).

    Only scores ≥ max(owner's current k-th best, its bound) can enter a list. The max over each
    group of 8 rows of every column says where such scores may be; those groups are gathered,
    checked exactly and merged for the owners that have hits. When the scores to check exceed
    ``hit_fraction`` of the tile (an owner's first tile without a bound, a very low
    ``min_score``), the whole tile goes through top_k instead.
    """
    import tensorflow as tf

    rows, columns = tf.shape(similarity)[0], tf.shape(similarity)[1]
    row_scores, row_indices, row_bounds = row_lists
    k = tf.shape(row_scores)[1]
    row_bars = tf.maximum(row_scores[:, k - 1], row_bounds)
    if column_lists is None:
        column_bars = tf.fill([columns], tf.constant(np.inf, tf.float32))
    else:
        column_scores, column_indices, column_bounds = column_lists
        column_bars = tf.maximum(column_scores[:, k - 1], column_bounds)
    groups = rows // _GROUP_ROWS
    group_max = tf.reduce_max(tf.reshape(similarity, [groups, _GROUP_ROWS, columns]), axis=1)
    group_row_bars = tf.reduce_min(tf.reshape(row_bars, [groups, _GROUP_ROWS]), axis=1)
    group_bars = tf.minimum(group_row_bars[:, tf.newaxis], column_bars[tf.newaxis, :])
    candidates = tf.cast(tf.where(group_max >= group_bars), tf.int32)  # (group, column) pairs
    checked = tf.shape(candidates)[0] * _GROUP_ROWS
    dense_above = tf.cast(tf.cast(rows * columns, tf.float32) * hit_fraction, tf.int32)

    def dense():
        row_keep = similarity >= row_bars[:, tf.newaxis]
        new_rows = _merge_dense(similarity, row_keep, column_start, row_scores, row_indices)
        if column_lists is None:
            return new_rows, ()
        transposed = tf.transpose(similarity)
        column_keep = transposed >= column_bars[:, tf.newaxis]
        return new_rows, _merge_dense(
            transposed, column_keep, row_start, column_scores, column_indices
        )

    def sparse():
        group, column = candidates[:, 0], candidates[:, 1]
        # Candidate blocks flattened in (group, column, row-in-group) order.
        row = tf.reshape(group[:, tf.newaxis] * _GROUP_ROWS + tf.range(_GROUP_ROWS), [-1])
        column = tf.repeat(column, _GROUP_ROWS)
        values = tf.gather_nd(similarity, tf.stack([row, column], axis=1))
        row_hit = values >= tf.gather(row_bars, row)
        # Within one owner row the hits come in ascending column order; a stable sort by owner
        # groups them without disturbing that order (and likewise rows within one column).
        row_hits = _grouped_hits(row, column + column_start, values, row_hit)
        new_rows = _merge_hits(*row_hits, row_scores, row_indices)
        if column_lists is None:
            return new_rows, ()
        column_hit = values >= tf.gather(column_bars, column)
        column_hits = _grouped_hits(column, row + row_start, values, column_hit)
        return new_rows, _merge_hits(*column_hits, column_scores, column_indices)

    return tf.cond(checked > dense_above, dense, sparse)


def _grouped_hits(owners, candidates, values, hit):
    """The entries where ``hit`` holds, reordered by owner (each owner's hits keep their order)."""
    import tensorflow as tf

    owners = tf.boolean_mask(owners, hit)
    candidates = tf.boolean_mask(candidates, hit)
    values = tf.boolean_mask(values, hit)
    order = tf.argsort(owners, stable=True)
    return tf.gather(owners, order), tf.gather(candidates, order), tf.gather(values, order)


def _merge_dense(owner_view, keep, candidate_start, scores, indices):
    """Merge the best kept scores of each owner's row of the view into its list (top_k over the
    whole row; candidates are ``candidate_start + column``)."""
    import tensorflow as tf

    k = tf.shape(scores)[1]
    masked = tf.where(keep, owner_view, tf.constant(-np.inf, tf.float32))
    best = tf.math.top_k(masked, tf.minimum(k, tf.shape(masked)[1]))
    # The tile's candidates all come after the list's (higher indices): the list wins ties.
    return _merge_lists(scores, indices, best.values, best.indices + candidate_start)


def _merge_hits(hit_owners, hit_candidates, hit_scores, scores, indices):
    """Merge hits (grouped by owner, ascending candidate index) into the lists of their owners.

    The hits of each owner are scattered into a small dense block placed after the owner's
    current best, so the stable ``top_k`` prefers existing entries, then lower indices, on equal
    scores. Owners without hits are left untouched.
    """
    import tensorflow as tf

    owners = tf.shape(scores)[0]
    counts = tf.math.bincount(hit_owners, minlength=owners, maxlength=owners, dtype=tf.int32)
    active = tf.cast(tf.where(counts > 0)[:, 0], tf.int32)
    # Position of each owner among the active ones, and of each hit within its owner's hits.
    active_position = tf.cumsum(tf.cast(counts > 0, tf.int32), exclusive=True)
    starts = tf.cumsum(counts, exclusive=True)
    within_owner = tf.range(tf.shape(hit_owners)[0]) - tf.gather(starts, hit_owners)
    block_shape = tf.stack([tf.shape(active)[0], tf.reduce_max(tf.concat([counts, [0]], 0))])
    where = tf.stack([tf.gather(active_position, hit_owners), within_owner], axis=1)
    block_scores = tf.tensor_scatter_nd_update(
        tf.fill(block_shape, tf.constant(-np.inf, tf.float32)), where, hit_scores
    )
    block_indices = tf.tensor_scatter_nd_update(tf.fill(block_shape, -1), where, hit_candidates)
    merged_scores, merged_indices = _merge_lists(
        tf.gather(scores, active), tf.gather(indices, active), block_scores, block_indices
    )
    active_owners = active[:, tf.newaxis]
    return (
        tf.tensor_scatter_nd_update(scores, active_owners, merged_scores),
        tf.tensor_scatter_nd_update(indices, active_owners, merged_indices),
    )


def _selected_slots(
    neighbours: Neighbours,
    threshold: float,
    *,
    max_matches: int,
    include_self: bool,
    min2: bool,
    min2_floor: float | None,
) -> np.ndarray:
    """Boolean (N, k) mask of the neighbour slots that become matches, self excluded (with
    ``include_self`` one place of ``max_matches`` is kept for it). Shared by match lists and
    blending."""
    if isinstance(max_matches, bool) or not isinstance(max_matches, (int, np.integer)):
        raise UserError(f"max_matches must be a positive integer, got {max_matches!r}")
    if max_matches < 1:
        raise UserError(f"max_matches must be at least 1, got {max_matches}")
    indices, scores = neighbours.indices, neighbours.scores
    num_rows = indices.shape[0]
    real = indices >= 0
    if include_self:
        is_self = indices == np.arange(num_rows, dtype=np.int32)[:, np.newaxis]
        others = real & ~is_self
    else:
        others = real
    selected = others & (scores >= threshold)
    if min2:
        # Rows where nothing but (possibly) self passes keep their nearest other candidate.
        lonely = ~selected.any(axis=1) & others.any(axis=1)
        nearest = np.argmax(others, axis=1)
        if min2_floor is not None:
            lonely &= scores[np.arange(num_rows), nearest] >= min2_floor
        selected[np.flatnonzero(lonely), nearest[lonely]] = True
    allowed = max_matches - 1 if include_self else max_matches
    selected &= np.cumsum(selected, axis=1) <= allowed
    return selected


def _split_rows(row_ids: np.ndarray, values: np.ndarray, num_rows: int) -> list[np.ndarray]:
    """Values grouped by (already sorted) row id, one array per row, empty rows included."""
    counts = np.bincount(row_ids, minlength=num_rows)
    return np.split(values, np.cumsum(counts)[:-1])


def matches_from_neighbours(
    neighbours: Neighbours,
    threshold: float,
    *,
    max_matches: int = DEFAULT_MAX_MATCHES,
    include_self: bool = True,
    min2: bool = False,
    min2_floor: float | None = None,
) -> list[np.ndarray]:
    """Turn neighbour lists into match lists: every neighbour scoring ≥ ``threshold``.

    Args:
        neighbours: from :func:`top_k_neighbours` or any other source (TF-IDF, phash).
        threshold: minimum score of a match (cosine, or ``1 - hamming/64`` for phash).
        max_matches: cap on the length of each list, self included (the competition capped
            groups at 50); the best-scoring neighbours are kept.
        include_self: self-matching (neighbours of a set against itself): row i's own index is
            put first and always kept, even when exact duplicates pushed it out of the top-k or
            behind another row. Pass ``False`` for query-vs-catalog neighbours.
        min2: when no other candidate passes the threshold, keep the nearest other one anyway
            (every Shopee posting had at least one duplicate), unless its score is below
            ``min2_floor``.
        min2_floor: lowest score min2 accepts; ``None`` accepts any.

    Returns:
        One int32 array per query: matched catalog rows, self first (when ``include_self``), then
        by decreasing score.
    """
    selected = _selected_slots(
        neighbours,
        threshold,
        max_matches=max_matches,
        include_self=include_self,
        min2=min2,
        min2_floor=min2_floor,
    )
    num_rows = neighbours.num_queries
    row_ids, slot_ids = np.nonzero(selected)
    values = neighbours.indices[row_ids, slot_ids]
    if include_self:
        # Self first: merge (row, 0, self) with (row, 1, neighbour) by a stable sort on the row.
        row_ids = np.concatenate([np.arange(num_rows), row_ids])
        values = np.concatenate([np.arange(num_rows, dtype=np.int32), values])
        order = np.argsort(row_ids, kind="stable")
        row_ids, values = row_ids[order], values[order]
    return _split_rows(row_ids, values.astype(np.int32, copy=False), num_rows)


def l2_normalise(matrix: np.ndarray, fallback: np.ndarray | None = None) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero (or take ``fallback``'s row)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    normalised = matrix / np.where(norms == 0, 1, norms)
    if fallback is not None and zero.any():
        normalised[zero] = fallback[zero]
    return normalised.astype(np.float32, copy=False)


def union_matches(
    *match_lists: Sequence[np.ndarray],
    max_matches: int = DEFAULT_MAX_MATCHES,
    include_self: bool = True,
) -> list[np.ndarray]:
    """Union of several sources' match lists, posting by posting.

    The 1st-place solution took the union of image, text and concatenated-embedding matches: a pair
    is kept when any source is confident about it.

    Args:
        *match_lists: lists of per-query index arrays, all of the same length (one entry per query).
        max_matches: cap on each merged list, self included; entries that appear first are kept.
        include_self: self-matching lists: row i's own index is put first (and added when absent).

    Returns:
        One int32 array per query: self first (when ``include_self``), then every index in order of
        first appearance (source by source, in each source's order), without duplicates.
    """
    if not match_lists:
        raise UserError("union_matches needs at least one list of matches")
    if isinstance(max_matches, bool) or not isinstance(max_matches, (int, np.integer)):
        raise UserError(f"max_matches must be a positive integer, got {max_matches!r}")
    if max_matches < 1:
        raise UserError(f"max_matches must be at least 1, got {max_matches}")
    num_rows = len(match_lists[0])
    for number, matches in enumerate(match_lists):
        if len(matches) != num_rows:
            raise UserError(
                f"match list {number} has {len(matches)} rows but match list 0 has {num_rows}"
            )
    row_parts, value_parts = [], []
    if include_self:
        row_parts.append(np.arange(num_rows, dtype=np.int64))
        value_parts.append(np.arange(num_rows, dtype=np.int64))
    for matches in match_lists:
        lengths = np.fromiter((len(row) for row in matches), dtype=np.int64, count=num_rows)
        row_parts.append(np.repeat(np.arange(num_rows, dtype=np.int64), lengths))
        value_parts.append(
            np.concatenate([np.asarray(row, dtype=np.int64).ravel() for row in matches])
            if lengths.sum()
            else np.zeros(0, np.int64)
        )
    rows = np.concatenate(row_parts)
    values = np.concatenate(value_parts)
    if values.size and values.min() < 0:
        raise UserError("match lists contain negative indices")
    # Entries are in source order; a stable sort on (row, value) puts each pair's first
    # appearance first, which marks the duplicates.
    span = int(values.max()) + 1 if values.size else 1
    order = np.argsort(rows * span + values, kind="stable")
    keys = (rows * span + values)[order]
    first = np.ones(keys.shape, dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    keep = np.zeros(keys.shape, dtype=bool)
    keep[order[first]] = True
    rows, values = rows[keep], values[keep]
    # Back in order of appearance per row, then capped.
    order = np.argsort(rows, kind="stable")
    rows, values = rows[order], values[order]
    counts = np.bincount(rows, minlength=num_rows)
    starts = np.cumsum(counts) - counts
    within_row = np.arange(rows.size) - starts[rows]
    capped = within_row < max_matches
    return _split_rows(rows[capped], values[capped].astype(np.int32), num_rows)
