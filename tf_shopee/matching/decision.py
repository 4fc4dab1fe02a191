"""Matching decisions: which sources enter the union, each one's rule, min2 — and applying them.

A *decision* (:class:`Decision`) says how neighbour lists become a submission:

* which sources enter the union (one source alone is a decision too);
* per source a :class:`SourceRule`: its threshold, the weight ``beta`` of local scaling (scores
  judged against each posting's background, :mod:`tf_shopee.neighbours.scaling`; 0 = a plain
  threshold), a ``slope`` that moves the threshold with the pool's size and, for embedding
  sources, whether one round of neighbourhood blending (INB) runs first and at which blend
  threshold;
* min2 ("at least one neighbour"): off, or a lonely posting gets the nearest candidate of one
  member source when that candidate reaches a floor.

Units. phash sources (``phash``, ``phash_text``) are given in **bits**: a threshold of 8 matches
photos whose hashes differ in at most 8 of 64 bits. Every other source is a similarity: a pair
matches when its (scaled) score is at least the threshold, a number in [0, 1]. Thresholds files,
``predict.py --threshold``, reports and tables all use these units; the neighbour lists carry
phash as the score ``1 - bits / 64``, converted only where thresholds meet scores
(:func:`score_threshold`).

:func:`apply_decision` applies a decision to neighbour lists, for self-matching and for queries
against a catalogue alike; :func:`tf_shopee.matching.search.search_decision` chooses one on
labelled data, and reproduces its F1 exactly through this function. :func:`write_thresholds`
saves a search as ``thresholds.json``; :func:`load_thresholds` reads it back, checking every name
and value.

:data:`DEFAULT_DECISION` is what ``predict.py`` uses for the model-free sources when nothing else
is given; it was chosen once, on real Shopee data, by ``benchmarks/quality_real.py``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import numpy as np

from tf_shopee.errors import UserError
from tf_shopee.io_utils import write_json_atomic
from tf_shopee.matching.sources import (
    EMBEDDING_KINDS,
    check_source_name,
    is_phash_source,
    source_kind,
)
from tf_shopee.matching.topk import matches_from_neighbours, union_matches
from tf_shopee.neighbours import Neighbours
from tf_shopee.neighbours.scaling import DEFAULT_WINDOW, background_scores, local_scaling

logger = logging.getLogger("tf_shopee.matching")

THRESHOLDS_FORMAT = "tf_shopee.thresholds"
THRESHOLDS_FORMAT_VERSION = 2
MAX_MATCHES = 50
HASH_BITS = 64

# How a search makes thresholds hold on a bigger pool (tf_shopee.matching.search).
METHODS = ("local+size", "local", "size", "shift", "count", "fixed")
DEFAULT_METHOD = "local+size"
# --threshold-method auto: the search's transfer test chooses (tf_shopee.matching.transfer).
AUTO_METHOD = "auto"
THRESHOLD_METHOD_CHOICES = (AUTO_METHOD, *METHODS)
# What a decision is for: matching a set against itself (blending allowed), or queries against
# a catalogue (no blending: the catalogue side is not re-blended per query).
USE_SELF_MATCHING = "self-matching"
USE_CATALOGUE = "catalogue"
USES = (USE_SELF_MATCHING, USE_CATALOGUE)


# --------------------------------------------------------------------------------------------
# Units

def check_threshold(name: str, value, *, where: str, what: str = "threshold") -> float:
    """A threshold in the source's units, checked: phash sources a whole number of bits in
    0..64, other sources a similarity in [0, 1]. Returns it as a float (bits as whole floats).

    Raises:
        UserError: naming ``where`` for a non-number, NaN, infinity or a value out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise UserError(f"{where}: {what} of {name!r} is not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise UserError(f"{where}: {what} of {name!r} is {number}; give a finite number")
    if is_phash_source(name):
        if number != round(number) or not 0 <= number <= HASH_BITS:
            raise UserError(
                f"{where}: {what} of {name!r} is {value!r}; phash thresholds are Hamming "
                f"distances in bits, a whole number from 0 to {HASH_BITS} (e.g. {name}=8)"
            )
        return float(round(number))
    if not 0.0 <= number <= 1.0:
        raise UserError(
            f"{where}: {what} of {name!r} is {value!r}; similarity thresholds are between 0 "
            "and 1 (a pair matches when its score is at least the threshold)"
        )
    return number


def score_threshold(name: str, value: float) -> float:
    """A threshold in the source's units (bits for phash) as a score threshold."""
    return 1.0 - float(value) / HASH_BITS if is_phash_source(name) else float(value)


def user_threshold(name: str, score: float) -> float:
    """A score threshold in the source's units (whole bits for phash)."""
    if is_phash_source(name):
        return float(round((1.0 - float(score)) * HASH_BITS))
    return float(score)


def format_threshold(name: str, value: float) -> str:
    """A threshold for people: ``<= 8 bits`` for phash sources, ``0.650`` otherwise."""
    if is_phash_source(name):
        return f"<= {int(value)} bits"
    return f"{value:.3f}"



# --------------------------------------------------------------------------------------------
# Decisions


@dataclass(frozen=True)
class SourceRule:
    """How one source's neighbours become matches.

    Attributes:
        threshold: bits for phash sources (match at <= threshold), otherwise a similarity in
            [0, 1] (match at >= threshold, on the scaled score when ``beta > 0``), for a pool of
            the search data's size.
        beta: local scaling weight (:mod:`tf_shopee.neighbours.scaling`); 0 = plain threshold.
        inb: blend threshold of one round of neighbourhood blending before matching (embedding
            sources only); ``None`` = no blending.
        inb_phash: when blending, also blend in the postings whose photos are at most this many
            bits apart (phash neighbours, as the model-free TF-IDF source does); ``None`` = only
            the source's own neighbours.
        slope: change of the threshold per doubling of the pool (``size`` methods), in the
            source's units; 0 = the same threshold for every pool size.
        inb_neighbours: when blending, only each posting's this many nearest neighbours (itself
            included) are blended in; ``None`` = every neighbour of its list (``--k``). Large
            product groups blend best over a bounded neighbourhood: on the grocery photos (about
            36 photos a product) 20 neighbours beat 51.
        inb_iterations: rounds of blending (each blends the previous round's embeddings over
            their new neighbours, at the same threshold).
        score_range: ``(low, high)`` in the source's (scaled) units: the scores of same-product
            pairs in the search data (1st to 99th percentile). A threshold moved with the pool's
            size (``slope``) is kept inside it, widened to hold ``threshold`` itself, so it never
            extrapolates past the scores the search saw; ``None`` = no bound (older files).
    """

    threshold: float
    beta: float = 0.0
    inb: float | None = None
    slope: float = 0.0
    inb_phash: float | None = None
    inb_neighbours: int | None = None
    inb_iterations: int = 1
    score_range: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        """JSON-ready form (the thresholds file's ``rules`` entries)."""
        data = {"threshold": self.threshold, "beta": self.beta, "inb": self.inb,
                "inb_phash": self.inb_phash, "slope": self.slope}
        if self.inb_neighbours is not None:  # files without it read as "every neighbour"
            data["inb_neighbours"] = self.inb_neighbours
        if self.inb_iterations != 1:  # files without it read as one round
            data["inb_iterations"] = self.inb_iterations
        if self.score_range is not None:
            data["score_range"] = list(self.score_range)
        return data

    @classmethod
    def from_dict(cls, name: str, data, *, where: str) -> "SourceRule":
        """Read and check a rule (a dict, or a bare number meaning a plain threshold)."""
        if not isinstance(data, Mapping):
            data = {"threshold": data}
        unknown = sorted(set(data) - {"threshold", "beta", "inb", "inb_phash", "slope",
                                      "inb_neighbours", "inb_iterations", "score_range"})
        if unknown:
            raise UserError(f"{where}: rule of {name!r} has unknown key(s) {unknown}")
        if "threshold" not in data:
            raise UserError(f"{where}: rule of {name!r} has no threshold")
        values = {}
        for key in ("beta", "slope", "inb", "inb_phash"):
            value = data.get(key)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
                raise UserError(f"{where}: {key} of {name!r} is not a number: {value!r}")
            values[key] = value
        neighbours = data.get("inb_neighbours")
        if neighbours is not None and (isinstance(neighbours, bool)
                                       or not isinstance(neighbours, int)):
            raise UserError(f"{where}: inb_neighbours of {name!r} must be a whole number, got "
                            f"{neighbours!r}")
        rounds = data.get("inb_iterations", 1)
        if isinstance(rounds, bool) or not isinstance(rounds, int):
            raise UserError(f"{where}: inb_iterations of {name!r} must be a whole number, got "
                            f"{rounds!r}")
        score_range = data.get("score_range")
        if score_range is not None:
            if not (isinstance(score_range, (list, tuple)) and len(score_range) == 2
                    and all(isinstance(value, (int, float)) and not isinstance(value, bool)
                            and math.isfinite(value) for value in score_range)
                    and score_range[0] <= score_range[1]):
                raise UserError(f"{where}: score_range of {name!r} must be [low, high], got "
                                f"{score_range!r}")
            score_range = (float(score_range[0]), float(score_range[1]))
        return cls(
            threshold=check_threshold(name, data["threshold"], where=where),
            beta=float(values["beta"] or 0.0),
            inb=None if values["inb"] is None else float(values["inb"]),
            slope=float(values["slope"] or 0.0),
            inb_phash=None if values["inb_phash"] is None else float(values["inb_phash"]),
            inb_neighbours=neighbours,
            inb_iterations=rounds,
            score_range=score_range,
        ).checked(name, where=where)

    def checked(self, name: str, *, where: str) -> "SourceRule":
        """This rule, after checking every value; UserError naming ``where`` otherwise."""
        check_threshold(name, self.threshold, where=where)
        if not (math.isfinite(self.beta) and 0.0 <= self.beta <= 4.0):
            raise UserError(f"{where}: local scaling beta of {name!r} must be in [0, 4], got "
                            f"{self.beta!r}")
        if self.beta and is_phash_source(name):
            raise UserError(f"{where}: {name!r} is a phash source (bits); it takes no scaling")
        limit = HASH_BITS if is_phash_source(name) else 1.0
        if not (math.isfinite(self.slope) and abs(self.slope) <= limit):
            raise UserError(f"{where}: slope of {name!r} must be a number within +-{limit:g} "
                            f"per doubling, got {self.slope!r}")
        if self.inb is not None:
            check_threshold(name, self.inb, where=where, what="blend (INB) threshold")
            if source_kind(name) not in EMBEDDING_KINDS:
                raise UserError(f"{where}: neighbourhood blending applies to embedding sources "
                                f"({', '.join(EMBEDDING_KINDS)}), not {name!r}")
        if self.inb_phash is not None:
            if self.inb is None:
                raise UserError(f"{where}: inb_phash of {name!r} needs blending (inb)")
            check_threshold("phash", self.inb_phash, where=where, what=f"inb_phash of {name!r}")
        if self.inb_neighbours is not None:
            if self.inb is None:
                raise UserError(f"{where}: inb_neighbours of {name!r} needs blending (inb)")
            if self.inb_neighbours < 2:
                raise UserError(f"{where}: inb_neighbours of {name!r} must be at least 2 (the "
                                f"posting and one neighbour), got {self.inb_neighbours}")
        if not 1 <= self.inb_iterations <= 10:
            raise UserError(f"{where}: inb_iterations of {name!r} must be from 1 to 10, got "
                            f"{self.inb_iterations}")
        return self

    def threshold_for(self, name: str, pool_ratio: float) -> float:
        """The threshold for a pool ``pool_ratio`` times the search data's size (clipped to the
        valid range; whole bits for phash)."""
        value = self.threshold
        if self.slope and pool_ratio > 0:
            value += self.slope * math.log2(pool_ratio)
            if self.score_range is not None:  # never past the scores the search saw
                low = min(self.score_range[0], self.threshold)
                high = max(self.score_range[1], self.threshold)
                value = min(max(value, low), high)
        if is_phash_source(name):
            return float(min(max(round(value), 0), HASH_BITS))
        return float(min(max(value, 0.0), 1.0))

    def describe(self, name: str, threshold: float | None = None) -> str:
        """One line for tables: threshold (``threshold`` when given, e.g. moved with the pool
        size), scaling and blending."""
        text = format_threshold(name, self.threshold if threshold is None else threshold)
        if self.beta:
            text += f" + {self.beta:g}*bg"
        if self.inb is not None:
            text += f", INB {self.inb:g}"
            if self.inb_neighbours is not None:
                text += f" over {self.inb_neighbours} nearest"
            if self.inb_iterations != 1:
                text += f" x{self.inb_iterations}"
            if self.inb_phash is not None:
                text += f" + photos <= {int(self.inb_phash)} bits"
        return text


@dataclass
class Decision:
    """Which sources enter the union and how each is thresholded; min2; the method.

    Attributes:
        sources: the union's members, in union order (a posting's matches beyond 50 are cut in
            this order).
        rules: a :class:`SourceRule` for every member (other sources may have one too: their
            best rule alone, for reports).
        min2_source: the member whose nearest candidate a lonely posting gets; ``None`` = off.
        min2_floor: lowest score of that candidate, in the min2 source's units (bits for phash,
            the scaled score for a scaled source); ``None`` = any.
        method: how the thresholds were chosen and adapt to the pool (:data:`METHODS`).
        window: background window of local scaling and of the ``shift`` method.
        search_rows: postings of the search data (the pool size the thresholds are for).
        shift_background: ``shift`` method: mean background of each member on the search data.
        match_counts: ``count`` method: each similarity member's mean matches per posting (self
            included, capped at the search's max matches) on the search data at its threshold.
    """

    sources: tuple[str, ...]
    rules: dict[str, SourceRule]
    min2_source: str | None = None
    min2_floor: float | None = None
    method: str = DEFAULT_METHOD
    window: tuple[int, int] = DEFAULT_WINDOW
    search_rows: int | None = None
    shift_background: dict[str, float] = field(default_factory=dict)
    match_counts: dict[str, float] = field(default_factory=dict)

    @property
    def min2(self) -> bool:
        """Whether min2 is on."""
        return self.min2_source is not None

    def thresholds_for(self, pool_size: int | None) -> dict[str, float]:
        """Each member's threshold (its units) for a pool of ``pool_size`` postings."""
        ratio = 1.0
        if pool_size and self.search_rows:
            ratio = pool_size / self.search_rows
        return {name: self.rules[name].threshold_for(name, ratio) for name in self.sources}

    def checked(self, *, where: str) -> "Decision":
        """This decision after checking names, values and consistency; UserError otherwise."""
        if not self.sources:
            raise UserError(f"{where}: the decision has no source")
        if len(set(self.sources)) != len(self.sources):
            raise UserError(f"{where}: a source is listed twice in {list(self.sources)}")
        for name in [*self.sources, *self.rules]:
            check_source_name(name, where=where)
        missing = [name for name in self.sources if name not in self.rules]
        if missing:
            raise UserError(f"{where}: no rule for source(s) {missing}")
        for name, rule in self.rules.items():
            rule.checked(name, where=where)
        if self.method not in METHODS:
            raise UserError(f"{where}: method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.search_rows is not None and not (
            isinstance(self.search_rows, int) and self.search_rows > 0
        ):
            raise UserError(f"{where}: search_rows must be a positive integer")
        for name, count in self.match_counts.items():
            if not (math.isfinite(count) and 1.0 <= count <= 10_000):
                raise UserError(f"{where}: match count of {name!r} must be at least 1 (the "
                                f"posting itself), got {count!r}")
        if self.min2_source is not None:
            if self.min2_source not in self.sources:
                raise UserError(f"{where}: min2 source {self.min2_source!r} is not in the union "
                                f"{list(self.sources)}")
            if self.min2_floor is not None:
                name = self.min2_source
                if self.rules[name].beta:  # scaled scores may sit a little below 0
                    floor = self.min2_floor
                    if not (isinstance(floor, (int, float)) and math.isfinite(floor)
                            and -1.0 <= floor <= 1.0):
                        raise UserError(f"{where}: min2 floor of {name!r} must be in [-1, 1]")
                else:
                    check_threshold(name, self.min2_floor, where=where, what="min2 floor")
        return self

    def to_dict(self) -> dict:
        """JSON-ready form (the thresholds file's ``decision``)."""
        return {
            "method": self.method,
            "sources": list(self.sources),
            "rules": {name: rule.to_dict() for name, rule in self.rules.items()},
            "min2": None if self.min2_source is None
            else {"source": self.min2_source, "floor": self.min2_floor},
            "background_window": list(self.window),
            "search_rows": self.search_rows,
            "shift_background": dict(self.shift_background),
            "match_counts": dict(self.match_counts),
        }

    @classmethod
    def from_dict(cls, data, *, where: str) -> "Decision":
        """Read and check a decision written by :meth:`to_dict`."""
        if not isinstance(data, Mapping):
            raise UserError(f"{where}: 'decision' is not an object")
        rules_data = data.get("rules")
        if not isinstance(rules_data, Mapping):
            raise UserError(f"{where}: the decision has no 'rules' object")
        sources = data.get("sources")
        if not isinstance(sources, list) or not all(isinstance(name, str) for name in sources):
            raise UserError(f"{where}: the decision's 'sources' is not a list of names")
        for name in [*sources, *rules_data]:
            check_source_name(name, where=where)
        rules = {name: SourceRule.from_dict(name, rule, where=where)
                 for name, rule in rules_data.items()}
        min2 = data.get("min2")
        if min2 is not None and not (isinstance(min2, Mapping) and "source" in min2):
            raise UserError(f"{where}: 'min2' must be null or {{'source': ..., 'floor': ...}}")
        floor = None if min2 is None else min2.get("floor")
        if floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float))):
            raise UserError(f"{where}: min2 floor is not a number: {floor!r}")
        try:
            window = data.get("background_window", list(DEFAULT_WINDOW))
            window = (int(window[0]), int(window[1]))
            shift = {str(name): float(value)
                     for name, value in (data.get("shift_background") or {}).items()}
            counts = {str(name): float(value)
                      for name, value in (data.get("match_counts") or {}).items()}
            search_rows = data.get("search_rows")
            search_rows = None if search_rows is None else int(search_rows)
        except (TypeError, ValueError, IndexError, AttributeError):
            raise UserError(f"{where}: bad background_window, search_rows, shift_background or "
                            "match_counts") from None
        return cls(
            sources=tuple(sources),
            rules=rules,
            min2_source=None if min2 is None else min2["source"],
            min2_floor=None if floor is None else float(floor),
            method=data.get("method", DEFAULT_METHOD),
            window=window,
            search_rows=search_rows,
            shift_background=shift,
            match_counts=counts,
        ).checked(where=where)

    def describe(self, pool_size: int | None = None) -> str:
        """One line: the union, each member's rule (thresholds for ``pool_size``), min2."""
        thresholds = self.thresholds_for(pool_size)
        parts = [f"{name} {self.rules[name].describe(name, thresholds[name])}"
                 for name in self.sources]
        return f"union of {' + '.join(parts)}; min2 {describe_min2(self)}; method {self.method}"


