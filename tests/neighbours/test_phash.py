"""phash Hamming-distance neighbours against a pure-Python popcount reference."""

import numpy as np
import pytest

from tf_shopee.errors import UserError
from tf_shopee.neighbours.phash import parse_hex_hashes, phash_neighbours


def random_hashes(count: int, seed: int, families: int = 12) -> list[str]:
    """Hashes in families of near-copies (a few flipped bits) plus exact duplicates, so that
    small distances and ties both occur."""
    generator = np.random.default_rng(seed)
    bases = generator.integers(0, 2**63, size=families, dtype=np.int64).astype(np.uint64) * 2 + 1
    hashes = []
    for _ in range(count):
        value = int(bases[generator.integers(families)])
        for bit in generator.choice(64, size=generator.integers(0, 6), replace=False):
            value ^= 1 << int(bit)
        hashes.append(f"{value:016x}")
    return hashes


def reference_neighbours(queries, catalog, k, max_distance=None):
    """Sorted (distance, index) lists by Python popcount; ties by lower index."""
    rows = []
    for query in queries:
        distances = [bin(int(query, 16) ^ int(item, 16)).count("1") for item in catalog]
        order = sorted(range(len(catalog)), key=lambda index: (distances[index], index))
        if max_distance is not None:
            order = [index for index in order if distances[index] <= max_distance]
        rows.append([(distances[index], index) for index in order[:k]])
    return rows


def assert_equals_reference(result, reference, k):
    for row, expected in enumerate(reference):
        expected_indices = [index for _, index in expected] + [-1] * (k - len(expected))
        expected_scores = [1 - distance / 64 for distance, _ in expected]
        expected_scores += [-np.inf] * (k - len(expected))
        assert result.indices[row].tolist() == expected_indices, f"row {row}"
        np.testing.assert_allclose(result.scores[row], expected_scores)


def test_self_matching_equals_popcount_reference_across_chunks():
    hashes = random_hashes(120, seed=0)
    # 0.01 MB holds a few rows of 120 pairs: many chunks, including a short last one.
    result = phash_neighbours(hashes, k=7, max_chunk_mb=0.01)
    assert result.indices.shape == (120, 7)
    assert result.indices.dtype == np.int32 and result.scores.dtype == np.float32
    assert_equals_reference(result, reference_neighbours(hashes, hashes, 7), k=7)


def test_max_distance_drops_far_neighbours():
    hashes = random_hashes(80, seed=1)
    result = phash_neighbours(hashes, k=10, max_distance=3)
    assert_equals_reference(result, reference_neighbours(hashes, hashes, 10, max_distance=3), 10)
    assert np.all(result.scores[result.indices >= 0] >= 1 - 3 / 64)


def test_identical_hashes_score_one_and_tie_by_index():
    hashes = ["00000000000000ff", "0f000000000000ff", "00000000000000ff", "00000000000000FF"]
    result = phash_neighbours(hashes, k=4)
    assert result.indices[0].tolist() == [0, 2, 3, 1]
    np.testing.assert_allclose(result.scores[0], [1, 1, 1, 1 - 4 / 64])


def test_bad_hashes_never_match_not_even_themselves():
    # 16 characters but not hex, too short, empty, None and NaN are all invalid.
    invalid = ["", None, float("nan"), "not-a-hash-value", "ffff"]
    hashes = ["ffffffffffffffff", *invalid, "ffffffffffffffff"]
    result = phash_neighbours(hashes, k=3)
    assert result.indices[0].tolist() == [0, 6, -1]
    assert result.indices[6].tolist() == [0, 6, -1]
    for row in range(1, 6):
        assert result.indices[row].tolist() == [-1, -1, -1]
        assert np.isneginf(result.scores[row]).all()
    _, valid = parse_hex_hashes(hashes)
    assert valid.tolist() == [True, False, False, False, False, False, True]


def test_k_larger_than_catalog_pads_rows():
    result = phash_neighbours(["0000000000000000", "0000000000000001"], k=5)
    assert result.indices.tolist() == [[0, 1, -1, -1, -1], [1, 0, -1, -1, -1]]
    assert np.isneginf(result.scores[:, 2:]).all()


def test_query_against_catalog():
    catalog = random_hashes(60, seed=2)
    queries = random_hashes(25, seed=3) + [b"0123456789abcdef", "zz"]
    result = phash_neighbours(queries, k=6, catalog_hashes=catalog, max_distance=20)
    reference = reference_neighbours(
        [query.decode() if isinstance(query, bytes) else query for query in queries[:-1]],
        catalog,
        6,
        max_distance=20,
    )
    assert_equals_reference(result, reference + [[]], k=6)


def test_all_invalid_catalog_or_no_queries():
    assert phash_neighbours(["abc"], k=2, catalog_hashes=["", None]).indices.tolist() == [[-1, -1]]
    assert phash_neighbours([], k=2).indices.shape == (0, 2)


def test_the_popcount_reference_counts_bits(hamming_distances):
    distances = hamming_distances(["0000000000000000", "ffffffffffffffff"], ["000000000000000f"])
    assert distances.tolist() == [[4], [60]]


@pytest.mark.parametrize(
    "options, message",
    [({"k": 0}, "k must be"), ({"max_distance": 65}, "max_distance"), ({"max_chunk_mb": 0}, "max")],
)
def test_bad_options_are_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        phash_neighbours(["0000000000000000"], **options)
