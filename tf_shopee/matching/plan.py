"""Which decision a run applies: the plan, from the defaults, the exports, a thresholds file, a
search and the command line.

In increasing priority: the shipped model-free decision
(:data:`~tf_shopee.matching.decision.DEFAULT_DECISION`) with each model joining the union at the
threshold its export carries (from validation), a thresholds file written by a search
(``--thresholds``, applied exactly), a decision searched on this run's labelled postings, and
``--threshold SOURCE=VALUE`` overrides; then ``--no-min2`` and ``--inb-iterations``.
:func:`resolve_plan` runs before anything is embedded, so a bad name or value fails fast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from tf_shopee.errors import UserError
from tf_shopee.matching.decision import (
    DEFAULT_DECISION,
    USE_SELF_MATCHING,
    Decision,
    SourceRule,
    check_threshold,
    load_thresholds,
    with_threshold,
)
from tf_shopee.matching.options import MatchOptions
from tf_shopee.matching.sources import (
    CONCAT,
    EMBEDDING_KINDS,
    PHASH,
    TFIDF,
    PlannedSources,
    is_phash_source,
    source_kind,
)
from tf_shopee.models.kind import ModelKind

logger = logging.getLogger("tf_shopee.matching")


# Which source's nearest candidate "at least one neighbour" (min2) adds when no thresholds file
# decides, in order of preference: the richest representation present.
MIN2_SOURCE_PREFERENCE = (CONCAT, ModelKind.MULTIMODAL.value, ModelKind.TEXT.value,
                          ModelKind.IMAGE.value, TFIDF, PHASH)
# Without a thresholds file, the lowest cosine min2 accepts from a model source (the floor the
# shipped model-free search chose for raw TF-IDF cosines before local scaling).
MODEL_MIN2_FLOOR = 0.3


@dataclass
class MatchPlan:
    """The decision a run applies (:class:`tf_shopee.thresholds.Decision`), where each of its
    rules came from, and the blending rounds per embedding source."""

    decision: Decision
    origin: dict[str, str]
    inb_iterations: dict[str, int] = field(default_factory=dict)


def default_decision(planned: PlannedSources, *, searching: bool = False,
                     given: frozenset[str] = frozenset()
                     ) -> tuple[Decision, dict[str, str]]:
    """The decision without a thresholds file: every model source at its validation threshold,
    with the model-free sources :data:`tf_shopee.thresholds.DEFAULT_DECISION` keeps (the others
    only when none of those is built), min2 on the richest source.

    A model source without a threshold of its own (an export of an untrained model,
    ``train.py --epochs 0``) is an error, unless a search will choose one (``searching``) or
    ``--threshold`` gives it (its name in ``given``): then it holds a placeholder until then."""
    rules, origin = {}, {}
    for name in planned.names:
        if name in DEFAULT_DECISION.rules:
            rules[name], origin[name] = DEFAULT_DECISION.rules[name], "default"
    for name, value in planned.model_thresholds.items():
        where = f"model export {planned.model_dirs[name]}"
        rules[name] = SourceRule(check_threshold(name, value, where=where))
        origin[name] = "model export"
    parts = [name for name in (ModelKind.IMAGE.value, ModelKind.TEXT.value)
             if name in planned.model_thresholds]
    if CONCAT in planned.names and len(parts) == 2:
        # No validation ever saw the concatenation: start from the mean of its two parts.
        rules[CONCAT] = SourceRule(float(np.mean([rules[name].threshold for name in parts])))
        origin[CONCAT] = "mean of image and text"
    missing = [name for name in planned.names if name not in rules]
    for name in list(missing):
        if searching or name in given:
            rules[name], origin[name] = SourceRule(0.5), "placeholder (searched or given later)"
            missing.remove(name)
    if missing:
        raise UserError(
            f"no threshold for source(s) {', '.join(missing)}: give --threshold NAME=VALUE, a "
            "--thresholds file, or --search-thresholds on a labelled set"
        )
    model_free = [name for name in planned.names if name in DEFAULT_DECISION.rules]
    kept = [name for name in model_free if name in DEFAULT_DECISION.sources] or model_free
    members = [name for name in planned.names if name not in model_free or name in kept]
    for name in model_free:
        if name not in kept:
            origin[name] = "default (left out of the union by the shipped search)"
    min2_source = DEFAULT_DECISION.min2_source
    if planned.model_dirs or min2_source not in members:
        # A model's embeddings are a better judge of a lonely posting's nearest neighbour.
        min2_source = next(name for name in (*MIN2_SOURCE_PREFERENCE, *members)
                           if name in members)
    if min2_source == DEFAULT_DECISION.min2_source:
        floor = DEFAULT_DECISION.min2_floor  # in that source's (scaled) units
    else:
        floor = None if is_phash_source(min2_source) else MODEL_MIN2_FLOOR
    decision = Decision(
        sources=tuple(members), rules=rules, min2_source=min2_source, min2_floor=floor,
        method=DEFAULT_DECISION.method, window=DEFAULT_DECISION.window,
        search_rows=DEFAULT_DECISION.search_rows,
    ).checked(where="default thresholds")
    return decision, origin


def resolve_plan(planned: PlannedSources, options: MatchOptions,
                 searched: Decision | None = None, *,
                 allow_absent: bool = False, use: str = USE_SELF_MATCHING) -> MatchPlan:
    """The decision of this run: a search's (``searched``), else ``--thresholds FILE``'s, else
    the defaults; then ``--threshold`` overrides, ``--no-min2`` and ``--inb-iterations``.

    Runs before anything is embedded, so a bad name or value fails fast.

    Args:
        planned: the sources this run builds.
        options: the run's options (thresholds file, overrides, min2, blending).
        searched: a decision just searched on this run's labelled postings.
        allow_absent: sources of the file or overrides this run lacks are left out (logged)
            instead of being an error: catalogue queries that lack a title or a photo.
        use: what the decision is for (``self-matching`` or ``catalogue``): a thresholds file
            searched with blending holds a second decision for catalogue queries.

    Raises:
        UserError: a thresholds file or ``--threshold`` naming a source this run does not
            build (unless ``allow_absent``), or a bad value.
    """
    names = planned.names
    if searched is not None:
        decision, label = searched, f"search on this set ({options.search_thresholds})"
        origin = {name: label for name in decision.sources}
    elif options.thresholds_file:
        decision = load_thresholds(options.thresholds_file, use=use)
        absent = [name for name in decision.sources if name not in names]
        if absent and not allow_absent:
            raise UserError(
                f"thresholds file {options.thresholds_file} uses source(s) "
                f"{', '.join(absent)}, which this run does not build (its sources: "
                f"{', '.join(names)}); run with the flags (--model, --no-tfidf, --no-phash, ...) "
                "the thresholds were searched with"
            )
        decision = _without_absent(decision, names, planned)
        origin = {name: f"file {options.thresholds_file}" for name in decision.sources}
    else:
        # Before a search, a model without a threshold of its own is fine: the search gives it.
        decision, origin = default_decision(
            planned, searching=bool(options.search_thresholds),
            given=frozenset(options.threshold_overrides))
    for name, value in options.threshold_overrides.items():
        if name not in names:
            if allow_absent:
                logger.info("--threshold %s=%s: no %s source here; ignored", name, value, name)
                continue
            raise UserError(f"--threshold {name}={value}: this run has no source {name!r} "
                            f"(its sources: {', '.join(names)})")
        decision = with_threshold(decision, name, value)
        origin[name] = "--threshold"
    if not options.min2:
        decision = replace(decision, min2_source=None, min2_floor=None)
    rules = dict(decision.rules)
    iterations: dict[str, int] = {}
    for name in decision.sources:
        if source_kind(name) not in EMBEDDING_KINDS:
            continue
        rule = rules[name]
        if options.inb_iterations == 0:
            rules[name] = replace(rule, inb=None)
        elif options.inb_iterations is not None and rule.inb is None:
            if rule.beta:
                raise UserError(
                    f"--inb-iterations {options.inb_iterations}: source {name!r} is matched on "
                    "locally scaled scores, so its threshold is no blend threshold; let "
                    "--search-thresholds choose blending, or give --threshold "
                    f"{name}=VALUE (a plain cosine threshold, also used to blend)"
                )
            rules[name] = replace(rule, inb=rule.threshold)
        if rules[name].inb is not None:
            iterations[name] = options.inb_iterations or rules[name].inb_iterations
            if rules[name].inb_phash is not None and PHASH not in names:
                raise UserError(f"source {name!r} is blended with the photos' phash neighbours, "
                                "but this run has no phash source (image_phash column, no "
                                "--no-phash)")
    # Every part was checked where it entered (the file when read, overrides in the options, the
    # defaults when made), so the plan is not checked again.
    decision = replace(decision, rules=rules)
    return MatchPlan(decision=decision, origin=origin, inb_iterations=iterations)


def _without_absent(decision: Decision, names: list[str], planned: PlannedSources) -> Decision:
    """``decision`` restricted to the sources in ``names`` (logged when a member goes); when no
    member is left, the default decision of these sources."""
    members = tuple(name for name in decision.sources if name in names)
    if len(members) < len(decision.sources):
        logger.warning("the thresholds file's union uses %s, which these postings lack: matching "
                       "with %s only", [name for name in decision.sources if name not in names],
                       list(members) or "the default decision")
    if not members:
        return default_decision(planned)[0]
    min2_source, min2_floor = decision.min2_source, decision.min2_floor
    if min2_source is not None and min2_source not in members:
        min2_source = next(name for name in (*MIN2_SOURCE_PREFERENCE, *members) if name in members)
        min2_floor = None
    return replace(decision, sources=members, min2_source=min2_source, min2_floor=min2_floor,
                   rules={name: rule for name, rule in decision.rules.items() if name in names})