def describe_min2(decision: Decision) -> str:
    """min2 for people: ``off``, ``tfidf`` or ``tfidf, floor 0.300``."""
    if not decision.min2:
        return "off"
    if decision.min2_floor is None:
        return decision.min2_source
    floor = format_threshold(decision.min2_source, decision.min2_floor)
    return f"{decision.min2_source}, floor {floor}"


# The model-free decision predict.py ships for the sources built by
# tf_shopee.neighbours.model_free.model_free_sources(titles, image_phashes) with its
# DEFAULT_SETTINGS. Chosen once by
#     python -m benchmarks.quality_real --json benchmarks/results/quality_real.json
# with search_decision (method local+size) on the "select" protocol of the real Shopee train.csv
# (GroupKFold(3) folds 1+2, 22,832 postings; benchmarks/results/quality_real_thresholds.json), NOT
# on the sets reported (fold 0 and the full set; see the README table). The search kept TF-IDF
# alone: phash and phash_text add nothing once the titles are blended over near-identical photos
# (their rules below are their best alone, used only when TF-IDF is switched off). TF-IDF matches
# when its cosine reaches 0.35 + 0.5 x the mean background of the two postings, for a pool of
# 22,832 postings, and 0.052 higher per doubling of the pool.
DEFAULT_DECISION = Decision(
    sources=("tfidf",),
    rules={
        "tfidf": SourceRule(threshold=0.35, beta=0.5, slope=0.052278),
        "phash": SourceRule(threshold=9.0),
        "phash_text": SourceRule(threshold=19.0),
    },
    min2_source="tfidf",
    min2_floor=0.1,
    method="local+size",
    window=DEFAULT_WINDOW,
    search_rows=22832,
)



