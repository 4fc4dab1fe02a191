"""TF-IDF neighbours against a brute-force dense scikit-learn reference."""

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

from tf_shopee.errors import UserError
from tf_shopee.neighbours import Neighbours
from tf_shopee.neighbours.tfidf import (
    clean_title,
    filter_by_cosine,
    sparse_top_k,
    tfidf_neighbours,
    tfidf_vectors,
)

WORDS = [f"w{number}" for number in range(25)] + ["tas", "sepatu", "merah", "biru", "500ml"]


def random_titles(count: int, seed: int) -> list[str]:
    generator = np.random.default_rng(seed)
    return [
        " ".join(generator.choice(WORDS, size=generator.integers(1, 7)))
        for _ in range(count)
    ]


def brute_force_scores(titles, catalog=None, **vectorizer_options) -> np.ndarray:
    vectorizer = TfidfVectorizer(**vectorizer_options)
    catalog_matrix = vectorizer.fit_transform(titles if catalog is None else catalog)
    query_matrix = catalog_matrix if catalog is None else vectorizer.transform(titles)
    return cosine_similarity(query_matrix, catalog_matrix)


def assert_matches_brute_force(result, dense_scores, k, min_score=None):
    """Every row holds the k best non-zero scores, sorted, and each index carries its score."""
    threshold = 1e-6 if min_score is None else min_score
    for row in range(dense_scores.shape[0]):
        candidates = np.sort(dense_scores[row][dense_scores[row] >= threshold])[::-1][:k]
        found = result.scores[row][result.indices[row] >= 0]
        np.testing.assert_allclose(found, candidates, rtol=1e-5, atol=1e-6)
        valid = result.indices[row][result.indices[row] >= 0]
        np.testing.assert_allclose(dense_scores[row, valid], found, rtol=1e-5, atol=1e-6)
        assert len(set(valid.tolist())) == len(valid)
        padding = result.indices[row] < 0
        assert np.all(np.isneginf(result.scores[row][padding]))
        assert not np.any(padding[:-1] & ~padding[1:]), "padding must sit at the end of the row"


@pytest.mark.parametrize(
    "analyzer, ngram_range", [("word", (1, 1)), ("word", (1, 2)), ("char_wb", (2, 4))]
)
def test_self_matching_equals_brute_force(analyzer, ngram_range):
    titles = random_titles(150, seed=1)
    # A tiny chunk budget forces many chunks; k=5 with a 30-word vocabulary forces most rows to
    # have more than k candidates, so the histogram pruning runs.
    result = tfidf_neighbours(
        titles, k=5, analyzer=analyzer, ngram_range=ngram_range, max_chunk_mb=0.05
    )
    assert result.indices.shape == (150, 5)
    dense = brute_force_scores(titles, analyzer=analyzer, ngram_range=ngram_range)
    assert_matches_brute_force(result, dense, k=5)


def test_ties_are_broken_by_lower_index():
    titles = ["red shoe", "red shoe", "red shoe", "red shoe", "blue hat"]
    result = tfidf_neighbours(titles, k=3)
    assert result.indices[:4].tolist() == [[0, 1, 2]] * 4
    assert result.indices[4].tolist() == [4, -1, -1]
    np.testing.assert_allclose(result.scores[0], [1, 1, 1], rtol=1e-6)


def test_k_larger_than_catalog_pads_rows():
    titles = ["a b c", "a b", "c d", "x y"]
    result = tfidf_neighbours(titles, k=10, analyzer="char_wb", ngram_range=(1, 1))
    assert result.indices.shape == (4, 10)
    dense = brute_force_scores(titles, analyzer="char_wb", ngram_range=(1, 1))
    assert_matches_brute_force(result, dense, k=10)
    # Only space-padded single characters are shared, so rows have fewer than 10 candidates.
    assert (result.indices == -1).any(axis=1).all()


def test_min_score_drops_weak_neighbours():
    titles = random_titles(120, seed=2)
    result = tfidf_neighbours(titles, k=8, min_score=0.4, max_chunk_mb=0.02)
    dense = brute_force_scores(titles)
    assert_matches_brute_force(result, dense, k=8, min_score=0.4)
    assert np.all(result.scores[result.indices >= 0] >= 0.4)


def test_query_against_catalog_fits_on_catalog():
    catalog = random_titles(90, seed=3)
    queries = random_titles(40, seed=4) + ["completely unseen words", ""]
    result = tfidf_neighbours(queries, k=6, catalog_titles=catalog, max_chunk_mb=0.01)
    assert result.indices.shape == (42, 6)
    assert result.indices.max() < 90
    dense = brute_force_scores(queries, catalog=catalog)
    assert_matches_brute_force(result, dense, k=6)
    # Words outside the catalog vocabulary and the empty title have no neighbour.
    assert result.indices[-2:].tolist() == [[-1] * 6, [-1] * 6]


def test_empty_and_missing_titles_never_match():
    titles = ["red shoe", "", None, float("nan"), "red shoe"]
    result = tfidf_neighbours(titles, k=3)
    assert result.indices.tolist() == [[0, 4, -1], [-1] * 3, [-1] * 3, [-1] * 3, [0, 4, -1]]


