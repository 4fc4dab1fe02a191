"""The transfer test: choose the threshold method by what happens when the pool grows.

No threshold method wins on every catalogue (``local+size`` won every Shopee row of
``benchmarks/quality_transfer.py`` and lost 0.18 F1 on English price-comparison titles), and the
F1 a search measures on its own data says nothing about which one will hold. So the choice is made
on the user's own labelled data, by imitating what will happen to them: *decide on a small pool,
apply the decision to a bigger one*.

:func:`search_with_transfer_test`, for every method of
:data:`~tf_shopee.matching.decision.METHODS`:

1. draws ``repeats`` sub-pools of whole label groups, each ``fraction`` of the search data's
   groups (a quarter by default: the decision then meets a pool four times the size it was
   fitted on);
2. searches the method's decision on each sub-pool alone (its neighbour lists restricted to the
   sub-pool, local scaling and size slopes fitted there);
3. applies that decision, unchanged, to the whole search pool (thresholds follow the pool's size,
   local scaling uses the whole pool's backgrounds, ``shift`` its mean background, ``count`` the
   threshold that gives the whole pool as many matches per posting) and scores it
   on the label groups the sub-pool did **not** hold (held out);

and ships the method with the best mean *transferred* F1, with its decision refitted on all the
search data. The in-sample F1 (the method's search on all the data, scored there) is recorded
beside it with the gap, but never chooses: the method with the best in-sample F1 is the one that
fits the search data best, not the one that holds.

A shipped decision whose transfer test lost more than :data:`MAX_TRANSFER_LOSS` F1 (in-sample
minus transferred) is reported loudly, not silently shipped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np

from tf_shopee.errors import UserError
from tf_shopee.matching.decision import (
    AUTO_METHOD,
    MAX_MATCHES,
    METHODS,
    USE_CATALOGUE,
    USE_SELF_MATCHING,
    Decision,
    count_threshold,
    score_threshold,
)
from tf_shopee.matching.search import (
    DEFAULT_BETAS,
    SearchSpace,
    build_search_space,
    column_name,
    search_decision,
    with_match_counts,
    with_shift_backgrounds,
)
from tf_shopee.matching.sources import is_phash_source
from tf_shopee.neighbours import Neighbours, subset_neighbours
from tf_shopee.neighbours.scaling import DEFAULT_WINDOW, background_scores

logger = logging.getLogger("tf_shopee.matching")

AUTO = AUTO_METHOD
# Each sub-pool holds this fraction of the search data's label groups: the decision fitted on it
# meets a pool 1 / fraction times bigger (4x, the size ratio beyond which predict.py warns).
TRANSFER_FRACTION = 0.25
TRANSFER_REPEATS = 3
# A shipped decision whose in-sample F1 exceeds its transferred F1 by more than this is reported.
MAX_TRANSFER_LOSS = 0.02
# Fewer label groups than this in a sub-pool: no transfer test (too few products to fit on).
MIN_SUBPOOL_GROUPS = 4
# Ties of transferred F1 (or, without a transfer test for too few label groups, of in-sample F1)
# go to the method that extrapolates least: local scaling reads the pool it meets, a slope
# guesses.
FALLBACK_ORDER = ("local", "fixed", "shift", "count", "local+size", "size")
# The methods whose search is the same (same scaling weights), differing only in what is added
# after it: one search per family on each sub-pool.
_FAMILY = {"local+size": "local", "local": "local", "size": "plain", "shift": "plain",
           "count": "plain", "fixed": "plain"}
_FAMILY_SEARCH = {"local": "local+size", "plain": "size"}
# Methods that read the pool of postings being matched among themselves: a decision for catalogue
# queries cannot use them (a catalogue holds one posting per product, not a pool like the search
# data's), so its transfer test leaves them out and a forced one ships as ``fixed``.
SELF_MATCHING_ONLY = ("count",)


def decision_f1(space: SearchSpace, decision: Decision, *, pool_size: int | None = None,
                rows: np.ndarray | None = None, backgrounds: dict | None = None) -> float:
    """Mean F1 of ``decision`` applied to the postings of ``space`` (exactly as
    :func:`~tf_shopee.matching.decision.apply_decision` would: thresholds for ``pool_size``
    (default: these postings), local scaling on their backgrounds, ``shift`` by their mean
    background, ``count`` at the score that gives them its matches per posting), over the rows
    where ``rows`` is true (default: all).

    ``backgrounds``: a dict this function fills with the mean background of each column it
    shifts, to reuse across calls.
    """
    table = space.table
    thresholds = decision.thresholds_for(pool_size or space.labels.shape[0])
    members = []
    for name in decision.sources:
        rule = decision.rules[name]
        column = column_name(name, rule)
        if column not in table.columns:
            raise UserError(f"the transfer test has no column for {name!r} as "
                            f"{rule.describe(name)}")
        threshold = score_threshold(name, thresholds[name])
        if decision.method == "shift" and name in decision.shift_background:
            plain = column_name(name, replace(rule, beta=0.0))
            if backgrounds is None or plain not in backgrounds:
                value = float(np.mean(background_scores(space.columns[plain],
                                                        window=decision.window)))
                if backgrounds is not None:
                    backgrounds[plain] = value
            else:
                value = backgrounds[plain]
            threshold += value - decision.shift_background[name]
        if decision.method == "count" and name in decision.match_counts:
            threshold = count_threshold(space.columns[column], decision.match_counts[name],
                                        table.max_matches)
        members.append((column, threshold))
    min2 = None
    if decision.min2_source is not None:
        name = decision.min2_source
        floor = decision.min2_floor
        if floor is not None and is_phash_source(name):
            floor = score_threshold(name, floor)
        min2 = (column_name(name, decision.rules[name]), floor)
    return table.f1(members, min2, rows=rows)


def _method_decisions(result: dict, methods: Sequence[str], sources, inb_variants, *,
                      max_matches: int) -> dict[str, Decision]:
    """The decision of every method of one family from that family's search (the ``size`` one:
    the same search, with slopes): drop the slopes, or record the shift or the match counts."""
    decision = Decision.from_dict(result["decision"], where="transfer test")
    without_slopes = {name: replace(rule, slope=0.0) for name, rule in decision.rules.items()}
    found = {}
    for method in methods:
        if method in ("local+size", "size"):
            found[method] = replace(decision, method=method)
        elif method == "shift":
            found[method] = with_shift_backgrounds(
                replace(decision, rules=without_slopes), sources, inb_variants)
        elif method == "count":
            found[method] = with_match_counts(
                replace(decision, rules=without_slopes), sources, inb_variants,
                max_matches=max_matches)
        else:
            found[method] = replace(decision, method=method, rules=without_slopes)
    return found


def _subset_space(space: SearchSpace, keep: np.ndarray, *, betas, max_matches: int):
    """The sources, blending variants and search space of the rows where ``keep`` is true."""
    sources = {name: subset_neighbours(neighbours, keep)
               for name, neighbours in space.sources.items()}
    variants = {name: {key: subset_neighbours(neighbours, keep)
                       for key, neighbours in entries.items()}
                for name, entries in space.inb_variants.items()}
    sub_space = build_search_space(sources, space.labels[keep], inb_variants=variants,
                                   betas=betas, window=space.window, max_matches=max_matches)
    return sources, variants, sub_space


def search_with_transfer_test(
    sources: Mapping[str, Neighbours],
    labels,
    *,
    method: str = AUTO,
    inb_variants: Mapping[str, Mapping] | None = None,
    methods: Sequence[str] = METHODS,
    fraction: float = TRANSFER_FRACTION,
    repeats: int = TRANSFER_REPEATS,
    seed: int = 0,
    window: tuple[int, int] = DEFAULT_WINDOW,
    max_matches: int = MAX_MATCHES,
    use: str = USE_SELF_MATCHING,
    **search_options,
) -> dict:
    """:func:`~tf_shopee.matching.search.search_decision` with the method chosen by the
    transfer test (module docstring).

    Args:
        sources, labels, inb_variants, window, max_matches, search_options: as for
            :func:`~tf_shopee.matching.search.search_decision`.
        method: ``auto`` (the transfer test chooses), or one of ``methods`` to ship that one
            whatever the test says (the test still runs and its table is recorded).
        methods: the methods the test compares.
        fraction: each sub-pool's share of the label groups (0 < fraction < 1).
        repeats: sub-pools drawn.
        seed: seed of the draws.
        use: what the decision is for, recorded: ``self-matching`` or ``catalogue`` (which
            leaves out :data:`SELF_MATCHING_ONLY`).

    Returns:
        The shipped method's :func:`search_decision` result on all the data, plus ``transfer``:
        ``{"methods": {method: {"transferred_f1", "in_sample_f1", "gap", "transferred_runs"}},
        "chosen", "forced", "fraction", "repeats", "sub_pool_rows", "seconds", "warning"
        (None or why the shipped decision is doubtful), "use"}``.
    """
    started = time.perf_counter()
    methods = list(dict.fromkeys(methods))
    if use == USE_CATALOGUE:
        methods = [name for name in methods if name not in SELF_MATCHING_ONLY] or ["fixed"]
        if method in SELF_MATCHING_ONLY:
            logger.info("the %s method reads the pool of postings matched among themselves: the "
                        "decision for catalogue queries uses fixed thresholds", method)
            method = "fixed"
    unknown = [name for name in [*methods, method] if name not in (*METHODS, AUTO)]
    if unknown or not methods:
        raise UserError(f"threshold method(s) {unknown or '(none)'}: choose from "
                        f"{AUTO}, {', '.join(METHODS)}")
    if method != AUTO and method not in methods:
        methods.append(method)
    if not 0.0 < fraction < 1.0:
        raise UserError(f"the transfer test's fraction must be between 0 and 1, got {fraction}")
    labels = np.asarray(labels)
    families = list(dict.fromkeys(_FAMILY[name] for name in methods))
    betas = DEFAULT_BETAS if "local" in families else (0.0,)
    space = build_search_space(sources, labels, inb_variants=inb_variants, betas=betas,
                               window=window, max_matches=max_matches,
                               grids=search_options.get("grids"),
                               min2_floors=search_options.get("min2_floors"))
    common = {"max_matches": max_matches, "space": space, "seed": seed, **search_options}

    # In sample: each family searched once on all the data (slopes and shift do not change
    # the F1 on the data they were fitted on).
    in_sample_results = {family: search_decision(
        space.sources, labels, method="local" if family == "local" else "fixed",
        candidate_slopes=False, **common) for family in families}
    in_sample = {name: in_sample_results[_FAMILY[name]]["f1"] for name in methods}

    # Transfer: fitted on sub-pools, applied to the whole pool, scored on the held-out groups.
    groups = np.unique(labels)
    count = int(round(len(groups) * fraction))
    runs: dict[str, list[float]] = {name: [] for name in methods}
    sub_rows = []
    if count >= MIN_SUBPOOL_GROUPS and len(groups) - count >= MIN_SUBPOOL_GROUPS:
        rng = np.random.default_rng(seed)
        backgrounds: dict = {}
        for repeat in range(repeats):
            keep = np.isin(labels, rng.choice(groups, count, replace=False))
            sub_rows.append(int(keep.sum()))
            sub_sources, sub_variants, sub_space = _subset_space(space, keep, betas=betas,
                                                                 max_matches=max_matches)
            for family in families:
                result = search_decision(
                    sub_sources, labels[keep], method=_FAMILY_SEARCH[family],
                    candidate_slopes=False, max_matches=max_matches, space=sub_space,
                    seed=seed + repeat, **search_options)
                members = [name for name in methods if _FAMILY[name] == family]
                for name, decision in _method_decisions(result, members, sub_sources,
                                                        sub_variants,
                                                        max_matches=max_matches).items():
                    runs[name].append(decision_f1(space, decision, rows=~keep,
                                                  backgrounds=backgrounds))
    tested = all(runs[name] for name in methods)
    table = {}
    for name in methods:
        transferred = float(np.mean(runs[name])) if tested else None
        table[name] = {
            "transferred_f1": None if transferred is None else round(transferred, 4),
            "in_sample_f1": round(in_sample[name], 4),
            "gap": None if transferred is None else round(in_sample[name] - transferred, 4),
            "transferred_runs": [round(value, 4) for value in runs[name]],
        }
    # Ties (to 4 decimals, the table's precision) go to the method that extrapolates least.
    order = sorted(methods, key=lambda name: (FALLBACK_ORDER.index(name)))
    if tested:
        best = max(order, key=lambda name: (round(float(np.mean(runs[name])), 4),
                                            -order.index(name)))
    else:
        best = max(order, key=lambda name: (round(in_sample[name], 4), -order.index(name)))
    chosen = best if method == AUTO else method

    family = _FAMILY[chosen]
    if chosen in ("local", "fixed"):
        result = in_sample_results[family]
    else:
        result = search_decision(space.sources, labels, method=chosen, **common)
    warning = _warning(chosen, best, table, tested, forced=method != AUTO, groups=len(groups))
    if warning:
        logger.warning("%s", warning)
    result["transfer"] = {
        "methods": table, "chosen": chosen, "best": best, "forced": method != AUTO,
        "tested": tested, "fraction": fraction, "repeats": repeats if tested else 0,
        "sub_pool_rows": sub_rows, "rows": int(labels.shape[0]), "use": use,
        "max_transfer_loss": MAX_TRANSFER_LOSS, "warning": warning,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return result


def _warning(chosen: str, best: str, table: dict, tested: bool, *, forced: bool,
             groups: int) -> str | None:
    """Why the shipped decision is doubtful, or None."""
    if not tested:
        return (f"the transfer test needs at least {MIN_SUBPOOL_GROUPS} label groups in a "
                f"sub-pool and as many held out; these postings have {groups} groups: method "
                f"{chosen!r} was chosen by its F1 on the search data alone, which does not tell "
                "whether it holds on a bigger pool")
    entry = table[chosen]
    parts = []
    if forced and chosen != best:
        parts.append(f"--threshold-method {chosen} was asked for, but {best} transferred better "
                     f"({table[best]['transferred_f1']:.4f} against "
                     f"{entry['transferred_f1']:.4f})")
    if entry["gap"] is not None and entry["gap"] > MAX_TRANSFER_LOSS:
        parts.append(
            f"the shipped decision ({chosen}) lost {entry['gap']:.4f} F1 in the transfer test "
            f"(more than {MAX_TRANSFER_LOSS}): fitted on a quarter of the search data and applied "
            f"to all of it, it scored {entry['transferred_f1']:.4f} against "
            f"{entry['in_sample_f1']:.4f} on the data it was fitted on; expect a lower F1 on a "
            "bigger pool than the search reports")
    return "; ".join(parts) or None


def format_transfer_table(transfer: Mapping) -> str:
    """The transfer test as plain text: one line per method, the shipped one marked."""
    rows = transfer.get("rows")
    fraction = transfer.get("fraction", TRANSFER_FRACTION)
    header = (f"threshold method    transferred F1  in-sample F1     gap   (fitted on "
              f"{fraction:g} of the label groups of {rows} postings, applied to all, scored on "
              "the held-out groups)")
    lines = [header, "-" * 18 + "  " + "-" * 14 + "  " + "-" * 12 + "  " + "-" * 6]
    for name, entry in transfer.get("methods", {}).items():
        transferred = entry.get("transferred_f1")
        gap = entry.get("gap")
        mark = "  <- shipped" if name == transfer.get("chosen") else ""
        if name == transfer.get("chosen") and gap is not None and gap > transfer.get(
                "max_transfer_loss", MAX_TRANSFER_LOSS):
            mark += f" (loses {gap:.4f} > {transfer.get('max_transfer_loss', MAX_TRANSFER_LOSS)})"
        lines.append(
            f"{name:<18}  {'-' if transferred is None else f'{transferred:.4f}':>14}  "
            f"{entry['in_sample_f1']:>12.4f}  {'-' if gap is None else f'{gap:+.4f}':>6}{mark}")
    if not transfer.get("tested", True):
        lines.append("(no transfer test: too few label groups; chosen by in-sample F1)")
    elif transfer.get("forced"):
        lines.append(f"(method forced by --threshold-method; the test's best: "
                     f"{transfer.get('best')})")
    if transfer.get("use"):
        lines.append(f"decision for: {transfer['use']}")
    return "\n".join(lines)
