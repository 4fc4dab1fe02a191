"""Choosing a matching decision on labelled postings, and how its thresholds follow the pool.

:func:`search_decision` chooses a :class:`~tf_shopee.matching.decision.Decision` on labelled data
and can say no: it scores every single source (with and without min2) and the union found by
coordinate ascent from two starting points, and keeps the best, so the chosen decision is never
worse on the search data than the best single source. It is fast because it scores candidates on
a table of candidate pairs (:class:`PairTable`), not through match lists;
:func:`~tf_shopee.matching.decision.apply_decision` then applies the chosen decision to neighbour
lists and reproduces the searched F1 exactly.

Ways of making thresholds survive a bigger catalogue (``method``); which one a search ships is
chosen by the transfer test of :mod:`tf_shopee.matching.transfer` on the user's own data
(``benchmarks/quality_transfer.py`` compares them on three kinds of data):

``local``
    local scaling with ``beta`` chosen per source by the search (``beta = 0`` is among the
    choices, so a source may keep a plain threshold).
``size``
    plain thresholds that follow the pool's size: after the search, each member's threshold is
    searched again on random sub-pools (a quarter and half of the label groups) of the search
    data, and the change per doubling of the pool (``slope``) is fitted; at prediction time the
    threshold is moved by ``slope * log2(pool size / search rows)``.
``local+size``
    both.
``shift``
    plain thresholds, shifted at prediction time by how much the mean background of the pool
    being matched differs from the search data's.
``count``
    plain thresholds on the search data; on a new pool (self-matching) each member's threshold is
    re-chosen, from the pool's own scores and no labels, so that its postings get as many matches
    on average as the search data's postings got at the chosen threshold. It carries a decision
    from a pool whose cosines are tighter (a training fold of the model) to one of unseen
    products, provided their products have about as many postings each; a pool of other group
    sizes needs another method.
``fixed``
    plain thresholds, applied as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tf_shopee.errors import UserError
from tf_shopee.io_utils import atomic_path
from tf_shopee.matching.decision import (
    DEFAULT_METHOD,
    HASH_BITS,
    MAX_MATCHES,
    METHODS,
    Decision,
    SourceRule,
    check_threshold,
    mean_match_count,
    score_threshold,
    user_threshold,
)
from tf_shopee.matching.sources import check_source_name, is_phash_source
from tf_shopee.neighbours import Neighbours, subset_neighbours
from tf_shopee.neighbours.scaling import (
    DEFAULT_WINDOW,
    background_scores,
    local_scaling,
    other_slots,
)

# A threshold moved with the pool's size stays inside these quantiles of the scores of the
# search data's same-product pairs (the scores it was chosen among).
SCORE_RANGE_QUANTILES = (0.01, 0.99)
# Sub-pools of the search data the "size" methods refit thresholds on: fractions of its label
# groups, and random draws of each.
SIZE_FRACTIONS = (0.25, 0.5)
SIZE_REPEATS = 3

# Similarity thresholds tried by the search: 0.0, 0.025, ..., 0.975 (scaled scores sit lower than
# raw ones, hence the start at 0).
SIMILARITY_GRID = tuple(round(0.025 * step, 3) for step in range(40))
# phash thresholds tried: every distance from 0 to 20 bits.
PHASH_GRID_BITS = tuple(range(21))
# Local scaling weights tried by the "local" method.
DEFAULT_BETAS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Blend thresholds tried for one round of neighbourhood blending of an embedding source.
DEFAULT_INB_GRID = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)
# min2 floors tried (None: any nearest candidate), in the min2 source's units.
SIMILARITY_MIN2_FLOORS = (None, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
PHASH_MIN2_FLOORS_BITS = (None, 4, 8, 12, 16, 20)
# The search only moves to a candidate that beats the current one by more than this.
_IMPROVEMENT = 1e-9
# A union is chosen over the best single source only when it is better on the search data by
# more than this mean F1: a gain smaller than that is within the noise of a pool of a few
# thousand postings, and the simpler decision transfers at least as well.
DEFAULT_UNION_MARGIN = 0.001


# --------------------------------------------------------------------------------------------
# Fast scoring of candidate decisions


@dataclass
class _Column:
    """One source variant's candidate pairs (self excluded) in the pair table."""

    pairs: np.ndarray  # pair id of each entry
    scores: np.ndarray  # float32 score of each entry
    within_cap: np.ndarray  # bool: rank among the row's others < max_matches - 1
    slots: np.ndarray  # rank among the row's others (union order)
    nearest_score: np.ndarray  # (N,) score of each row's nearest other (-inf: none)
    nearest_correct: np.ndarray  # (N,) whether that nearest other shares the row's label