# --------------------------------------------------------------------------------------------
# Applying a decision to neighbour lists


def pool_size_of(sources: Mapping[str, Neighbours], *, self_matching: bool,
                 catalog_backgrounds: Mapping[str, np.ndarray] | None) -> int:
    """Postings in the pool being matched: the rows when self-matching, else the catalogue."""
    if self_matching:
        return next(iter(sources.values())).num_queries
    if catalog_backgrounds:
        return int(next(iter(catalog_backgrounds.values())).shape[0])
    return int(max(int(neighbours.indices.max(initial=-1)) for neighbours in sources.values()) + 1)


# A decision applied to a pool more than this many times the size of its search data is
# extrapolated: the log says so (once per search size and pool size).
MAX_POOL_RATIO = 4.0
_warned_ratios: set[tuple[int, int]] = set()


def warn_pool_ratio(decision: Decision, pool_size: int) -> float | None:
    """Warn (once per search and pool size) when ``pool_size`` is more than
    :data:`MAX_POOL_RATIO` times the decision's search data; returns the ratio (None: the
    decision does not record its search size)."""
    if not decision.search_rows or not pool_size:
        return None
    ratio = pool_size / decision.search_rows
    key = (decision.search_rows, int(pool_size))
    if ratio > MAX_POOL_RATIO and key not in _warned_ratios:
        _warned_ratios.add(key)
        logger.warning(
            "the decision was searched on %d postings and is applied to a pool of %d, %.1fx its "
            "size (more than %gx): its thresholds are extrapolated; F1 may be lower than the "
            "search measured. Search the thresholds on a labelled set closer to this size if "
            "you can.", decision.search_rows, pool_size, ratio, MAX_POOL_RATIO)
    return ratio


