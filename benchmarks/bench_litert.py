"""LiteRT against the SavedModel it came from: speed, quality on unseen products, size.

    nice -n 10 python -m benchmarks.bench_litert --model SM \
        --json benchmarks/results/bench_litert.json

Protocol. ``SM`` is an image export (a quality_image run's). In one run:

1. ``python -m tf_shopee.export litert SM W/float16.tflite --float16`` and ``... --int8
   --calibration W/calibration.csv --images GROCERY``: the int8 model is calibrated on
   ``--calibration-size`` photos of folds 1 and 2 (the training folds), never fold 0;
2. quality, for each of the three models, with the project's commands and the grocery protocol
   of ``benchmarks/quality_image.py``: ``predict.py --fold 1 --search-thresholds`` (the decision
   flags of ``--decision``), then ``predict.py --fold 0 --thresholds`` (fold 0 is only
   predicted): mean F1 on fold 0 with the decision from fold 1, and recall@1 of the image
   source on fold 0;
3. speed, in this process, on the same ``--speed-photos`` fold-0 photos, the three models
   alternating ``--repeats`` times (so a change of machine load hits them alike): images/s of
   ``embed`` (JPEG bytes → normalised embedding: the decode, the same TensorFlow function for
   all three, included) and of the network alone (decoded pixels → features: the SavedModel's
   ``embed_pixels`` signature, the LiteRT interpreter with XNNPACK on ``--threads`` threads).
   TensorFlow's own thread pools use the same cores. The load average is recorded around every
   timing;
4. size on disk: the SavedModel folder (graph + variables) against each ``.tflite`` file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import GROCERY, RESULTS, Runner, command_line, environment
from benchmarks.quality_image import DECISIONS, EVALUATION_FOLD, NUM_FOLDS, SELECTION_FOLD
from tf_shopee.errors import UserError, exit_on_user_error
from tf_shopee.io_utils import relative_paths, write_json_atomic

DEFAULT_WORKDIR = Path("/tmp/tf_shopee_bench_litert")
TARGETS = {"f1_within": 0.01, "speed_ratio": 2.0, "size_ratio": 1.0 / 3.0}


def folder_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def fold_rows(grocery: Path) -> pd.DataFrame:
    """postings.csv with each row's fold (GroupKFold(3) over label_group, file order)."""
    from sklearn.model_selection import GroupKFold

    postings = pd.read_csv(grocery / "postings.csv", dtype={"posting_id": str, "image": str})
    folds = np.full(len(postings), -1)
    for fold, (_, rows) in enumerate(GroupKFold(n_splits=NUM_FOLDS).split(
            postings, groups=postings["label_group"])):
        folds[rows] = fold
    return postings.assign(fold=folds)


