"""What the training job needs to know about its TFRecords: label count, folds, sizes, titles."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tf_shopee.config import RunConfig
from tf_shopee.data.images import image_problem
from tf_shopee.data.manifest import load_manifest
from tf_shopee.data.pipeline import dataset_size, make_dataset
from tf_shopee.data.studio import CatalogMix
from tf_shopee.errors import UserError
from tf_shopee.models.kind import ModelKind
from tf_shopee.training.trainer import input_names

logger = logging.getLogger("tf_shopee.training")


@dataclass
class DataFacts:
    """What the manifest says about the training data."""

    directory: str
    manifest: dict
    num_classes: int
    num_folds: int
    train_folds_excluded: list[int] | None
    validation_folds: list[int] | None
    train_examples: int
    validation_examples: int
    label_counts: list[int] = field(default_factory=list)


def read_data_facts(config: RunConfig) -> DataFacts:
    """Load the manifest of ``config.data.tfrecords`` and check it can train ``config``."""

    directory = config.data.tfrecords
    if not directory:
        raise UserError("no training data: pass --data TFRECORD_DIR")
    manifest = load_manifest(directory)
    if not manifest.get("has_labels"):
        raise UserError(f"{directory} has no labels (a test set): training needs label_group")
    if config.model.kind.uses_images and not manifest.get("has_images"):
        raise UserError(
            f"{directory} is text-only (converted without images): train --model text on it"
        )
    num_classes = int(manifest["num_labels"])
    num_folds = int(manifest.get("num_folds", 0))
    fold = config.data.validation_fold
    holdout = config.data.holdout_fold_list()
    outside = [value for value in holdout if value >= num_folds]
    if outside:
        raise UserError(f"data.holdout_folds {config.data.holdout_folds!r}: {directory} has folds "
                        f"0..{num_folds - 1}")
    if fold >= 0:
        if num_folds < 2:
            raise UserError(
                f"{directory} has {num_folds} folds: validation needs at least 2 "
                "(convert with --folds, or train on everything with --validation-fold -1)"
            )
        if fold >= num_folds:
            raise UserError(
                f"--validation-fold {fold} is out of range: {directory} has folds "
                f"0..{num_folds - 1}"
            )
        excluded, validation = sorted({fold, *holdout}), [fold]
        train_examples = dataset_size(manifest, exclude_folds=excluded)
        validation_examples = dataset_size(manifest, folds=validation)
    else:
        excluded, validation = (holdout or None), None
        train_examples = dataset_size(manifest, exclude_folds=excluded)
        validation_examples = 0
    return DataFacts(
        directory=directory,
        manifest=manifest,
        num_classes=num_classes,
        num_folds=num_folds,
        train_folds_excluded=excluded,
        validation_folds=validation,
        train_examples=train_examples,
        validation_examples=validation_examples,
        label_counts=list(manifest.get("label_counts") or []),
    )


def training_titles(facts: DataFacts) -> list[str]:
    dataset = make_dataset(
        facts.directory,
        training=False,
        global_batch_size=1024,
        image_size=None,
        exclude_folds=facts.train_folds_excluded,
        with_image=False,
        repeat=False,
    )
    titles = []
    for batch in dataset:
        titles.extend(title.decode("utf-8", "replace") for title in batch["title"].numpy())
    return titles


def model_batch(kind: ModelKind):
    """Keep only what the replicas need: strings cannot be sent to TPUs, and are not used."""
    keys = input_names(kind) + ("label",)
    return lambda batch: {key: batch[key] for key in keys}


def fold_labels(facts: DataFacts) -> tuple[set[int], set[int]]:
    """Dense labels present in the training folds, and in the folds kept out of training."""
    dataset = make_dataset(facts.directory, training=False, global_batch_size=1024,
                           image_size=None, with_image=False, repeat=False)
    excluded = set(facts.train_folds_excluded or [])
    training, held_out = set(), set()
    for batch in dataset:
        for label, fold in zip(batch["label"].numpy().tolist(), batch["fold"].numpy().tolist()):
            (held_out if fold in excluded else training).add(int(label))
    return training, held_out


def catalog_mix(config: RunConfig, facts: DataFacts, say=logger.info) -> CatalogMix | None:
    """The catalogue photos of training-fold products (``data.catalog_csv``), or None.

    A row joins when its label_group is in the TFRecords' label map and its product has photos
    in the training folds and none in the validation or held-out folds: a product the model is
    evaluated on never enters training through its catalogue photo.

    Raises:
        UserError: unreadable CSV, missing columns, or no row of a training product.
    """
    import pandas as pd

    from tf_shopee.io_utils import read_json

    data = config.data
    if not data.catalog_csv:
        return None
    csv_path = Path(data.catalog_csv)
    if not csv_path.is_file():
        raise UserError(f"data.catalog_csv: file not found: {csv_path}")
    images_dir = Path(data.catalog_images) if data.catalog_images else csv_path.parent
    if not images_dir.is_dir():
        raise UserError(f"data.catalog_images: folder not found: {images_dir}")
    try:
        table = pd.read_csv(csv_path, dtype={"image": str}, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise UserError(f"data.catalog_csv: cannot read {csv_path} ({error})") from None
    missing = [column for column in ("image", "label_group") if column not in table.columns]
    if missing:
        raise UserError(f"data.catalog_csv: {csv_path} has no {', '.join(missing)} column")
    label_map_path = Path(facts.directory) / "label_map.json"
    if not label_map_path.is_file():
        raise UserError(f"{facts.directory} has no label_map.json: catalogue photos need the "
                        "training data's label map")
    label_map = {str(key): int(value) for key, value in read_json(label_map_path).items()}
    training, held_out = fold_labels(facts)
    photos, labels, skipped = [], [], {"not in the label map": 0, "held-out product": 0,
                                       "product not in the training folds": 0,
                                       "unreadable photo": 0}
    problems = []
    for row in table.itertuples(index=False):
        key = str(row.label_group).strip()
        if key.endswith(".0"):
            key = key[:-2]
        label = label_map.get(key)
        if label is None:
            skipped["not in the label map"] += 1
        elif label in held_out:
            skipped["held-out product"] += 1
        elif label not in training:
            skipped["product not in the training folds"] += 1
        else:
            try:
                photo = (images_dir / row.image).read_bytes()
            except OSError:
                skipped["unreadable photo"] += 1
                continue
            # Checked here: a photo that does not decode would stop training at a random step.
            problem = image_problem(photo, str(row.image))
            if problem is not None:
                skipped["unreadable photo"] += 1
                problems.append(problem)
                continue
            photos.append(photo)
            labels.append(label)
    if problems:
        logger.warning("data.catalog_csv: %d catalogue photo(s) left out, e.g. %s",
                       len(problems), "; ".join(problems[:3]))
    shown = ", ".join(f"{count} {reason}" for reason, count in skipped.items() if count)
    say(f"catalogue photos in training: {len(photos)} of {len(table)} rows of {csv_path} join as "
        f"members of their class, {data.catalog_fraction:.0%} of the examples"
        + (f" (left out: {shown})" if shown else ""))
    if not photos:
        raise UserError(f"data.catalog_csv: no row of {csv_path} belongs to a product of the "
                        f"training folds ({shown or 'empty file'})")
    return CatalogMix(image_bytes=tuple(photos), labels=tuple(labels),
                      fraction=data.catalog_fraction,
                      shelf_background_probability=data.catalog_shelf_background)