def decision_neighbours(
    sources: Mapping[str, Neighbours],
    decision: Decision,
    *,
    self_matching: bool = True,
    catalog_backgrounds: Mapping[str, np.ndarray] | None = None,
    pool_size: int | None = None,
    max_matches: int = MAX_MATCHES,
) -> dict[str, tuple[Neighbours, float]]:
    """Each member's neighbours as its rule matches them, with its score threshold
    (``max_matches``: the cap the ``count`` method counts matches under, as the search did).

    Thresholds follow the pool size (rules with a ``slope``); scaled members are rescored
    (:func:`~tf_shopee.neighbours.scaling.local_scaling`); with the ``shift`` method similarity
    thresholds move by the change of mean background from the search data to this pool; with the
    ``count`` method, in self-matching, each similarity member's threshold is the score at which
    this pool's postings get as many matches on average as the search data's did
    (:func:`count_threshold`; against a catalogue the searched thresholds are kept).
    Blending (``rule.inb``) needs embeddings and must already have been applied by the caller
    (``tf_shopee.predict.blend_sources``).

    Args:
        sources: name → neighbours of the queries (self-matching, or against a catalogue).
        decision: what to apply; every member must be in ``sources``.
        self_matching: the neighbours are of a set against itself.
        catalog_backgrounds: query-vs-catalogue: each member's background of the *catalogue*
            rows (from the catalogue's own self-matching neighbours); the pool's background is
            the catalogue's.
        pool_size: postings in the pool (default: the rows when self-matching, the catalogue's
            size otherwise).

    Returns:
        name → (neighbours to threshold, score threshold).
    """
    missing = [name for name in decision.sources if name not in sources]
    if missing:
        raise UserError(f"the decision uses source(s) {missing} but only {list(sources)} exist")
    shifted = decision.method == "shift"
    if not self_matching and catalog_backgrounds is None and any(
        decision.rules[name].beta or (shifted and name in decision.shift_background)
        for name in decision.sources
    ):
        raise UserError("local scaling against a catalogue needs the catalogue's backgrounds")
    if pool_size is None:
        pool_size = pool_size_of(sources, self_matching=self_matching,
                                 catalog_backgrounds=catalog_backgrounds)
    warn_pool_ratio(decision, pool_size)
    thresholds = decision.thresholds_for(pool_size)
    counted = decision.method == "count" and self_matching
    prepared = {}
    for name in decision.sources:
        rule = decision.rules[name]
        neighbours = sources[name]
        threshold = score_threshold(name, thresholds[name])
        shift = shifted and name in decision.shift_background
        if rule.beta > 0 or shift:
            background = background_scores(neighbours, self_matching=self_matching,
                                           window=decision.window)
            catalog = None if catalog_backgrounds is None else catalog_backgrounds[name]
            if rule.beta > 0:
                neighbours = local_scaling(neighbours, rule.beta, background, catalog)
            if shift:
                pool = background if catalog is None else catalog
                threshold += float(np.mean(pool)) - decision.shift_background[name]
        if counted and name in decision.match_counts:
            threshold = count_threshold(neighbours, decision.match_counts[name], max_matches)
        prepared[name] = (neighbours, threshold)
    return prepared