class BenchLiteRT:
    def __init__(self, args, report: dict):
        self.args = args
        self.report = report
        self.grocery = Path(args.grocery).resolve()
        self.model = Path(args.model).resolve()
        self.workdir = Path(args.workdir).resolve()
        self.runner = Runner(self.workdir, args.python)
        self.tfrecords = self.workdir / "tfrecords"
        self.models = {"saved_model": self.model,
                       "litert_float16": self.workdir / "float16.tflite",
                       "litert_int8": self.workdir / "int8.tflite"}

    def prepare(self) -> None:
        self.runner.run("convert", "convert_tfrecords.py",
                        ["--csv", str(self.grocery / "postings.csv"), "--images",
                         str(self.grocery), "--out", str(self.tfrecords), "--folds",
                         str(NUM_FOLDS), "--quiet"], [self.tfrecords / "manifest.json"])
        rows = fold_rows(self.grocery)
        training = rows[rows["fold"] != EVALUATION_FOLD]
        calibration = self.workdir / "calibration.csv"
        training[["posting_id", "image"]].to_csv(calibration, index=False)
        self.report["calibration"] = {
            "csv": "postings.csv rows of folds 1 and 2 (training folds; never fold 0)",
            "photos": self.args.calibration_size}
        for name, flags in (("litert_float16", ["--float16"]),
                            ("litert_int8", ["--int8", "--calibration", str(calibration),
                                             "--images", str(self.grocery),
                                             "--calibration-size",
                                             str(self.args.calibration_size)])):
            step = self.runner.run(f"convert_{name}", "-m",
                                   ["tf_shopee.export", "litert", str(self.model),
                                    str(self.models[name]), *flags],
                                   [self.models[name]])
            self.report.setdefault("conversions", {})[name] = {
                "command": step["command"], "wall_seconds": step["wall_seconds"]}

    def quality(self, name: str) -> dict:
        """Decision searched on fold 1, applied to fold 0 (predict.py, as quality_image)."""
        out = self.workdir / "predictions" / name
        out.mkdir(parents=True, exist_ok=True)
        common = ["--tfrecords", str(self.tfrecords), "--model", str(self.models[name]),
                  "--no-tfidf", "--no-phash", "--evaluate", "--cache-dir",
                  str(self.workdir / "embedding_cache"), "--quiet"]
        search = self.runner.run(
            f"search_{name}", "predict.py",
            [*common, "--fold", str(SELECTION_FOLD), *DECISIONS[self.args.decision],
             "--search-thresholds", str(out / "search"), "--out", str(out / "search.csv"),
             "--report", str(out / "search.json")], [out / "search" / "thresholds.json"])
        evaluate = self.runner.run(
            f"evaluate_{name}", "predict.py",
            [*common, "--fold", str(EVALUATION_FOLD), "--thresholds",
             str(out / "search" / "thresholds.json"), "--out", str(out / "fold0.csv"),
             "--report", str(out / "fold0.json")], [out / "fold0.json"])
        result = json.loads((out / "fold0.json").read_text())
        return {"f1": round(result["f1"]["combined"], 4),
                "recall_at_1": round(result["recall_at_1"]["image"], 4),
                "decision": result["decision"],
                "commands": {"search": search["command"], "evaluate": evaluate["command"]}}

    def speed(self) -> dict:
        """images/s of each model on the same photos, alternating (see the module docstring)."""
        from tf_shopee.export import load_exported
        from tf_shopee.export.litert import LiteRTModel, decode_photos, read_litert_metadata

        rows = fold_rows(self.grocery)
        names = rows[rows["fold"] == EVALUATION_FOLD]["image"].tolist()[:self.args.speed_photos]
        photos = [(self.grocery / name).read_bytes() for name in names]
        loaded = {}
        for name, path in self.models.items():
            if name == "saved_model":
                loaded[name] = load_exported(path)
            else:
                loaded[name] = LiteRTModel(path, read_litert_metadata(path),
                                           num_threads=self.args.threads,
                                           batch=self.args.batch)
        pixels = decode_photos(photos, loaded["saved_model"].image_size)
        for model in loaded.values():  # warm-up: traces, plans, first allocations
            model.embed(images=photos[:self.args.batch], batch_size=self.args.batch)
            model.embed_pixels(pixels[:self.args.batch])
        timings = {name: {"embed": [], "network": []} for name in loaded}
        for repeat in range(self.args.repeats):
            for name, model in loaded.items():
                for what in ("embed", "network"):
                    load_before = os.getloadavg()[0]
                    cpu, wall = time.process_time(), time.perf_counter()
                    if what == "embed":
                        model.embed(images=photos, batch_size=self.args.batch)
                    else:
                        for start in range(0, len(pixels), self.args.batch):
                            model.embed_pixels(pixels[start:start + self.args.batch])
                    seconds = time.perf_counter() - wall
                    timings[name][what].append({
                        "images_per_second": round(len(photos) / seconds, 2),
                        "cpu_seconds_per_image": round((time.process_time() - cpu)
                                                       / len(photos), 4),
                        "load_average": [round(load_before, 2),
                                         round(os.getloadavg()[0], 2)]})
                    print(f"  repeat {repeat + 1} {name:<15} {what:<8} "
                          f"{len(photos) / seconds:7.1f} images/s (load {load_before:.1f})",
                          flush=True)
        summary = {}
        for name, entries in timings.items():
            summary[name] = {what: {"best_images_per_second": max(
                entry["images_per_second"] for entry in runs), "runs": runs}
                for what, runs in entries.items()}
        return {"photos": len(photos), "batch": self.args.batch, "threads": self.args.threads,
                "models": summary}


