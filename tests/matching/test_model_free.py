"""The model-free sources built together: TF-IDF (blended), phash and phash with title agreement."""

import numpy as np
import pytest

from tf_shopee.errors import UserError
from tf_shopee.matching.decision import Decision, SourceRule, apply_decision
from tf_shopee.matching.model_free import ModelFreeSettings, model_free_sources
from tf_shopee.neighbours.phash import phash_neighbours
from tf_shopee.neighbours.tfidf import filter_by_cosine, tfidf_neighbours, tfidf_vectors

TITLES = [
    "sepatu sneakers wanita putih",  # 0 ┐ same product, same photo, different words
    "kets cewek warna putih murah",  # 1 ┘
    "sepatu boots pria hitam kulit",  # 2: other product
    "tas ransel laptop biru",  # 3 ┐ same product, photo re-shot (8 bits apart)
    "tas ransel laptop biru ori",  # 4 ┘
    "botol minum anak \\xe2\\x9d\\xa4",  # 5
    "",  # 6: no title
]
HASHES = [
    "ff00ff00ff00ff00",
    "ff00ff00ff00ff00",
    "00ff00ff00ff00ff",
    "0f0f0f0f0f0f0f0f",
    "0f0f0f0f0f0f0fff",
    "123456789abcdef0",
    "not-a-hash",
]


def test_sources_without_blending_equal_the_separate_functions():
    settings = ModelFreeSettings(blend_threshold=None, k=5)
    sources = model_free_sources(TITLES, HASHES, settings=settings)
    assert list(sources) == ["tfidf", "phash", "phash_text"]
    text = tfidf_neighbours(TITLES, k=5, clean_titles=True)
    np.testing.assert_array_equal(sources["tfidf"].indices, text.indices)
    image = phash_neighbours(HASHES, k=5, max_distance=20)
    np.testing.assert_array_equal(sources["phash"].indices, image.indices)
    vectors, _ = tfidf_vectors(TITLES, clean_titles=True)
    agreement = filter_by_cosine(image, vectors, settings.agreement_min_cosine)
    np.testing.assert_array_equal(sources["phash_text"].indices, agreement.indices)


def test_phash_text_keeps_only_photo_neighbours_whose_titles_agree():
    sources = model_free_sources(TITLES, HASHES, settings=ModelFreeSettings(k=5))
    phash_rows = [set(row[row >= 0].tolist()) for row in sources["phash"].indices]
    agree_rows = [set(row[row >= 0].tolist()) for row in sources["phash_text"].indices]
    assert {0, 1} <= phash_rows[0]
    assert 1 not in agree_rows[0], "titles 0 and 1 share only 'putih': below the cosine bar"
    assert 4 in agree_rows[3]
    assert agree_rows[6] == set(), "an invalid hash never matches"


def test_blending_with_the_photo_graph_pulls_same_photo_titles_together():
    plain = model_free_sources(TITLES, HASHES, settings=ModelFreeSettings(blend_threshold=None))
    blended = model_free_sources(TITLES, HASHES, settings=ModelFreeSettings(blend_threshold=0.65))

    def score(neighbours, row, other):
        position = np.flatnonzero(neighbours.indices[row] == other)
        return float(neighbours.scores[row, position[0]]) if position.size else 0.0

    # Identical photos (phash distance 0 <= 4) blend 0 and 1 into nearly the same vector.
    assert score(plain["tfidf"], 0, 1) < 0.3
    assert score(blended["tfidf"], 0, 1) > 0.9
    # Without hashes only the text graph blends, and no phash sources come back.
    text_only = model_free_sources(TITLES, None, settings=ModelFreeSettings(blend_threshold=0.65))
    assert list(text_only) == ["tfidf"]
    assert score(text_only["tfidf"], 0, 1) < 0.3


def test_union_of_sources_finds_both_products():
    sources = model_free_sources(TITLES, HASHES, settings=ModelFreeSettings(k=5))
    rules = {"tfidf": SourceRule(0.8), "phash": SourceRule(0), "phash_text": SourceRule(14)}
    decision = Decision(sources=tuple(rules), rules=rules, method="fixed")
    per_source, combined = apply_decision(sources, decision)
    assert sorted(combined[0].tolist()) == [0, 1]
    assert sorted(combined[3].tolist()) == [3, 4]
    assert combined[6].tolist() == [6]
    assert per_source["phash"][3].tolist() == [3], "8 bits apart is not an identical photo"
    with pytest.raises(UserError, match="only"):
        apply_decision({"tfidf": sources["tfidf"]}, decision)


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError, match="7 titles but 2 image_phash"):
        model_free_sources(TITLES, HASHES[:2])
    with pytest.raises(UserError, match="blend_threshold"):
        model_free_sources(TITLES, HASHES, settings=ModelFreeSettings(blend_threshold=1.5))