def mean_match_count(neighbours: Neighbours, threshold: float,
                     max_matches: int = MAX_MATCHES) -> float:
    """Mean over postings of the neighbours scoring at least ``threshold`` (self-matching lists:
    the posting itself included, at most ``max_matches``). Postings with an empty list (an
    unusable photo) are not counted: they would pull the mean below one match."""
    valid = neighbours.indices >= 0
    listed = valid.any(axis=1)
    counts = np.sum((neighbours.scores >= threshold) & valid, axis=1)[listed]
    return float(np.mean(np.minimum(counts, max_matches))) if len(counts) else 0.0


def count_threshold(neighbours: Neighbours, count: float, max_matches: int = MAX_MATCHES) -> float:
    """The score threshold at which the postings of ``neighbours`` get ``count`` matches each on
    average (the ``count`` method): label-free, from this pool's scores alone. The highest such
    score among the listed ones, found by bisection over the sorted scores."""
    scores = neighbours.scores[neighbours.indices >= 0]
    if scores.size == 0:
        return math.inf
    candidates = np.unique(scores)[::-1]  # descending: counts rise along it
    low, high = 0, len(candidates) - 1
    if mean_match_count(neighbours, float(candidates[high]), max_matches) < count:
        return float(candidates[high])
    while low < high:
        middle = (low + high) // 2
        if mean_match_count(neighbours, float(candidates[middle]), max_matches) >= count:
            high = middle
        else:
            low = middle + 1
    return float(candidates[low])


