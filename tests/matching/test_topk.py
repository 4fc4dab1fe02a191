"""Tests of tf_shopee.matching.topk: the tiled TF top-k against a brute-force NumPy reference, and
the post-processing (match lists, min2, unions, concatenation) on hand-made cases whose answers
are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tf_shopee.errors import UserError
from tf_shopee.matching import topk
from tf_shopee.matching.sources import concat_embeddings
from tf_shopee.matching.topk import (
    matches_from_neighbours,
    tile_size_for_budget,
    top_k_neighbours,
    union_matches,
)
from tf_shopee.neighbours import Neighbours

SCORE_TOLERANCE = 1e-5


def budget_for_tile(tile: int) -> float:
    """The max_chunk_mb that yields exactly this tile side."""
    return topk._BYTES_PER_TILE_ELEMENT * tile * tile / 1024 / 1024


def normalised(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def random_embeddings(rows: int, dim: int = 24, seed: int = 0) -> np.ndarray:
    return normalised(np.random.default_rng(seed).standard_normal((rows, dim)))


def clustered_embeddings(rows: int, dim: int = 24, seed: int = 0) -> np.ndarray:
    """Groups of 2..12 near-identical rows (cosine ~0.7-0.95 inside a group), shuffled."""
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < rows:
        sizes.append(int(rng.integers(2, 13)))
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes)[:rows])
    centres = normalised(rng.standard_normal((len(sizes), dim)))
    noise = rng.standard_normal((rows, dim)) * rng.uniform(0.05, 0.15, (rows, 1))
    return normalised(centres[labels] + noise)


def exact_tie_embeddings(rows: int, seed: int = 0) -> np.ndarray:
    """Rows with four entries of 0.5 among 8 dims: unit length and every dot product exactly
    0, 0.25, 0.5, 0.75 or 1 in float32, so many scores tie exactly and duplicates abound."""
    rng = np.random.default_rng(seed)
    matrix = np.zeros((rows, 8), np.float32)
    for row in range(rows):
        matrix[row, rng.choice(8, size=4, replace=False)] = 0.5
    return matrix


def reference_top_k(queries, catalog, k, min_score=None):
    """Brute force: the full similarity matrix sorted by (score desc, index asc)."""
    similarity = queries.astype(np.float64) @ catalog.astype(np.float64).T
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(similarity, order, axis=1)
    if min_score is not None:
        order = np.where(scores >= min_score, order, -1)
        scores = np.where(scores >= min_score, scores, -np.inf)
    indices = np.full((queries.shape[0], k), -1, np.int64)
    padded_scores = np.full((queries.shape[0], k), -np.inf)
    indices[:, : order.shape[1]] = order
    padded_scores[:, : scores.shape[1]] = scores
    return indices, padded_scores, similarity


def assert_matches_reference(result: Neighbours, queries, catalog, k, min_score=None, exact=False):
    """Exact up to float ties: same scores, genuine and distinct indices, identical indices
    wherever the reference has no near-tie (all indices identical when ``exact``)."""
    indices, scores, similarity = reference_top_k(queries, catalog, k, min_score)
    assert result.indices.shape == result.scores.shape == (queries.shape[0], k)
    assert result.indices.dtype == np.int32 and result.scores.dtype == np.float32
    assert np.array_equal(np.isneginf(result.scores), np.isneginf(scores))
    assert np.array_equal(result.indices == -1, np.isneginf(scores))
    finite = np.isfinite(scores)
    np.testing.assert_allclose(result.scores[finite], scores[finite], atol=SCORE_TOLERANCE)
    # Rows sorted, padding at the end.
    assert np.all(np.diff(np.where(np.isneginf(result.scores), -9.0, result.scores), axis=1) <= 0)
    for row in range(queries.shape[0]):
        valid = result.indices[row][result.indices[row] >= 0]
        assert len(set(valid.tolist())) == len(valid), f"duplicate neighbour in row {row}"
        np.testing.assert_allclose(
            similarity[row, valid], result.scores[row, : len(valid)], atol=SCORE_TOLERANCE
        )
    if exact:
        np.testing.assert_array_equal(result.indices, indices)
        return
    # Where no other catalog score lies within the tolerance, the index must be the same.
    for row in range(queries.shape[0]):
        for slot in np.flatnonzero(finite[row]):
            near = np.abs(similarity[row] - scores[row, slot]) <= 2 * SCORE_TOLERANCE
            if near.sum() == 1:
                assert result.indices[row, slot] == indices[row, slot], (row, slot)


# --- top_k_neighbours -------------------------------------------------------------------------


@pytest.fixture(params=["auto", "sparse", "dense"])
def merge_path(request, monkeypatch):
    """Run a test with the automatic sparse/dense choice, and with each merge path forced."""
    fraction = {"auto": topk._SPARSE_HIT_FRACTION, "sparse": 2.0, "dense": -1.0}
    monkeypatch.setattr(topk, "_SPARSE_HIT_FRACTION", fraction[request.param])
    return request.param


@pytest.mark.parametrize("tile", [8, 64, 2048])
def test_random_self_matching_matches_brute_force(tile, merge_path):
    embeddings = random_embeddings(300)
    result = top_k_neighbours(embeddings, k=51, max_chunk_mb=budget_for_tile(tile))
    assert_matches_reference(result, embeddings, embeddings, 51)
    # Each posting is its own best match (no duplicates in random data).
    np.testing.assert_array_equal(result.indices[:, 0], np.arange(300))


def test_clustered_self_matching_with_tiles_that_do_not_divide_n(merge_path):
    embeddings = clustered_embeddings(203)
    for tile in (16, 40, 200):
        assert 203 % tile != 0
        result = top_k_neighbours(embeddings, k=20, max_chunk_mb=budget_for_tile(tile))
        assert_matches_reference(result, embeddings, embeddings, 20)


@pytest.mark.parametrize("tile,k", [(8, 30), (24, 30), (256, 30), (24, 3), (16, 5)])
def test_exact_ties_and_duplicates_break_by_lower_index(tile, k, merge_path):
    # 120 rows over only 70 distinct patterns: many exact duplicates and exact score ties across
    # tiles and across the symmetric (column) direction. With a small k a row's k-th best ties
    # with candidates of earlier tiles, which must still win over its own tile's (higher) indices.
    embeddings = exact_tie_embeddings(120)
    result = top_k_neighbours(embeddings, k=k, max_chunk_mb=budget_for_tile(tile))
    assert_matches_reference(result, embeddings, embeddings, k, exact=True)
    # A duplicate with a lower index comes before the posting itself.
    duplicates = np.flatnonzero((embeddings == embeddings[0]).all(axis=1))
    assert len(duplicates) > 1
    assert result.indices[duplicates[1], 0] == duplicates[0]


def test_fewer_postings_than_k_are_padded():
    embeddings = random_embeddings(5)
    result = top_k_neighbours(embeddings, k=51)
    assert_matches_reference(result, embeddings, embeddings, 51)
    assert np.all(result.indices[:, 5:] == -1)
    assert np.all(np.isneginf(result.scores[:, 5:]))


def test_single_posting():
    result = top_k_neighbours(random_embeddings(1), k=3)
    np.testing.assert_array_equal(result.indices, [[0, -1, -1]])
    assert result.scores[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_query_against_catalog_matches_brute_force(merge_path):
    catalog = clustered_embeddings(230, seed=1)
    # New postings: noisy copies of catalog rows plus unrelated ones.
    rng = np.random.default_rng(2)
    queries = normalised(
        np.concatenate([catalog[:40] + 0.1 * rng.standard_normal((40, 24)), random_embeddings(30)])
    )
    for tile in (16, 64, 1024):
        result = top_k_neighbours(
            queries, catalog=catalog, k=51, max_chunk_mb=budget_for_tile(tile)
        )
        assert_matches_reference(result, queries, catalog, 51)
    # Each noisy copy finds its original first.
    np.testing.assert_array_equal(result.indices[:40, 0], np.arange(40))


def test_query_against_catalog_with_exact_ties(merge_path):
    catalog = exact_tie_embeddings(90, seed=3)
    queries = exact_tie_embeddings(33, seed=4)
    result = top_k_neighbours(queries, catalog=catalog, k=40, max_chunk_mb=budget_for_tile(16))
    assert_matches_reference(result, queries, catalog, 40, exact=True)


def test_catalog_smaller_than_k():
    catalog = random_embeddings(7, seed=5)
    queries = random_embeddings(4, seed=6)
    result = top_k_neighbours(queries, catalog=catalog, k=10)
    assert_matches_reference(result, queries, catalog, 10)


def test_empty_catalog_and_empty_queries():
    queries = random_embeddings(4)
    result = top_k_neighbours(queries, catalog=np.zeros((0, 24), np.float32), k=6)
    assert result.indices.shape == (4, 6)
    assert np.all(result.indices == -1) and np.all(np.isneginf(result.scores))
    empty = top_k_neighbours(np.zeros((0, 24), np.float32), k=6)
    assert empty.indices.shape == (0, 6) and empty.scores.shape == (0, 6)


@pytest.mark.parametrize("min_score", [0.3, 0.75, -1.0])
def test_min_score_keeps_exactly_the_top_k_above_it(min_score, merge_path):
    # -1.0 lets everything pass, which exercises the dense fallback of the sparse merge.
    embeddings = clustered_embeddings(260, seed=7)
    result = top_k_neighbours(
        embeddings, k=25, max_chunk_mb=budget_for_tile(48), min_score=min_score
    )
    assert_matches_reference(result, embeddings, embeddings, 25, min_score=min_score)
    catalog_result = top_k_neighbours(
        embeddings[:50],
        catalog=embeddings,
        k=25,
        max_chunk_mb=budget_for_tile(48),
        min_score=min_score,
    )
    assert_matches_reference(catalog_result, embeddings[:50], embeddings, 25, min_score=min_score)


def test_min_score_with_exact_ties(merge_path):
    # About a quarter of the pairs score exactly 0.75 = min_score: all of them must be kept.
    embeddings = exact_tie_embeddings(100, seed=8)
    result = top_k_neighbours(embeddings, k=30, max_chunk_mb=budget_for_tile(16), min_score=0.75)
    assert_matches_reference(result, embeddings, embeddings, 30, min_score=0.75, exact=True)
    assert np.any(result.scores == 0.75) and np.any(result.indices[:, -1] == -1)


def test_float64_and_list_inputs_are_accepted():
    embeddings = random_embeddings(20).astype(np.float64)
    result = top_k_neighbours(embeddings.tolist(), k=4)
    assert_matches_reference(result, embeddings, embeddings, 4)


def test_one_trace_serves_every_shape():
    kernels = topk._tile_kernels()
    top_k_neighbours(random_embeddings(50), k=5, max_chunk_mb=budget_for_tile(16))
    counts = [
        function.experimental_get_tracing_count()
        for function in (kernels.rows, kernels.symmetric, kernels.merge)
    ]
    top_k_neighbours(random_embeddings(77, dim=9), k=11, max_chunk_mb=budget_for_tile(24))
    top_k_neighbours(random_embeddings(9, dim=9), catalog=random_embeddings(77, dim=9), k=3)
    assert [
        function.experimental_get_tracing_count()
        for function in (kernels.rows, kernels.symmetric, kernels.merge)
    ] == counts


def test_bad_inputs_are_user_errors():
    embeddings = random_embeddings(10)
    broken = embeddings.copy()
    broken[7, 3] = np.nan
    with pytest.raises(UserError, match="row 7"):
        top_k_neighbours(broken)
    with pytest.raises(UserError, match="catalog row 2"):
        catalog = embeddings.copy()
        catalog[2, 0] = np.inf
        top_k_neighbours(embeddings, catalog=catalog)
    with pytest.raises(UserError, match="dimension"):
        top_k_neighbours(embeddings, catalog=random_embeddings(4, dim=8))
    with pytest.raises(UserError, match="k must be"):
        top_k_neighbours(embeddings, k=0)
    with pytest.raises(UserError, match="max_chunk_mb"):
        top_k_neighbours(embeddings, max_chunk_mb=0)
    with pytest.raises(UserError, match="2-D"):
        top_k_neighbours(embeddings[0])
    with pytest.raises(UserError, match="numeric"):
        top_k_neighbours([["a", "b"]])
    with pytest.raises(UserError, match="min_score"):
        top_k_neighbours(embeddings, min_score=float("nan"))
    with pytest.raises(UserError, match="min_score"):
        top_k_neighbours(embeddings, min_score="high")


def test_tile_size_follows_the_budget():
    assert tile_size_for_budget(budget_for_tile(64)) == 64
    assert tile_size_for_budget(budget_for_tile(64) * 1.5) == 72  # rounded down to 8
    assert tile_size_for_budget(100_000) == 2048  # capped at the fastest size
    assert tile_size_for_budget(100_000, cap=4096) == 4096
    bytes_per_element = topk._BYTES_PER_TILE_ELEMENT
    assert bytes_per_element * tile_size_for_budget(256) ** 2 <= 256 * 1024 * 1024
    with pytest.raises(UserError, match="too small"):
        tile_size_for_budget(0.0001)
    with pytest.raises(UserError, match="positive"):
        tile_size_for_budget(-1)


# --- matches_from_neighbours -------------------------------------------------------------------


def hand_neighbours() -> Neighbours:
    """Four postings' neighbour lists, written out by hand.

    Row 0: itself, then 2 (0.9) and 3 (0.6).
    Row 1: a duplicate (3) ties with itself at 1.0 and is listed first; then 0 (0.4).
    Row 2: itself pushed out of the list entirely (k duplicates), others 0.95, 0.8.
    Row 3: nothing close: itself, then 1 (0.3), padding.
    """
    indices = [[0, 2, 3], [3, 1, 0], [0, 3, 1], [3, 1, -1]]
    scores = [[1.0, 0.9, 0.6], [1.0, 1.0, 0.4], [0.95, 0.95, 0.8], [1.0, 0.3, -np.inf]]
    return Neighbours(np.array(indices), np.array(scores))


def as_lists(matches):
    return [row.tolist() for row in matches]


def test_matches_keep_self_first_and_threshold_inclusive():
    matches = matches_from_neighbours(hand_neighbours(), 0.6)
    assert as_lists(matches) == [[0, 2, 3], [1, 3], [2, 0, 3, 1], [3]]
    assert all(row.dtype == np.int32 for row in matches)
    assert as_lists(matches_from_neighbours(hand_neighbours(), 0.91)) == [
        [0],
        [1, 3],
        [2, 0, 3],
        [3],
    ]


def test_max_matches_counts_self():
    assert as_lists(matches_from_neighbours(hand_neighbours(), 0.0, max_matches=2)) == [
        [0, 2],
        [1, 3],
        [2, 0],
        [3, 1],
    ]
    assert as_lists(matches_from_neighbours(hand_neighbours(), 0.0, max_matches=1)) == [
        [0],
        [1],
        [2],
        [3],
    ]
    with pytest.raises(UserError, match="max_matches"):
        matches_from_neighbours(hand_neighbours(), 0.5, max_matches=0)


def test_min2_adds_the_nearest_other_only_when_nothing_passes():
    neighbours = hand_neighbours()
    assert as_lists(matches_from_neighbours(neighbours, 0.99, min2=True)) == [
        [0, 2],
        [1, 3],
        [2, 0],
        [3, 1],
    ]
    # The floor rejects row 3's 0.3 and row 0's 0.9 stays (0.9 >= 0.5).
    assert as_lists(matches_from_neighbours(neighbours, 0.99, min2=True, min2_floor=0.5)) == [
        [0, 2],
        [1, 3],
        [2, 0],
        [3],
    ]
    # A row that already has a match gets nothing more from min2.
    assert as_lists(matches_from_neighbours(neighbours, 0.85, min2=True)) == [
        [0, 2],
        [1, 3],
        [2, 0, 3],
        [3, 1],
    ]


def test_query_against_catalog_matches_have_no_self():
    neighbours = Neighbours(
        np.array([[0, 5, 2], [1, 4, -1]]), np.array([[0.9, 0.7, 0.2], [0.5, 0.1, -np.inf]])
    )
    assert as_lists(matches_from_neighbours(neighbours, 0.6, include_self=False)) == [[0, 5], []]
    assert as_lists(matches_from_neighbours(neighbours, 0.6, include_self=False, min2=True)) == [
        [0, 5],
        [1],
    ]
    assert as_lists(
        matches_from_neighbours(neighbours, 0.6, include_self=False, max_matches=1)
    ) == [[0], []]


def test_matches_from_real_top_k_with_duplicates():
    # Row 1 and 4 are exact duplicates: 4's list starts with 1 in the top-k, but its matches
    # start with itself.
    embeddings = random_embeddings(6, seed=9)
    embeddings[4] = embeddings[1]
    neighbours = top_k_neighbours(embeddings, k=3)
    assert neighbours.indices[4, 0] == 1
    matches = matches_from_neighbours(neighbours, 0.99)
    assert as_lists(matches) == [[0], [1, 4], [2], [3], [4, 1], [5]]


# --- union_matches and concat_embeddings -------------------------------------------------------


def test_union_orders_by_first_appearance_and_dedupes():
    first = [np.array([0, 2]), np.array([1]), np.array([2, 0])]
    second = [np.array([0, 3, 2]), np.array([1, 2]), np.array([2])]
    assert as_lists(union_matches(first, second)) == [[0, 2, 3], [1, 2], [2, 0]]
    assert as_lists(union_matches(second, first)) == [[0, 3, 2], [1, 2], [2, 0]]
    assert as_lists(union_matches(first, second, max_matches=2)) == [[0, 2], [1, 2], [2, 0]]


def test_union_puts_self_first_even_when_a_source_does_not():
    first = [np.array([1, 0]), np.array([], np.int32)]
    second = [np.array([2]), np.array([0, 1])]
    assert as_lists(union_matches(first, second)) == [[0, 1, 2], [1, 0]]
    assert as_lists(union_matches(first, second, include_self=False)) == [[1, 0, 2], [0, 1]]


def test_union_rejects_mismatched_lengths():
    with pytest.raises(UserError, match="rows"):
        union_matches([np.array([0])], [np.array([0]), np.array([1])])
    with pytest.raises(UserError, match="at least one"):
        union_matches()


def test_concat_embeddings_averages_cosines_by_weight():
    rng = np.random.default_rng(11)
    image = rng.standard_normal((6, 5)) * 3  # deliberately not normalised
    text = rng.standard_normal((6, 4))
    image_cosine = normalised(image) @ normalised(image).T
    text_cosine = normalised(text) @ normalised(text).T
    combined = concat_embeddings(image, text)
    assert combined.shape == (6, 9) and combined.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(combined, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(combined @ combined.T, (image_cosine + text_cosine) / 2, atol=1e-6)
    weighted = concat_embeddings(image, text, weights=[3, 1])
    np.testing.assert_allclose(
        weighted @ weighted.T, (3 * image_cosine + text_cosine) / 4, atol=1e-6
    )


def test_concat_embeddings_validates():
    with pytest.raises(UserError, match="rows"):
        concat_embeddings(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(UserError, match="weights"):
        concat_embeddings(np.ones((3, 2)), np.ones((3, 2)), weights=[1])
    with pytest.raises(UserError, match="weights"):
        concat_embeddings(np.ones((3, 2)), weights=[-1])
    zero_row = concat_embeddings(np.array([[0.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(zero_row, [[0, 0], [2**-0.5, 2**-0.5]], atol=1e-7)


def test_padding_never_becomes_a_neighbour(merge_path):
    # Padding rows are zero vectors (score 0). Here one posting scores below 0 with everything,
    # so a padding column would beat every real candidate if it ever slipped through.
    rng = np.random.default_rng(12)
    others = rng.standard_normal((99, 24))
    others[:, 0] = np.abs(others[:, 0]) + 0.1
    outlier = np.zeros((1, 24))
    outlier[0, 0] = -1.0
    # The outlier is row 0, so its row of tiles reaches the padded last tile.
    embeddings = normalised(np.concatenate([outlier, others]))
    for tile in (16, 32):
        assert 100 % tile != 0
        result = top_k_neighbours(embeddings, k=3, max_chunk_mb=budget_for_tile(tile))
        assert_matches_reference(result, embeddings, embeddings, 3)
        assert result.scores[0, 1] < 0
        against_catalog = top_k_neighbours(
            embeddings[:20], catalog=embeddings[1:], k=3, max_chunk_mb=budget_for_tile(tile)
        )
        assert_matches_reference(against_catalog, embeddings[:20], embeddings[1:], 3)
        assert against_catalog.scores[0, 0] < 0
