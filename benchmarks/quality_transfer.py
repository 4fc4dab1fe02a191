#!/usr/bin/env python3
"""Do matching decisions hold on new data? Thresholds chosen on one pool, applied to another.

Data: ``../shared/data/shopee/train.csv.zip`` (34,250 real postings: titles, image_phash,
label_group). When it is absent the script says so and exits 0: a fresh clone has no ../shared.

Pools: ``convert_tfrecords.py --folds 3`` (sklearn ``GroupKFold(3)`` over label_group, so no label
group is in two folds); "slice" is the first ``GroupKFold(3)`` split of fold 1's label groups.

Rows (a decision chosen on the search pool with ``predict.py --search-thresholds``, applied to the
target pool with ``predict.py --thresholds`` and scored there):

``model_free_fold1_to_fold0``
    no model (TF-IDF, phash, phash_text); search fold 1 (11,416 postings), target fold 0 (11,418).
``model_free_fold1_to_full``
    the same decision applied to all 34,250 postings: a pool three times larger.
``text_slice_to_fold0``
    the learned text model (``configs/text_minilm_arcface.json``: all-MiniLM-L6-v2 fine-tuned
    with ArcFace on folds 1+2, trained once with ``benchmarks/quality_text.py``'s helpers) with
    the model-free sources; search the 3,806-posting slice of fold 1, target fold 0 (three times
    larger; label groups the model never saw).
``text_fold1_to_fold0``
    the same with the whole of fold 1 as the search pool (the size of fold 0), the protocol of
    ``benchmarks/quality_text.py``'s rows, for comparison with them.

Beside each row, the **oracle**: the same search run on the target itself (its best decision;
reported, never shipped). Transfer loss = oracle minus what the decision from the search pool
gets.

Two parts:

1. **commands**: each row with the shipped method, exactly as a user runs it (``predict.py``
   as a subprocess: search, apply, oracle);
2. **methods**: every threshold method of :data:`tf_shopee.thresholds.METHODS` on every row, in
   this process with the library functions ``predict.py`` calls (sources built once per pool,
   embeddings read from the command runs' cache), plus the best single source with thresholds
   from the search pool. The shipped method's numbers here must equal the commands' (checked).

    nice -n 10 python -m benchmarks.quality_transfer --json benchmarks/results/quality_transfer.json

Resumable: the conversion, the training run and every ``predict.py`` command are not redone when
the script runs again with the same ``--workdir`` (shared with ``benchmarks/quality_text.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (
    REPOSITORY,
    RESULTS,
    SHOPEE_TRAIN_CSV,
    add_run_arguments,
    check_run_arguments,
    command_line,
    data_absent,
    environment,
    parse_choices,
)
from benchmarks.quality_text import QualityText
from tf_shopee.errors import UserError, exit_on_user_error
from tf_shopee.io_utils import relative_paths, write_json_atomic

DEFAULT_DATA = SHOPEE_TRAIN_CSV
DEFAULT_JSON = RESULTS / "quality_transfer.json"
DEFAULT_WORKDIR = Path("/tmp/tf_shopee_quality_text")
ROWS = ("model_free_fold1_to_fold0", "model_free_fold1_to_full", "text_slice_to_fold0",
        "text_fold1_to_fold0")
TEXT_ROWS = ("text_slice_to_fold0", "text_fold1_to_fold0")
TARGET_LOSS = 0.01
TARGET_TEXT_FOLD0 = 0.83
TARGET_MODEL_FREE_FULL = 0.75


def fold_rows(frame) -> dict[str, np.ndarray]:
    """Row numbers of fold 0, fold 1 and the slice of fold 1 (``convert_tfrecords.py --folds 3``
    assigns folds the same way: GroupKFold(3) over label_group in CSV order)."""
    from sklearn.model_selection import GroupKFold

    splits = [test for _, test in GroupKFold(n_splits=3).split(frame,
                                                                groups=frame["label_group"])]
    fold1 = np.sort(splits[1])
    inner = [test for _, test in GroupKFold(n_splits=3).split(
        fold1, groups=frame["label_group"].to_numpy()[fold1])]
    return {"fold0": np.sort(splits[0]), "fold1": fold1, "slice": np.sort(fold1[inner[0]])}


class Transfer:
    """The protocol of the module docstring; results accumulate in ``report``."""

    def __init__(self, args: argparse.Namespace, report: dict):
        self.args = args
        self.report = report
        # The conversion, training and command runner of quality_text.py, on the same workdir.
        self.text = QualityText(args, report.setdefault("quality_text_steps", {}))
        self.workdir = self.text.workdir
        self.tfrecords = self.text.tfrecords
        self.cache_dir = self.workdir / "embedding_cache"
        self.predictions = self.workdir / "transfer"
        self._sources: dict = {}
        self._searches: dict = {}

    # -- pools -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """TFRecords with 3 folds, the slice CSV, and (for the text row) the trained model."""
        import pandas as pd

        self.text.convert()
        frame = pd.read_csv(self.text.source_csv(), dtype=str)
        frame["label_group"] = frame["label_group"].astype(np.int64)
        rows = fold_rows(frame)
        counts = self.report["quality_text_steps"]["data"]["fold_counts"]
        for fold in ("0", "1"):
            if counts[fold] != len(rows[f"fold{fold}"]):
                raise UserError(f"fold {fold} of {self.tfrecords} has {counts[fold]} postings but "
                                f"GroupKFold(3) gives {len(rows[f'fold{fold}'])}")
        self.slice_csv = self.workdir / "fold1_slice.csv"
        if not self.slice_csv.is_file():
            temporary = self.slice_csv.with_suffix(".tmp")
            frame.iloc[rows["slice"]].to_csv(temporary, index=False)
            temporary.replace(self.slice_csv)
        self.report["pools"] = {name: int(len(value)) for name, value in rows.items()}
        self.report["pools"]["full"] = int(len(frame))
        if set(TEXT_ROWS) & set(self.args.rows):
            facts = self.text.train("minilm")
            self.model = facts["export"]
            self.report["model"] = {key: facts[key] for key in (
                "config_file", "command", "export", "wall_seconds", "epochs_trained",
                "validation")}

    def pool_flags(self, pool: str) -> list[str]:
        """predict.py flags that select a pool's postings."""
        if pool == "full":
            return ["--csv", str(self.text.source_csv())]
        if pool == "slice":
            return ["--tfrecords", str(self.tfrecords), "--fold", "1", "--csv",
                    str(self.slice_csv)]
        return ["--tfrecords", str(self.tfrecords), "--fold", pool[-1]]

    def row_setup(self, row: str) -> tuple[str, str, list[str]]:
        """(search pool, target pool, model flags) of a row."""
        if row in TEXT_ROWS:
            return row.split("_")[1], "fold0", ["--model", str(self.model)]
        return "fold1", ("fold0" if row.endswith("fold0") else "full"), []

    # -- part 1: the commands ----------------------------------------------------------------

    def predict(self, name: str, pool: str, flags: list[str]) -> dict:
        """One ``predict.py --evaluate`` run on a pool; its report (with the command)."""
        out_dir = self.predictions / name
        out_dir.mkdir(parents=True, exist_ok=True)
        report_path = out_dir / "report.json"
        arguments = [*self.pool_flags(pool), *flags, "--evaluate", "--report", str(report_path),
                     "--out", str(out_dir / "matches.csv"), "--cache-dir", str(self.cache_dir),
                     "--quiet"]
        step = self.text.runner.run(f"transfer_{name}", "predict.py", arguments, [report_path])
        report = json.loads(report_path.read_text(encoding="utf-8"))
        return {"command": step["command"], "wall_seconds": step["wall_seconds"],
                "f1": report["f1"], "decision": report["decision"],
                "thresholds": report["thresholds"], "rows": report["rows"]}

    def commands(self, row: str) -> dict:
        """Search on the search pool, apply to the target, oracle on the target: predict.py."""
        search_pool, target, model_flags = self.row_setup(row)
        method = ["--threshold-method", self.args.shipped_method]
        prefix = "text" if model_flags else "model_free"
        search_dir = self.predictions / f"{prefix}_search_{search_pool}"
        search = self.predict(f"{prefix}_search_{search_pool}", search_pool,
                              [*model_flags, *method, "--search-thresholds", str(search_dir)])
        applied = self.predict(f"{prefix}_{search_pool}_to_{target}", target,
                               [*model_flags, "--thresholds",
                                str(search_dir / "thresholds.json")])
        oracle = self.predict(f"{prefix}_oracle_{target}", target,
                              [*model_flags, *method, "--search-thresholds",
                               str(self.predictions / f"{prefix}_oracle_{target}")])
        result = {
            "search_pool": search_pool, "target": target, "method": self.args.shipped_method,
            "search": search, "applied": applied, "oracle": oracle,
            "f1": round(applied["f1"]["combined"], 4),
            "oracle_f1": round(oracle["f1"]["combined"], 4),
        }
        result["loss"] = round(result["oracle_f1"] - result["f1"], 4)
        print(f"  commands {row}: F1 {result['f1']:.4f}, oracle {result['oracle_f1']:.4f}, "
              f"loss {result['loss']:+.4f}", flush=True)
        return result

    # -- part 2: every method, in process ----------------------------------------------------

    def sources(self, pool: str, model_flags: list[str]):
        """Labels, neighbours and blending variants of a pool, as predict.py builds them (once
        per pool and model)."""
        from tf_shopee.matching.postings import read_postings
        from tf_shopee.predict import (
            blend_variants,
            build_argument_parser,
            compute_sources,
            options_from_arguments,
        )

        key = (pool, tuple(model_flags))
        if key not in self._sources:
            arguments = build_argument_parser().parse_args(
                [*self.pool_flags(pool), *model_flags, "--cache-dir", str(self.cache_dir),
                 "--quiet"])
            options = options_from_arguments(arguments)
            postings = read_postings(**options.postings_arguments())
            sources = compute_sources(postings, options)
            self._sources[key] = (postings.label_groups, sources.neighbours,
                                  blend_variants(sources, options))
        return self._sources[key]

    def search(self, pool: str, model_flags: list[str], method: str) -> dict:
        """:func:`tf_shopee.thresholds.search_decision` on a pool (once per pool and method)."""
        from tf_shopee.matching.search import search_decision

        key = (pool, tuple(model_flags), method)
        if key not in self._searches:
            labels, neighbours, variants = self.sources(pool, model_flags)
            self._searches[key] = search_decision(neighbours, labels, method=method,
                                                  inb_variants=variants)
        return self._searches[key]

    def methods(self, row: str) -> dict:
        """Every method on one row: search, transfer, oracle, and the best single source."""
        from tf_shopee.matching.decision import Decision, apply_decision
        from tf_shopee.metrics import mean_f1_from_matches

        search_pool, target, model_flags = self.row_setup(row)
        target_labels, target_sources, target_variants = self.sources(target, model_flags)

        def score(decision: Decision) -> float:
            neighbours = dict(target_sources)
            for name in decision.sources:
                rule = decision.rules[name]
                if rule.inb is not None:
                    neighbours[name] = target_variants[name][(rule.inb, rule.inb_phash)]
            _, combined = apply_decision(neighbours, decision)
            return round(mean_f1_from_matches(combined, target_labels), 4)

        results = {}
        for method in self.args.methods:
            started = time.perf_counter()
            chosen = self.search(search_pool, model_flags, method)
            decision = Decision.from_dict(chosen["decision"], where=f"{row} {method}")
            oracle = self.search(target, model_flags, method)
            singles = {}
            for candidate in chosen["candidates"]:
                if candidate["kind"] == "single":
                    single = Decision.from_dict(candidate["decision"], where="single")
                    singles[candidate["sources"][0]] = {
                        "f1": score(single), "description": candidate["description"]}
            best_single = max(singles, key=lambda name: singles[name]["f1"])
            oracle_singles = {candidate["sources"][0]: round(candidate["f1"], 4)
                              for candidate in oracle["candidates"]
                              if candidate["kind"] == "single"}
            f1 = score(decision)
            entry = {
                "f1": f1,
                "search_f1": round(chosen["f1"], 4),
                "oracle_f1": round(oracle["f1"], 4),
                "loss": round(round(oracle["f1"], 4) - f1, 4),
                "decision": decision.describe(len(target_labels)),
                "decision_on_search_pool": decision.describe(),
                "oracle_decision": Decision.from_dict(oracle["decision"],
                                                      where="oracle").describe(),
                "singles": singles,
                "best_single": {"source": best_single, "f1": singles[best_single]["f1"]},
                "oracle_singles": oracle_singles,
                "combined_at_least_best_single": f1 >= singles[best_single]["f1"],
                "seconds": round(time.perf_counter() - started, 1),
            }
            results[method] = entry
            print(f"  {row} {method:<10} F1 {f1:.4f} (search pool {entry['search_f1']:.4f}), "
                  f"oracle {entry['oracle_f1']:.4f}, loss {entry['loss']:+.4f}, best single "
                  f"{best_single} {singles[best_single]['f1']:.4f}  [{entry['seconds']:.0f} s]",
                  flush=True)
        return results


