"""The transfer test chooses the threshold method by what happens when the pool grows: on
hand-made pools where one method must lose once the pool is four times bigger, it picks
another, even when the loser fits the search data best."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tf_shopee.matching.decision import (
    Decision,
    SourceRule,
    apply_decision,
    load_thresholds,
    read_transfer_tests,
    write_thresholds,
)
from tf_shopee.matching.search import build_search_space
from tf_shopee.matching.transfer import (
    decision_f1,
    format_transfer_table,
    search_with_transfer_test,
)
from tf_shopee.metrics import mean_f1_from_matches
from tf_shopee.neighbours import Neighbours


def brute_force_neighbours(embeddings: np.ndarray, k: int = 20) -> Neighbours:
    scores = embeddings @ embeddings.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return Neighbours(order.astype(np.int32),
                      np.take_along_axis(scores, order, axis=1).astype(np.float32))


def crowded_pool(seed: int, groups: int = 300, dim: int = 8, noise: float = 0.6):
    """Products of 1-4 postings scattered around random centres in few dimensions: the more
    products, the closer the nearest other product, so the right threshold rises with the
    pool. A threshold fitted on a quarter of the products is too low for all of them."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, size=groups)
    labels = np.repeat(np.arange(groups), sizes)
    embeddings = rng.normal(size=(groups, dim))[labels] + noise * rng.normal(
        size=(labels.size, dim))
    return labels, embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def sibling_pool(seed: int, families: int = 200, dim: int = 64, spread: float = 0.5,
                 noise: float = 0.5):
    """Far-apart families of two sibling products (near-identical centres). A small pool rarely
    holds both siblings, so there any threshold below the siblings' similarity works and the
    search keeps the lowest; a bigger pool holds them: the threshold must rise once, then stays.
    A slope fitted on the small pools keeps rising past the true pairs; the mean background
    rises with the siblings and drags a shifted threshold with it."""
    rng = np.random.default_rng(seed)
    labels, rows = [], []
    for family in range(families):
        base = rng.normal(size=dim)
        base /= np.linalg.norm(base)
        for sibling in range(2):
            centre = base + spread * rng.normal(size=dim) / np.sqrt(dim)
            centre /= np.linalg.norm(centre)
            for _ in range(rng.integers(2, 4)):
                row = centre + noise * rng.normal(size=dim) / np.sqrt(dim)
                rows.append(row / np.linalg.norm(row))
                labels.append(2 * family + sibling)
    return np.array(labels), np.array(rows)


def twin_pool(seed: int, families: int = 150):
    """Sibling families whose postings sit very close to their product (true pairs near 1) and
    whose siblings are far enough to be cut by any threshold: every fitted method holds, but
    the mean background jumps when siblings appear, and the shifted threshold with it."""
    return sibling_pool(seed, families=families, spread=0.35, noise=0.12)


