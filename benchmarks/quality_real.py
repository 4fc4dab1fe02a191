#!/usr/bin/env python3
"""Matching quality without any image model, on the real Shopee train.csv (titles + image_phash).

Data: ``../shared/data/shopee/train.csv.zip`` (34,250 postings, 11,014 label groups). When it is
absent the script says so and exits 0: a fresh clone has no ../shared.

Protocols (mean per-posting F1, self always in both sets, at most 50 matches):

* ``full``: every posting matched against all 34,250;
* ``fold0``: sklearn ``GroupKFold(n_splits=3)`` over label_group (no shuffling), fold 0 = the first
  split's test rows (11,418 postings), matching only inside the fold (TF-IDF fitted on it too);
* ``select``: folds 1 and 2 together (22,832 postings), matching only inside them. **Every
  threshold and setting reported as "chosen on select" was picked here** and then applied
  unchanged to ``fold0`` (disjoint label groups: an honest held-out figure) and ``full`` (which
  contains the select rows, plus fold 0 as distractors).

Sections of the report:

1. ``reference``: the numbers of ../shared/data/shopee/README.md, reproduced on full and fold0
   (each posting alone, identical phash, phash <= 8, ``TfidfVectorizer()`` cosine >= 0.55, and the
   README's union: TF-IDF >= 0.55 / 0.65 / 0.7 with min2, union phash <= 8).
2. ``variants``: model-free recipes (:func:`tf_shopee.neighbours.model_free.model_free_sources`
   with different :class:`~tf_shopee.neighbours.model_free.ModelFreeSettings`, and a char n-gram
   TF-IDF source). For each, :func:`tf_shopee.thresholds.search_decision` (the shipped method,
   :data:`tf_shopee.thresholds.DEFAULT_METHOD`) on select chooses the decision: which sources
   enter the union, each one's threshold and local scaling, min2 and its floor, and how the
   thresholds follow the pool size; the result on fold0 and full follows (thresholds moved for
   each pool's size). ``oracle`` rows re-run the search on the reported set itself (marked as
   such: a ceiling, not a result).
3. ``shipped``: :data:`tf_shopee.thresholds.DEFAULT_DECISION` with the default settings, i.e.
   what ``predict.py`` does without a model, on fold0 and full.
4. ``speed``: seconds for the sources on the full set, and TF-IDF neighbours against a plain
   scikit-learn chunk loop (dense chunk + argpartition).

    python -m benchmarks.quality_real --json benchmarks/results/quality_real.json

Runs in about 20 minutes on 2 shared CPU cores (``--quick`` skips the slower variants and the
oracle searches).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import tf_shopee  # noqa: F401  (sets TensorFlow's environment defaults before TF loads)
from benchmarks.common import REPOSITORY, RESULTS, SHOPEE_TRAIN_CSV, command_line

DEFAULT_DATA = SHOPEE_TRAIN_CSV
DEFAULT_JSON = RESULTS / "quality_real.json"
SELECTION_JSON = RESULTS / "quality_real_thresholds.json"
SELECTION_PNG = RESULTS / "quality_real_thresholds.png"
K = 51


def load_train(path: Path):
    """The train CSV (plain or zipped) as a DataFrame with string phashes and titles."""
    import pandas as pd

    return pd.read_csv(path, dtype={"posting_id": str, "image_phash": str, "title": str})


def protocol_rows(frame) -> dict[str, np.ndarray]:
    """Row indices of each protocol (see the module docstring)."""
    from sklearn.model_selection import GroupKFold

    splits = [test for _, test in GroupKFold(n_splits=3).split(frame, groups=frame["label_group"])]
    return {
        "select": np.sort(np.concatenate([splits[1], splits[2]])),
        "fold0": splits[0],
        "full": np.arange(len(frame)),
    }


def f1_of(matches, labels) -> float:
    from tf_shopee.metrics import mean_f1_from_matches

    return round(mean_f1_from_matches(matches, labels), 4)


def reference_numbers(frame, rows: np.ndarray) -> dict:
    """The README's reference methods on one protocol."""
    from tf_shopee.matching.topk import matches_from_neighbours, union_matches
    from tf_shopee.neighbours.phash import phash_neighbours
    from tf_shopee.neighbours.tfidf import tfidf_neighbours

    subset = frame.iloc[rows]
    labels = subset["label_group"].to_numpy()
    titles = subset["title"].tolist()
    phash = phash_neighbours(subset["image_phash"].tolist(), k=K)
    tfidf = tfidf_neighbours(titles, k=K)  # TfidfVectorizer() defaults (float32)
    alone = [np.array([row]) for row in range(len(rows))]
    result = {
        "rows": len(rows),
        "self_only": f1_of(alone, labels),
        "phash_identical": f1_of(matches_from_neighbours(phash, 1.0), labels),
        "phash_le_8": f1_of(matches_from_neighbours(phash, 1 - 8 / 64), labels),
        "tfidf_defaults_ge_0.55": f1_of(matches_from_neighbours(tfidf, 0.55), labels),
    }
    phash_8 = matches_from_neighbours(phash, 1 - 8 / 64)
    for threshold in (0.55, 0.65, 0.7):
        text = matches_from_neighbours(tfidf, threshold, min2=True)
        result[f"union_tfidf_{threshold}_min2_phash_le_8"] = f1_of(
            union_matches(text, phash_8), labels
        )
    return result


