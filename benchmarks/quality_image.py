#!/usr/bin/env python3
"""The image tower on real product photos, end to end with the project's commands.

Data: ``../shared/data/grocery`` (Grocery Store Dataset, MIT: 2,936 shop photos of 81 products as a
Shopee-style ``postings.csv``, and the 81 catalogue images as ``catalog.csv``). When it is absent
the script says so and exits 0: a fresh clone has no ../shared.

Protocol (../shared/data/grocery/README.md): sklearn ``GroupKFold(n_splits=3)`` over label_group of
postings.csv in file order. Models train on folds 1 and 2 (54 products); everything is reported on
fold 0 (979 photos of 27 products never trained on), matching only inside fold 0: mean F1 (the
Shopee metric, self included, at most 50 matches) and recall@1 (the nearest other photo is the same
product). Every step is a project command run as a subprocess:

1. ``convert_tfrecords.py --csv postings.csv --images grocery --out W/tfrecords --folds 3``;
2. ``train.py --data W/tfrecords --model image ... --validation-fold 0 --set train.validate=false
   --workdir W/runs/<method> --export W/saved_models/<method>``: ``--epochs 0`` exports the model
   as initialised (random init; ImageNet zero-shot with average pooling and no projection, the
   reference setting of the README), the fine-tuned rows train ``configs/<config>.json``. No
   validation runs during training (``train.validate=false``): fold 0 never chooses an epoch, and
   the last epoch is exported;
3. ``predict.py --tfrecords W/tfrecords --fold 1 --model ... --search-thresholds DIR`` chooses the
   thresholds and post-processing on fold 1 (a training fold of the same size as fold 0), then
   ``predict.py --fold 0 --thresholds DIR/thresholds.json --evaluate --report`` measures fold 0
   with them unchanged. The search's own best on fold 0 (``predict.py --fold 0
   --search-thresholds``) is reported beside it as the *oracle*: what fold 0's own thresholds
   would give — a bound, never a result.

The searches (fold 1, and fold 0 for the oracle) also try blending over each photo's 10 or 20
nearest neighbours and blend thresholds from 0.2 (``SEARCH_FLAGS``): products here have about 36
photos each. The "alone" column is the embeddings at the best plain threshold of fold 1's sweep
(``--no-min2 --inb-iterations 0 --threshold-method fixed``).

Query-vs-catalogue: ``benchmarks/quality_catalog.py`` with the exported model, i.e. ``catalog
build`` of the 27 fold-0 catalogue images (and of all 81) and ``predict.py --catalog`` of every
fold-0 shelf photo; top-1 accuracy is the share whose first listed catalogue image is its product.

Resumable: finished steps are not redone when the script runs again with the same ``--workdir``.

    nice -n 10 python -m benchmarks.quality_image --json benchmarks/results/quality_image.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.common import (
    GROCERY,
    REPOSITORY,
    RESULTS,
    Runner,
    command_line,
    environment,
    read_json,
    same_run,
)
from tf_shopee.errors import UserError, exit_on_user_error
from tf_shopee.io_utils import relative_paths, write_json_atomic
from tf_shopee.matching.decision import best_plain_thresholds

DEFAULT_DATA = GROCERY
DEFAULT_JSON = RESULTS / "quality_image.json"
DEFAULT_WORKDIR = Path("/tmp/tf_shopee_quality_image")
EVALUATION_FOLD = 0
SELECTION_FOLD = 1
NUM_FOLDS = 3
RECIPE_TARGETS = {"f1": 0.90, "recall_at_1": 0.995, "train_minutes": 30, "catalogue_27": 0.80,
                  "catalogue_81": 0.75}
ZERO_SHOT_REFERENCE = {"f1": 0.5566, "recall_at_1": 0.9765}
# The decision searches (fold 1, and fold 0 for the oracle) also try blending over a bounded
# neighbourhood and at lower blend thresholds than the defaults (which were set for Shopee
# titles): products here have about 36 photos each, and image cosines between photos of one
# product are lower than between titles of one product.
SEARCH_FLAGS = ["--inb-neighbours", "10,20,all", "--inb-grid", "0.2,0.3,0.4,0.5,0.6,0.7"]
# How the decision is searched (--decision). "shipped": the default method (local+size), one
# round of blending over 10, 20 or all neighbours. "count_inb2": two rounds of blending over the
# 20 nearest, thresholds carried to fold 0 by the count method (fold 0's threshold gives its
# photos as many matches each as fold 1's got). Chosen on the development split (train on fold 2,
# decision searched on fold 2, applied to fold 1; fold 0 untouched): the searches on a training
# fold score 0.96-0.98 for every option and cannot tell 10 from 20 neighbours, and plain
# thresholds after two rounds of blending sit far higher there than on unseen products (Lite0:
# 0.717 shipped, 0.737 count_inb2 on fold 1; Lite0+Lite2 concatenated 0.730 with 10 neighbours,
# 0.755 with 20).
DECISIONS = {
    "shipped": SEARCH_FLAGS,
    "count_inb2": ["--inb-neighbours", "20", "--inb-grid", "0.2,0.3,0.4,0.5,0.6,0.7",
                   "--inb-iterations", "2", "--threshold-method", "count"],
}

# Models exported as initialised (--epochs 0): the reference setting of the grocery README
# (ImageNet weights, 224 px, average pooling, the 1280 pooled features themselves).
INITIAL_MODELS = {
    "random_lite0": {
        "description": "EfficientNet-Lite0, random init, no training",
        "arguments": ["--backbone", "efficientnet_lite0", "--weights", "none"],
    },
    "zero_shot_lite0": {
        "description": "EfficientNet-Lite0, ImageNet weights, zero-shot (no training)",
        "arguments": ["--backbone", "efficientnet_lite0", "--weights", "imagenet"],
    },
    "zero_shot_lite2": {
        "description": "EfficientNet-Lite2, ImageNet weights, zero-shot (no training)",
        "arguments": ["--backbone", "efficientnet_lite2", "--weights", "imagenet",
                      "--image-size", "260"],
    },
}
INITIAL_SETTINGS = ["--image-size", "224", "--epochs", "0", "--set", "model.image.pooling=avg",
                    "--set", "model.image.projection=none"]
# Fine-tuned models: method → the config file that trains it (and --set overrides of it).
CATALOG_CSV = "../shared/data/grocery/catalog.csv"
FINE_TUNED_MODELS = {
    "finetuned_lite0": {
        "description": "EfficientNet-Lite0, ImageNet weights, ArcFace fine-tuned on folds 1+2",
        "config": "configs/grocery_lite0_arcface.json",
    },
    "finetuned_lite2": {
        "description": "EfficientNet-Lite2, ImageNet weights, ArcFace fine-tuned on folds 1+2",
        "config": "configs/grocery_lite2_arcface.json",
    },
    "lite0_gem": {
        "description": "Lite0 fine-tuned, GeM pooling (p learned from 3)",
        "config": "configs/grocery_lite0_arcface.json",
        "sets": ["model.image.pooling=gem"],
    },
    "lite0_subcenter": {
        "description": "Lite0 fine-tuned, sub-center ArcFace (3 centres per product)",
        "config": "configs/grocery_lite0_arcface.json",
        "sets": ["model.arc_face.sub_centers=3"],
    },
    "lite0_final288": {
        "description": "Lite0 fine-tuned, last epoch (and export) at 288 px",
        "config": "configs/grocery_lite0_arcface.json",
        "sets": ["train.final_image_size=288"],
    },
    "lite0_final288_seed1": {
        "description": "Lite0 fine-tuned, last epoch at 288 px, another seed (train.seed=1)",
        "config": "configs/grocery_lite0_arcface.json",
        "sets": ["train.final_image_size=288", "train.seed=1"],
    },
    "lite0_final288_seed2": {
        "description": "Lite0 fine-tuned, last epoch at 288 px, another seed (train.seed=2)",
        "config": "configs/grocery_lite0_arcface.json",
        "sets": ["train.final_image_size=288", "train.seed=2"],
    },
    "lite0_catalog": {
        "description": "Lite0 fine-tuned with the 54 training products' catalogue photos "
                       "(studio-to-shelf variants, 10 % of the examples)",
        "config": "configs/grocery_lite0_arcface.json",
        "sets": [f"data.catalog_csv={CATALOG_CSV}"],
    },
    "lite0_recipe": {
        "description": "Lite0 recipe: catalogue photos + last epoch at 288 px",
        "config": "configs/grocery_lite0_recipe.json",
    },
    "lite0_recipe_gem_subcenter": {
        "description": "Lite0 recipe + GeM pooling + sub-center ArcFace (3 centres)",
        "config": "configs/grocery_lite0_recipe.json",
        "sets": ["model.image.pooling=gem", "model.arc_face.sub_centers=3"],
    },
    "lite0_final288_gem_subcenter": {
        "description": "Lite0 fine-tuned, last epoch at 288 px + GeM + sub-center ArcFace "
                       "(no catalogue photos)",
        "config": "configs/grocery_lite0_arcface.json",
        "sets": ["train.final_image_size=288", "model.image.pooling=gem",
                 "model.arc_face.sub_centers=3"],
    },
    "lite0_recipe_catalog30": {
        "description": "Lite0 recipe with catalogue photos as 30 % of the examples (10 % in the "
                       "recipe)",
        "config": "configs/grocery_lite0_recipe.json",
        "sets": ["data.catalog_fraction=0.3"],
    },
    "lite0_recipe_seed1": {
        "description": "Lite0 recipe, another seed (train.seed=1): the spread between runs",
        "config": "configs/grocery_lite0_recipe.json",
        "sets": ["train.seed=1"],
    },
    "lite0_recipe_seed2": {
        "description": "Lite0 recipe, another seed (train.seed=2): the spread between runs",
        "config": "configs/grocery_lite0_recipe.json",
        "sets": ["train.seed=2"],
    },
    "lite2_recipe": {
        "description": "Lite2 recipe: catalogue photos + last epoch at 300 px",
        "config": "configs/grocery_lite2_recipe.json",
    },
    "lite2_recipe_e6": {
        "description": "Lite2 recipe trained 6 epochs (the last at 300 px)",
        "config": "configs/grocery_lite2_recipe.json",
        "sets": ["train.epochs=6"],
    },
}
# Exports concatenated from fine-tuned ones (python -m tf_shopee.export concat): method → parts.
CONCATENATED_MODELS = {
    "recipe_concat": {
        "description": "Lite0 recipe + Lite2 recipe, embeddings concatenated",
        "parts": ["lite0_recipe", "lite2_recipe"],
    },
    "lite0_recipe_x3": {
        "description": "Three Lite0 recipe runs (seeds 42, 1, 2), embeddings concatenated",
        "parts": ["lite0_recipe", "lite0_recipe_seed1", "lite0_recipe_seed2"],
    },
    "lite0_final288_x3": {
        "description": "Three Lite0 runs with the last epoch at 288 px (seeds 42, 1, 2), "
                       "embeddings concatenated",
        "parts": ["lite0_final288", "lite0_final288_seed1", "lite0_final288_seed2"],
    },
    "recipe_concat_x4": {
        "description": "Three Lite0 recipe runs (seeds 42, 1, 2) + the Lite2 recipe, "
                       "embeddings concatenated",
        "parts": ["lite0_recipe", "lite0_recipe_seed1", "lite0_recipe_seed2", "lite2_recipe"],
    },
}
METHODS = ("phash", *INITIAL_MODELS, *FINE_TUNED_MODELS, *CONCATENATED_MODELS)
DEFAULT_METHODS = ("phash", "random_lite0", "zero_shot_lite0", "finetuned_lite0")


class QualityImage:
    """The protocol of the module docstring, step by step; results accumulate in ``report``."""

    def __init__(self, args: argparse.Namespace, report: dict):
        self.args = args
        self.report = report
        self.data = Path(args.data).resolve()
        self.workdir = Path(args.workdir).resolve()
        self.runner = Runner(self.workdir, args.python)
        self.tfrecords = self.workdir / "tfrecords"
        self.cache_dir = self.workdir / "embedding_cache"
        self.predictions = self.workdir / "predictions"

    # -- data ------------------------------------------------------------------------------------

    def convert(self) -> None:
        """Shop photos → TFRecords with the protocol's 3 GroupKFold folds."""
        step = self.runner.run(
            "convert", "convert_tfrecords.py",
            ["--csv", str(self.data / "postings.csv"), "--images", str(self.data),
             "--out", str(self.tfrecords), "--folds", str(NUM_FOLDS), "--quiet"],
            [self.tfrecords / "manifest.json"],
        )
        manifest = read_json(self.tfrecords / "manifest.json")
        self.report["data"] = {
            "csv": "../shared/data/grocery/postings.csv",
            "csv_sha256": manifest.get("source_csv_sha256"),
            "num_labels": manifest.get("num_labels"),
            "fold_counts": manifest.get("fold_counts"),
            "conversion": step["command"],
        }

    # -- models ----------------------------------------------------------------------------------

    def export_initial(self, method: str) -> Path:
        """train.py --epochs 0: the model as initialised, exported."""
        spec = INITIAL_MODELS[method]
        run_dir, export_dir = self.workdir / "runs" / method, self.workdir / "saved_models" / method
        arguments = ["--data", str(self.tfrecords), "--model", "image", *INITIAL_SETTINGS,
                     *spec["arguments"], "--validation-fold", str(EVALUATION_FOLD),
                     "--set", "train.validate=false", "--strategy", "one_device",
                     "--workdir", str(run_dir), "--export", str(export_dir)]
        step = self.runner.run(f"export_{method}", "train.py", arguments,
                               [export_dir / "tf_shopee_export.json"])
        self.report.setdefault("models", {})[method] = {
            "description": spec["description"], "command": step["command"],
            "wall_seconds": step["wall_seconds"], "epochs_trained": 0,
        }
        return export_dir

    def train(self, method: str) -> Path:
        """train.py with the method's config on folds 1+2, last epoch exported."""
        spec = FINE_TUNED_MODELS[method]
        run_dir, export_dir = self.workdir / "runs" / method, self.workdir / "saved_models" / method
        arguments = ["--data", str(self.tfrecords), "--model", "image",
                     "--config", spec["config"], "--validation-fold", str(EVALUATION_FOLD),
                     "--set", "train.validate=false", "--strategy", "one_device",
                     "--workdir", str(run_dir), "--export", str(export_dir)]
        for assignment in spec.get("sets", []):
            arguments += ["--set", assignment]
        if self.args.epochs:
            arguments += ["--epochs", str(self.args.epochs)]
        if self.args.steps_per_epoch:
            arguments += ["--set", f"train.steps_per_epoch={self.args.steps_per_epoch}"]
        load_at_start = list(os.getloadavg())
        step = self.runner.run(f"train_{method}", "train.py", arguments,
                               [export_dir / "tf_shopee_export.json",
                                run_dir / "final_metrics.json"])
        history = read_json(run_dir / "history.json")
        trained = [record for record in history["epochs"] if record.get("epoch", 0) >= 1]
        config = read_json(run_dir / "config.json")
        batch = config["train"]["batch_size"]
        train_seconds = sum(record.get("train_seconds", 0.0) for record in trained)
        images = sum(record.get("steps", 0) for record in trained) * batch
        self.report.setdefault("models", {})[method] = {
            "description": spec["description"],
            "config_file": spec["config"],
            "config_overrides": spec.get("sets", []),
            "command": step["command"],
            "wall_seconds": step["wall_seconds"],
            "train_seconds": round(train_seconds, 1),
            "images_per_second": round(images / train_seconds, 2) if train_seconds else None,
            "steady_images_per_second": round(
                sum(record.get("examples_per_second", 0.0) * record.get("steps", 0)
                    for record in trained) / max(1, images // batch), 2) if trained else None,
            "epochs_trained": len(trained),
            "epochs": [{key: record.get(key) for key in
                        ("epoch", "loss", "accuracy", "examples_per_second", "train_seconds")}
                       for record in trained],
            # Only known when the training ran in this invocation (a reused step: see its log).
            "load_average_at_start": None if step["skipped"] else load_at_start,
            "load_average_at_end": None if step["skipped"] else list(os.getloadavg()),
        }
        return export_dir

    def concatenate(self, method: str) -> Path:
        """Train the parts (each its own row's training), then ``python -m tf_shopee.export
        concat`` them; the training time is the parts' sum."""
        spec = CONCATENATED_MODELS[method]
        parts = [self.train(part) for part in spec["parts"]]
        export_dir = self.workdir / "saved_models" / method
        step = self.runner.run(f"concat_{method}", "-m",
                               ["tf_shopee.export", "concat", *map(str, parts), str(export_dir),
                                "--quiet"],
                               [export_dir / "tf_shopee_export.json"])
        models = self.report["models"]
        facts = [models[part] for part in spec["parts"]]
        self.report["models"][method] = {
            "description": spec["description"],
            "parts": spec["parts"],
            "command": step["command"],
            "train_seconds": round(sum(fact["train_seconds"] for fact in facts), 1),
            "epochs_trained": sum(fact["epochs_trained"] for fact in facts),
            "images_per_second": None,
            "load_average_at_start": [fact.get("load_average_at_start") for fact in facts],
            "load_average_at_end": [fact.get("load_average_at_end") for fact in facts],
        }
        return export_dir

    # -- prediction ------------------------------------------------------------------------------

    def _predict(self, name: str, fold: int, flags: list[str], extra: list[str]) -> dict:
        out_dir = self.predictions / name
        out_dir.mkdir(parents=True, exist_ok=True)
        report_path = out_dir / "report.json"
        arguments = ["--tfrecords", str(self.tfrecords), "--fold", str(fold), *flags, *extra,
                     "--evaluate", "--report", str(report_path),
                     "--out", str(out_dir / "matches.csv"), "--cache-dir", str(self.cache_dir),
                     "--quiet"]
        step = self.runner.run(f"predict_{name}", "predict.py", arguments, [report_path])
        report = read_json(report_path)
        report["command"] = step["command"]
        return report

    def evaluate(self, method: str, description: str, flags: list[str], source: str) -> dict:
        """The decision (thresholds and post-processing) searched on fold 1, applied to fold 0;
        the source's best plain threshold from fold 1 (no blending, no min2) beside it, and the
        oracle (fold 0's own search). A row is keyed by the method, plus the decision when it is
        not the shipped one (``lite0_recipe+count_inb2``) and the views when there are any."""
        search_flags = DECISIONS[self.args.decision]
        key = row_key(method, self.args.decision, self.args.tta)
        if key != method:
            description += f" [{self.args.decision}" + (
                f", --tta {self.args.tta}" if self.args.tta else "") + "]"
            method = key
        search_dir = self.predictions / f"{method}_search_fold{SELECTION_FOLD}"
        search = self._predict(f"{method}_search_fold{SELECTION_FOLD}", SELECTION_FOLD,
                               flags + search_flags,
                               ["--search-thresholds", str(search_dir)])
        thresholds_file = search_dir / "thresholds.json"
        # The source alone with its best plain threshold on fold 1: what the embeddings give
        # before any post-processing.
        alone_threshold = best_plain_thresholds(thresholds_file)[source]
        alone = self._predict(f"{method}_alone_fold0", EVALUATION_FOLD,
                              flags + ["--no-min2", "--inb-iterations", "0",
                                       "--threshold-method", "fixed"],
                              ["--threshold", f"{source}={alone_threshold}"])
        searched = self._predict(f"{method}_fold0", EVALUATION_FOLD, flags,
                                 ["--thresholds", str(thresholds_file)])
        oracle_dir = self.predictions / f"{method}_oracle_fold0"
        oracle = self._predict(f"{method}_oracle_fold0", EVALUATION_FOLD,
                               flags + search_flags,
                               ["--search-thresholds", str(oracle_dir)])
        oracle_sweep = read_json(oracle_dir / "thresholds.json")["sources"][source]["sweep"]
        entry = {
            "description": description,
            "model": key.split("+")[0],
            "decision_search": self.args.decision,
            "tta": self.args.tta or None,
            "source": source,
            "f1_alone": round(alone["f1"][source], 4),
            "oracle_f1_alone": round(max(oracle_sweep["f1"]), 4),
            "threshold_alone": alone_threshold,
            "f1": round(searched["f1"]["combined"], 4),
            "recall_at_1": _rounded((searched.get("recall_at_1") or {}).get(source)),
            "decision": searched.get("decision"),
            "post_processing": {key: searched.get(key) for key in
                                ("thresholds", "min2", "inb")},
            "thresholds_chosen_on": f"predict.py --search-thresholds on fold {SELECTION_FOLD} "
                                    "(a training fold of the fine-tuned models)",
            "oracle_f1": round(oracle["f1"]["combined"], 4),
            "oracle_note": "decision searched on fold 0 itself: a bound, not a result",
            "commands": {"search": search["command"],
                         "alone": alone["command"], "evaluate": searched["command"],
                         "oracle": oracle["command"]},
        }
        self.report.setdefault("methods", {})[method] = entry
        print(f"  {method:<20} F1 {entry['f1']:.4f} (alone {entry['f1_alone']:.4f}, oracle "
              f"{entry['oracle_f1']:.4f}) recall@1 {entry['recall_at_1']}", flush=True)
        return entry

    # -- query vs catalogue ----------------------------------------------------------------------

    def catalogue(self, method: str, export_dir: Path) -> dict:
        """Fold-0 shelf photos against the 27 fold-0 catalogue images and against all 81,
        through ``catalog build`` and ``predict.py --catalog`` (benchmarks/quality_catalog.py):
        top-1 accuracy, i.e. the first catalogue id listed for a photo is its product. With
        ``--tta`` the shelf photos (and the catalogue images) are embedded as the mean of their
        views; with ``--catalog-augment N`` each catalogue image is N views searched as one."""
        views = []
        name = method
        if self.args.tta:
            views += ["--tta", self.args.tta]
            name += f"+tta_{self.args.tta.replace(',', '_')}"
        if self.args.catalog_augment > 1:
            views += ["--catalog-augment", str(self.args.catalog_augment)]
            name += f"+augment{self.args.catalog_augment}"
        workdir = self.workdir / "catalogue" / name
        result_path = self.workdir / "catalogue" / f"{name}.json"
        step = self.runner.run(
            f"catalogue_{name}", "-m",
            ["benchmarks.quality_catalog", "--image-model", str(export_dir),
             "--grocery", str(self.data), "--workdir", str(workdir), "--json", str(result_path),
             *views],
            [result_path])
        raw = read_json(result_path)
        result = {"recall_at_1_fold0_catalogue": raw["catalogues"]["27"]["recall_at_1_image"],
                  "recall_at_1_all_catalogue": raw["catalogues"]["81"]["recall_at_1_image"],
                  "top1_fold0_catalogue": raw["catalogues"]["27"]["top1_accuracy"],
                  "top1_all_catalogue": raw["catalogues"]["81"]["top1_accuracy"],
                  "tta": self.args.tta or None,
                  "catalog_augment": self.args.catalog_augment,
                  "command": step["command"]}
        method = row_key(method, self.args.decision, self.args.tta)
        # The photos' F1 does not depend on the catalogue's views: an augmented catalogue's
        # result is kept beside the plain one, not over it.
        slot = ("catalogue" if self.args.catalog_augment <= 1
                else f"catalogue+augment{self.args.catalog_augment}")
        self.report["methods"][method][slot] = result
        print(f"  {method:<20} catalogue recall@1: "
              f"{result['recall_at_1_fold0_catalogue']:.4f} of 27, "
              f"{result['recall_at_1_all_catalogue']:.4f} of 81 (top-1 "
              f"{result['top1_fold0_catalogue']:.4f}, {result['top1_all_catalogue']:.4f})",
              flush=True)
        return result


def row_key(method: str, decision: str, tta: str) -> str:
    """A row's key: the method, ``+<decision>`` for another than the shipped one, and
    ``+tta_<views>`` with test-time views."""
    key = method if decision == "shipped" else f"{method}+{decision}"
    return f"{key}+tta_{tta.replace(',', '_')}" if tta else key


def _rounded(value):
    return None if value is None else round(float(value), 4)


def markdown_table(report: dict) -> str:
    """The fold-0 table of the README."""
    lines = ["| method (fold 0: 979 photos, 27 unseen products) | **mean F1**, decision from fold 1"
             " | oracle | raw cosine alone, threshold from fold 1 | oracle | recall@1 | catalogue "
             "recall@1 (27 / 81) | training |",
             "|---|---|---|---|---|---|---|---|"]
    models = report.get("models", {})
    for method, entry in report.get("methods", {}).items():
        catalogue = entry.get("catalogue")
        shown_catalogue = (f"{catalogue['recall_at_1_fold0_catalogue']:.3f} / "
                           f"{catalogue['recall_at_1_all_catalogue']:.3f}" if catalogue else "—")
        facts = models.get(entry.get("model", method), {})
        if facts.get("parts"):
            training = (f"{' + '.join(facts['parts'])}: {facts['train_seconds'] / 60:.0f} min "
                        "in all")
        elif facts.get("epochs_trained"):
            training = (f"{facts['epochs_trained']} epochs, {facts['train_seconds'] / 60:.0f} "
                        f"min, {facts['images_per_second']} images/s")
        else:
            training = "none"
        recall = entry.get("recall_at_1")
        lines.append(f"| {entry['description']} | **{entry['f1']:.4f}** | {entry['oracle_f1']:.4f}"
                     f" | {entry['f1_alone']:.4f} | {entry['oracle_f1_alone']:.4f}"
                     f" | {'—' if recall is None else f'{recall:.4f}'}"
                     f" | {shown_catalogue} | {training} |")
    return "\n".join(lines)


def targets(report: dict) -> dict:
    """The issue's fold-0 targets against the fine-tuned rows, and the zero-shot reference."""
    methods = report.get("methods", {})
    result = {}
    zero_shot = methods.get("zero_shot_lite0")
    if zero_shot:
        result["zero_shot_reproduces_reference"] = {
            "reference": ZERO_SHOT_REFERENCE,
            "recall_at_1": zero_shot["recall_at_1"],
            "f1_alone_best_threshold_of_fold0": zero_shot["oracle_f1_alone"],
            "f1_alone_threshold_from_fold1": zero_shot["f1_alone"],
            "within_0.01": abs(zero_shot["oracle_f1_alone"] - ZERO_SHOT_REFERENCE["f1"]) <= 0.01
            and zero_shot["recall_at_1"] is not None
            and abs(zero_shot["recall_at_1"] - ZERO_SHOT_REFERENCE["recall_at_1"]) <= 0.01,
            "note": "the reference is the raw cosine at fold 0's best threshold (no blending, "
                    "no min2), so it is compared with fold 0's own best plain threshold",
        }
    for key, entry in methods.items():
        model = entry.get("model", key)
        if model not in FINE_TUNED_MODELS and model not in CONCATENATED_MODELS:
            continue
        facts = report.get("models", {}).get(model, {})
        catalogue = entry.get("catalogue") or {}
        minutes = round(facts.get("train_seconds", 0) / 60, 1)
        result[key] = {
            "f1": entry["f1"], "recall_at_1": entry["recall_at_1"], "train_minutes": minutes,
            # The targets of the issue that brought these rows (issue 20).
            "f1_at_least_0.90": entry["f1"] >= RECIPE_TARGETS["f1"],
            "recall_at_1_at_least_0.995": (entry["recall_at_1"] or 0)
            >= RECIPE_TARGETS["recall_at_1"],
            "train_minutes_at_most_30": minutes <= RECIPE_TARGETS["train_minutes"],
            # The catalogue targets are recall@1: the nearest catalogue image is the product.
            "catalogue_recall_at_1_27_at_least_0.80": (
                catalogue.get("recall_at_1_fold0_catalogue") or 0)
            >= RECIPE_TARGETS["catalogue_27"],
            "catalogue_recall_at_1_81_at_least_0.75": (
                catalogue.get("recall_at_1_all_catalogue") or 0)
            >= RECIPE_TARGETS["catalogue_81"],
        }
    return result


def build_argument_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the module docstring for the protocol and how thresholds are chosen.",
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="the grocery folder (default ../shared/data/grocery)")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR),
                        help=f"TFRecords, runs, exports, predictions (default {DEFAULT_WORKDIR})")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="results file to write")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)} "
                        f"(default {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--epochs", type=int, default=0,
                        help="override the fine-tuning configs' epochs (0: keep the config's)")
    parser.add_argument("--steps-per-epoch", type=int, default=0,
                        help="cap the training steps per epoch (smoke runs; 0: whole folds)")
    parser.add_argument("--decision", default="shipped", choices=sorted(DECISIONS),
                        help="how the decision is searched on fold 1 (see DECISIONS; default "
                        "shipped)")
    parser.add_argument("--tta", default="",
                        help="test-time views of every photo, averaged: flip, crop or flip,crop "
                        "(predict.py --tta; default none)")
    parser.add_argument("--catalog-augment", type=int, default=1, metavar="N",
                        help="views per catalogue image in the catalogue rows (catalog build "
                        "--catalog-augment; default 1)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for the project's commands (default: this one)")
    return parser


