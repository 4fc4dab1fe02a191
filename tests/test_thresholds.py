"""Threshold search on constructed neighbours whose best thresholds are known by hand."""

import json

import numpy as np
import pytest

from tf_shopee.errors import UserError
from tf_shopee.neighbours import Neighbours
from tf_shopee.thresholds import (
    DEFAULT_COMBINATION,
    DEFAULT_THRESHOLDS,
    SOURCE_OFF,
    combine_matches,
    load_thresholds,
    match_sources,
    phash_grid,
    plot_thresholds,
    search_thresholds,
    write_thresholds,
)

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


# Text catches {0,1} confidently and {2,3}, {4,5} only at 0.55, where it also pairs 6 with 7.
TEXT = neighbours_from_pairs(8, {(0, 1): 0.9, (2, 3): 0.55, (4, 5): 0.55, (6, 7): 0.6})
# phash catches {2,3} and {4,5} confidently and wrongly pairs 0 with 6 at 0.8.
PHASH = neighbours_from_pairs(8, {(2, 3): 0.95, (4, 5): 0.95, (0, 6): 0.8})
GRID = [0.5, 0.7, 0.9]


def test_each_source_alone_and_the_union_find_the_hand_computed_best():
    result = search_thresholds({"text": TEXT, "phash": PHASH}, LABELS, grid=GRID, min2=False)
    text = result["sources"]["text"]
    # Text alone: at 0.5 three pairs right, one wrong: (6 * 1 + 2 * 2/3) / 8.
    assert text["best_threshold"] == 0.5
    assert text["best_f1"] == pytest.approx((6 + 4 / 3) / 8)
    # At 0.7 only {0,1}: four rows at 2/3.
    assert text["f1"][1] == pytest.approx((4 + 4 * 2 / 3) / 8)
    phash = result["sources"]["phash"]
    assert phash["best_threshold"] == 0.9
    assert phash["best_f1"] == pytest.approx((6 + 2 * 2 / 3) / 8)
    # Together, text must tighten to 0.7 (its 6-7 mistake goes, phash covers {2,3}, {4,5}).
    combined = result["combined"]
    assert combined["thresholds"] == {"text": 0.7, "phash": 0.9}
    assert combined["f1"] == pytest.approx(1.0)
    assert combined["history"][0]["f1"] < 1.0