def variant_settings() -> dict[str, dict]:
    """The recipes compared: name → model_free settings (+ which sources the union uses)."""
    from tf_shopee.matching.model_free import ModelFreeSettings

    plain = ModelFreeSettings(clean_titles=False, blend_threshold=None)
    return {
        "plain: TF-IDF + phash": {"settings": plain, "combine": ["tfidf", "phash"]},
        "clean titles, + phash_text": {
            "settings": ModelFreeSettings(blend_threshold=None),
            "combine": ["tfidf", "phash", "phash_text"],
        },
        "+ char_wb 3-5 TF-IDF source": {
            "settings": ModelFreeSettings(blend_threshold=None),
            "combine": ["tfidf", "tfidf_char", "phash", "phash_text"],
            "char": True,
            "slow": True,
        },
        "blend TF-IDF >= 0.65": {
            "settings": ModelFreeSettings(blend_phash_distance=None, blend_agreement_distance=None),
            "combine": ["tfidf", "phash", "phash_text"],
            "slow": True,
        },
        "blend TF-IDF >= 0.65 + phash <= 4": {
            "settings": ModelFreeSettings(blend_agreement_distance=None),
            "combine": ["tfidf", "phash", "phash_text"],
            "slow": True,
        },
        "default: blend TF-IDF >= 0.65 + phash <= 4 + phash_text <= 14": {
            "settings": ModelFreeSettings(),
            "combine": ["tfidf", "phash", "phash_text"],
            "default": True,
        },
    }


def build_sources(frame, rows: np.ndarray, recipe: dict) -> tuple[dict, float]:
    """The recipe's sources on one protocol, and the seconds they took."""
    from tf_shopee.matching.model_free import model_free_sources
    from tf_shopee.neighbours.tfidf import tfidf_neighbours

    subset = frame.iloc[rows]
    started = time.perf_counter()
    sources = model_free_sources(
        subset["title"].tolist(), subset["image_phash"].tolist(), settings=recipe["settings"]
    )
    if recipe.get("char"):
        sources["tfidf_char"] = tfidf_neighbours(
            subset["title"].tolist(), k=K, analyzer="char_wb", ngram_range=(3, 5),
            clean_titles=True,
        )
    sources = {name: sources[name] for name in recipe["combine"]}
    return sources, round(time.perf_counter() - started, 1)


def search(sources: dict, labels: np.ndarray) -> dict:
    """tf_shopee.thresholds.search_decision with the shipped method (a char TF-IDF source is a
    similarity like "tfidf" and is searched as one)."""
    from tf_shopee.matching.decision import DEFAULT_METHOD
    from tf_shopee.matching.search import search_decision

    renamed = {_as_source(name): neighbours for name, neighbours in sources.items()}
    return search_decision(renamed, labels, method=DEFAULT_METHOD)


def _as_source(name: str) -> str:
    # search_decision knows predict.py's source names; the char TF-IDF variant is one more
    # similarity source, given a name of the same kind.
    return "tfidf:char" if name == "tfidf_char" else name


def evaluate(sources: dict, labels: np.ndarray, decision) -> dict:
    """F1 of each source in the union alone and of the combination, under ``decision``."""
    from tf_shopee.matching.decision import apply_decision

    renamed = {_as_source(name): neighbours for name, neighbours in sources.items()}
    per_source, union = apply_decision(renamed, decision)
    result = {name: f1_of(matches, labels) for name, matches in per_source.items()}
    result["combined"] = f1_of(union, labels)
    return result


def describe(decision, rows: int | None = None) -> str:
    """The decision for people (thresholds for a pool of ``rows`` postings)."""
    return decision.describe(rows)


