"""Exact and approximate catalogue search behind one interface, the query-side decisions, and
the query-vs-catalogue metrics, on hand-made data."""

from __future__ import annotations

import numpy as np
import pytest

from tf_shopee.catalog.query import COMBINED, decide, evaluate_queries
from tf_shopee.catalog.search import (
    ExactSearch,
    IvfSearch,
    ann_cells,
    pq_subquantizers,
    resolve_mode,
    training_rows,
)
from tf_shopee.errors import UserError
from tf_shopee.neighbours import Neighbours


def _clustered(rows: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim))
    matrix = centres[rng.integers(0, 20, rows)] + 0.5 * rng.standard_normal((rows, dim))
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def test_exact_search_is_the_brute_force_top_k():
    catalogue, queries = _clustered(300), _clustered(40, seed=1)
    found = ExactSearch(catalogue).search(queries, k=7)
    scores = queries @ catalogue.T
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(found.indices, expected)
    np.testing.assert_allclose(found.scores, np.take_along_axis(scores, expected, 1), atol=1e-5)


def test_ivf_probing_every_cell_equals_exact_and_survives_save_load_add(tmp_path):
    catalogue, queries = _clustered(640), _clustered(30, seed=2)
    search = IvfSearch.build(catalogue[:600], cells=8)
    search.add(catalogue[600:])  # rows appended after training keep the catalogue numbering
    search.nprobe = search.num_cells
    exact = ExactSearch(catalogue).search(queries, k=9)
    found = search.search(queries, k=9)
    np.testing.assert_array_equal(found.indices, exact.indices)
    np.testing.assert_allclose(found.scores, exact.scores, atol=1e-5)
    search.save(tmp_path / "ivf.faiss")
    loaded = IvfSearch.load(tmp_path / "ivf.faiss", nprobe=8)
    np.testing.assert_array_equal(loaded.search(queries, k=9).indices, exact.indices)
    # Fewer probes than cells: still real rows with their exact scores, best first.
    loaded.nprobe = 1
    partial = loaded.search(queries, k=9)
    real = partial.indices >= 0
    rows = np.nonzero(real)
    np.testing.assert_allclose(partial.scores[real],
                               np.sum(queries[rows[0]] * catalogue[partial.indices[real]], 1),
                               atol=1e-5)
    assert (np.diff(np.where(real, partial.scores, -2.0), axis=1) <= 1e-6).all()


def test_ivf_pads_when_k_exceeds_the_catalogue_and_applies_min_score():
    catalogue = _clustered(40)
    search = IvfSearch.build(catalogue, cells=2)
    search.nprobe = 2
    found = search.search(catalogue[:3], k=50, min_score=0.5)
    assert found.indices.shape == (3, 50)
    assert (found.indices[:, 40:] == -1).all() and np.isneginf(found.scores[:, 40:]).all()
    assert (found.scores[found.indices >= 0] >= 0.5).all()
    assert found.indices[0, 0] == 0


def test_ivf_pq_trained_on_a_sample_filled_batch_by_batch_rescores_exactly(tmp_path):
    """IVF-PQ: a d/4-byte code per row (an eighth of IVF-Flat's memory and less), trained on a
    sample, rows added in shards; every cell probed, the rescored candidates are the exact top-k
    with exact scores, also after save/load with the rows memory-mapped from disk."""
    import faiss

    catalogue, queries = _clustered(3000, dim=32), _clustered(40, dim=32, seed=3)
    assert pq_subquantizers(32) == 8 and pq_subquantizers(384) == 96
    assert pq_subquantizers(30) == 6  # the largest divisor at most d / 4
    sample = catalogue[np.random.default_rng(0).choice(3000, training_rows(3000, 8, "ivf_pq"),
                                                       replace=False)]
    search = IvfSearch.train(sample, cells=8, kind="ivf_pq")
    for start in range(0, 3000, 700):  # shard by shard
        search.add(catalogue[start:start + 700])
    assert search.kind == "ivf_pq" and search.num_rows == 3000
    flat = IvfSearch.build(catalogue, cells=8)
    # Per row (the codebooks are fixed overhead; bench_ann.py measures whole indexes at 1M).
    assert search.index.code_size * 8 <= flat.index.code_size
    assert faiss.serialize_index(search.index).nbytes < faiss.serialize_index(flat.index).nbytes
    np.save(tmp_path / "rows.npy", catalogue)
    search.save(tmp_path / "pq.faiss")
    loaded = IvfSearch.load(tmp_path / "pq.faiss", nprobe=8,
                            vectors=np.load(tmp_path / "rows.npy", mmap_mode="r"))
    exact = ExactSearch(catalogue).search(queries, k=9)
    coarse = loaded.search(queries, k=9)
    loaded.refine = 16  # more candidates rescored: closer to the exact lists
    found = loaded.search(queries, k=9)
    assert np.mean(found.scores[:, -1]) >= np.mean(coarse.scores[:, -1]) - 1e-6
    recall = np.mean([len(set(a) & set(b)) / 9 for a, b in zip(found.indices, exact.indices)])
    assert recall >= 0.95
    real = found.indices >= 0
    rows = np.nonzero(real)
    np.testing.assert_allclose(found.scores[real],
                               np.sum(queries[rows[0]] * catalogue[found.indices[real]], 1),
                               atol=1e-5)
    without_rows = IvfSearch.load(tmp_path / "pq.faiss", nprobe=8).search(queries, k=9)
    assert not np.allclose(without_rows.scores, found.scores, atol=1e-6)  # the codes' estimates
    with pytest.raises(UserError, match="--ann-index must be one of"):
        IvfSearch.train(sample, cells=8, kind="hnsw")