def targets(report: dict) -> dict:
    """The issue's targets against the shipped method's rows."""
    shipped = report["settings"]["shipped_method"]
    result = {}
    for row, entry in report.get("rows", {}).items():
        methods = entry.get("methods", {})
        if shipped in methods:
            loss = methods[shipped]["loss"]
            result[f"{row}: transfer loss <= {TARGET_LOSS}"] = {
                "value": loss, "met": loss <= TARGET_LOSS}
            singles = methods[shipped]["best_single"]
            result[f"{row}: combined >= best single source"] = {
                "value": [methods[shipped]["f1"], singles["f1"]],
                "met": methods[shipped]["f1"] >= singles["f1"]}
    for row, key, target in (("text_slice_to_fold0", "text + model-free on fold 0 (slice)",
                              TARGET_TEXT_FOLD0),
                             ("text_fold1_to_fold0", "text + model-free on fold 0 (fold 1)",
                              TARGET_TEXT_FOLD0),
                             ("model_free_fold1_to_full", "model-free on the full set",
                              TARGET_MODEL_FREE_FULL)):
        methods = report.get("rows", {}).get(row, {}).get("methods", {})
        if shipped in methods:
            value = methods[shipped]["f1"]
            result[f"{key} >= {target}"] = {"value": value, "met": value >= target}
    return result