def run_variants(frame, protocols: dict, *, quick: bool, oracle: bool) -> dict:
    results = {}
    for name, recipe in variant_settings().items():
        if quick and recipe.get("slow"):
            continue
        print(f"\n== {name}", flush=True)
        sources = {}
        seconds = {}
        for protocol, rows in protocols.items():
            sources[protocol], seconds[protocol] = build_sources(frame, rows, recipe)
        labels = {protocol: frame["label_group"].to_numpy()[rows] for protocol, rows in
                  protocols.items()}
        from tf_shopee.matching.decision import Decision

        chosen = search(sources["select"], labels["select"])
        decision = Decision.from_dict(chosen["decision"], where=name)
        entry = {
            "settings": dataclasses.asdict(recipe["settings"]),
            "sources": recipe["combine"],
            "seconds_to_build_sources": seconds,
            "chosen_on_select": {
                "decision": chosen["decision"],
                "description": describe(decision),
                "select_f1": round(chosen["f1"], 4),
                "best_single": chosen["best_single"],
            },
            "f1": {},
        }
        for protocol in ("fold0", "full"):
            entry["f1"][protocol] = evaluate(sources[protocol], labels[protocol], decision)
            entry.setdefault("applied_as", {})[protocol] = describe(
                decision, len(labels[protocol]))
            print(f"   {protocol}: {entry['f1'][protocol]}", flush=True)
        print(f"   chosen on select: {entry['chosen_on_select']['description']}", flush=True)
        if oracle and recipe.get("default"):
            entry["oracle"] = {}
            for protocol in ("fold0", "full"):
                own = search(sources[protocol], labels[protocol])
                entry["oracle"][protocol] = {
                    "f1": round(own["f1"], 4),
                    "decision": describe(Decision.from_dict(own["decision"], where="oracle")),
                    "note": f"thresholds chosen on {protocol} itself (a ceiling, not a result)",
                }
                print(f"   oracle {protocol}: {entry['oracle'][protocol]}", flush=True)
        if recipe.get("default"):
            from tf_shopee.matching.decision import write_thresholds
            from tf_shopee.matching.search import plot_thresholds

            # The selection behind DEFAULT_DECISION, in the format predict.py --thresholds reads.
            write_thresholds(SELECTION_JSON, chosen, settings={
                "chosen_on": "select (GroupKFold(3) folds 1+2 of the real train.csv)",
                "model_free_settings": dataclasses.asdict(recipe["settings"]),
            })
            plot_thresholds(SELECTION_PNG, chosen, title="model-free sources, select protocol")
            entry["shipped_decision_matches_selection"] = shipped_matches(decision)
        results[name] = entry
    return results


def shipped_matches(decision) -> bool:
    """Whether DEFAULT_DECISION's members, rules and min2 equal this selection (warn when not)."""
    from tf_shopee.matching.decision import DEFAULT_DECISION

    same = (
        set(DEFAULT_DECISION.sources) == set(decision.sources)
        and all(DEFAULT_DECISION.rules.get(name) == decision.rules[name]
                for name in decision.sources)
        and (DEFAULT_DECISION.min2_source, DEFAULT_DECISION.min2_floor)
        == (decision.min2_source, decision.min2_floor)
        and DEFAULT_DECISION.search_rows == decision.search_rows
        and DEFAULT_DECISION.method == decision.method
    )
    if not same:
        print("   WARNING: tf_shopee.thresholds.DEFAULT_DECISION differs from this selection: "
              f"{decision.to_dict()}")
    return bool(same)


def shipped_defaults(frame, protocols: dict) -> dict:
    """What predict.py does with no model: default settings and DEFAULT_DECISION."""
    from tf_shopee.matching.decision import DEFAULT_DECISION
    from tf_shopee.matching.model_free import DEFAULT_SETTINGS

    recipe = {"settings": DEFAULT_SETTINGS, "combine": list(DEFAULT_DECISION.sources)}
    result = {"decision": DEFAULT_DECISION.to_dict()}
    for protocol in ("fold0", "full"):
        rows = protocols[protocol]
        sources, _ = build_sources(frame, rows, recipe)
        labels = frame["label_group"].to_numpy()[rows]
        result[protocol] = evaluate(sources, labels, DEFAULT_DECISION)
        result.setdefault("applied_as", {})[protocol] = describe(DEFAULT_DECISION, len(rows))
        print(f"   shipped defaults on {protocol}: {result[protocol]}", flush=True)
    return result