def markdown_table(report: dict) -> str:
    lines = ["| model | size on disk | fold-0 F1 (decision from fold 1) | recall@1 | images/s, "
             "JPEG → embedding (× SavedModel) | images/s, network alone (× SavedModel) |",
             "|---|---:|---:|---:|---:|---:|"]
    speed = report["speed"]["models"]
    base = speed["saved_model"]
    for name, entry in report["models"].items():
        embed = speed[name]["embed"]["best_images_per_second"]
        network = speed[name]["network"]["best_images_per_second"]
        lines.append(
            f"| {name} | {entry['megabytes']:.1f} MB | {entry['f1']:.4f} | "
            f"{entry['recall_at_1']:.4f} | {embed:.1f} "
            f"({embed / base['embed']['best_images_per_second']:.2f}×) | {network:.1f} "
            f"({network / base['network']['best_images_per_second']:.2f}×) |")
    return "\n".join(lines)


def targets(report: dict) -> dict:
    models, speed = report["models"], report["speed"]["models"]
    base, int8 = models["saved_model"], models["litert_int8"]

    def ratio(name, what):
        return round(speed[name][what]["best_images_per_second"]
                     / speed["saved_model"][what]["best_images_per_second"], 2)

    return {
        "int8_f1_minus_saved_model": round(int8["f1"] - base["f1"], 4),
        "int8_f1_within_0.01": abs(int8["f1"] - base["f1"]) <= TARGETS["f1_within"],
        "int8_speed_ratio_embed": ratio("litert_int8", "embed"),
        "int8_speed_ratio_network": ratio("litert_int8", "network"),
        "int8_at_least_2x_network": ratio("litert_int8", "network") >= TARGETS["speed_ratio"],
        "int8_at_least_2x_embed": ratio("litert_int8", "embed") >= TARGETS["speed_ratio"],
        "int8_size_ratio": round(int8["bytes"] / base["bytes"], 3),
        "int8_at_most_a_third_of_the_size": int8["bytes"] / base["bytes"]
        <= TARGETS["size_ratio"],
    }


@exit_on_user_error
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, metavar="SM", help="an image export folder")
    parser.add_argument("--grocery", default=str(GROCERY), metavar="DIR")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR), metavar="DIR")
    parser.add_argument("--json", default=str(RESULTS / "bench_litert.json"))
    parser.add_argument("--decision", default="count_inb2", choices=sorted(DECISIONS),
                        help="how the decision is searched on fold 1 (quality_image.DECISIONS)")
    parser.add_argument("--calibration-size", type=int, default=200, metavar="N")
    parser.add_argument("--speed-photos", type=int, default=256, metavar="N")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8,
                        help="photos per model call in the speed runs (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads (default 2)")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    if not (Path(args.grocery) / "postings.csv").is_file():
        print(f"skipped: the grocery photos {args.grocery} are absent; nothing to measure")
        return 0
    if args.repeats < 1 or args.speed_photos < 1 or args.batch < 1 or args.threads < 1:
        raise UserError("--repeats, --speed-photos, --batch and --threads must be at least 1")
    from tf_shopee import import_tensorflow

    import_tensorflow()
    from tf_shopee.export import read_export_metadata

    if read_export_metadata(args.model)["kind"] != "image":
        raise UserError(f"--model {args.model}: an image export is needed")
    report = {"command": command_line("bench_litert", argv), "environment": environment(),
              "protocol": __doc__.split("\n\n", 2)[2].strip()}
    bench = BenchLiteRT(args, report)
    bench.prepare()
    report["models"] = {}
    for name, path in bench.models.items():
        print(f"== quality of {name}", flush=True)
        entry = bench.quality(name)
        entry["bytes"] = folder_bytes(path)
        entry["megabytes"] = round(entry["bytes"] / 1e6, 2)
        entry["path"] = str(path)
        report["models"][name] = entry
    print("== speed", flush=True)
    report["speed"] = bench.speed()
    report["table_markdown"] = markdown_table(report)
    report["targets"] = targets(report)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.json, relative_paths(report, Path(__file__).resolve().parents[1]))
    print(report["table_markdown"])
    print(json.dumps(report["targets"], indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
