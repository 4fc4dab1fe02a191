"""Decisions and their search on constructed neighbours whose right answers are known by hand."""

import json
import math

import numpy as np
import pytest

from tf_shopee.errors import UserError
from tf_shopee.matching.decision import (
    DEFAULT_DECISION,
    Decision,
    SourceRule,
    apply_decision,
    best_plain_thresholds,
    check_threshold,
    load_thresholds,
    score_threshold,
    with_threshold,
    write_thresholds,
)
from tf_shopee.matching.search import PairTable, plot_thresholds, search_decision
from tf_shopee.metrics import mean_f1_from_matches
from tf_shopee.neighbours import Neighbours, subset_neighbours
from tf_shopee.neighbours.scaling import background_scores, local_scaling

# Groups {0,1}, {2,3}, {4,5}, and singletons 6 and 7.
LABELS = np.array([10, 10, 20, 20, 30, 30, 60, 70])


def neighbours_from_pairs(num_rows: int, pairs: dict[tuple[int, int], float], k: int = 4):
    """Symmetric self-matching Neighbours: self at 1.0 plus the given pair scores."""
    rows = [[(1.0, row)] for row in range(num_rows)]
    for (first, second), score in pairs.items():
        rows[first].append((score, second))
        rows[second].append((score, first))
    indices = np.full((num_rows, k), -1, dtype=np.int32)
    scores = np.full((num_rows, k), -np.inf, dtype=np.float32)
    for row, entries in enumerate(rows):
        entries.sort(key=lambda entry: (-entry[0], entry[1]))
        for slot, (score, index) in enumerate(entries[:k]):
            indices[row, slot], scores[row, slot] = index, score
    return Neighbours(indices, scores)


def brute_force_neighbours(embeddings: np.ndarray, k: int) -> Neighbours:
    """Exact cosine top-k of L2-normalised rows, in NumPy (the tests need no TensorFlow)."""
    scores = embeddings @ embeddings.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return Neighbours(order, np.take_along_axis(scores, order, axis=1))


