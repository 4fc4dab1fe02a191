#!/usr/bin/env python
"""Catalogue task on real photos: grocery shelf photos matched against catalogue images.

    python -m benchmarks.quality_catalog --image-model saved_models/lite0 \\
        --json benchmarks/results/quality_catalog.json

Protocol (``../shared/data/grocery``, see its README): GroupKFold(n_splits=3) over
``label_group`` of ``postings.csv`` in file order; the queries are the fold-0 shelf photos (979
photos of 27 products that no training fold has seen), the catalogue is

* ``27``: the 27 fold-0 catalogue images of ``catalog.csv`` (one white-background photo per
  product), and
* ``81``: all 81 catalogue images (the other 54 products are distractors).

Each catalogue goes through the project's own commands, run as subprocesses::

    python -m tf_shopee.catalog build --csv catalog_27.csv --images GROCERY --model MODEL \\
        --out WORKDIR/index_27
    python predict.py --catalog WORKDIR/index_27 --csv queries.csv --images GROCERY \\
        --out WORKDIR/matches_27.csv --evaluate --report WORKDIR/report_27.json --no-phash

and the script collects top-1 accuracy (the first catalogue id written for a photo is its
product), recall@1 of the image source (its nearest catalogue image is the product) and mean F1.
The photos have no titles, so the image model is the only source; phash is switched off
(``--no-phash``): shelf photos and studio photos never share a perceptual hash. Nothing is tuned
on fold 0: the image threshold is the model's own (its export's), or ``--image-threshold``; it
does not change top-1 or recall@1 (min2 lists the nearest image when nothing passes).
``--query-blend N`` blends each shelf photo with its N nearest other shelf photos of fold 0 first
(no labels used: the queries are one batch of new listings).

Reference (grocery README, measured with ImageNet EfficientNet-Lite0 zero-shot): top-1 0.53
against 27 catalogue images, 0.31 against 81.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import GROCERY, REPOSITORY, command_line

DEFAULT_GROCERY = GROCERY
REFERENCE = {"27": 0.53, "81": 0.31}


def fold_zero(grocery: Path) -> tuple[pd.DataFrame, set]:
    """The fold-0 shelf photos (GroupKFold(3) over label_group, file order) and their labels."""
    from sklearn.model_selection import GroupKFold

    postings = pd.read_csv(grocery / "postings.csv", dtype={"posting_id": str, "image": str})
    folds = GroupKFold(n_splits=3)
    _, held_out = next(iter(folds.split(postings, groups=postings["label_group"])))
    queries = postings.iloc[held_out]
    return queries, set(queries["label_group"].tolist())


def run(command: list[str], log) -> float:
    """Run a project command; raise with its output when it fails; return its seconds."""
    started = time.perf_counter()
    print("$ " + " ".join(command), flush=True)
    completed = subprocess.run([sys.executable, *command], cwd=REPOSITORY, capture_output=True,
                               text=True)
    log.write(f"$ {' '.join(command)}\n{completed.stdout}\n{completed.stderr}\n")
    if completed.returncode != 0:
        raise SystemExit(f"command failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    return time.perf_counter() - started


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-model", required=True, metavar="DIR",
                        help="an exported image model (train.py --export; or a LiteRT .tflite "
                        "file), any backbone")
    parser.add_argument("--tta", default="",
                        help="test-time views (flip, crop, flip,crop) of the shelf photos and "
                        "of the catalogue images (predict.py / catalog build --tta)")
    parser.add_argument("--catalog-augment", type=int, default=1, metavar="N",
                        help="views per catalogue image, searched as one item (catalog build "
                        "--catalog-augment; default 1)")
    parser.add_argument("--query-blend", type=int, default=0, metavar="N",
                        help="blend each shelf photo with its N nearest other shelf photos "
                        "before the catalogue search (predict.py --query-blend; default 0: off)")
    parser.add_argument("--grocery", default=str(DEFAULT_GROCERY), metavar="DIR")
    parser.add_argument("--workdir", default="runs/quality_catalog", metavar="DIR")
    parser.add_argument("--image-threshold", type=float, default=None,
                        help="image threshold when the export has none (default 0.5)")
    parser.add_argument("--json", default="", help="write the results here")
    arguments = parser.parse_args(argv)
    grocery = Path(arguments.grocery)
    if not (grocery / "postings.csv").is_file():
        raise SystemExit(f"the grocery photos are not at {grocery}")
    workdir = Path(arguments.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    from tf_shopee.export import read_export_metadata

    metadata = read_export_metadata(arguments.image_model)
    build_views = ["--catalog-augment", str(arguments.catalog_augment)]
    query_views = []
    if arguments.tta:
        build_views += ["--tta", arguments.tta]
        query_views = ["--tta", arguments.tta]
    if arguments.query_blend:
        query_views += ["--query-blend", str(arguments.query_blend)]
    threshold_flags = []
    if arguments.image_threshold is not None or metadata.get("threshold") is None:
        threshold_flags = ["--threshold", f"image={arguments.image_threshold or 0.5}"]

    queries, labels = fold_zero(grocery)
    queries = queries.assign(title="")[["posting_id", "image", "title", "label_group"]]
    queries.to_csv(workdir / "queries.csv", index=False)
    catalogue = pd.read_csv(grocery / "catalog.csv", dtype={"posting_id": str})
    variants = {"27": catalogue[catalogue["label_group"].isin(labels)], "81": catalogue}
    result = {
        "command": command_line("quality_catalog", argv),
        "image_model": str(arguments.image_model),
        "image_model_metadata": {key: metadata.get(key) for key in
                                 ("kind", "embedding_dim", "image_size", "run_name",
                                  "threshold", "backbone", "backend", "quantization")},
        "tta": arguments.tta or None,
        "catalog_augment": arguments.catalog_augment,
        "query_blend": arguments.query_blend or None,
        "queries": len(queries),
        "query_products": len(labels),
        "reference_top1_lite0_zero_shot": REFERENCE,
        "load_average_before": [round(value, 2) for value in os.getloadavg()],
        "catalogues": {},
    }
    with open(workdir / "commands.log", "w", encoding="utf-8") as log:
        for name, rows in variants.items():
            rows.to_csv(workdir / f"catalog_{name}.csv", index=False)
            index = workdir / f"index_{name}"
            build_seconds = run(["-m", "tf_shopee.catalog", "build", "--csv",
                                 str(workdir / f"catalog_{name}.csv"), "--images", str(grocery),
                                 "--model", str(arguments.image_model), "--out", str(index),
                                 "--overwrite", "--quiet", *build_views], log)
            report_path = workdir / f"report_{name}.json"
            predict_seconds = run(["predict.py", "--catalog", str(index), "--csv",
                                   str(workdir / "queries.csv"), "--images", str(grocery),
                                   "--out", str(workdir / f"matches_{name}.csv"), "--evaluate",
                                   "--report", str(report_path), "--no-phash", "--quiet",
                                   *threshold_flags, *query_views], log)
            report = json.loads(report_path.read_text())
            result["catalogues"][name] = {
                "catalogue_images": len(rows),
                "top1_accuracy": report["top1_accuracy"],
                "recall_at_1_image": report["recall_at_1"].get("image"),
                "mean_f1": report["f1"]["combined"],
                "image_threshold": report["thresholds"].get("image"),
                "threshold_origin": report["threshold_origin"].get("image"),
                "build_seconds": round(build_seconds, 1),
                "predict_seconds": round(predict_seconds, 1),
            }
            print(f"catalogue of {len(rows)}: top-1 {report['top1_accuracy']:.4f} (reference "
                  f"{REFERENCE[name]}), mean F1 {report['f1']['combined']:.4f}", flush=True)
    result["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    if arguments.json:
        Path(arguments.json).parent.mkdir(parents=True, exist_ok=True)
        Path(arguments.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