def apply_decision(
    sources: Mapping[str, Neighbours],
    decision: Decision,
    *,
    self_matching: bool = True,
    catalog_backgrounds: Mapping[str, np.ndarray] | None = None,
    pool_size: int | None = None,
    max_matches: int = MAX_MATCHES,
) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]]:
    """Apply a decision: threshold each member, take their union, then min2.

    Works on neighbour lists only, so it serves self-matching (``predict.py``) and queries
    against a catalogue alike (``self_matching=False``: indices point into the catalogue, and no
    posting is put first in its own list). :func:`search_decision`'s F1 is reproduced exactly
    on its search data. ``catalog_backgrounds`` and ``pool_size``: see
    :func:`decision_neighbours`.

    Returns:
        ``(per_source, combined)``: each member's match lists alone (no min2) and the combined
        lists (with self first when self-matching).
    """
    prepared = decision_neighbours(sources, decision, self_matching=self_matching,
                                   catalog_backgrounds=catalog_backgrounds, pool_size=pool_size,
                                   max_matches=max_matches)
    per_source = {
        name: matches_from_neighbours(neighbours, threshold, max_matches=max_matches,
                                      include_self=self_matching)
        for name, (neighbours, threshold) in prepared.items()
    }
    combined = union_matches(*per_source.values(), max_matches=max_matches,
                             include_self=self_matching)
    if decision.min2:
        neighbours, _ = prepared[decision.min2_source]
        floor = decision.min2_floor
        if floor is not None and is_phash_source(decision.min2_source):
            floor = score_threshold(decision.min2_source, floor)
        # Threshold +inf selects nothing, so min2 leaves exactly (self +) the nearest candidate.
        fallback = matches_from_neighbours(neighbours, math.inf, max_matches=max_matches,
                                           include_self=self_matching, min2=True,
                                           min2_floor=floor)
        alone = 1 if self_matching else 0
        for row, matches in enumerate(combined):
            if len(matches) <= alone and len(fallback[row]) > alone:
                combined[row] = np.asarray(fallback[row], dtype=np.int32)
    return per_source, combined




