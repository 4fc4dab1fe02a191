"""The whole pipeline on a synthetic mini-Shopee set, end to end, on a CPU in a few minutes.

``make demo`` runs ``python -m tf_shopee.demo --workdir demo_run``:

1. generate a synthetic Shopee-style set (``tf_shopee.data.synthetic``);
2. convert it to TFRecords with 5 GroupKFold folds (``convert_tfrecords.py``);
3. train a tiny image model and a tiny text model on folds 1-4, validating on fold 0
   (``train.py --tiny``), and export them, together with the same models untrained;
4. predict on the held-out fold 0 with the trained and with the untrained models
   (``predict.py --tfrecords ... --fold 0 --evaluate``);
5. print mean F1 per source and combined, untrained beside trained.

Each step is the library function behind the corresponding script, so the demo is also a short
tutorial of the Python API. Steps whose output already exists are reused, so a second
``make demo`` only predicts again; ``--fresh`` starts over.
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

logger = logging.getLogger("tf_shopee.demo")

DEMO_FOLDS = 5
VALIDATION_FOLD = 0
MODEL_KINDS = ("image", "text")


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def generate_and_convert(workdir: Path, *, postings: int, seed: int, image_size: int) -> Path:
    """Steps 1-2: synthetic CSV + photos, then TFRecords; returns the TFRecord folder."""
    from tf_shopee.data.convert import convert_csv
    from tf_shopee.data.synthetic import generate_dataset

    data_dir = workdir / "data"
    csv_path = data_dir / "train.csv"
    if not csv_path.is_file():
        _banner(f"1. generate {postings} synthetic postings ({image_size} px photos)")
        started = time.perf_counter()
        generate_dataset(data_dir, postings=postings, seed=seed, image_size=image_size)
        print(f"   done in {time.perf_counter() - started:.1f} s → {csv_path}")
    else:
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


def train_models(workdir: Path, tfrecord_dir: Path, *, epochs: dict[str, int], seed: int) -> dict:
    """Step 3: train and export each tiny model, plus its untrained twin; returns export folders.

    A model already exported with the same settings (a second ``make demo``) is reused.
    """
    from tf_shopee.config import RunConfig, tiny_overrides
    from tf_shopee.training import train_and_evaluate

    exports = {}
    for kind in MODEL_KINDS:
        trained_dir = workdir / "saved_models" / kind
        untrained_dir = workdir / "saved_models" / f"{kind}_untrained"
        exports[kind] = (trained_dir, untrained_dir)
        config = RunConfig(name=f"demo_{kind}")
        config.override(tiny_overrides(kind))
        config.override([
            f"model.kind={kind}",
            f"data.tfrecords={tfrecord_dir}",
            f"data.validation_fold={VALIDATION_FOLD}",
            f"train.epochs={epochs[kind]}",
            f"train.seed={seed}",
            "train.strategy=one_device",
        ])
        if _exported_with(trained_dir, config) and _exported_with(untrained_dir, None):
            _banner(f"3. {kind} model already trained: {trained_dir}")
            continue
        _banner(f"3. train the tiny {kind} model for {epochs[kind]} epochs (fold "
                f"{VALIDATION_FOLD} held out)")
        metrics = train_and_evaluate(
            config,
            workdir / "runs" / kind,
            export_dir=trained_dir,
            untrained_export_dir=untrained_dir,
            overwrite_workdir=True,
        )
        print(f"   validation F1 {metrics.get('untrained_f1'):.4f} untrained → "
              f"{metrics.get('best_f1'):.4f} trained; exported to {trained_dir}")
    return exports


def predict_both(workdir: Path, tfrecord_dir: Path, exports: dict) -> dict:
    """Step 4: predict fold 0 with the untrained and with the trained models."""
    from tf_shopee.predict import PredictOptions, describe_options, run_prediction

    reports = {}
    for variant, position in (("untrained", 1), ("trained", 0)):
        _banner(f"4. predict the held-out fold {VALIDATION_FOLD} with the {variant} models")
        options = PredictOptions(
            tfrecords=str(tfrecord_dir),
            fold=VALIDATION_FOLD,
            models=[str(exports[kind][position]) for kind in MODEL_KINDS],
            out=str(workdir / f"submission_{variant}.csv"),
            evaluate=True,
            report=str(workdir / f"report_{variant}.json"),
            cache_dir=str(workdir / "embedding_cache"),
            progress=False,
        )
        # The settings that decide the matches, so the numbers can be reproduced with predict.py
        # (the same defaults: PredictOptions and predict.py's flags share them).
        print(f"   predict options: {describe_options(options)}")
        reports[variant] = run_prediction(options)
        decision = reports[variant]["decision"]
        print(f"   decision: union of {', '.join(decision['sources'])}; thresholds "
              f"{reports[variant]['thresholds']}; min2 {reports[variant]['min2']}; blending "
              f"{reports[variant]['inb'] or 'off'}")
    return reports


def format_comparison(reports: dict) -> str:
    """Step 5: mean F1 per source, untrained beside trained."""
    untrained = reports["untrained"]["f1"]
    trained = reports["trained"]["f1"]
    names = list(dict.fromkeys([*trained, *untrained]))
    width = max(len("source"), *(len(name) for name in names))
    lines = [
        f"{'source':<{width}}  untrained  trained",
        f"{'-' * width}  ---------  -------",
    ]
    for name in names:
        before = untrained.get(name)
        after = trained.get(name)
        lines.append(
            f"{name:<{width}}  {before if before is None else format(before, '9.4f'):>9}"
            f"  {after if after is None else format(after, '7.4f'):>7}"
        )
    return "\n".join(lines)


def run_demo(workdir: str | Path, *, postings: int = 3000, seed: int = 0, image_size: int = 96,
             image_epochs: int = 6, text_epochs: int = 5, fresh: bool = False) -> dict:
    """Run every step; returns ``{"untrained": report, "trained": report}`` (predict reports)."""
    workdir = Path(workdir)
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tfrecord_dir = generate_and_convert(workdir, postings=postings, seed=seed,
                                        image_size=image_size)
    exports = train_models(workdir, tfrecord_dir,
                           epochs={"image": image_epochs, "text": text_epochs}, seed=seed)
    reports = predict_both(workdir, tfrecord_dir, exports)
    _banner(f"5. mean F1 on the held-out fold {VALIDATION_FOLD} "
            f"({reports['trained']['rows']} postings)")
    print(format_comparison(reports))
    write_json_atomic(workdir / "demo_summary.json", reports)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; outputs in {workdir}")
    return reports


def build_argument_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m tf_shopee.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m tf_shopee.demo",
        description="Run the whole tf_shopee pipeline on a synthetic mini-Shopee set: generate → "
        "convert → train tiny image and text models → export → predict the held-out fold → "
        "F1 table (trained vs untrained).",
    )
    parser.add_argument("--workdir", default="demo_run", help="output folder (default demo_run)")
    parser.add_argument("--postings", type=int, default=3000,
                        help="synthetic postings (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--image-size", type=int, default=96,
                        help="side of the synthetic photos in pixels (default 96)")
    parser.add_argument("--image-epochs", type=int, default=6,
                        help="image model epochs (default 6)")
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