class PairTable:
    """Candidate pairs of labelled self-matching postings, for scoring decisions fast.

    Every (posting, other posting) pair that any added source lists is one entry; each source
    variant (a :class:`Neighbours` as it will be thresholded, i.e. after blending and scaling) is
    a column of scores over its pairs. The mean F1 of a decision is then counted with
    ``bincount`` over selected pairs, without building match lists: thousands of candidate
    decisions per minute on 34,250 postings. :meth:`f1` is exact, including the cap of
    ``max_matches`` per source and per union (cut in union order, as
    :func:`tf_shopee.matching.union_matches` does), and min2.
    """

    def __init__(self, columns: Mapping[str, Neighbours], labels, *,
                 max_matches: int = MAX_MATCHES):
        labels = np.asarray(labels)
        self.num_rows = labels.shape[0]
        self.max_matches = int(max_matches)
        _, self.label_ids, group_sizes = np.unique(labels, return_inverse=True,
                                                   return_counts=True)
        self.true_sizes = group_sizes[self.label_ids]
        codes = []
        for name, neighbours in columns.items():
            if neighbours.num_queries != self.num_rows:
                raise UserError(f"source {name!r} has {neighbours.num_queries} rows but there "
                                f"are {self.num_rows} labels")
            rows, slots = np.nonzero(other_slots(neighbours, self_matching=True))
            codes.append(rows.astype(np.int64) * self.num_rows + neighbours.indices[rows, slots])
        self.codes = np.unique(np.concatenate(codes)) if codes else np.zeros(0, np.int64)
        self.pair_rows = (self.codes // max(self.num_rows, 1)).astype(np.int64)
        pair_columns = self.codes % max(self.num_rows, 1)
        self.correct = self.label_ids[self.pair_rows] == self.label_ids[pair_columns]
        self.columns = {name: self._column(neighbours) for name, neighbours in columns.items()}

    def _column(self, neighbours: Neighbours) -> _Column:
        others = other_slots(neighbours, self_matching=True)
        rank = np.cumsum(others, axis=1) - 1
        rows, slots = np.nonzero(others)
        codes = rows.astype(np.int64) * self.num_rows + neighbours.indices[rows, slots]
        first = np.argmax(others, axis=1)
        has_other = others.any(axis=1)
        every_row = np.arange(self.num_rows)
        nearest = neighbours.indices[every_row, first]
        return _Column(
            pairs=np.searchsorted(self.codes, codes).astype(np.int32),
            scores=neighbours.scores[rows, slots],
            within_cap=rank[rows, slots] < self.max_matches - 1,
            slots=rank[rows, slots].astype(np.int16),
            nearest_score=np.where(has_other, neighbours.scores[every_row, first], -np.inf),
            nearest_correct=has_other
            & (self.label_ids[np.clip(nearest, 0, None)] == self.label_ids),
        )

    def selection(self, members: Sequence[tuple[str, float]]) -> np.ndarray:
        """Boolean mask over pairs: selected by any (column, score threshold) member."""
        selected = np.zeros(self.codes.shape[0], dtype=bool)
        for name, threshold in members:
            column = self.columns[name]
            selected[column.pairs[(column.scores >= threshold) & column.within_cap]] = True
        return selected

    def f1(self, members: Sequence[tuple[str, float]],
           min2: tuple[str, float | None] | None = None, *,
           rows: np.ndarray | None = None) -> float:
        """Exact mean F1 of the union of ``members`` ((column, score threshold), in union order)
        with min2 from ``(column, floor or None)``; over the rows where ``rows`` (a boolean
        mask) is true when given, else over every row."""
        selected = self.selection(members)
        counts = np.bincount(self.pair_rows[selected], minlength=self.num_rows)
        hits = np.bincount(self.pair_rows[selected & self.correct], minlength=self.num_rows)
        if counts.max(initial=0) > self.max_matches - 1:
            self._cap_union(members, counts, hits)
        return self._mean_f1(counts, hits, min2, rows)

    def _cap_union(self, members, counts: np.ndarray, hits: np.ndarray) -> None:
        """Recount rows over the cap with only their first ``max_matches - 1`` others in union
        order (member by member, each in its own order), in place."""
        over = counts > self.max_matches - 1
        parts = []
        for position, (name, threshold) in enumerate(members):
            column = self.columns[name]
            keep = (column.scores >= threshold) & column.within_cap
            keep &= over[self.pair_rows[column.pairs]]
            pairs = column.pairs[keep]
            parts.append((pairs, np.full(pairs.shape, position), column.slots[keep]))
        pairs = np.concatenate([part[0] for part in parts])
        positions = np.concatenate([part[1] for part in parts])
        slots = np.concatenate([part[2] for part in parts])
        rows = self.pair_rows[pairs]
        order = np.lexsort((slots, positions, rows))
        pairs, rows = pairs[order], rows[order]
        _, first = np.unique(pairs, return_index=True)  # a pair counts where it first appears
        first.sort()
        pairs, rows = pairs[first], rows[first]
        starts = np.searchsorted(rows, rows, side="left")
        kept = (np.arange(rows.shape[0]) - starts) < self.max_matches - 1
        over_rows = np.flatnonzero(over)
        counts[over_rows] = np.bincount(rows[kept], minlength=self.num_rows)[over_rows]
        hits[over_rows] = np.bincount(rows[kept & self.correct[pairs]],
                                      minlength=self.num_rows)[over_rows]

    def _mean_f1(self, counts, hits, min2, rows=None) -> float:
        if min2 is not None:
            counts, hits = self._with_min2(counts, hits, *min2)
        f1 = 2.0 * (hits + 1) / (counts + 1 + self.true_sizes)
        return float(np.mean(f1 if rows is None else f1[rows]))

    def score_range(self, column: str, quantiles: tuple[float, float]) -> tuple[float, float]:
        """The ``quantiles`` of the scores of a column's same-product pairs (the scores a
        threshold of this column meets on the search data)."""
        entry = self.columns[column]
        scores = entry.scores[self.correct[entry.pairs]]
        if scores.size == 0:
            scores = entry.scores
        if scores.size == 0:
            return 0.0, 1.0
        low, high = np.quantile(scores.astype(np.float64), quantiles)
        return float(low), float(high)

    def _with_min2(self, counts, hits, name: str, floor: float | None):
        column = self.columns[name]
        lonely = (counts == 0) & np.isfinite(column.nearest_score)
        if floor is not None:
            lonely &= column.nearest_score >= floor
        return counts + lonely, hits + (lonely & column.nearest_correct)

    def sweep(self, name: str, thresholds: Sequence[float],
              others: Sequence[tuple[str, float]] = (),
              min2: tuple[str, float | None] | None = None) -> np.ndarray:
        """Mean F1 of the union of ``others`` and column ``name`` at each of ``thresholds``,
        all at once (one pass over the column). The union cap is applied as a count limit only
        (rows with that many matches are rare); :meth:`f1` is exact."""
        thresholds = np.asarray(thresholds, dtype=np.float64)
        order = np.argsort(thresholds)
        sorted_thresholds = thresholds[order]
        base = self.selection(others)
        base_counts = np.bincount(self.pair_rows[base], minlength=self.num_rows)
        base_hits = np.bincount(self.pair_rows[base & self.correct], minlength=self.num_rows)
        column = self.columns[name]
        new = column.within_cap & ~base[column.pairs]
        pairs, scores = column.pairs[new], column.scores[new]
        # Entry e is selected at every threshold index below its bucket.
        buckets = np.searchsorted(sorted_thresholds, scores, side="right")
        num = len(sorted_thresholds)
        rows = self.pair_rows[pairs]
        codes = rows * (num + 1) + buckets
        added = np.bincount(codes, minlength=self.num_rows * (num + 1)).reshape(-1, num + 1)
        added_hits = np.bincount(codes[self.correct[pairs]],
                                 minlength=self.num_rows * (num + 1)).reshape(-1, num + 1)
        # Count of entries selected at threshold index g: buckets > g.
        added = np.cumsum(added[:, ::-1], axis=1)[:, ::-1][:, 1:]
        added_hits = np.cumsum(added_hits[:, ::-1], axis=1)[:, ::-1][:, 1:]
        counts = base_counts[:, np.newaxis] + added
        hits = base_hits[:, np.newaxis] + added_hits
        cap = self.max_matches - 1
        hits = np.minimum(hits, cap)
        counts = np.minimum(counts, cap)
        if min2 is not None:
            min2_column = self.columns[min2[0]]
            lonely = (counts == 0) & np.isfinite(min2_column.nearest_score)[:, np.newaxis]
            if min2[1] is not None:
                lonely &= (min2_column.nearest_score >= min2[1])[:, np.newaxis]
            counts = counts + lonely
            hits = hits + (lonely & min2_column.nearest_correct[:, np.newaxis])
        f1 = np.mean(2.0 * (hits + 1) / (counts + 1 + self.true_sizes[:, np.newaxis]), axis=0)
        result = np.empty(num)
        result[order] = f1
        return result


# --------------------------------------------------------------------------------------------
# The search


@dataclass(frozen=True)
class _Option:
    """One way of using a source: blending, scaling; the pair-table column it scores in."""

    source: str
    inb: float | None
    inb_phash: float | None
    beta: float
    column: str
    inb_neighbours: int | None
    grid: tuple[float, ...]  # score thresholds
    floors: tuple[float | None, ...]  # min2 floors, score units


@dataclass
class SearchSpace:
    """Everything a search scores candidates on: each source's options (blending, scaling,
    grids) and the :class:`PairTable` of their columns. Built once by
    :func:`build_search_space` and shared by the searches of several methods on the same
    postings (:mod:`tf_shopee.matching.transfer`)."""

    sources: Mapping[str, Neighbours]
    labels: np.ndarray
    inb_variants: dict
    options: dict[str, list[_Option]]
    columns: dict[str, Neighbours]
    table: PairTable
    window: tuple[int, int]

    def restricted(self, betas: Sequence[float]) -> dict[str, list[_Option]]:
        """Each source's options whose local scaling weight is one of ``betas``."""
        allowed = {float(beta) for beta in betas}
        return {name: [option for option in options if option.beta in allowed]
                for name, options in self.options.items()}


def build_search_space(sources: Mapping[str, Neighbours], labels, *,
                       inb_variants: Mapping[str, Mapping] | None = None,
                       betas: Sequence[float] = DEFAULT_BETAS,
                       grids: Mapping[str, Sequence[float]] | None = None,
                       min2_floors: Mapping[str, Sequence[float | None]] | None = None,
                       window: tuple[int, int] = DEFAULT_WINDOW,
                       max_matches: int = MAX_MATCHES) -> SearchSpace:
    """The options of every source (every blending variant x every weight of ``betas``) and
    their pair table, after checking names and rows (UserError otherwise)."""
    if not sources:
        raise UserError("search_decision needs at least one source")
    for name in sources:
        check_source_name(name, where="search_decision")
    labels = np.asarray(labels)
    for name, neighbours in sources.items():
        if neighbours.num_queries != labels.shape[0]:
            raise UserError(f"source {name!r} has {neighbours.num_queries} rows but there are "
                            f"{labels.shape[0]} labels")
    inb_variants = {name: {_blend_key(key): neighbours for key, neighbours in variants.items()}
                    for name, variants in (inb_variants or {}).items()}
    unknown = sorted(set(inb_variants) - set(sources))
    if unknown:
        raise UserError(f"inb_variants names unknown source(s) {unknown}")
    betas = tuple(sorted({0.0, *(float(beta) for beta in betas)}))
    options, columns = _build_options(sources, inb_variants, betas, grids, min2_floors, window)
    return SearchSpace(sources, labels, inb_variants, options, columns,
                       PairTable(columns, labels, max_matches=max_matches), tuple(window))


def column_name(name: str, rule: SourceRule) -> str:
    """The pair-table column a source's rule is scored in (its blending and scaling)."""
    return (f"{name}|inb={rule.inb}|phash={rule.inb_phash}|n={rule.inb_neighbours}"
            f"|beta={float(rule.beta)}")


@dataclass
class _State:
    """A candidate decision during the search: member → (option, score threshold); min2."""

    members: dict[str, tuple[_Option, float]]
    min2: tuple[str, float | None] | None
    f1: float = -1.0

    def key_members(self, order: Sequence[str]) -> list[tuple[str, float]]:
        return [(self.members[name][0].column, self.members[name][1]) for name in order
                if name in self.members]

    def key_min2(self) -> tuple[str, float | None] | None:
        if self.min2 is None:
            return None
        return self.members[self.min2[0]][0].column, self.min2[1]


def search_decision(
    sources: Mapping[str, Neighbours],
    labels,
    *,
    method: str = DEFAULT_METHOD,
    inb_variants: Mapping[str, Mapping] | None = None,
    betas: Sequence[float] | None = None,
    grids: Mapping[str, Sequence[float]] | None = None,
    min2_floors: Mapping[str, Sequence[float | None]] | None = None,
    window: tuple[int, int] = DEFAULT_WINDOW,
    max_matches: int = MAX_MATCHES,
    max_rounds: int = 4,
    allow_union: bool = True,
    allow_min2: bool = True,
    union_margin: float = DEFAULT_UNION_MARGIN,
    size_fractions: Sequence[float] = SIZE_FRACTIONS,
    size_repeats: int = SIZE_REPEATS,
    seed: int = 0,
    space: SearchSpace | None = None,
    candidate_slopes: bool = True,
) -> dict:
    """Choose a :class:`Decision` on labelled postings by mean F1; it may say no to anything.

    Candidates: every single source (its best blending, scaling and threshold, min2 off or on
    with its best floor), and the union found by coordinate ascent (each round re-chooses every
    source's option and threshold, or drops it, with the others held; then min2's source and
    floor, or no min2) from two starts: the best single source, and every source at its own best.
    The best candidate wins; a union must beat the best single source by more than
    ``union_margin`` to be chosen, so the decision is never worse on the search data than the
    best source alone.

    Args:
        sources: name → self-matching :class:`Neighbours` of the same labelled postings.
        labels: each posting's label (e.g. ``label_group``).
        method: one of :data:`METHODS` (see the module docstring): ``local`` and
            ``local+size`` search beta per similarity source, the others use beta 0; the
            ``size`` methods fit each member's slope on sub-pools, ``shift`` records the mean
            backgrounds.
        inb_variants: embedding source name → {blend threshold, or (blend threshold, phash bits
            or None[, neighbours blended or None]) → the neighbours after one round of
            neighbourhood blending at it (with the photos that many bits apart, over that many
            nearest neighbours)}; each is tried as an option of that source.
        betas: local scaling weights tried (``local`` only; default :data:`DEFAULT_BETAS`).
        grids: name → thresholds tried, in the source's units (bits for phash); default
            :data:`SIMILARITY_GRID` / :data:`PHASH_GRID_BITS`.
        min2_floors: name → floors tried when that source gives min2, in its units (``None`` =
            any); default :data:`SIMILARITY_MIN2_FLOORS` / :data:`PHASH_MIN2_FLOORS_BITS`.
        window: background window (local scaling, ``shift``).
        max_matches: cap on each posting's matches, self included.
        max_rounds: coordinate-ascent rounds at most.
        allow_union: consider unions (``False``: the best single source only).
        allow_min2: consider min2 (``False``: never).
        union_margin: how much better than the best single source (mean F1 on the search
            data) a union must be to be chosen.
        size_fractions: ``size`` methods: sub-pool sizes, as fractions of the label groups.
        size_repeats: ``size`` methods: random sub-pools drawn per fraction.
        seed: seed of those draws.
        space: a :func:`build_search_space` of these sources and labels to reuse (its options
            with the method's betas are searched; ``inb_variants``, ``grids``,
            ``min2_floors`` and ``window`` are then the space's).
        candidate_slopes: fit the slopes of every candidate for the record (``size``
            methods); ``False`` fits only the chosen decision's (the transfer test's refits).

    Returns:
        A JSON-ready dict: ``rows``, ``method``, ``decision`` (:meth:`Decision.to_dict`), ``f1``
        (the decision's F1 on these postings), ``best_single`` ({source, f1}), ``candidates``
        (description and F1 of each single source and union tried), ``sources`` (per source: the
        sweep of its plain threshold, and its best rule alone with its F1), ``rounds``,
        ``size_points`` (``size`` methods: per member, the (postings, threshold) pairs its
        slope was fitted to).

    Raises:
        UserError: on no sources, unknown names, mismatched rows or a bad method.
    """
    if method not in METHODS:
        raise UserError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method in ("local", "local+size"):
        betas = tuple(DEFAULT_BETAS if betas is None else betas)
    else:
        betas = (0.0,)
    if space is None:
        space = build_search_space(sources, labels, inb_variants=inb_variants, betas=betas,
                                   grids=grids, min2_floors=min2_floors, window=window,
                                   max_matches=max_matches)
    labels, inb_variants, window = space.labels, space.inb_variants, space.window
    options, table = space.restricted(betas), space.table
    order = list(sources)

    # Each source alone: its best option and threshold without min2, then with min2.
    singles: dict[str, _State] = {}
    best_alone: dict[str, dict] = {}
    plain_sweeps: dict[str, dict] = {}
    candidates: list[dict] = []
    for name in order:
        best = None
        for option in options[name]:
            scores = table.sweep(option.column, option.grid)
            if option.inb is None and option.beta == 0:
                plain_sweeps[name] = {
                    "grid": [user_threshold(name, value) for value in option.grid],
                    "f1": [round(float(score), 6) for score in scores],
                }
            index = int(np.argmax(scores))
            if best is None or scores[index] > best.f1 + _IMPROVEMENT:
                best = _State({name: (option, option.grid[index])}, None, float(scores[index]))
        best.f1 = table.f1(best.key_members(order))
        best_alone[name] = {"rule": _rule(name, *best.members[name]).to_dict(), "f1": best.f1}
        single = best
        if allow_min2:
            with_min2 = _best_single_with_min2(table, name, options[name])
            if with_min2.f1 > single.f1 + _IMPROVEMENT:
                single = with_min2
        singles[name] = single

    fitted: dict[int, tuple[dict, dict]] = {}

    def fit(state: _State, *, record: bool = False) -> tuple[dict, dict]:
        """The state's slopes and the points they were fitted to (``size`` methods only;
        ``record``: a candidate's, fitted only with ``candidate_slopes``)."""
        if method not in ("size", "local+size") or (record and not candidate_slopes):
            return {}, {}
        if id(state) not in fitted:
            fitted[id(state)] = _fit_size_slopes(
                sources, inb_variants, state, [name for name in order if name in state.members],
                labels, window=window, max_matches=max_matches, fractions=size_fractions,
                repeats=size_repeats, seed=seed,
            )
        return fitted[id(state)]

    for name in order:
        candidates.append(_candidate("single", singles[name], order, method, window, labels,
                                     fit(singles[name], record=True)[0]))
    best_single_name = max(order, key=lambda name: singles[name].f1)
    chosen = singles[best_single_name]
    rounds_used = 0
    if allow_union and len(order) > 1:
        starts = [
            _State(dict(chosen.members), chosen.min2),
            _State({name: singles[name].members[name] for name in order}, chosen.min2),
        ]
        for start in starts:
            start.f1 = table.f1(start.key_members(order), start.key_min2())
            state, rounds = _ascend(table, start, options, order, max_rounds=max_rounds,
                                    allow_min2=allow_min2)
            rounds_used = max(rounds_used, rounds)
            candidates.append(_candidate("union", state, order, method, window, labels,
                                         fit(state, record=True)[0]))
            if len(state.members) > 1 and state.f1 > max(
                chosen.f1, singles[best_single_name].f1 + union_margin
            ) + _IMPROVEMENT:
                chosen = state

    members = [name for name in order if name in chosen.members]
    decision = _state_decision(chosen, order, method, window, labels)
    rules = dict(decision.rules)
    for name in order:  # non-members keep their best rule alone, for reports
        rules.setdefault(name, SourceRule.from_dict(name, best_alone[name]["rule"],
                                                    where="search"))
    slopes, size_points = fit(chosen)
    for name, slope in slopes.items():
        rules[name] = replace(rules[name], slope=slope)
    for name in members:
        if not is_phash_source(name):
            # Guard rail: a threshold moved with the pool size stays among the scores that
            # same-product pairs had in the search data (it never extrapolates past them).
            low, high = table.score_range(chosen.members[name][0].column, SCORE_RANGE_QUANTILES)
            rules[name] = replace(rules[name], score_range=(round(low, 6), round(high, 6)))
    decision = replace(decision, rules=rules)
    if method == "shift":
        decision = with_shift_backgrounds(decision, sources, inb_variants)
    elif method == "count":
        decision = with_match_counts(decision, sources, inb_variants, max_matches=max_matches)
    decision = decision.checked(where="search_decision")
    return {
        "rows": int(labels.shape[0]),
        "max_matches": int(max_matches),
        "method": method,
        "decision": decision.to_dict(),
        "f1": chosen.f1,
        "best_single": {"source": best_single_name, "f1": singles[best_single_name].f1},
        "candidates": candidates,
        "sources": {name: {"sweep": plain_sweeps.get(name), "best_alone": best_alone[name]}
                    for name in order},
        "rounds": rounds_used,
        "size_points": size_points,
    }


def with_shift_backgrounds(decision: Decision, sources: Mapping[str, Neighbours],
                           inb_variants: Mapping[str, Mapping] | None) -> Decision:
    """The decision with the ``shift`` method's record: the mean background of each similarity
    member's neighbours (as blended by its rule) on these postings."""
    shift_background = {
        name: float(np.mean(background_scores(neighbours, window=decision.window)))
        for name, neighbours in _similarity_members(decision, sources, inb_variants)}
    return replace(decision, method="shift", shift_background=shift_background)


def with_match_counts(decision: Decision, sources: Mapping[str, Neighbours],
                      inb_variants: Mapping[str, Mapping] | None, *,
                      max_matches: int = MAX_MATCHES) -> Decision:
    """The decision with the ``count`` method's record: the mean matches per posting that each
    similarity member's threshold gives on these postings (its neighbours as blended by its
    rule)."""
    match_counts = {
        name: round(mean_match_count(neighbours, score_threshold(
            name, decision.rules[name].threshold), max_matches), 4)
        for name, neighbours in _similarity_members(decision, sources, inb_variants)}
    return replace(decision, method="count", match_counts=match_counts)


def _similarity_members(decision: Decision, sources: Mapping[str, Neighbours],
                        inb_variants: Mapping[str, Mapping] | None):
    """``(name, neighbours)`` of each similarity (not phash) member, as blended by its rule."""
    for name in decision.sources:
        if not is_phash_source(name):
            rule = decision.rules[name]
            yield name, sources[name] if rule.inb is None else inb_variants[name][
                (rule.inb, rule.inb_phash, rule.inb_neighbours)]


def _fit_size_slopes(sources, inb_variants, chosen: _State, members, labels, *, window,
                     max_matches, fractions, repeats, seed):
    """Each member's threshold change per doubling of the pool (the ``size`` methods).

    The decision's options are kept (blending, scaling, min2); only the similarity members'
    thresholds are searched again on random sub-pools of whole label groups, on a grid twice as
    fine. A line through (log2 postings, threshold) of every sub-pool and of the whole search
    data gives the slope, in the source's units. A decision of one source refits it with its
    min2; in a union, each member is refitted **alone** (its own best threshold, with min2 only
    when it gives min2), on the whole search data too: the thresholds of a union trade off along
    a flat ridge of F1, and refitting them jointly drifts along it (on 3,425 Shopee postings the
    text member of a union came out at 0.51 on sub-pools and 0.775 on the whole, a slope of 0.12
    per doubling that took both members to 1.0 on a pool five times bigger). phash members keep
    slope 0: the Hamming distance of two photos does not depend on the pool (their best
    thresholds were the same on 11,416 and 34,250 real Shopee postings), and their F1 curves are
    flat enough that refitted thresholds would be noise.
    """
    rng = np.random.default_rng(seed)
    groups = np.unique(labels)
    fitted = [name for name in members if not is_phash_source(name)]
    if not fitted:
        return {}, {}
    fine = {name: _finer_grid(chosen.members[name][0].grid) for name in fitted}
    # What is refitted together: the one source with its min2, or each union member alone.
    fits = [list(members)] if len(members) == 1 else [[name] for name in fitted]

    def fit_state(fit, table, start: dict[str, float] | None) -> _State:
        state = _State({name: (chosen.members[name][0], chosen.members[name][1] if start is None
                               else start[name]) for name in fit},
                       chosen.min2 if chosen.min2 and chosen.min2[0] in fit else None)
        state.f1 = table.f1(state.key_members(fit), state.key_min2())
        for _ in range(3):
            changed = False
            for name in [member for member in fit if member in fine]:
                option = state.members[name][0]
                others = [(state.members[other][0].column, state.members[other][1])
                          for other in fit if other != name]
                scores = table.sweep(option.column, fine[name], others, state.key_min2())
                index = int(np.argmax(scores))
                if scores[index] > state.f1 + _IMPROVEMENT:
                    state.members[name] = (option, fine[name][index])
                    state.f1 = float(scores[index])
                    changed = True
            if not changed:
                break
        return state

    def pool_table(keep):
        columns = {}
        for name in members:
            option = chosen.members[name][0]
            neighbours = _option_neighbours(sources, inb_variants, option)
            if keep is not None:
                neighbours = subset_neighbours(neighbours, keep)
                if option.beta:
                    neighbours = local_scaling(neighbours, option.beta,
                                               background_scores(neighbours, window=window))
            elif option.beta:
                neighbours = local_scaling(neighbours, option.beta,
                                           background_scores(neighbours, window=window))
            columns[option.column] = neighbours
        return PairTable(columns, labels if keep is None else labels[keep],
                         max_matches=max_matches)

    if len(fits) == 1:
        start = {name: chosen.members[name][1] for name in members}
    else:  # each member's own best threshold on the whole search data
        whole = pool_table(None)
        start = {}
        for fit in fits:
            start.update({name: value for name, (_, value)
                          in fit_state(fit, whole, None).members.items()})
    points = {name: [(int(labels.shape[0]), user_threshold(name, start[name]))]
              for name in fitted}
    for fraction in fractions:
        for _ in range(repeats):
            chosen_groups = rng.choice(groups, max(1, int(round(len(groups) * fraction))),
                                       replace=False)
            keep = np.isin(labels, chosen_groups)
            table = pool_table(keep)
            for fit in fits:
                state = fit_state(fit, table, start)
                for name in fit:
                    if name in fine:
                        points[name].append((int(keep.sum()),
                                             user_threshold(name, state.members[name][1])))
    slopes = {}
    for name, values in points.items():
        sizes = np.log2([size for size, _ in values])
        thresholds = np.array([threshold for _, threshold in values], dtype=np.float64)
        slope = float(np.polyfit(sizes, thresholds, 1)[0]) if np.ptp(sizes) > 0 else 0.0
        slopes[name] = round(float(np.clip(slope, -1.0, 1.0)), 6)
    return slopes, {name: [list(point) for point in values] for name, values in points.items()}


def _finer_grid(grid: Sequence[float]) -> tuple[float, ...]:
    """The grid with the midpoint of every step added (phash steps of one bit stay whole)."""
    values = sorted(grid)
    if len(values) < 2:
        return tuple(values)
    step = min(b - a for a, b in zip(values, values[1:]))
    if abs(step - 1 / HASH_BITS) < 1e-9:  # phash: one bit is the finest step
        return tuple(values)
    middles = [(a + b) / 2 for a, b in zip(values, values[1:])]
    return tuple(sorted(values + middles))


def _build_options(sources, inb_variants, betas, grids, min2_floors, window):
    """Every option of every source, and the pair-table columns they score in."""
    grids = dict(grids or {})
    min2_floors = dict(min2_floors or {})
    unknown = sorted((set(grids) | set(min2_floors)) - set(sources))
    if unknown:
        raise UserError(f"grids / min2_floors name unknown source(s) {unknown}")
    options: dict[str, list[_Option]] = {}
    columns: dict[str, Neighbours] = {}
    for name, neighbours in sources.items():
        phash = is_phash_source(name)
        grid = grids.get(name, PHASH_GRID_BITS if phash else SIMILARITY_GRID)
        grid = [check_threshold(name, value, where="search grid") for value in grid]
        if not grid:
            raise UserError(f"the threshold grid of source {name!r} is empty")
        score_grid = tuple(sorted(score_threshold(name, value) for value in grid))
        floors = min2_floors.get(name, PHASH_MIN2_FLOORS_BITS if phash
                                 else SIMILARITY_MIN2_FLOORS)
        score_floors = tuple(None if value is None else score_threshold(name, value)
                             for value in floors)
        variants = {(None, None, None): neighbours, **dict(inb_variants.get(name, {}))}
        options[name] = []
        for (inb, inb_phash, inb_neighbours), variant in variants.items():
            source_betas = (0.0,) if phash else betas
            background = None
            for beta in source_betas:
                if beta:
                    if background is None:
                        background = background_scores(variant, window=window)
                    scored = local_scaling(variant, beta, background)
                else:
                    scored = variant
                column = column_name(name, SourceRule(
                    0.0, beta=float(beta), inb=inb, inb_phash=inb_phash,
                    inb_neighbours=inb_neighbours))
                columns[column] = scored
                options[name].append(_Option(name, inb, inb_phash, float(beta), column,
                                             inb_neighbours, score_grid, score_floors))
    return options, columns


def _option_neighbours(sources, inb_variants, option: _Option) -> Neighbours:
    if option.inb is None:
        return sources[option.source]
    return inb_variants[option.source][(option.inb, option.inb_phash, option.inb_neighbours)]


def _blend_key(key) -> tuple[float, float | None, int | None]:
    """An ``inb_variants`` key as (blend threshold, phash bits or None, neighbours or None)."""
    if isinstance(key, tuple):
        threshold, bits, *rest = key
        neighbours = rest[0] if rest else None
        return (float(threshold), None if bits is None else float(bits),
                None if neighbours is None else int(neighbours))
    return float(key), None, None


def _rule(name: str, option: _Option, threshold: float) -> SourceRule:
    return SourceRule(threshold=user_threshold(name, threshold), beta=option.beta,
                      inb=option.inb, inb_phash=option.inb_phash,
                      inb_neighbours=option.inb_neighbours)


def _best_single_with_min2(table: PairTable, name: str, options: list[_Option]) -> _State:
    """The best (option, threshold, floor) of one source alone with min2 on itself."""
    best = None
    for option in options:
        for floor in option.floors:
            scores = table.sweep(option.column, option.grid, min2=(option.column, floor))
            index = int(np.argmax(scores))
            if best is None or scores[index] > best.f1 + _IMPROVEMENT:
                best = _State({name: (option, option.grid[index])}, (name, floor),
                              float(scores[index]))
    best.f1 = table.f1(best.key_members([name]), best.key_min2())
    return best


def _ascend(table: PairTable, state: _State, options, order, *, max_rounds: int,
            allow_min2: bool):
    """Coordinate ascent over each source's (option, threshold) or absence, then min2."""
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        changed = False
        for name in order:
            others = [member for member in order if member != name and member in state.members]
            others_key = [(state.members[member][0].column, state.members[member][1])
                          for member in others]
            # Try every option of this source (its min2 follows it when it gives min2).
            for option in options[name]:
                min2 = state.min2
                min2_key = None
                if min2 is not None:
                    column = option.column if min2[0] == name else state.members[min2[0]][0].column
                    floor = min2[1]
                    if min2[0] == name and floor is not None and floor not in option.floors:
                        floor = None
                    min2_key = (column, floor)
                scores = table.sweep(option.column, option.grid, others_key, min2_key)
                index = int(np.argmax(scores))
                if scores[index] <= state.f1 + _IMPROVEMENT:
                    continue
                trial = _State({**state.members, name: (option, option.grid[index])},
                               None if min2 is None else (min2[0], min2_key[1]))
                trial.f1 = table.f1(trial.key_members(order), trial.key_min2())
                if trial.f1 > state.f1 + _IMPROVEMENT:
                    state, changed = trial, True
            # Or drop it.
            if name in state.members and len(state.members) > 1:
                members = {member: value for member, value in state.members.items()
                           if member != name}
                min2 = state.min2 if state.min2 is None or state.min2[0] != name else None
                trial = _State(members, min2)
                trial.f1 = table.f1(trial.key_members(order), trial.key_min2())
                if trial.f1 > state.f1 + _IMPROVEMENT:
                    state, changed = trial, True
        if allow_min2:
            for min2 in [None, *((name, floor) for name in order if name in state.members
                                 for floor in state.members[name][0].floors)]:
                trial = _State(state.members, min2)
                trial.f1 = table.f1(trial.key_members(order), trial.key_min2())
                if trial.f1 > state.f1 + _IMPROVEMENT:
                    state, changed = trial, True
        if not changed:
            break
    return state, rounds


def _state_decision(state: _State, order, method: str, window, labels) -> Decision:
    """The :class:`Decision` of a search state (no slopes, no shift: those come after)."""
    members = [name for name in order if name in state.members]
    min2_source = min2_floor = None
    if state.min2 is not None:
        min2_source, min2_floor = state.min2
        if min2_floor is not None and is_phash_source(min2_source):
            min2_floor = user_threshold(min2_source, min2_floor)
    return Decision(
        sources=tuple(members),
        rules={name: _rule(name, *state.members[name]) for name in members},
        min2_source=min2_source, min2_floor=min2_floor, method=method, window=tuple(window),
        search_rows=int(labels.shape[0]),
    )


def _candidate(kind: str, state: _State, order, method, window, labels, slopes) -> dict:
    """A candidate of the search, for the record: its decision (with its slopes) and F1 on the
    search data."""
    decision = _state_decision(state, order, method, window, labels)
    decision.rules = {name: replace(rule, slope=slopes.get(name, 0.0))
                      for name, rule in decision.rules.items()}
    return {"kind": kind, "sources": list(decision.sources), "f1": state.f1,
            "description": decision.describe(), "decision": decision.to_dict()}




def plot_thresholds(path_png: str | Path, result: dict, *, title: str | None = None) -> None:
    """Plot mean F1 against each source's plain threshold (no scaling, blending or min2) and
    mark the chosen decision's F1, to a PNG (Agg backend, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 4.5), dpi=100)
    similarity_axes = figure.add_subplot(1, 2, 1)
    phash_axes = figure.add_subplot(1, 2, 2)
    for name, entry in result["sources"].items():
        sweep = entry.get("sweep")
        if not sweep:
            continue
        axes = phash_axes if is_phash_source(name) else similarity_axes
        axes.plot(sweep["grid"], sweep["f1"], marker=".", label=f"{name} (plain)")
    for axes, label in ((similarity_axes, "similarity threshold (match at >=)"),
                        (phash_axes, "phash threshold in bits (match at <=)")):
        axes.axhline(result["f1"], color="black", linestyle="--",
                     label=f"chosen decision {result['f1']:.4f}")
        axes.set_xlabel(label)
        axes.set_ylabel("mean F1")
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best", fontsize="small")
    figure.suptitle(title or f"F1 vs threshold ({result['rows']} postings)")
    figure.tight_layout()
    path_png = Path(path_png)
    with atomic_path(path_png) as temporary:
        figure.savefig(temporary, format="png")