# --------------------------------------------------------------------------------------------
# Thresholds files


def blending_members(decision: Decision) -> list[str]:
    """The members of ``decision`` that blend neighbours (INB), which a catalogue cannot do."""
    return [name for name in decision.sources if decision.rules[name].inb is not None]


def thresholds_payload(result: dict, *, settings: Mapping | None = None,
                       catalogue: dict | None = None) -> dict:
    """The ``thresholds.json`` content for a :func:`search_decision` result (with its
    ``transfer`` test when it has one); ``catalogue``: the search result of a decision for
    catalogue queries, when ``result``'s blends neighbours."""
    decision = result["decision"]
    blends = blending_members(Decision.from_dict(decision, where="search result"))
    uses = {USE_SELF_MATCHING: "decision",
            USE_CATALOGUE: "catalogue_decision" if catalogue else (None if blends else "decision")}
    extra = {"uses": uses}
    if result.get("transfer"):
        extra["transfer"] = result["transfer"]
    if catalogue:
        extra["catalogue_decision"] = catalogue["decision"]
        extra["catalogue_f1"] = catalogue["f1"]
        if catalogue.get("transfer"):
            extra["catalogue_transfer"] = catalogue["transfer"]
    return {
        "format": THRESHOLDS_FORMAT,
        "format_version": THRESHOLDS_FORMAT_VERSION,
        "units": "phash sources (phash, phash_text): Hamming distance in bits, a pair matches at "
                 "<= threshold; other sources: similarity, a pair matches at >= threshold (on "
                 "the locally scaled score score - beta * mean background when beta > 0)",
        "rows": result["rows"],
        "max_matches": result["max_matches"],
        "decision": decision,
        "f1": result["f1"],
        "thresholds": {name: decision["rules"][name]["threshold"]
                       for name in decision["sources"]},
        "best_single": result["best_single"],
        "candidates": result["candidates"],
        "sources": result["sources"],
        "settings": dict(settings or {}),
        **extra,
    }


def write_thresholds(path: str | Path, result: dict, *, settings: Mapping | None = None,
                     catalogue: dict | None = None) -> dict:
    """Write ``thresholds.json`` atomically (see :func:`thresholds_payload`); return its content."""
    payload = thresholds_payload(result, settings=settings, catalogue=catalogue)
    write_json_atomic(path, payload)
    return payload


