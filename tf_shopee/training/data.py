"""What the training job needs to know about its TFRecords: label count, folds, sizes, titles."""

from __future__ import annotations

from dataclasses import dataclass, field

from tf_shopee.config import RunConfig
from tf_shopee.data.manifest import load_manifest
from tf_shopee.data.pipeline import dataset_size, make_dataset
from tf_shopee.errors import UserError
from tf_shopee.models.kind import ModelKind
from tf_shopee.training.trainer import input_names


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