def markdown_table(report: dict) -> str:
    """Row × method: F1 on the target with thresholds from the search pool, the target's oracle,
    the loss, and the best single source with thresholds from the search pool."""
    pools = report.get("pools", {})
    lines = ["| row | method | F1 on target | oracle (target's own search) | loss | best single "
             "source (thresholds from search pool) |", "|---|---|---|---|---|---|"]
    for row, entry in report.get("rows", {}).items():
        search_pool, target = entry["search_pool"], entry["target"]
        label = (f"{row} ({search_pool} {pools.get(search_pool, '?'):,} → {target} "
                 f"{pools.get(target, '?'):,})")
        for method, result in entry.get("methods", {}).items():
            shipped = " (shipped)" if method == report["settings"]["shipped_method"] else ""
            lines.append(
                f"| {label} | {method}{shipped} | {result['f1']:.4f} | {result['oracle_f1']:.4f} "
                f"| {result['loss']:+.4f} | {result['best_single']['source']} "
                f"{result['best_single']['f1']:.4f} |")
    return "\n".join(lines)


def build_argument_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    from tf_shopee.matching.decision import DEFAULT_METHOD, METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="the real train.csv(.zip) (default ../shared/data/shopee/...)")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR),
                        help="TFRecords, the trained model, predictions (default "
                        f"{DEFAULT_WORKDIR}, shared with quality_text.py)")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="results file to write")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"methods compared in process (default all: {','.join(METHODS)})")
    parser.add_argument("--shipped-method", default=DEFAULT_METHOD, choices=METHODS,
                        help=f"the method run with the commands (default {DEFAULT_METHOD})")
    parser.add_argument("--skip-commands", action="store_true",
                        help="only the in-process method comparison")
    add_run_arguments(parser)
    return parser