def mixed_size_pool(seed: int, pairs: int = 120, large: int = 6, large_size: int = 40,
                    dim: int = 32, noise: float = 0.25):
    """Well-separated products: many pairs and a few products of ``large_size`` postings. A
    quarter of the products holds anywhere from none to several big ones, so the matches per
    posting of a sub-pool say little about the whole pool's."""
    rng = np.random.default_rng(seed)
    sizes = np.array([2] * pairs + [large_size] * large)
    rng.shuffle(sizes)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    centres = rng.normal(size=(len(sizes), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    embeddings = centres[labels] + noise * rng.normal(size=(labels.size, dim)) / np.sqrt(dim)
    return labels, embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def _transfer(labels, embeddings, **options):
    return search_with_transfer_test({"text": brute_force_neighbours(embeddings)}, labels,
                                     **options)["transfer"]


def _check_loses(test: dict, loser: str) -> None:
    methods = test["methods"]
    chosen = test["chosen"]
    assert chosen != loser
    # The choice is the best transferred F1, and the loser is clearly behind it.
    assert methods[chosen]["transferred_f1"] == max(entry["transferred_f1"]
                                                    for entry in methods.values())
    assert methods[loser]["transferred_f1"] < methods[chosen]["transferred_f1"] - 0.02


def test_fixed_and_local_lose_on_a_crowding_pool_and_the_test_picks_a_size_method():
    test = _transfer(*crowded_pool(0))
    _check_loses(test, "fixed")
    _check_loses(test, "local")
    # local fits the search data best (tied with local+size): in-sample F1 does not choose.
    in_sample = {name: entry["in_sample_f1"] for name, entry in test["methods"].items()}
    assert in_sample["local"] == max(in_sample.values())
    assert test["chosen"] in ("local+size", "size", "shift")


@pytest.mark.parametrize("loser", ["local+size", "size", "shift"])
def test_slopes_and_shift_lose_on_a_sibling_pool_and_the_test_picks_another(loser):
    test = _transfer(*sibling_pool(0))
    _check_loses(test, loser)
    in_sample = {name: entry["in_sample_f1"] for name, entry in test["methods"].items()}
    assert in_sample["local+size"] == max(in_sample.values())


def test_shift_loses_on_twins_while_every_method_fits_perfectly():
    test = _transfer(*twin_pool(0))
    assert all(entry["in_sample_f1"] == 1.0 for entry in test["methods"].values())
    _check_loses(test, "shift")


def test_count_holds_on_twins_where_every_threshold_fits():
    """On twins the matches per posting are the same in every sub-pool and in the whole pool:
    carrying the count beats every threshold fitted on a quarter of the products."""
    test = _transfer(*twin_pool(0))
    assert test["chosen"] == "count"
    assert test["methods"]["count"]["transferred_f1"] > max(
        entry["transferred_f1"] for name, entry in test["methods"].items()
        if name != "count") + 0.01


def test_count_loses_when_a_sub_pool_misjudges_the_matches_per_posting():
    test = _transfer(*mixed_size_pool(1))
    _check_loses(test, "count")
    assert test["methods"]["count"]["in_sample_f1"] == max(
        entry["in_sample_f1"] for entry in test["methods"].values())


def test_a_catalogue_decision_never_counts_matches():
    """A catalogue holds one posting per product, no pool like the search data's: the transfer
    test for catalogue queries leaves count out, and a forced count ships fixed thresholds."""
    labels, embeddings = twin_pool(0)
    neighbours = {"text": brute_force_neighbours(embeddings)}
    test = search_with_transfer_test(neighbours, labels, use="catalogue")["transfer"]
    assert "count" not in test["methods"] and test["chosen"] != "count"
    forced = search_with_transfer_test(neighbours, labels, use="catalogue", method="count")
    assert forced["method"] == "fixed" and forced["transfer"]["chosen"] == "fixed"


def test_a_forced_method_ships_and_the_better_one_is_named():
    labels, embeddings = crowded_pool(0)
    result = search_with_transfer_test({"text": brute_force_neighbours(embeddings)}, labels,
                                       method="fixed")
    test = result["transfer"]
    assert result["method"] == "fixed" and test["chosen"] == "fixed" and test["forced"]
    assert test["best"] != "fixed"
    assert "transferred better" in test["warning"]
    assert "loses" in format_transfer_table(test)  # the gap is over 0.02, and said so


def test_transferred_f1_is_the_decision_applied_to_the_whole_pool():
    """decision_f1 (the pair table) equals apply_decision + mean F1, with the thresholds of a
    pool four times the search size, local scaling and a held-out row mask."""
    labels, embeddings = crowded_pool(1, groups=120)
    neighbours = brute_force_neighbours(embeddings)
    space = build_search_space({"text": neighbours}, labels)
    decision = Decision(sources=("text",), rules={"text": SourceRule(
        0.3, beta=0.5, slope=0.05, score_range=(0.1, 0.9))}, min2_source="text",
        min2_floor=0.1, method="local+size", search_rows=len(labels) // 4)
    rows = np.arange(len(labels)) % 3 != 0
    _, combined = apply_decision({"text": neighbours}, decision)
    per_row = np.array([2 * np.sum(labels[found] == labels[row])
                        / (len(found) + np.sum(labels == labels[row]))
                        for row, found in enumerate(combined)])
    assert decision_f1(space, decision) == pytest.approx(mean_f1_from_matches(combined, labels))
    assert decision_f1(space, decision, rows=rows) == pytest.approx(np.mean(per_row[rows]))


def test_transferred_f1_of_count_is_the_decision_applied_to_the_whole_pool():
    labels, embeddings = crowded_pool(2, groups=120)
    neighbours = brute_force_neighbours(embeddings)
    space = build_search_space({"text": neighbours}, labels)
    decision = Decision(sources=("text",), rules={"text": SourceRule(0.3)}, method="count",
                        match_counts={"text": 3.5}, search_rows=len(labels) // 4)
    _, combined = apply_decision({"text": neighbours}, decision)
    assert np.mean([len(found) for found in combined]) >= 3.5
    assert decision_f1(space, decision) == pytest.approx(mean_f1_from_matches(combined, labels))


def test_too_few_label_groups_fall_back_to_the_in_sample_choice_and_say_so():
    labels, embeddings = crowded_pool(0, groups=10)
    test = _transfer(labels, embeddings)
    assert not test["tested"] and test["chosen"] == "local"
    assert "does not tell" in test["warning"]


def test_the_thresholds_file_records_every_method_and_the_catalogue_decision(tmp_path):
    labels, embeddings = crowded_pool(0, groups=150)
    neighbours = brute_force_neighbours(embeddings)
    result = search_with_transfer_test({"text": neighbours}, labels)
    catalogue = search_with_transfer_test({"text": neighbours}, labels, use="catalogue")
    path = tmp_path / "thresholds.json"
    write_thresholds(path, result, catalogue=catalogue)
    payload = json.loads(path.read_text())
    assert set(payload["transfer"]["methods"]) == {"local+size", "local", "size", "shift",
                                                   "count", "fixed"}
    for entry in payload["transfer"]["methods"].values():
        assert entry["gap"] == pytest.approx(entry["in_sample_f1"] - entry["transferred_f1"],
                                             abs=2e-4)
    assert payload["uses"] == {"self-matching": "decision", "catalogue": "catalogue_decision"}
    assert set(read_transfer_tests(path)) == {"self-matching", "catalogue"}
    assert load_thresholds(path, use="catalogue") == Decision.from_dict(
        payload["catalogue_decision"], where="test")