def test_min2_adds_the_nearest_neighbour_above_the_floor():
    # Only text, and only at thresholds that keep nothing: min2 alone finds the pairs.
    labels = np.array([1, 1, 2, 3])
    text = neighbours_from_pairs(4, {(0, 1): 0.4, (2, 3): 0.2})
    without = search_thresholds({"text": text}, labels, grid=[0.9], min2=False)
    assert without["combined"]["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 1) / 4)
    result = search_thresholds(
        {"text": text}, labels, grid=[0.9], min2=True, min2_floors=[None, 0.3]
    )
    combined = result["combined"]
    # Floor 0.3 keeps the right pair 0-1 (0.4) and refuses the wrong pair 2-3 (0.2).
    assert combined["min2_floor"] == 0.3
    assert combined["f1"] == pytest.approx(1.0)
    assert combined["min2_source"] == "text"


def test_a_source_that_only_hurts_is_switched_off_in_the_union():
    wrong = neighbours_from_pairs(8, {(0, 2): 0.9, (4, 6): 0.9})
    result = search_thresholds({"text": TEXT, "wrong": wrong}, LABELS, grid=GRID, min2=False)
    assert result["combined"]["thresholds"]["wrong"] == SOURCE_OFF
    assert result["combined"]["thresholds"]["text"] == 0.5
    kept = search_thresholds(
        {"text": TEXT, "wrong": wrong}, LABELS, grid=GRID, min2=False, allow_off=False
    )
    assert kept["combined"]["f1"] < result["combined"]["f1"]


def test_match_sources_reproduces_the_searched_f1():
    from tf_shopee.metrics import mean_f1_from_matches

    sources = {"text": TEXT, "phash": PHASH}
    result = search_thresholds(sources, LABELS, grid=GRID, min2=True, min2_floors=[None, 0.7])
    combined = result["combined"]
    per_source, union = match_sources(
        sources, combined["thresholds"], min2=True, min2_source=combined["min2_source"],
        min2_floor=combined["min2_floor"],
    )
    assert mean_f1_from_matches(union, LABELS) == pytest.approx(combined["f1"])
    assert per_source["text"][0].tolist() == [0, 1]
    # min2 from text with no floor: posting 6 gets its nearest text candidate (7), wrongly.
    _, lonely = match_sources(sources, {"text": 0.95, "phash": 0.95}, min2=True)
    assert lonely[6].tolist() == [6, 7]
    _, floored = match_sources(sources, {"text": 0.95, "phash": 0.95}, min2_floor=0.7)
    assert floored[6].tolist() == [6]


def test_combine_matches_uses_fallback_only_for_lonely_rows():
    lists = [[np.array([0, 1]), np.array([1]), np.array([2])]]
    fallback = [np.array([0, 2]), np.array([1, 0]), np.array([2])]
    combined = combine_matches(lists, fallback=fallback)
    assert [row.tolist() for row in combined] == [[0, 1], [1, 0], [2]]


def test_json_and_png_are_written_and_read_back(tmp_path):
    result = search_thresholds({"text": TEXT, "phash": PHASH}, LABELS, grid=GRID, min2=False)
    json_path = tmp_path / "thresholds.json"
    png_path = tmp_path / "thresholds.png"
    payload = write_thresholds(json_path, result, settings={"data": "constructed"})
    plot_thresholds(png_path, result)
    loaded = load_thresholds(json_path)
    assert loaded == json.loads(json_path.read_text())
    assert loaded == payload
    assert loaded["thresholds"] == {"text": 0.7, "phash": 0.9}
    assert loaded["best_alone"] == {"text": 0.5, "phash": 0.9}
    assert loaded["f1"]["combined"] == pytest.approx(1.0)
    assert loaded["sweeps"]["text"]["grid"] == GRID
    assert loaded["settings"] == {"data": "constructed"}
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_path.stat().st_size > 5000
    assert not list(tmp_path.glob("*.tmp")), "temporary files must be renamed away"


def test_load_thresholds_rejects_foreign_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_thresholds(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(UserError, match="not readable JSON"):
        load_thresholds(broken)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"thresholds": {"text": 0.5}}))
    with pytest.raises(UserError, match="not a tf_shopee thresholds file"):
        load_thresholds(foreign)
    bad_value = tmp_path / "bad_value.json"
    bad_value.write_text(
        json.dumps({"format": "tf_shopee.thresholds", "format_version": 1,
                    "thresholds": {"text": "high"}})
    )
    with pytest.raises(UserError, match="'text' is not a number"):
        load_thresholds(bad_value)


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="at least one source"):
        search_thresholds({}, LABELS)
    with pytest.raises(UserError, match="rows but there are"):
        search_thresholds({"text": TEXT}, LABELS[:3])
    with pytest.raises(UserError, match="unknown source"):
        search_thresholds({"text": TEXT}, LABELS, grid={"image": [0.5]})
    with pytest.raises(UserError, match="unknown source"):
        search_thresholds({"text": TEXT}, LABELS, combine=["image"])


def test_phash_grid_visits_every_distance():
    grid = phash_grid(8)
    assert len(grid) == 9
    assert grid[0] == 1.0 and grid[-1] == pytest.approx(1 - 8 / 64)


def test_defaults_name_the_model_free_sources():
    from tf_shopee.neighbours.model_free import PHASH, PHASH_TEXT, TFIDF

    assert set(DEFAULT_THRESHOLDS) == {TFIDF, PHASH, PHASH_TEXT}
    assert set(DEFAULT_COMBINATION["sources"]) == set(DEFAULT_THRESHOLDS)
    assert DEFAULT_COMBINATION["min2_source"] == TFIDF
    for name, value in DEFAULT_THRESHOLDS.items():
        assert 0.0 < value <= 1.0, name
    # phash thresholds sit exactly on a Hamming distance.
    for name in (PHASH, PHASH_TEXT):
        assert (1 - DEFAULT_THRESHOLDS[name]) * 64 == round((1 - DEFAULT_THRESHOLDS[name]) * 64)