def random_pool(seed: int, groups: int = 60, dim: int = 8, noise: float = 0.5):
    """Label groups of 1-4 postings scattered around random centres; unit embeddings."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, size=groups)
    labels = np.repeat(np.arange(groups), sizes)
    centres = rng.normal(size=(groups, dim))
    embeddings = centres[labels] + noise * rng.normal(size=(labels.size, dim))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings.astype(np.float32), labels


# Text catches {0,1} confidently and {2,3}, {4,5} only at 0.55, where it also pairs 6 with 7.
TEXT = neighbours_from_pairs(8, {(0, 1): 0.9, (2, 3): 0.55, (4, 5): 0.55, (6, 7): 0.6})
# The image source catches {2,3} and {4,5} confidently and wrongly pairs 0 with 6 at 0.8.
IMAGE = neighbours_from_pairs(8, {(2, 3): 0.95, (4, 5): 0.95, (0, 6): 0.8})
GRID = [0.5, 0.7, 0.9]
FIXED = {"method": "fixed", "grids": {"text": GRID, "image": GRID}}


def test_each_source_alone_and_the_union_find_the_hand_computed_best():
    result = search_decision({"text": TEXT, "image": IMAGE}, LABELS, allow_min2=False, **FIXED)
    text = result["sources"]["text"]
    # Text alone: at 0.5 three pairs right, one wrong: (6 * 1 + 2 * 2/3) / 8.
    assert text["best_alone"]["rule"]["threshold"] == 0.5
    assert text["best_alone"]["f1"] == pytest.approx((6 + 4 / 3) / 8)
    # At 0.7 only {0,1}: four rows at 2/3.
    assert text["sweep"]["f1"][1] == pytest.approx((4 + 4 * 2 / 3) / 8)
    assert result["sources"]["image"]["best_alone"]["rule"]["threshold"] == 0.9
    # Together, text must tighten to 0.7 (its 6-7 mistake goes, image covers {2,3}, {4,5}).
    decision = Decision.from_dict(result["decision"], where="test")
    assert decision.sources == ("text", "image")
    assert decision.thresholds_for(None) == {"text": 0.7, "image": 0.9}
    assert result["f1"] == pytest.approx(1.0)
    assert result["best_single"]["f1"] == pytest.approx((6 + 4 / 3) / 8)


def test_min2_is_switched_off_when_lonely_postings_have_no_duplicate():
    # Pairs {0,1}, {2,3} score high; the singletons 4..7 each have a wrong nearest neighbour.
    labels = np.array([1, 1, 2, 2, 5, 6, 7, 8])
    text = neighbours_from_pairs(8, {(0, 1): 0.9, (2, 3): 0.9, (4, 5): 0.4, (6, 7): 0.35})
    result = search_decision({"text": text}, labels, method="fixed", grids={"text": GRID},
                             min2_floors={"text": [None, 0.3]})
    decision = Decision.from_dict(result["decision"], where="test")
    assert not decision.min2, "min2 would give every singleton a wrong match"
    assert result["f1"] == pytest.approx(1.0)
    forced = apply_decision({"text": text}, Decision(("text",), {"text": SourceRule(0.7)},
                                                     min2_source="text"))[1]
    assert mean_f1_from_matches(forced, labels) < 1.0


def test_min2_is_kept_with_a_floor_when_it_finds_pairs():
    # Only text, and only at thresholds that keep nothing: min2 alone finds the pairs.
    labels = np.array([1, 1, 2, 3])
    text = neighbours_from_pairs(4, {(0, 1): 0.4, (2, 3): 0.2})
    result = search_decision({"text": text}, labels, method="fixed", grids={"text": [0.9]},
                             min2_floors={"text": [None, 0.3]})
    decision = Decision.from_dict(result["decision"], where="test")
    # Floor 0.3 keeps the right pair 0-1 (0.4) and refuses the wrong pair 2-3 (0.2).
    assert decision.min2_source == "text" and decision.min2_floor == 0.3
    assert result["f1"] == pytest.approx(1.0)
    without = search_decision({"text": text}, labels, method="fixed", grids={"text": [0.9]},
                              allow_min2=False)
    assert without["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 1) / 4)


def test_a_source_that_only_hurts_is_left_out_of_the_union():
    wrong = neighbours_from_pairs(8, {(0, 2): 0.9, (4, 6): 0.9})
    result = search_decision({"text": TEXT, "image": wrong}, LABELS, allow_min2=False, **FIXED)
    decision = Decision.from_dict(result["decision"], where="test")
    assert decision.sources == ("text",)
    assert result["f1"] == pytest.approx(result["best_single"]["f1"])
    assert "image" in decision.rules  # its best rule alone is kept for reports
    per_source, _ = apply_decision({"text": TEXT, "image": wrong}, decision)
    assert set(per_source) == {"text"}


def test_the_union_must_beat_the_best_single_source():
    # The second source finds exactly what text already finds: a union adds nothing.
    same = neighbours_from_pairs(8, {(0, 1): 0.9})
    result = search_decision({"text": TEXT, "image": same}, LABELS, allow_min2=False, **FIXED)
    assert Decision.from_dict(result["decision"], where="test").sources == ("text",)
    assert {candidate["kind"] for candidate in result["candidates"]} == {"single", "union"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_decision_is_never_worse_than_the_best_single_source(seed):
    embeddings, labels = random_pool(seed)
    rng = np.random.default_rng(seed + 10)
    noisy = embeddings + 0.6 * rng.normal(size=embeddings.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    sources = {"text": brute_force_neighbours(embeddings, 8),
               "image": brute_force_neighbours(noisy, 8)}
    result = search_decision(sources, labels, method="local", max_matches=6)
    singles = [candidate["f1"] for candidate in result["candidates"]
               if candidate["kind"] == "single"]
    assert result["f1"] >= max(singles) - 1e-12
    decision = Decision.from_dict(result["decision"], where="test")
    _, combined = apply_decision(sources, decision, max_matches=6)
    assert mean_f1_from_matches(combined, labels) == pytest.approx(result["f1"], abs=1e-12)


def test_pair_table_scores_exactly_what_apply_decision_matches():
    embeddings, labels = random_pool(5, groups=80)
    rng = np.random.default_rng(3)
    other = embeddings + 0.8 * rng.normal(size=embeddings.shape).astype(np.float32)
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    sources = {"text": brute_force_neighbours(embeddings, 12),
               "image": brute_force_neighbours(other, 12)}
    for max_matches in (3, 12):  # 3: the per-source and union caps bite
        for text_rule, image_rule, min2 in [
            (SourceRule(0.2), SourceRule(0.1), ("text", None)),
            (SourceRule(0.1, beta=0.5), SourceRule(0.6), ("image", 0.5)),
            (SourceRule(0.0, beta=1.0), SourceRule(0.0), None),
        ]:
            decision = Decision(("text", "image"), {"text": text_rule, "image": image_rule},
                                min2_source=None if min2 is None else min2[0],
                                min2_floor=None if min2 is None else min2[1], method="local")
            _, combined = apply_decision(sources, decision, max_matches=max_matches)
            prepared = {}
            for name, rule in decision.rules.items():
                neighbours = sources[name]
                if rule.beta:
                    neighbours = local_scaling(neighbours, rule.beta,
                                               background_scores(neighbours))
                prepared[name] = neighbours
            table = PairTable(prepared, labels, max_matches=max_matches)
            members = [(name, decision.rules[name].threshold) for name in decision.sources]
            assert table.f1(members, min2) == pytest.approx(
                mean_f1_from_matches(combined, labels), abs=1e-12)


def test_local_scaling_separates_dense_and_sparse_neighbourhoods():
    # Dense region (rows 0-5): duplicates at 0.9, other products at 0.8. Sparse region
    # (rows 6-11): duplicates at 0.6, other products at 0.3. No single cosine threshold gets
    # both; judged against each posting's background, one threshold does.
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    pairs = {}
    for first in range(0, 12, 2):
        dense = first < 6
        pairs[(first, first + 1)] = 0.9 if dense else 0.6
        for second in range(first + 2, 12, 2):
            if (second < 6) == dense:
                for a in (first, first + 1):
                    for b in (second, second + 1):
                        pairs[(a, b)] = 0.8 if dense else 0.3
    text = neighbours_from_pairs(12, pairs, k=8)
    fixed = search_decision({"text": text}, labels, method="fixed", allow_min2=False)
    local = search_decision({"text": text}, labels, method="local", allow_min2=False)
    assert fixed["f1"] < 1.0
    assert local["f1"] == pytest.approx(1.0)
    assert Decision.from_dict(local["decision"], where="test").rules["text"].beta > 0


def test_blending_is_chosen_only_when_it_helps():
    # Raw: 0-1 and 1-2 (one group) are close, 0-2 far. Blended: 0-2 becomes close too.
    labels = np.array([1, 1, 1, 4])
    raw = neighbours_from_pairs(4, {(0, 1): 0.8, (1, 2): 0.8, (0, 2): 0.3, (2, 3): 0.5})
    blended = neighbours_from_pairs(4, {(0, 1): 0.9, (1, 2): 0.9, (0, 2): 0.8, (2, 3): 0.4})
    result = search_decision({"text": raw}, labels, method="fixed", allow_min2=False,
                             inb_variants={"text": {0.7: blended}})
    assert Decision.from_dict(result["decision"], where="test").rules["text"].inb == 0.7
    assert result["f1"] == pytest.approx(1.0)
    # Blending that pulls the wrong posting 3 closest of all is worse at every threshold.
    worse = neighbours_from_pairs(4, {(0, 1): 0.9, (1, 2): 0.9, (0, 2): 0.8, (2, 3): 0.95})
    kept_raw = search_decision({"text": raw}, labels, method="fixed", allow_min2=False,
                               inb_variants={"text": {0.7: worse}})
    # Raw at 0.8 finds 0-1 and 1-2 and nothing wrong: (0.8 + 1 + 0.8 + 1) / 4.
    assert kept_raw["f1"] == pytest.approx(0.9)
    assert Decision.from_dict(kept_raw["decision"], where="test").rules["text"].inb is None


def test_blending_with_the_photo_graph_is_an_option_of_its_own():
    labels = np.array([1, 1, 1, 4])
    raw = neighbours_from_pairs(4, {(0, 1): 0.8, (1, 2): 0.8, (0, 2): 0.3, (2, 3): 0.5})
    text_only = neighbours_from_pairs(4, {(0, 1): 0.9, (1, 2): 0.9, (0, 2): 0.6, (2, 3): 0.6})
    with_photos = neighbours_from_pairs(4, {(0, 1): 0.9, (1, 2): 0.9, (0, 2): 0.85, (2, 3): 0.4})
    result = search_decision({"text": raw}, labels, method="fixed", allow_min2=False,
                             inb_variants={"text": {(0.7, None): text_only, (0.7, 4): with_photos}})
    rule = Decision.from_dict(result["decision"], where="test").rules["text"]
    assert (rule.inb, rule.inb_phash) == (0.7, 4)
    assert result["f1"] == pytest.approx(1.0)
    assert "photos <= 4 bits" in rule.describe("text")
    assert SourceRule.from_dict("text", rule.to_dict(), where="test") == rule
    with pytest.raises(UserError, match="needs blending"):
        SourceRule(0.5, inb_phash=4).checked("text", where="x")


def test_blending_over_a_bounded_neighbourhood_is_an_option_of_its_own():
    labels = np.array([1, 1, 1, 4])
    raw = neighbours_from_pairs(4, {(0, 1): 0.8, (1, 2): 0.8, (0, 2): 0.3, (2, 3): 0.5})
    # Blending over every neighbour drags posting 3 in; over the 2 nearest it does not.
    every = neighbours_from_pairs(4, {(0, 1): 0.9, (1, 2): 0.9, (0, 2): 0.8, (2, 3): 0.95})
    nearest = neighbours_from_pairs(4, {(0, 1): 0.9, (1, 2): 0.9, (0, 2): 0.85, (2, 3): 0.4})
    result = search_decision({"text": raw}, labels, method="fixed", allow_min2=False,
                             inb_variants={"text": {(0.5, None, None): every,
                                                    (0.5, None, 2): nearest}})
    rule = Decision.from_dict(result["decision"], where="test").rules["text"]
    assert (rule.inb, rule.inb_neighbours) == (0.5, 2)
    assert result["f1"] == pytest.approx(1.0)
    assert "over 2 nearest" in rule.describe("text")
    assert SourceRule.from_dict("text", rule.to_dict(), where="test") == rule
    # A rule without the key (thresholds files written before it existed) blends over all.
    assert "inb_neighbours" not in SourceRule(0.5, inb=0.6).to_dict()
    assert SourceRule.from_dict("text", {"threshold": 0.5, "inb": 0.6},
                                where="x").inb_neighbours is None
    with pytest.raises(UserError, match="needs blending"):
        SourceRule(0.5, inb_neighbours=20).checked("text", where="x")
    with pytest.raises(UserError, match="at least 2"):
        SourceRule(0.5, inb=0.6, inb_neighbours=1).checked("text", where="x")
    with pytest.raises(UserError, match="whole number"):
        SourceRule.from_dict("text", {"threshold": 0.5, "inb": 0.6, "inb_neighbours": 2.5},
                             where="x")


def test_size_method_fits_a_slope_and_moves_the_threshold_with_the_pool():
    embeddings, labels = random_pool(7, groups=200)
    sources = {"text": brute_force_neighbours(embeddings, 16)}
    result = search_decision(sources, labels, method="size", size_repeats=2)
    decision = Decision.from_dict(result["decision"], where="test")
    rule = decision.rules["text"]
    points = result["size_points"]["text"]
    assert len(points) == 1 + 2 * 2 and points[0][0] == labels.size
    assert math.isfinite(rule.slope)
    at_search = decision.thresholds_for(labels.size)["text"]
    assert at_search == pytest.approx(rule.threshold)
    bigger = decision.thresholds_for(4 * labels.size)["text"]
    assert bigger == pytest.approx(min(max(rule.threshold + 2 * rule.slope, 0), 1))


def test_subset_neighbours_renumbers_and_drops_outsiders():
    neighbours = neighbours_from_pairs(4, {(0, 1): 0.9, (0, 2): 0.8, (2, 3): 0.7})
    subset = subset_neighbours(neighbours, np.array([True, False, True, True]))
    assert subset.indices.tolist() == [[0, 1, -1, -1], [1, 0, 2, -1], [2, 1, -1, -1]]
    assert subset.scores[0, 1] == pytest.approx(0.8)


def test_decisions_apply_to_queries_against_a_catalogue():
    embeddings, labels = random_pool(11, groups=40)
    catalogue, queries = embeddings[:80], embeddings[80:100]
    scores = queries @ catalogue.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :6]
    neighbours = Neighbours(order, np.take_along_axis(scores, order, axis=1))
    plain = Decision(("text",), {"text": SourceRule(0.7)}, min2_source="text")
    _, matches = apply_decision({"text": neighbours}, plain, self_matching=False)
    for row, match in enumerate(matches):
        expected = order[row][np.take_along_axis(scores, order, axis=1)[row] >= 0.7]
        assert match.tolist() == (expected.tolist() or order[row][:1].tolist())
    scaled = Decision(("text",), {"text": SourceRule(0.3, beta=0.5)})
    with pytest.raises(UserError, match="catalogue's backgrounds"):
        apply_decision({"text": neighbours}, scaled, self_matching=False)
    catalogue_background = background_scores(brute_force_neighbours(catalogue, 7))
    _, scaled_matches = apply_decision({"text": neighbours}, scaled, self_matching=False,
                                       catalog_backgrounds={"text": catalogue_background})
    assert len(scaled_matches) == len(queries)


def test_thresholds_are_checked_in_their_units():
    assert check_threshold("phash", 8, where="x") == 8.0
    assert score_threshold("phash", 8) == pytest.approx(1 - 8 / 64)
    assert score_threshold("text:bert", 0.6) == 0.6
    for name, value, message in [
        ("phash", 8.5, "whole number"),
        ("phash_text", 65, "whole number"),
        ("tfidf", -0.1, "between 0 and 1"),
        ("text", 1.5, "between 0 and 1"),
        ("text", float("nan"), "finite"),
        ("image", "high", "not a number"),
        ("image", True, "not a number"),
    ]:
        with pytest.raises(UserError, match=message):
            check_threshold(name, value, where="x")
    with pytest.raises(UserError, match="no scaling"):
        SourceRule(3, beta=0.5).checked("phash", where="x")
    with pytest.raises(UserError, match="embedding sources"):
        SourceRule(0.5, inb=0.6).checked("tfidf", where="x")


def test_override_means_a_plain_threshold_and_joins_the_union():
    decision = Decision(("text",), {"text": SourceRule(0.2, beta=0.5)}, min2_source="text",
                        min2_floor=0.1)
    changed = with_threshold(decision, "text", 0.6)
    assert changed.rules["text"] == SourceRule(0.6)
    assert changed.min2_floor is None  # the floor was on scaled scores
    joined = with_threshold(decision, "phash", 8)
    assert joined.sources == ("text", "phash") and joined.rules["phash"].threshold == 8
    # Plain also means "the same for any pool": a rule's size slope does not move it.
    sloped = Decision(("tfidf",), {"tfidf": SourceRule(0.35, beta=0.5, slope=0.05)},
                      method="local+size", search_rows=20000)
    overridden = with_threshold(sloped, "tfidf", 0.5)
    assert overridden.thresholds_for(600) == {"tfidf": 0.5}


def test_json_and_png_are_written_and_read_back(tmp_path):
    result = search_decision({"text": TEXT, "image": IMAGE}, LABELS, allow_min2=False, **FIXED)
    json_path = tmp_path / "thresholds.json"
    png_path = tmp_path / "thresholds.png"
    payload = write_thresholds(json_path, result, settings={"data": "constructed"})
    plot_thresholds(png_path, result)
    assert json.loads(json_path.read_text()) == payload
    assert payload["thresholds"] == {"text": 0.7, "image": 0.9}
    assert payload["settings"] == {"data": "constructed"}
    assert "bits" in payload["units"]
    decision = load_thresholds(json_path)
    assert decision == Decision.from_dict(result["decision"], where="test")
    # Each source alone at a plain threshold (by hand: text at 0.5 also finds {2,3} and {4,5},
    # F1 0.917 against 0.833; image at 0.9 avoids the wrong pair 0-6).
    assert best_plain_thresholds(json_path) == {"text": 0.5, "image": 0.9}
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_path.stat().st_size > 5000
    assert not list(tmp_path.glob("*.tmp")), "temporary files must be renamed away"


def test_version_1_files_are_converted(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({
        "format": "tf_shopee.thresholds", "format_version": 1,
        "thresholds": {"tfidf": 0.8, "phash": 2.0, "phash_text": 1 - 9 / 64},
        "combined": {"sources": ["tfidf", "phash", "phash_text"], "min2": True,
                     "min2_source": "tfidf", "min2_floor": 0.3},
    }))
    decision = load_thresholds(old)
    assert decision.sources == ("tfidf", "phash_text")  # phash was switched off at 2.0
    assert decision.rules["phash_text"].threshold == 9
    assert (decision.min2_source, decision.min2_floor) == ("tfidf", 0.3)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="other"), "not a tf_shopee thresholds file"),
    (lambda d: d.update(format_version=7), "format version 7"),
    (lambda d: d["decision"]["rules"].update(textt={"threshold": 0.5}), "unknown source"),
    (lambda d: d["decision"]["rules"]["text"].update(threshold=float("nan")), "finite"),
    (lambda d: d["decision"]["rules"]["text"].update(threshold=-1), "between 0 and 1"),
    (lambda d: d["decision"]["rules"]["phash"].update(threshold=0.98), "bits"),
    (lambda d: d["decision"]["rules"]["text"].update(beta="x"), "not a number"),
    (lambda d: d["decision"].update(sources=["text", "image"]), "no rule"),
    (lambda d: d["decision"].update(min2={"source": "image"}), "not in the union"),
    (lambda d: d["decision"].update(method="magic"), "method"),
])
def test_load_thresholds_rejects_bad_files(tmp_path, change, message):
    payload = {
        "format": "tf_shopee.thresholds", "format_version": 2,
        "decision": {"sources": ["text", "phash"], "min2": None,
                     "rules": {"text": {"threshold": 0.5}, "phash": {"threshold": 4}}},
    }
    load_thresholds_from(tmp_path, payload)  # the unchanged file is fine
    change(payload)
    with pytest.raises(UserError, match=message):
        load_thresholds_from(tmp_path, payload)


def load_thresholds_from(tmp_path, payload):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(payload))
    return load_thresholds(path)


def test_missing_and_broken_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_thresholds(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UserError, match="not readable JSON"):
        load_thresholds(broken)


def test_bad_search_arguments_are_user_errors():
    with pytest.raises(UserError, match="at least one source"):
        search_decision({}, LABELS)
    with pytest.raises(UserError, match="rows but there are"):
        search_decision({"text": TEXT}, LABELS[:3])
    with pytest.raises(UserError, match="unknown source"):
        search_decision({"text": TEXT}, LABELS, grids={"image": [0.5]})
    with pytest.raises(UserError, match="unknown source"):
        search_decision({"wrong": TEXT}, LABELS)
    with pytest.raises(UserError, match="method"):
        search_decision({"text": TEXT}, LABELS, method="magic")


def test_default_decision_names_the_model_free_sources_in_their_units():
    from tf_shopee.matching.sources import PHASH, PHASH_TEXT, TFIDF

    assert set(DEFAULT_DECISION.rules) == {TFIDF, PHASH, PHASH_TEXT}
    assert set(DEFAULT_DECISION.sources) <= set(DEFAULT_DECISION.rules)
    assert DEFAULT_DECISION.min2_source in DEFAULT_DECISION.sources
    assert DEFAULT_DECISION.checked(where="test") is DEFAULT_DECISION
    assert DEFAULT_DECISION.search_rows == 22832  # folds 1+2 of the real train.csv
    for name in (PHASH, PHASH_TEXT):
        assert DEFAULT_DECISION.rules[name].threshold == int(DEFAULT_DECISION.rules[name].threshold)


def test_count_method_carries_the_matches_per_posting_to_a_looser_pool():
    """The count method records the search pool's matches per posting and, on a new pool,
    chooses the threshold that gives as many: on a copy of the pool whose cosines are all 0.2
    lower (unseen products: looser), a plain threshold matches almost nothing while the count
    method matches exactly what it did on the search pool."""
    embeddings, labels = random_pool(3, groups=40, noise=0.35)
    neighbours = brute_force_neighbours(embeddings, k=8)
    result = search_decision({"image": neighbours}, labels, method="count", allow_min2=False)
    decision = Decision.from_dict(result["decision"], where="test")
    assert decision.method == "count"
    count = decision.match_counts["image"]
    assert 1.0 <= count <= 8.0
    _, searched = apply_decision({"image": neighbours}, decision)
    looser = Neighbours(neighbours.indices, np.where(
        neighbours.indices == np.arange(len(labels))[:, None], neighbours.scores,
        neighbours.scores - 0.2))
    _, counted = apply_decision({"image": looser}, decision)
    assert [list(row) for row in counted] == [list(row) for row in searched]
    fixed = Decision.from_dict({**result["decision"], "method": "fixed"}, where="test")
    _, plain = apply_decision({"image": looser}, fixed)
    assert np.mean([len(row) for row in plain]) < np.mean([len(row) for row in counted])
    # Against a catalogue the count method keeps the searched thresholds (no pool to count in).
    assert decision.to_dict()["match_counts"] == {"image": count}
    with pytest.raises(UserError, match="match count"):
        Decision.from_dict({**result["decision"], "match_counts": {"image": 0.5}}, where="test")


def test_blending_rounds_are_part_of_a_rule():
    rule = SourceRule(threshold=0.6, inb=0.4, inb_neighbours=20, inb_iterations=2)
    data = rule.to_dict()
    assert data["inb_iterations"] == 2
    assert SourceRule.from_dict("image", data, where="test") == rule
    assert "INB 0.4 over 20 nearest x2" in rule.describe("image")
    assert "inb_iterations" not in SourceRule(threshold=0.6, inb=0.4).to_dict()
    with pytest.raises(UserError, match="inb_iterations"):
        SourceRule.from_dict("image", {**data, "inb_iterations": 0}, where="test")


def test_match_counts_leave_out_postings_with_no_list_and_follow_the_match_cap():
    from tf_shopee.matching.decision import count_threshold, mean_match_count

    scores = np.array([[1.0, 0.9, 0.8, 0.7], [1.0, 0.6, 0.5, 0.4], [-np.inf] * 4], np.float32)
    indices = np.array([[0, 1, 2, 3], [1, 0, 2, 3], [-1] * 4], np.int32)  # row 2: a bad photo
    neighbours = Neighbours(indices, scores)
    assert mean_match_count(neighbours, 0.75) == pytest.approx((3 + 1) / 2)
    assert mean_match_count(neighbours, 0.0, max_matches=2) == pytest.approx(2.0)
    # The cap the search counted under is the one a count decision is applied under.
    assert count_threshold(neighbours, 2.0, max_matches=2) == pytest.approx(0.6)
    assert count_threshold(neighbours, 2.0) == pytest.approx(0.8)