@exit_on_user_error
def main(argv=None) -> int:
    """Run the protocol (see the module docstring); 0 also when the data is absent."""
    from tf_shopee.matching.decision import METHODS

    args = build_argument_parser().parse_args(argv)
    args.rows = parse_choices(args.rows, ROWS, "--rows")
    args.methods = parse_choices(args.methods, METHODS, "--methods")
    args.epochs_scratch = 0
    check_run_arguments(args)
    if data_absent(args.data):
        return 0
    json_path = Path(args.json)
    report: dict = {
        "protocol": __doc__.split("\n\n", 2)[2].split("\n\n    nice")[0],
        "settings": {"workdir": str(Path(args.workdir).resolve()), "rows": args.rows,
                     "methods": args.methods, "shipped_method": args.shipped_method,
                     "limit_rows": args.limit_rows or "all"},
        "command": command_line("quality_transfer", argv),
        "environment": environment(),
        "rows": {},
    }
    job = Transfer(args, report)
    started = time.perf_counter()

    def save() -> None:
        report["targets"] = targets(report)
        report["table_markdown"] = markdown_table(report)
        report["load_average_now"] = list(os.getloadavg())
        report["wall_seconds"] = round(time.perf_counter() - started, 1)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_path, relative_paths(report, REPOSITORY))

    job.prepare()
    for row in args.rows:
        print(f"== {row}", flush=True)
        search_pool, target, _ = job.row_setup(row)
        entry = report["rows"].setdefault(row, {"search_pool": search_pool, "target": target})
        if not args.skip_commands:
            entry["commands"] = job.commands(row)
        entry["methods"] = job.methods(row)
        if "commands" in entry and args.shipped_method in entry["methods"]:
            in_process = entry["methods"][args.shipped_method]
            commands = entry["commands"]
            entry["commands_equal_in_process"] = (
                abs(commands["f1"] - in_process["f1"]) < 1e-4
                and abs(commands["oracle_f1"] - in_process["oracle_f1"]) < 1e-4)
        save()
    save()
    print()
    print(report["table_markdown"])
    print()
    print(json.dumps(report["targets"], indent=1))
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
