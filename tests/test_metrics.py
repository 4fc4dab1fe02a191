"""Hand-computed cases for the Kaggle mean-F1 metric and its vectorised index form."""

import numpy as np
import pytest

from tf_shopee.metrics import (
    mean_f1,
    mean_f1_from_matches,
    per_posting_f1,
    per_posting_f1_from_matches,
    true_matches,
)

POSTING_IDS = ["a", "b", "c", "d", "e"]
LABEL_GROUPS = [7, 7, 7, 9, 11]  # groups {a,b,c}, {d}, {e}
LABELS = np.array(LABEL_GROUPS)


def test_true_matches_include_self_and_group():
    truth = true_matches(POSTING_IDS, LABEL_GROUPS)
    assert truth == [{"a", "b", "c"}, {"a", "b", "c"}, {"a", "b", "c"}, {"d"}, {"e"}]


def test_true_matches_rejects_length_mismatch():
    with pytest.raises(ValueError, match="5 posting ids but 2 label groups"):
        true_matches(POSTING_IDS, [1, 2])


def test_perfect_predictions_score_one():
    truth = true_matches(POSTING_IDS, LABEL_GROUPS)
    assert mean_f1(truth, truth) == 1.0
    perfect = [np.array([0, 1, 2]), np.array([1, 0, 2]), np.array([2, 1, 0]), [3], [4]]
    assert mean_f1_from_matches(perfect, LABELS) == 1.0


def test_empty_predictions_still_match_self():
    truth = true_matches(POSTING_IDS, LABEL_GROUPS)
    # Without self added an empty prediction earns nothing ...
    assert per_posting_f1([[]] * 5, truth).tolist() == [0.0] * 5
    # ... with self added: a, b, c get 2*1/(1+3) = 0.5; d and e are perfect.
    expected = [0.5, 0.5, 0.5, 1.0, 1.0]
    assert per_posting_f1([[]] * 5, truth, posting_ids=POSTING_IDS).tolist() == expected
    empty = [np.zeros(0, dtype=np.int64)] * 5
    assert per_posting_f1_from_matches(empty, LABELS).tolist() == expected
    assert mean_f1_from_matches(empty, LABELS) == pytest.approx(3.5 / 5)


def test_partial_overlaps():
    truth = true_matches(POSTING_IDS, LABEL_GROUPS)
    predicted = [
        {"a", "b"},  # 2*2/(2+3) = 0.8
        {"b", "d"},  # 2*1/(2+3) = 0.4
        {"c", "a", "b", "d", "e"},  # 2*3/(5+3) = 0.75
        {"d", "e"},  # 2*1/(2+1) = 2/3
        {"e"},  # 1
    ]
    expected = [0.8, 0.4, 0.75, 2 / 3, 1.0]
    np.testing.assert_allclose(per_posting_f1(predicted, truth), expected)
    assert mean_f1(predicted, truth) == pytest.approx(sum(expected) / 5)
    as_indices = [[0, 1], [1, 3], [2, 0, 1, 3, 4], [3, 4], [4]]
    np.testing.assert_allclose(per_posting_f1_from_matches(as_indices, LABELS), expected)


def test_duplicates_in_predictions_count_once():
    truth = true_matches(POSTING_IDS, LABEL_GROUPS)
    predicted = [["a", "b", "b", "b"], ["b"], ["c"], ["d", "d"], ["e"]]
    # a: {a,b} → 0.8; b, c: 2*1/(1+3) = 0.5; d, e: 1.
    expected = [0.8, 0.5, 0.5, 1.0, 1.0]
    np.testing.assert_allclose(per_posting_f1(predicted, truth), expected)
    as_indices = [[0, 1, 1, 1, 0], [1, 1], [], [3, 3], [4]]
    np.testing.assert_allclose(per_posting_f1_from_matches(as_indices, LABELS), expected)


def test_mean_is_over_postings_not_pairs():
    # One large group scored perfectly and one singleton scored badly: the mean weighs each
    # posting once, so the 4 perfect rows dominate.
    posting_ids = ["p0", "p1", "p2", "p3", "q"]
    truth = true_matches(posting_ids, [1, 1, 1, 1, 2])
    predicted = [{"p0", "p1", "p2", "p3"}] * 4 + [{"q", "p0", "p1", "p2"}]
    # q: 2*1/(4+1) = 0.4
    assert mean_f1(predicted, truth) == pytest.approx((4 * 1.0 + 0.4) / 5)


def test_padding_and_string_labels_in_index_form():
    labels = np.array(["x", "x", "y"])
    matches = [np.array([0, 1, -1, -1]), np.array([-1, -1]), np.array([2, 0])]
    # row 0 perfect; row 1 only self: 2*1/(1+2); row 2 {2, 0}: 2*1/(2+1).
    np.testing.assert_allclose(
        per_posting_f1_from_matches(matches, labels), [1.0, 2 / 3, 2 / 3]
    )


def test_index_form_agrees_with_string_form_on_random_matches():
    generator = np.random.default_rng(0)
    num_rows = 300
    labels = generator.integers(0, 60, size=num_rows)
    posting_ids = [f"id{row}" for row in range(num_rows)]
    matches = [
        generator.integers(0, num_rows, size=generator.integers(0, 12)) for _ in range(num_rows)
    ]
    truth = true_matches(posting_ids, labels.tolist())
    predicted = [[posting_ids[index] for index in match] for match in matches]
    expected = mean_f1(predicted, truth, posting_ids=posting_ids)
    assert mean_f1_from_matches(matches, labels) == pytest.approx(expected, abs=1e-12)


def test_index_form_rejects_bad_input():
    with pytest.raises(ValueError, match="outside"):
        mean_f1_from_matches([[0, 5], [1]], np.array([1, 1]))
    with pytest.raises(ValueError, match="negative"):
        mean_f1_from_matches([[-3], [1]], np.array([1, 1]))
    with pytest.raises(ValueError, match="shape"):
        mean_f1_from_matches([[0], [1]], np.array([1, 1, 1]))


def test_no_postings():
    assert mean_f1([], []) == 0.0
    assert mean_f1_from_matches([], np.zeros(0)) == 0.0


def test_recall_at_1_skips_self_and_padding_and_works_against_a_catalogue():
    from tf_shopee.metrics import recall_at_1

    labels = np.array([0, 0, 1, 2])
    indices = np.array(
        [
            [0, 1, 2],  # self first, then the right product: hit
            [0, 1, -1],  # nearest other is 0 (same label): hit
            [2, 0, 1],  # nearest other is 0 (label 0): miss
            [3, -1, -1],  # nothing but itself: miss
        ]
    )
    assert recall_at_1(indices, labels) == pytest.approx(0.5)
    catalog_labels = np.array([2, 1, 0])
    # Against a catalogue the first neighbour counts, even at the query's own row number.
    assert recall_at_1(np.array([[2], [0], [1], [-1]]), labels, catalog_labels) == 0.5