@exit_on_user_error
def main(argv=None) -> int:
    """Run the protocol (see the module docstring); 0 also when the data is absent."""
    args = build_argument_parser().parse_args(argv)
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = [name for name in methods if name not in METHODS]
    if unknown or not methods:
        raise UserError(f"--methods: unknown method(s) {', '.join(unknown) or '(none)'}; "
                        f"choose from {', '.join(METHODS)}")
    if not (Path(args.data) / "postings.csv").is_file():
        print(f"skipped: the grocery photos {args.data} are absent (a fresh clone has no "
              "../shared); nothing to measure")
        return 0
    json_path = Path(args.json)
    # Rows of methods not run this time are kept from a results file of the same workdir.
    report = read_json(json_path) if same_run(json_path, args.workdir) else {}
    report.update({
        "protocol": "see benchmarks/quality_image.py's docstring: GroupKFold(3) by product, "
                    "train on folds 1+2, report fold 0; thresholds and post-processing chosen "
                    f"on fold {SELECTION_FOLD}; oracle = fold 0's own search (a bound)",
        "settings": {"workdir": str(Path(args.workdir).resolve()), "methods": methods,
                     "decision": args.decision, "tta": args.tta or None,
                     "catalog_augment": args.catalog_augment,
                     "epochs": args.epochs or "config",
                     "steps_per_epoch": args.steps_per_epoch or "whole folds"},
        "command": command_line("quality_image", argv),
        "environment": environment(),
    })
    job = QualityImage(args, report)
    started = time.perf_counter()

    def save() -> None:
        report["targets"] = targets(report)
        report["table_markdown"] = markdown_table(report)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_path, relative_paths(report, REPOSITORY))

    job.convert()
    image_only = ["--no-tfidf", "--no-phash"]
    for method in methods:
        print(f"== {method}", flush=True)
        if method == "phash":
            job.evaluate("phash", "image pHash (Hamming distance, no model)", ["--no-tfidf"],
                         "phash")
        else:
            if method in INITIAL_MODELS:
                export_dir = job.export_initial(method)
                description = INITIAL_MODELS[method]["description"]
            elif method in CONCATENATED_MODELS:
                export_dir = job.concatenate(method)
                description = CONCATENATED_MODELS[method]["description"]
            else:
                export_dir = job.train(method)
                description = FINE_TUNED_MODELS[method]["description"]
            views = ["--tta", args.tta] if args.tta else []
            job.evaluate(method, description,
                         ["--model", str(export_dir), *image_only, *views], "image")
            if method != "random_lite0":
                job.catalogue(method, export_dir)
        save()
    report["script_wall_seconds_this_run"] = round(time.perf_counter() - started, 1)
    save()
    print()
    print(report["table_markdown"])
    print()
    print(json.dumps(report["targets"], indent=1))
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
