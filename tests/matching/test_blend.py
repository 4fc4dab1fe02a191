"""Tests of tf_shopee.matching.blend, the one blending implementation: dense embeddings and sparse
TF-IDF titles, self-matching and catalogue queries, worked out by hand or against the dense
formula."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sparse

from tf_shopee.errors import UserError
from tf_shopee.matching.blend import blend_embeddings, blend_query_rows, blend_rows
from tf_shopee.matching.topk import top_k_neighbours
from tf_shopee.neighbours import Neighbours
from tf_shopee.neighbours.tfidf import tfidf_neighbours, tfidf_vectors

WORDS = [f"w{number}" for number in range(25)] + ["tas", "sepatu", "merah", "biru", "500ml"]


def random_titles(count: int, seed: int) -> list[str]:
    generator = np.random.default_rng(seed)
    return [" ".join(generator.choice(WORDS, size=generator.integers(1, 7)))
            for _ in range(count)]


def normalised(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def blend_case():
    """e0 = (1, 0), e1 = (0.8, 0.6), e2 = (0, 1): cos(e0, e1) = 0.8, cos(e1, e2) = 0.6,
    cos(e0, e2) = 0."""
    embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], np.float32)
    return embeddings, top_k_neighbours(embeddings, k=3)


def unit(x, y):
    length = np.hypot(x, y)
    return [x / length, y / length]


def test_blend_one_round_by_hand():
    embeddings, neighbours = blend_case()
    blended = blend_embeddings(embeddings, neighbours, 0.7)
    # Row 0: e0 + 0.8 e1 = (1.64, 0.48); row 1: e1 + 0.8 e0 = (1.6, 0.6); row 2 alone.
    expected = [unit(1.64, 0.48), unit(1.6, 0.6), [0.0, 1.0]]
    np.testing.assert_allclose(blended, expected, atol=1e-6)
    assert blended.dtype == np.float32


def test_blend_with_the_photo_graph_pulls_in_photos_a_few_bits_apart():
    embeddings, neighbours = blend_case()
    # Rows 1 and 2 have photos 2 bits apart (phash score 1 - 2/64); nothing else is close.
    photos = Neighbours(np.array([[0, -1], [1, 2], [2, 1]]),
                        np.array([[1.0, -np.inf], [1.0, 62 / 64], [1.0, 62 / 64]], np.float32))
    blended = blend_embeddings(embeddings, neighbours, 0.7, phash_neighbours=photos, phash_bits=4)
    # Row 2: e2 + (62/64) e1 = (0.775, 1.58125); row 1: e1 + 0.8 e0 + (62/64) e2.
    np.testing.assert_allclose(blended[2], unit(0.775, 1.58125), atol=1e-6)
    np.testing.assert_allclose(blended[1], unit(1.6, 0.6 + 62 / 64), atol=1e-6)
    with pytest.raises(UserError, match="phash"):
        blend_embeddings(embeddings, neighbours, 0.7, phash_bits=4)


def test_blend_two_rounds_search_again():
    # What predict.py does for two rounds: blend, search the neighbours again, blend.
    embeddings, neighbours = blend_case()
    once = blend_embeddings(embeddings, neighbours, 0.7)
    blended = blend_embeddings(once, top_k_neighbours(once, k=3), 0.5)
    # After step 1: b0 = unit(1.64, 0.48), b1 = unit(1.6, 0.6), b2 = (0, 1).
    b0, b1, b2 = np.array(unit(1.64, 0.48)), np.array(unit(1.6, 0.6)), np.array([0.0, 1.0])
    s01, s02, s12 = b0 @ b1, b0 @ b2, b1 @ b2  # about 0.997, 0.281, 0.351: only s01 >= 0.5
    assert s01 >= 0.5 > max(s02, s12)
    expected = [b0 + s01 * b1, b1 + s01 * b0, b2]
    expected = [vector / np.linalg.norm(vector) for vector in expected]
    np.testing.assert_allclose(blended, expected, atol=1e-6)


def test_blend_rejects_mismatched_inputs():
    embeddings, neighbours = blend_case()
    with pytest.raises(UserError, match="blending graph has 3 rows"):
        blend_embeddings(embeddings[:2], neighbours, 0.5)


def test_blend_sharpens_groups():
    # Blending pulls each group together: the mean cosine inside groups rises, across stays low.
    rng = np.random.default_rng(10)
    centres = normalised(rng.standard_normal((20, 32)))
    labels = np.repeat(np.arange(20), 4)
    embeddings = normalised(centres[labels] + 0.12 * rng.standard_normal((80, 32)))
    blended = blend_embeddings(embeddings, top_k_neighbours(embeddings, k=10), 0.5)
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(80, dtype=bool)
    before, after = embeddings @ embeddings.T, blended @ blended.T
    assert after[same & off_diagonal].mean() > before[same & off_diagonal].mean() + 0.01
    assert abs(after[~same].mean() - before[~same].mean()) < 0.05


def test_blend_rows_of_sparse_titles_matches_dense_formula():
    titles = random_titles(40, seed=5)
    vectors, _ = tfidf_vectors(titles)
    neighbours = tfidf_neighbours(titles, k=6)
    other = tfidf_neighbours(titles, k=3, analyzer="char_wb", ngram_range=(2, 3))
    blended = blend_rows(vectors, [(neighbours, 0.5), (other, 0.8)])
    dense = vectors.toarray()
    weights = np.eye(40)
    for graph, threshold in [(neighbours, 0.5), (other, 0.8)]:
        for row in range(40):
            for index, score in zip(graph.indices[row], graph.scores[row]):
                if index >= 0 and index != row and score >= threshold:
                    weights[row, index] = max(weights[row, index], score)
    expected = weights @ dense
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(blended.toarray(), expected, rtol=1e-5, atol=1e-6)
    assert weights.sum() > 40, "the case must actually blend some neighbours"
    with pytest.raises(UserError, match="blending graph"):
        blend_rows(vectors[:10], [(neighbours, 0.5)])


def test_blend_rows_of_dense_and_sparse_input_agree():
    # One implementation: dense embeddings blend exactly as their sparse copy does.
    rng = np.random.default_rng(3)
    embeddings = normalised(rng.standard_normal((30, 8)))
    graph = (top_k_neighbours(embeddings, k=5), 0.2)
    dense = blend_rows(embeddings, [graph])
    assert isinstance(dense, np.ndarray) and dense.dtype == np.float32
    from_sparse = blend_rows(sparse.csr_matrix(embeddings), [graph]).toarray()
    np.testing.assert_array_equal(dense, from_sparse)


def test_blend_query_rows_blends_a_query_as_self_matching_blends_a_posting():
    titles = random_titles(30, seed=8)
    vectors, _ = tfidf_vectors(titles)
    neighbours = tfidf_neighbours(titles, k=6)
    self_blended = blend_rows(vectors, [(neighbours, 0.4)])
    # Posting 0 as a query against the other 29: its neighbours without itself.
    keep = neighbours.indices[0] > 0
    query = Neighbours(neighbours.indices[[0]][:, keep] - 1, neighbours.scores[[0]][:, keep])
    blended = blend_query_rows(vectors[[0]], vectors[1:], [(query, 0.4)])
    np.testing.assert_allclose(blended.toarray()[0], self_blended.toarray()[0], atol=1e-6)


def test_blending_can_be_bounded_to_the_nearest_neighbours():
    embeddings = np.eye(3, dtype=np.float32)
    # Row 0's neighbours: itself, row 1 (0.9), row 2 (0.8).
    neighbours = Neighbours(np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1]]),
                            np.array([[1.0, 0.9, 0.8], [1.0, 0.9, 0.7], [1.0, 0.8, 0.7]],
                                     dtype=np.float32))
    every = blend_embeddings(embeddings, neighbours, 0.5)
    nearest = blend_embeddings(embeddings, neighbours, 0.5, max_neighbours=2)
    expected_every = np.array([1.0, 0.9, 0.8]) / np.linalg.norm([1.0, 0.9, 0.8])
    expected_nearest = np.array([1.0, 0.9, 0.0]) / np.linalg.norm([1.0, 0.9])
    np.testing.assert_allclose(every[0], expected_every, rtol=1e-5)
    np.testing.assert_allclose(nearest[0], expected_nearest, rtol=1e-5)
