"""Threshold search: pick each source's similarity threshold, and the combination's, by mean F1.

On a labelled set every neighbour source (embeddings, TF-IDF, phash, ...) is swept over a grid of
thresholds; a posting's matches at threshold ``t`` are its neighbours scoring ``>= t`` (self
always included, at most 50), made by :func:`tf_shopee.matching.matches_from_neighbours`. The best
threshold of each source alone is reported, then the *combination* is tuned: the union
(:func:`tf_shopee.matching.union_matches`) of every source's thresholded matches, optionally with
"at least one neighbour" (min2: a posting left with no match but itself gets its nearest
candidate of one chosen source, unless that scores below a floor).

The combined thresholds are found by coordinate ascent: start from each source's own best, then
sweep one source's threshold at a time with the others held, keep the best, and repeat until a
round changes nothing. Thresholds that are best alone are usually too loose in a union (each
source then adds its false positives), which is why the combination is tuned separately.

:func:`write_thresholds` saves the result as ``thresholds.json`` (the file ``predict.py
--thresholds`` reads back with :func:`load_thresholds`) and :func:`plot_thresholds` draws F1
against the threshold per source.

:data:`DEFAULT_THRESHOLDS` are the thresholds ``predict.py`` uses for the model-free sources when
nothing else is given; they were chosen once, on real Shopee data, by
``benchmarks/quality_real.py`` (see the comment on them), never per run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tf_shopee.errors import UserError
from tf_shopee.io_utils import atomic_path, write_json_atomic
from tf_shopee.metrics import mean_f1_from_matches
from tf_shopee.neighbours import Neighbours

THRESHOLDS_FORMAT = "tf_shopee.thresholds"
THRESHOLDS_FORMAT_VERSION = 1
COMBINED = "combined"
MAX_MATCHES = 50

# A threshold no score reaches (cosines and phash scores are at most 1): the source adds nothing.
SOURCE_OFF = 2.0
# Cosine-like scores (embeddings, TF-IDF): 0.30, 0.325, ..., 0.975.
DEFAULT_GRID = tuple(round(0.3 + 0.025 * step, 3) for step in range(28))


def default_grid(name: str) -> tuple[float, ...]:
    """The grid a source is swept over when none is given: every phash distance up to 20 for
    sources named ``phash...``, :data:`DEFAULT_GRID` for the rest."""
    return phash_grid() if name.startswith("phash") else DEFAULT_GRID


def phash_grid(max_distance: int = 20) -> tuple[float, ...]:
    """phash thresholds ``1 - d / 64`` for Hamming distances ``d = 0 .. max_distance``.

    phash scores only take the values ``1 - d / 64``, so this grid visits every distinct one.
    """
    return tuple(1.0 - distance / 64 for distance in range(max_distance + 1))


def search_thresholds(
    sources: Mapping[str, Neighbours],
    labels: np.ndarray,
    *,
    grid: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    min2: bool = True,
    min2_source: str | None = None,
    min2_floors: Sequence[float] | None = None,
    combine: bool | Sequence[str] = True,
    allow_off: bool = True,
    max_matches: int = MAX_MATCHES,
    max_rounds: int = 4,
) -> dict:
    """Sweep each source's threshold and the combined ones; pick the best by mean F1.

    Args:
        sources: name → self-matching :class:`Neighbours` of the same labelled postings.
        labels: label (e.g. ``label_group``) of each posting.
        grid: thresholds to try, one sequence for every source or name → sequence (names
            missing from the mapping, or every name when ``None``, get :func:`default_grid`).
        min2: apply "at least one neighbour" to the combination.
        min2_source: the source whose nearest candidate min2 adds (default: the first source).
        min2_floors: floors to try for min2 (the nearest candidate must score at least this);
            default ``[None]``, i.e. no floor.
        combine: ``True`` to tune the union of all sources, ``False`` to skip it, or the names of
            the sources to combine.
        allow_off: let the combination switch a source off (threshold :data:`SOURCE_OFF`) when
            the union is better without it.
        max_matches: cap on each posting's matches, self included.
        max_rounds: coordinate-ascent rounds at most.

    Returns:
        A JSON-ready dict: ``{"rows", "max_matches", "sources": {name: {"grid", "f1",
        "best_threshold", "best_f1"}}, "combined": {"sources", "thresholds", "f1", "min2",
        "min2_source", "min2_floor", "rounds", "history"} or None}``.

    Raises:
        UserError: on empty sources, mismatched row counts or unknown names.
    """
    if not sources:
        raise UserError("search_thresholds needs at least one source")
    labels = np.asarray(labels)
    num_rows = labels.shape[0]
    for name, neighbours in sources.items():
        if neighbours.num_queries != num_rows:
            raise UserError(
                f"source {name!r} has {neighbours.num_queries} rows but there are {num_rows} labels"
            )
    grids = _grids(sources, grid)
    cache = _MatchCache(sources, max_matches=max_matches)

    result: dict = {"rows": int(num_rows), "max_matches": int(max_matches), "sources": {}}
    for name in sources:
        scores = [mean_f1_from_matches(cache.get(name, value), labels) for value in grids[name]]
        best = int(np.argmax(scores))
        result["sources"][name] = {
            "grid": [float(value) for value in grids[name]],
            "f1": [float(score) for score in scores],
            "best_threshold": float(grids[name][best]),
            "best_f1": float(scores[best]),
        }

    if combine is False:
        result["combined"] = None
        return result
    names = list(sources) if combine is True else list(combine)
    min2_source = _check_combination(sources, names, min2=min2, min2_source=min2_source)
    floors = [None] if min2_floors is None else list(min2_floors)
    if not min2:
        floors = [None]
    fallbacks = (
        {
            floor: _min2_fallback(sources[min2_source], floor, max_matches=max_matches)
            for floor in floors
        }
        if min2
        else {}
    )

    def evaluate(thresholds: dict[str, float], floor) -> float:
        match_lists = [cache.get(name, thresholds[name]) for name in names]
        combined = combine_matches(
            match_lists, fallback=fallbacks.get(floor), max_matches=max_matches
        )
        return mean_f1_from_matches(combined, labels)

    thresholds = {name: result["sources"][name]["best_threshold"] for name in names}
    floor = floors[0]
    best_f1 = evaluate(thresholds, floor)
    history = [{"thresholds": dict(thresholds), "min2_floor": floor, "f1": best_f1}]
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        changed = False
        for name in names:
            for value in grids[name] + ([SOURCE_OFF] if allow_off else []):
                trial = {**thresholds, name: float(value)}
                score = evaluate(trial, floor)
                if score > best_f1 + 1e-12:
                    best_f1, thresholds, changed = score, trial, True
            history.append({"thresholds": dict(thresholds), "min2_floor": floor, "f1": best_f1})
        for value in floors:
            score = evaluate(thresholds, value)
            if score > best_f1 + 1e-12:
                best_f1, floor, changed = score, value, True
        if not changed:
            break
    result["combined"] = {
        "sources": names,
        "thresholds": thresholds,
        "f1": float(best_f1),
        "min2": bool(min2),
        "min2_source": min2_source if min2 else None,
        "min2_floor": floor,
        "rounds": rounds,
        "history": history,
    }
    return result


def combine_matches(
    match_lists: Sequence[Sequence[np.ndarray]],
    *,
    fallback: Sequence[np.ndarray] | None = None,
    max_matches: int = MAX_MATCHES,
) -> list[np.ndarray]:
    """Union of several sources' self-matching match lists, then min2 from ``fallback``.

    Args:
        match_lists: per source, one index array per posting (self first), e.g. from
            :func:`tf_shopee.matching.matches_from_neighbours`.
        fallback: per posting, self plus its nearest candidate (``matches_from_neighbours`` with
            ``min2=True`` and an unreachable threshold); used for postings whose union holds
            nothing but themselves. ``None`` disables min2.
        max_matches: cap on each list, self included.
    """
    from tf_shopee.matching import union_matches

    combined = union_matches(*match_lists, max_matches=max_matches)
    if fallback is not None:
        for row, matches in enumerate(combined):
            if len(matches) <= 1 and len(fallback[row]) > 1:
                combined[row] = np.asarray(fallback[row], dtype=np.int32)
    return combined


def match_sources(
    sources: Mapping[str, Neighbours],
    thresholds: Mapping[str, float],
    *,
    combine: Sequence[str] | None = None,
    min2: bool = True,
    min2_source: str | None = None,
    min2_floor: float | None = None,
    max_matches: int = MAX_MATCHES,
) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]]:
    """Threshold every source and combine them the way :func:`search_thresholds` scored it.

    Args:
        sources: name → self-matching :class:`Neighbours` of the same postings.
        thresholds: name → threshold; every source needs one.
        combine: the sources whose union is the combined result (default: all).
        min2: postings whose union holds only themselves get their nearest ``min2_source``
            candidate (scoring at least ``min2_floor``).
        min2_source: default: the first combined source.
        min2_floor: see above; ``None`` accepts any score.
        max_matches: cap on each posting's matches, self included.

    Returns:
        ``(per_source, combined)``: each source's match lists (without min2) and the combined
        lists; every list has the posting itself first.

    Raises:
        UserError: for a source without a threshold or an unknown name.
    """
    from tf_shopee.matching import matches_from_neighbours

    missing = [name for name in sources if name not in thresholds]
    if missing:
        raise UserError(f"no threshold for source(s) {missing}; thresholds: {dict(thresholds)}")
    names = list(sources) if combine is None else list(combine)
    min2_source = _check_combination(sources, names, min2=min2, min2_source=min2_source)
    per_source = {
        name: matches_from_neighbours(
            neighbours, float(thresholds[name]), max_matches=max_matches
        )
        for name, neighbours in sources.items()
    }
    fallback = None
    if min2:
        fallback = _min2_fallback(sources[min2_source], min2_floor, max_matches=max_matches)
    combined = combine_matches(
        [per_source[name] for name in names], fallback=fallback, max_matches=max_matches
    )
    return per_source, combined


def _check_combination(
    sources: Mapping[str, Neighbours], names: list[str], *, min2: bool, min2_source: str | None
) -> str:
    """Validate the combined source names; return the min2 source (default: the first name)."""
    unknown = [name for name in names if name not in sources]
    if unknown or not names:
        raise UserError(f"combine names unknown source(s) {unknown}; sources are {list(sources)}")
    min2_source = names[0] if min2_source is None else min2_source
    if min2 and min2_source not in sources:
        raise UserError(f"min2_source {min2_source!r} is not a source ({list(sources)})")
    return min2_source


def _min2_fallback(
    neighbours: Neighbours, floor: float | None, *, max_matches: int
) -> list[np.ndarray]:
    """Per posting, itself plus its nearest candidate scoring at least ``floor`` (min2)."""
    from tf_shopee.matching import matches_from_neighbours

    # Threshold +inf selects nothing, so min2 leaves exactly self + the nearest candidate.
    return matches_from_neighbours(
        neighbours, math.inf, max_matches=max_matches, min2=True, min2_floor=floor
    )


class _MatchCache:
    """Match lists per (source, threshold), computed once: the sweeps revisit them often."""

    def __init__(self, sources: Mapping[str, Neighbours], *, max_matches: int):
        self.sources = sources
        self.max_matches = max_matches
        self.lists: dict[tuple[str, float], list[np.ndarray]] = {}

    def get(self, name: str, threshold: float) -> list[np.ndarray]:
        from tf_shopee.matching import matches_from_neighbours

        key = (name, float(threshold))
        if key not in self.lists:
            self.lists[key] = matches_from_neighbours(
                self.sources[name], float(threshold), max_matches=self.max_matches
            )
        return self.lists[key]


def _grids(sources: Mapping[str, Neighbours], grid) -> dict[str, list[float]]:
    if grid is None:
        grids = {name: list(default_grid(name)) for name in sources}
    elif isinstance(grid, Mapping):
        unknown = sorted(set(grid) - set(sources))
        if unknown:
            raise UserError(f"grid names unknown source(s) {unknown}; sources are {list(sources)}")
        grids = {name: list(grid.get(name, default_grid(name))) for name in sources}
    else:
        grids = {name: list(grid) for name in sources}
    for name, values in grids.items():
        if not values:
            raise UserError(f"the threshold grid of source {name!r} is empty")
        if not all(math.isfinite(float(value)) for value in values):
            raise UserError(f"the threshold grid of source {name!r} has a non-finite value")
        grids[name] = sorted(float(value) for value in values)
    return grids


def thresholds_payload(result: dict, *, settings: Mapping | None = None) -> dict:
    """The ``thresholds.json`` content for a :func:`search_thresholds` result.

    ``thresholds`` holds the thresholds to use: the combined ones for the combined sources and
    each other source's own best; ``best_alone`` keeps every source's own best as well.
    """
    alone = {name: sweep["best_threshold"] for name, sweep in result["sources"].items()}
    f1 = {name: sweep["best_f1"] for name, sweep in result["sources"].items()}
    combined = result.get("combined")
    thresholds = dict(alone)
    payload = {
        "format": THRESHOLDS_FORMAT,
        "format_version": THRESHOLDS_FORMAT_VERSION,
        "rows": result["rows"],
        "max_matches": result["max_matches"],
        "thresholds": thresholds,
        "best_alone": alone,
        "f1": f1,
        "combined": None,
        "sweeps": {
            name: {"grid": sweep["grid"], "f1": sweep["f1"]}
            for name, sweep in result["sources"].items()
        },
        "settings": dict(settings or {}),
    }
    if combined is not None:
        thresholds.update(combined["thresholds"])
        f1[COMBINED] = combined["f1"]
        payload["combined"] = {
            key: combined[key]
            for key in ("sources", "thresholds", "f1", "min2", "min2_source", "min2_floor")
        }
    return payload


def write_thresholds(path: str | Path, result: dict, *, settings: Mapping | None = None) -> dict:
    """Write ``thresholds.json`` atomically (see :func:`thresholds_payload`); return its content."""
    payload = thresholds_payload(result, settings=settings)
    write_json_atomic(path, payload)
    return payload


def load_thresholds(path: str | Path) -> dict:
    """Read a ``thresholds.json`` written by :func:`write_thresholds`.

    Returns:
        The payload; ``payload["thresholds"]`` maps source name → threshold.

    Raises:
        UserError: when the file is missing, not JSON, not a tf_shopee thresholds file, or holds
            a non-numeric threshold.
    """
    import json

    path = Path(path)
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
    if payload.get("format_version") != THRESHOLDS_FORMAT_VERSION:
        raise UserError(
            f"{path} has thresholds format version {payload.get('format_version')!r}; "
            f"this version reads {THRESHOLDS_FORMAT_VERSION}"
        )
    thresholds = payload.get("thresholds")
    if not isinstance(thresholds, dict):
        raise UserError(f"{path} has no 'thresholds' object")
    for name, value in thresholds.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{path}: threshold of source {name!r} is not a number: {value!r}")
    return payload


def plot_thresholds(path_png: str | Path, result: dict, *, title: str | None = None) -> None:
    """Plot mean F1 against the threshold for each source (best points marked) to a PNG.

    The combined F1, when present, is drawn as a horizontal line. Written atomically with the
    non-interactive Agg backend, so it works on machines without a display.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=100)
    axes = figure.add_subplot()
    for name, sweep in result["sources"].items():
        (line,) = axes.plot(sweep["grid"], sweep["f1"], marker=".", label=name)
        axes.plot(
            [sweep["best_threshold"]], [sweep["best_f1"]], marker="o", markersize=9,
            color=line.get_color(), fillstyle="none",
        )
    combined = result.get("combined")
    if combined is not None:
        axes.axhline(
            combined["f1"], color="black", linestyle="--",
            label=f"combined {combined['f1']:.4f}",
        )
    axes.set_xlabel("threshold (score >= threshold matches)")
    axes.set_ylabel("mean F1")
    axes.set_title(title or f"F1 vs threshold ({result['rows']} postings)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    path_png = Path(path_png)
    with atomic_path(path_png) as temporary:
        figure.savefig(temporary, format="png")

# The model-free defaults predict.py ships: thresholds of the sources built by
# tf_shopee.neighbours.model_free.model_free_sources(titles, image_phashes) with its
# DEFAULT_SETTINGS, their union, and min2 on "tfidf" with a floor. Chosen once by
#     python benchmarks/quality_real.py --json benchmarks/results/quality_real.json
# with search_thresholds on the "select" protocol of the real Shopee train.csv (GroupKFold(3) folds
# 1+2, 22,832 postings; benchmarks/results/quality_real_thresholds.json), NOT on the sets reported:
# there they give mean F1 0.809 on the held-out fold 0 and 0.740 on the full 34,250 postings.
# phash thresholds are 1 - hamming / 64: "phash" is hamming <= 1, "phash_text" hamming <= 9 with
# titles agreeing (TF-IDF cosine >= 0.25).
DEFAULT_THRESHOLDS = {"tfidf": 0.8, "phash": 1 - 1 / 64, "phash_text": 1 - 9 / 64}
DEFAULT_COMBINATION = {
    "sources": ("tfidf", "phash", "phash_text"),
    "min2": True,
    "min2_source": "tfidf",
    "min2_floor": 0.3,
}