def test_all_titles_empty_gives_only_padding():
    result = tfidf_neighbours(["", "", None], k=2)
    assert result.indices.tolist() == [[-1, -1]] * 3
    assert np.isneginf(result.scores).all()


def test_given_vectorizer_is_used_and_fitted_one_only_transforms():
    catalog = ["red shoe", "red shoe big", "blue hat"]
    fitted = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 3)).fit(catalog + ["shoes"])
    result = tfidf_neighbours(["red shoes"], k=2, vectorizer=fitted, catalog_titles=catalog)
    expected = cosine_similarity(fitted.transform(["red shoes"]), fitted.transform(catalog))[0]
    assert result.indices[0].tolist() == list(np.argsort(-expected)[:2])
    np.testing.assert_allclose(result.scores[0], np.sort(expected)[::-1][:2], rtol=1e-5)
    # An unfitted vectorizer is cloned, fitted on the catalog, and left untouched.
    unfitted = TfidfVectorizer(norm=None)
    tfidf_neighbours(catalog, k=2, vectorizer=unfitted)
    assert not hasattr(unfitted, "vocabulary_")


def test_sparse_top_k_breaks_ties_and_handles_empty_inputs():
    import scipy.sparse as sparse

    queries = sparse.csr_matrix(np.array([[1.0, 0.0], [0.0, 0.0]]))
    catalog = sparse.csr_matrix(np.array([[2.0, 0.0], [2.0, 1.0], [0.0, 3.0]]))
    result = sparse_top_k(queries, catalog, k=3)
    assert result.indices.tolist() == [[0, 1, -1], [-1, -1, -1]]
    assert result.scores[0, :2].tolist() == [2.0, 2.0]
    empty = sparse_top_k(sparse.csr_matrix((0, 2)), catalog, k=2)
    assert empty.indices.shape == (0, 2)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"k": 0}, "k must be at least 1"),
        ({"analyzer": "sentence"}, "analyzer must be one of"),
        ({"ngram_range": (3, 1)}, "ngram_range"),
        ({"max_chunk_mb": 0}, "max_chunk_mb"),
    ],
)
def test_bad_options_are_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        tfidf_neighbours(["a b", "b c"], **options)


def test_non_string_title_names_the_row():
    with pytest.raises(UserError, match=r"titles\[1\] is int"):
        tfidf_neighbours(["a b", 5])


def test_clean_title_decodes_byte_escapes_and_entities():
    assert clean_title("Nescafe \\xc3\\x89clair Latte 220ml") == "Nescafe Éclair Latte 220ml"
    assert clean_title("\\xe2\\x9d\\xa4 RATU \\xe2\\x9d\\xa4") == "❤ RATU ❤"
    assert clean_title("Calls &amp; Music 10&amp;quot;") == 'Calls & Music 10&quot;'
    assert clean_title("plain title") == "plain title"
    # A truncated escape sequence decodes to the replacement character, never raises.
    assert clean_title("bad \\xe2\\x9d end") == "bad \ufffd end"


def test_clean_titles_removes_spurious_emoji_matches():
    titles = ["\\xe2\\x9d\\xa4 sepatu merah", "\\xe2\\x9d\\xa4 tas biru", "sepatu merah"]
    raw = tfidf_neighbours(titles, k=3)
    cleaned = tfidf_neighbours(titles, k=3, clean_titles=True)
    # Raw: the escape tokens xe2/x9d/xa4 link the two unrelated emoji titles.
    assert 1 in raw.indices[0].tolist()
    assert cleaned.indices[0].tolist() == [0, 2, -1]
    assert cleaned.indices[1].tolist() == [1, -1, -1]


def test_filter_by_cosine_keeps_agreeing_neighbours_in_order():
    titles = ["red shoe", "red shoe big", "blue hat", "blue hat small", "green"]
    vectors, _ = tfidf_vectors(titles)
    cosine = (vectors @ vectors.T).toarray()
    # Everyone is everyone's neighbour (an image source that cannot tell products apart).
    indices = np.tile(np.arange(5, dtype=np.int32), (5, 1))
    scores = np.tile(np.linspace(1.0, 0.6, 5, dtype=np.float32), (5, 1))
    filtered = filter_by_cosine(Neighbours(indices, scores), vectors, 0.5)
    for row in range(5):
        kept = [index for index in range(5) if cosine[row, index] >= 0.5]
        assert filtered.indices[row].tolist() == kept + [-1] * (5 - len(kept))
        np.testing.assert_allclose(filtered.scores[row, : len(kept)], scores[row, kept])
        assert np.isneginf(filtered.scores[row, len(kept):]).all()
    # Query rows against another catalog.
    catalog_vectors = vectors[[2, 0]]
    against = filter_by_cosine(
        Neighbours([[0, 1]], [[0.9, 0.8]]), vectors[[1]], 0.5, catalog_vectors=catalog_vectors
    )
    assert against.indices.tolist() == [[1, -1]]