def test_search_modes():
    assert resolve_mode("auto", 10) == "exact"
    assert resolve_mode("auto", 10**7) == "ann"
    assert resolve_mode("exact", 10**7) == "exact"
    with pytest.raises(UserError, match="--search must be one of"):
        resolve_mode("fast", 10)
    assert ann_cells(1_000_000) == 4000 and ann_cells(10) == 1


def _plan(thresholds, *, min2=True, min2_source=None, min2_floor=None):
    from tf_shopee.matching.decision import Decision, SourceRule
    from tf_shopee.matching.plan import MatchPlan

    decision = Decision(tuple(thresholds), {name: SourceRule(value)
                                            for name, value in thresholds.items()},
                        min2_source=(min2_source or next(iter(thresholds))) if min2 else None,
                        min2_floor=min2_floor, method="fixed")
    return MatchPlan(decision=decision, origin={name: "test" for name in thresholds})


def test_decisions_on_catalogue_rows_never_take_a_row_for_the_query_itself():
    from tf_shopee.matching.options import PredictOptions

    # Query 0's nearest catalogue row is row 0 (the same number as the query): it must be kept
    # as a match, not dropped as "self".
    text = Neighbours([[0, 3, 1], [2, 0, -1]], [[0.9, 0.7, 0.2], [0.4, 0.3, -np.inf]])
    image = Neighbours([[1, 0, 2], [1, 2, 0]], [[0.95, 0.5, 0.1], [0.6, 0.2, 0.1]])
    options = PredictOptions(max_matches=3, k=3)
    matches = decide({"text": text, "image": image},
                     _plan({"text": 0.65, "image": 0.9}, min2_source="text"), options)
    assert [list(row) for row in matches["text"]] == [[0, 3], []]
    assert [list(row) for row in matches["image"]] == [[1], []]
    # Union in source order; query 1 matches nothing and gets its nearest text row (min2).
    assert [list(row) for row in matches[COMBINED]] == [[0, 3, 1], [2]]
    floored = decide({"text": text, "image": image},
                     _plan({"text": 0.65, "image": 0.9}, min2_source="text", min2_floor=0.5),
                     options)
    assert [list(row) for row in floored[COMBINED]] == [[0, 3, 1], []]
    capped = decide({"text": text}, _plan({"text": 0.1}, min2=False),
                    PredictOptions(max_matches=2, k=3))
    assert [list(row) for row in capped["text"]] == [[0, 3], [2, 0]]


def test_query_metrics():
    catalogue_labels = np.array([7, 7, 8, 9])
    query_labels = np.array([7, 8, 5])  # product 5 is not in the catalogue
    matches = {"text": [np.array([0, 2]), np.array([2]), np.array([], int)],
               COMBINED: [np.array([2, 0]), np.array([2]), np.array([3])]}
    neighbours = {"text": Neighbours([[0, 2], [1, 2], [-1, -1]],
                                     [[0.9, 0.1], [0.8, 0.7], [-np.inf, -np.inf]])}
    report = evaluate_queries(matches, neighbours, query_labels, catalogue_labels)
    # text: query 0 hits 1 of 2 true with 2 listed → 0.5; query 1 → 1; query 2 → 1 (nothing
    # to find, nothing listed).
    assert report["f1"]["text"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert report["f1"][COMBINED] == pytest.approx((0.5 + 1 + 0) / 3)
    assert report["top1_accuracy"] == pytest.approx(0.5)  # query 0 lists row 2 (label 8) first
    assert report["recall_at_1"]["text"] == pytest.approx(0.5)
    assert report["queries_with_product_in_catalogue"] == 2
