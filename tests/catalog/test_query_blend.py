"""Queries against a catalogue blended with each other first (``predict.py --query-blend``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from catalog_helpers import run_main

from tf_shopee.catalog.index import BuildOptions, build_index, load_index, resolve_models
from tf_shopee.catalog.query import CatalogMatcher, blend_query_batch
from tf_shopee.catalog.search import ExactSearch
from tf_shopee.matching.options import MatchOptions
from tf_shopee.matching.postings import Postings
from tf_shopee.predict import main as predict_main

IMAGES = ("data", "train_images")


def _unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_blend_query_batch_averages_close_queries_and_leaves_the_rest():
    queries = _unit([[1.0, 0.1, 0.0], [1.0, -0.1, 0.0], [0.0, 0.0, 1.0]])
    queries = np.vstack([queries, np.zeros((1, 3), np.float32)])  # an unusable photo
    blended = blend_query_batch(queries, neighbours=2, threshold=0.5, max_chunk_mb=8)
    # Each of the two close queries becomes itself plus the other weighted by their cosine,
    # normalised: they move towards each other.
    cosine = float(queries[0] @ queries[1])
    expected = queries[0] + cosine * queries[1]
    np.testing.assert_allclose(blended[0], expected / np.linalg.norm(expected), atol=1e-5)
    assert float(blended[0] @ blended[1]) > cosine + 0.01
    np.testing.assert_array_equal(blended[2], queries[2])  # no neighbour above the threshold
    np.testing.assert_array_equal(blended[3], 0.0)  # a zero row blends with nothing
    # A batch of one query (the app's upload) is unchanged.
    np.testing.assert_array_equal(
        blend_query_batch(queries[:1], neighbours=5, threshold=0.0, max_chunk_mb=8), queries[:1])
    # Only the nearest `neighbours` count: with 1, query 0 still takes query 1 only.
    np.testing.assert_allclose(
        blend_query_batch(queries, neighbours=1, threshold=0.5, max_chunk_mb=8)[0], blended[0],
        atol=1e-5)


@pytest.fixture(scope="module")
def image_index(catalogue_set, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("query_blend") / "index"
    build_index(BuildOptions(csv=str(catalogue_set / "all.csv"),
                             images=str(catalogue_set.joinpath(*IMAGES)), out=str(out),
                             models=[str(tiny_models["image"])], progress=False))
    return out


def test_the_matcher_searches_the_blended_queries_and_not_its_own_rows(image_index):
    index = load_index(image_index)
    options = MatchOptions(progress=False, use_tfidf=False, use_phash=False, query_blend=3,
                           query_blend_threshold=0.2, threshold_overrides={"image": 0.5})
    matcher = CatalogMatcher(index, resolve_models(index.manifest, []), options)
    rng = np.random.default_rng(0)
    queries = _unit(index.embeddings["image"][:12] + 0.05 * rng.normal(
        size=(12, index.embeddings["image"].shape[1])))
    postings = Postings(posting_ids=[f"q{row}" for row in range(12)], titles=[""] * 12)
    result = matcher.match(postings, embeddings={"image": queries})
    expected = ExactSearch(index.embeddings["image"]).search(
        blend_query_batch(queries, neighbours=3, threshold=0.2, max_chunk_mb=8), k=options.k)
    np.testing.assert_array_equal(result.neighbours["image"].indices, expected.indices)
    plain = ExactSearch(index.embeddings["image"]).search(queries, k=options.k)
    assert not np.allclose(result.neighbours["image"].scores, plain.scores)
    # The catalogue's own rows (the app's browse view) are never blended with each other.
    rows = matcher.match_rows([0, 1, 2])
    own = ExactSearch(index.embeddings["image"]).search(index.embeddings["image"][[0, 1, 2]],
                                                        k=options.k)
    np.testing.assert_array_equal(rows.neighbours["image"].indices, own.indices)


def test_predict_query_blend_is_recorded_and_checked(image_index, catalogue_set, tmp_path,
                                                     capsys):
    report_path = tmp_path / "report.json"
    arguments = ["--catalog", image_index, "--csv", catalogue_set / "queries.csv", "--images",
                 catalogue_set.joinpath(*IMAGES), "--quiet", "--no-tfidf", "--no-phash",
                 "--threshold", "image=0.5"]
    status, _, stderr = run_main(predict_main, [
        *arguments, "--out", tmp_path / "m.csv", "--evaluate", "--report", report_path,
        "--query-blend", "5"], capsys)
    assert status == 0, stderr
    options = json.loads(report_path.read_text())["options"]
    assert options["query_blend"] == 5 and options["query_blend_threshold"] == 0.5
    status, _, stderr = run_main(predict_main, [
        *arguments, "--out", tmp_path / "n.csv", "--query-blend", "-1"], capsys)
    assert status == 2 and "--query-blend must be 0 (off) or more" in stderr
    status, _, stderr = run_main(predict_main, [
        "--csv", catalogue_set / "queries.csv", "--images", catalogue_set.joinpath(*IMAGES),
        "--out", tmp_path / "o.csv", "--no-tfidf", "--query-blend", "5"], capsys)
    assert status == 2 and "--query-blend blends queries against a --catalog" in stderr