def _read_thresholds_file(path: Path) -> dict:
    """The JSON object of a tf_shopee thresholds file (UserError for anything else)."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"thresholds file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"thresholds file {path} is not readable JSON: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != THRESHOLDS_FORMAT:
        raise UserError(
            f"{path} is not a tf_shopee thresholds file (no format {THRESHOLDS_FORMAT!r})"
        )
    return payload


def best_plain_thresholds(path: str | Path) -> dict[str, float]:
    """Each source's best plain threshold (alone: no blending, no min2, no scaling) in the sweep
    a search recorded in ``thresholds.json`` (format 2), in the source's units."""
    path = Path(path)
    best = {}
    for name, entry in _read_thresholds_file(path).get("sources", {}).items():
        sweep = entry.get("sweep") if isinstance(entry, Mapping) else None
        if not sweep or not sweep.get("f1"):
            raise UserError(f"{path}: source {name!r} has no threshold sweep (a thresholds file "
                            "written by --search-thresholds has one)")
        grid, f1 = sweep["grid"], sweep["f1"]
        best[name] = float(grid[max(range(len(f1)), key=f1.__getitem__)])
    return best


def load_thresholds(path: str | Path, *, use: str = USE_SELF_MATCHING) -> Decision:
    """Read the decision of a ``thresholds.json`` written by :func:`write_thresholds` for a
    ``use`` (:data:`USES`): for catalogue queries, the file's ``catalogue_decision`` when its
    main decision blends neighbours.

    Files of format version 1 (per-source thresholds with phash as similarities, a source
    switched off at 2.0) are converted.

    Raises:
        UserError: when the file is missing, not JSON, not a tf_shopee thresholds file, or names
            an unknown source or holds a bad value (NaN, out of range, ...).
    """
    path = Path(path)
    payload = _read_thresholds_file(path)
    version = payload.get("format_version")
    where = f"thresholds file {path}"
    if version == 1:
        return _decision_from_version_1(payload, where=where)
    if version != THRESHOLDS_FORMAT_VERSION:
        raise UserError(f"{path} has thresholds format version {version!r}; this version reads "
                        f"1 and {THRESHOLDS_FORMAT_VERSION}")
    if use == USE_CATALOGUE and payload.get("catalogue_decision") is not None:
        return Decision.from_dict(payload["catalogue_decision"], where=f"{where} (catalogue)")
    return Decision.from_dict(payload.get("decision"), where=where)


def read_transfer_tests(path: str | Path) -> dict[str, dict]:
    """The transfer tests a thresholds file records: use → the test (empty for files written
    before the test, or by a search without one)."""
    payload = _read_thresholds_file(Path(path))
    tests = {}
    if isinstance(payload.get("transfer"), Mapping):
        tests[USE_SELF_MATCHING] = payload["transfer"]
    if isinstance(payload.get("catalogue_transfer"), Mapping):
        tests[USE_CATALOGUE] = payload["catalogue_transfer"]
    return tests


def _decision_from_version_1(payload: dict, *, where: str) -> Decision:
    """A version-1 file: thresholds by name (phash as ``1 - bits/64``, 2.0 = off), combination."""
    thresholds = payload.get("thresholds")
    if not isinstance(thresholds, dict):
        raise UserError(f"{where} has no 'thresholds' object")
    rules = {}
    for name, value in thresholds.items():
        check_source_name(name, where=where)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value):
            raise UserError(f"{where}: threshold of {name!r} is not a finite number: {value!r}")
        if value > 1.0:  # version 1 switched a source off with an unreachable threshold
            continue
        rules[name] = SourceRule(check_threshold(name, user_threshold(name, value), where=where))
    combined = payload.get("combined") or {}
    members = [name for name in combined.get("sources", list(thresholds)) if name in rules]
    min2_source = combined.get("min2_source") if combined.get("min2", False) else None
    floor = combined.get("min2_floor") if min2_source else None
    if min2_source not in members:
        min2_source = floor = None
    if floor is not None and is_phash_source(min2_source):
        floor = user_threshold(min2_source, floor)
    return Decision(sources=tuple(members), rules=rules, min2_source=min2_source,
                    min2_floor=floor, method="fixed").checked(where=where)



def with_threshold(decision: Decision, name: str, value: float) -> Decision:
    """The decision with ``name`` matched at a plain threshold ``value`` (no scaling; blending
    kept): what ``predict.py --threshold NAME=VALUE`` means. A source not in the union joins it.

    ``value`` is in the source's units and already checked (:class:`MatchOptions
    <tf_shopee.matching.options.MatchOptions>` checks ``--threshold`` where it enters)."""
    rule = decision.rules.get(name, SourceRule(value))
    rules = {**decision.rules, name: replace(rule, threshold=value, beta=0.0, slope=0.0)}
    min2_floor = decision.min2_floor
    if decision.min2_source == name and rule.beta:
        min2_floor = None  # the floor was in scaled units
    sources = decision.sources if name in decision.sources else (*decision.sources, name)
    return replace(decision, sources=tuple(sources), rules=rules, min2_floor=min2_floor)