def speed(frame) -> dict:
    """Seconds (wall and process CPU) of each source on the full set, and a plain sklearn loop."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from tf_shopee.matching.model_free import model_free_sources
    from tf_shopee.neighbours.phash import phash_neighbours
    from tf_shopee.neighbours.tfidf import tfidf_neighbours

    titles = frame["title"].tolist()
    hashes = frame["image_phash"].tolist()

    def timed(function):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        return {"wall_s": round(time.perf_counter() - wall, 2),
                "cpu_s": round(time.process_time() - cpu, 2)}

    def sklearn_loop():
        # The usual notebook pattern: dense similarity chunk, argpartition, sort the top k.
        vectors = TfidfVectorizer(dtype=np.float32).fit_transform(titles)
        transposed = vectors.T.tocsr()
        for start in range(0, vectors.shape[0], 2048):
            chunk = (vectors[start:start + 2048] @ transposed).toarray()
            top = np.argpartition(-chunk, K, axis=1)[:, :K]
            order = np.argsort(-np.take_along_axis(chunk, top, axis=1), axis=1)
            np.take_along_axis(top, order, axis=1)

    phash_neighbours(hashes[:64], k=K)  # trace the TF function outside the timing
    result = {
        "rows": len(titles),
        "tfidf_neighbours_word": timed(lambda: tfidf_neighbours(titles, k=K)),
        "sklearn_chunk_loop_word": timed(sklearn_loop),
        "phash_neighbours": timed(lambda: phash_neighbours(hashes, k=K)),
        "model_free_sources_default": timed(lambda: model_free_sources(titles, hashes)),
    }
    result["load_average"] = list(os.getloadavg())
    print(f"   speed: {result}", flush=True)
    return result


def markdown_table(report: dict) -> str:
    lines = ["| recipe (thresholds chosen on select = folds 1+2) | fold0 | full |", "|---|---|---|"]
    reference = report["reference"]
    for key in ("self_only", "phash_identical", "phash_le_8", "tfidf_defaults_ge_0.55",
                "union_tfidf_0.55_min2_phash_le_8", "union_tfidf_0.65_min2_phash_le_8",
                "union_tfidf_0.7_min2_phash_le_8"):
        lines.append(f"| reference: {key} | {reference['fold0'][key]} | {reference['full'][key]} |")
    for name, entry in report.get("variants", {}).items():
        lines.append(f"| {name} | {entry['f1']['fold0']['combined']} | "
                     f"{entry['f1']['full']['combined']} |")
        for protocol, own in entry.get("oracle", {}).items():
            lines.append(f"| ↳ oracle: chosen on {protocol} itself | "
                         f"{own['f1'] if protocol == 'fold0' else ''} | "
                         f"{own['f1'] if protocol == 'full' else ''} |")
    if "shipped" in report:
        shipped = report["shipped"]
        lines.append(f"| shipped DEFAULT_DECISION (predict.py, no model) | "
                     f"{shipped['fold0']['combined']} | {shipped['full']['combined']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="train.csv or train.csv.zip")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="where to write the report")
    parser.add_argument("--quick", action="store_true", help="skip slow variants and oracles")
    parser.add_argument("--skip-speed", action="store_true", help="skip the timing section")
    parser.add_argument("--shipped-only", action="store_true",
                        help="recompute only the shipped section of an existing --json (after "
                        "DEFAULT_DECISION was updated to the selection); keep the rest")
    args = parser.parse_args(argv)

    data = Path(args.data)
    if not data.is_file():
        print(f"skipped: {data} not found (the real Shopee data lives in ../shared, absent here)")
        return 0
    from tf_shopee.io_utils import relative_paths, sha256_file, write_json_atomic

    started = time.perf_counter()
    frame = load_train(data)
    protocols = protocol_rows(frame)
    if args.shipped_only:
        import json

        report = json.loads(Path(args.json).read_text(encoding="utf-8"))
        report["shipped"] = shipped_defaults(frame, protocols)
        report["shipped"]["command"] = command_line("quality_real", argv)
        for entry in report["variants"].values():
            if "shipped_decision_matches_selection" in entry:
                from tf_shopee.matching.decision import Decision

                entry["shipped_decision_matches_selection"] = shipped_matches(
                    Decision.from_dict(entry["chosen_on_select"]["decision"], where="selection"))
        write_json_atomic(args.json, report)
        print("\n" + markdown_table(report))
        return 0
    report = {
        "data": str(data),
        "data_sha256": sha256_file(data),
        "command": command_line("quality_real", argv),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "protocol_rows": {name: len(rows) for name, rows in protocols.items()},
        "reference": {},
    }
    for protocol in ("full", "fold0"):
        report["reference"][protocol] = reference_numbers(frame, protocols[protocol])
        print(f"reference {protocol}: {report['reference'][protocol]}", flush=True)
    report["variants"] = run_variants(frame, protocols, quick=args.quick, oracle=not args.quick)
    report["shipped"] = shipped_defaults(frame, protocols)
    if not args.skip_speed:
        report["speed"] = speed(frame)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(args.json, relative_paths(report, REPOSITORY))
    print("\n" + markdown_table(report))
    print(f"\nwrote {args.json} in {report['total_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
