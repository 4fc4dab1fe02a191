"""The postings a run matches: reading them from a CSV (+ image folder) or a TFRecord folder.

A :class:`Postings` holds, in output order, what every later stage needs: ids, titles, phashes,
labels when present, and where each photo comes from (a path under the image folder, or the
bytes stored in a TFRecord). Photos are not read here; :mod:`tf_shopee.matching.embedding` reads
them batch by batch and records the ones that cannot be used in ``bad_images``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tf_shopee.data.manifest import load_manifest, name_damaged_shards, shard_paths
from tf_shopee.data.postings_csv import read_csv_table
from tf_shopee.errors import UserError

logger = logging.getLogger("tf_shopee.matching")


@dataclass
class Postings:
    """The postings to match, in output order."""

    posting_ids: list[str]
    titles: list[str]
    image_phashes: list[str] | None = None
    label_groups: np.ndarray | None = None
    image_paths: list[str] | None = None  # from --images
    image_names: list[str] | None = None  # the CSV's image column, for messages
    image_bytes: list[bytes] | None = None  # from --tfrecords
    # Rows whose image cannot be used (missing, empty, truncated, not an image) → the reason.
    # They get no image embedding; their other sources still match them.
    bad_images: dict[int, str] = field(default_factory=dict)
    encoding: object = None  # the CSV's CsvEncoding, when read from a CSV

    def __len__(self) -> int:
        return len(self.posting_ids)

    @property
    def has_images(self) -> bool:
        return self.image_paths is not None or self.image_bytes is not None

    def data_key(self) -> str:
        """A hash of what the embeddings depend on: ids, titles and image identities."""
        digest = hashlib.sha256()
        for posting_id, title in zip(self.posting_ids, self.titles):
            digest.update(posting_id.encode("utf-8") + b"\x00" + title.encode("utf-8") + b"\x01")
        if self.image_paths is not None:
            for path in self.image_paths:
                try:
                    stat = os.stat(path)
                    identity = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
                except OSError:  # missing: the posting is left out of the image sources
                    identity = f"{path}|missing"
                digest.update(f"{identity}\x02".encode("utf-8"))
        if self.image_bytes is not None:
            for payload in self.image_bytes:
                digest.update(hashlib.sha256(payload).digest())
        return digest.hexdigest()[:20]



def read_postings(*, csv: str = "", images: str = "", tfrecords: str = "",
                  fold: int | None = None, encoding: str | None = None) -> Postings:
    """Read postings from a CSV (with its image folder ``images``) or a TFRecord folder.

    The CSV is read by :func:`tf_shopee.data.postings_csv.read_csv_table`, the reader
    ``convert_tfrecords.py`` uses, so both tools see the same ids, titles and labels.

    Args:
        csv: a Shopee-style CSV (or a .zip holding one); with ``tfrecords``, only its postings
            are kept, in its order.
        images: the folder the CSV's image column is relative to (photos are read lazily).
        tfrecords: a folder written by ``convert_tfrecords.py`` (photos come from its records).
        fold: with ``tfrecords``, only the postings of this fold.
        encoding: the CSV's text encoding; None detects it.

    Raises:
        UserError: no input, a fold without TFRecords, a missing or wrong image folder, postings
            of the CSV absent from the TFRecords, and every problem the CSV reader reports.
    """
    if tfrecords:
        postings = _read_tfrecord_postings(tfrecords, fold)
        if csv:
            table = _read_csv(csv, encoding)
            postings = _align_to_csv(postings, table.posting_ids)
            postings.encoding = table.encoding
        return postings
    if not csv:
        raise UserError("give --csv (with --images for image models) or --tfrecords")
    if fold is not None:
        raise UserError("--fold selects a fold of a TFRecord folder: use it with --tfrecords")
    table = _read_csv(csv, encoding)
    postings = Postings(
        posting_ids=table.posting_ids,
        titles=table.titles,
        # None when no row has one (no column, or an empty one), as the catalogue code expects.
        image_phashes=table.phashes if any(table.phashes) else None,
        label_groups=None if table.label_groups is None
        else np.asarray(table.label_groups, dtype=np.int64),
        encoding=table.encoding,
    )
    if images:
        postings.image_paths, postings.bad_images = _image_paths(table, images, csv)
        postings.image_names = table.images
    return postings


def _read_csv(path: str, encoding: str | None):
    table = read_csv_table(path, encoding=encoding)
    notice = table.encoding.notice(path)
    if notice:
        logger.warning(notice)
    return table


def _image_paths(table, images_dir: str, csv_path: str) -> tuple[list[str], dict[int, str]]:
    """Each row's image path, and the rows whose image is missing or outside the folder (with
    the reason); those are matched by their other sources. Every image missing is an error:
    most likely the wrong folder."""
    if table.images is None:
        raise UserError(f"--images was given but CSV {csv_path} has no 'image' column")
    root = Path(images_dir)
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    root = root.resolve()
    paths, bad = [], {}
    for row, name in enumerate(table.images):
        path = (root / name).resolve()
        if not name:
            bad[row] = "no image named in the CSV"
        elif root not in path.parents:
            bad[row] = f"{name} is outside the image folder {root}"
        elif not path.is_file():
            bad[row] = f"{name} not found in {root}"
        paths.append(str(path))
    if len(bad) == len(paths):
        shown = "; ".join(bad[row] for row in list(bad)[:3])
        raise UserError(
            f"none of the {len(paths)} images listed in {csv_path} is in {root} ({shown} ...): "
            "is --images the right folder?"
        )
    return paths, bad


def _read_tfrecord_postings(directory: str, fold: int | None) -> Postings:
    import tensorflow as tf  # only here: reading a CSV needs no TensorFlow

    from tf_shopee.data.schema import MISSING_INTEGER, parse_postings

    manifest = load_manifest(directory)
    if fold is not None:
        if not manifest.get("has_labels") or manifest.get("num_folds", 0) <= 0:
            raise UserError(f"--fold {fold}: {directory} has no folds (an unlabelled set)")
        if not 0 <= fold < manifest["num_folds"]:
            raise UserError(f"--fold {fold}: {directory} has folds 0..{manifest['num_folds'] - 1}")
    dataset = tf.data.TFRecordDataset(shard_paths(directory)).batch(1024).map(parse_postings)
    columns: dict[str, list] = {name: [] for name in
                                ("posting_id", "title", "image_phash", "label_group", "image",
                                 "fold")}
    with name_damaged_shards(directory):
        for batch in dataset.as_numpy_iterator():
            keep = np.ones(len(batch["posting_id"]), dtype=bool)
            if fold is not None:
                keep = batch["fold"] == fold
            for name in columns:
                columns[name].extend(batch[name][keep].tolist())
    if not columns["posting_id"]:
        raise UserError(f"no postings selected from {directory}")
    has_images = bool(manifest.get("has_images"))
    labels = np.asarray(columns["label_group"], dtype=np.int64)
    return Postings(
        posting_ids=[value.decode("utf-8") for value in columns["posting_id"]],
        titles=[value.decode("utf-8", errors="replace") for value in columns["title"]],
        image_phashes=[value.decode("ascii", errors="replace") for value in columns["image_phash"]],
        label_groups=labels if manifest.get("has_labels") and (labels != MISSING_INTEGER).all()
        else None,
        image_bytes=columns["image"] if has_images else None,
    )


def _align_to_csv(postings: Postings, wanted: list[str]) -> Postings:
    """Keep the CSV's rows and order; every CSV posting must be in the TFRecords."""
    position = {posting_id: index for index, posting_id in enumerate(postings.posting_ids)}
    absent = [posting_id for posting_id in wanted if posting_id not in position]
    if absent:
        raise UserError(
            f"{len(absent)} posting(s) of the CSV are not in the TFRecords "
            f"(rejected at conversion, or another fold?): {', '.join(absent[:5])}"
        )
    order = [position[posting_id] for posting_id in wanted]

    def pick(values):
        return None if values is None else [values[index] for index in order]

    return Postings(
        posting_ids=wanted,
        titles=pick(postings.titles),
        image_phashes=pick(postings.image_phashes),
        label_groups=None if postings.label_groups is None else postings.label_groups[order],
        image_bytes=pick(postings.image_bytes),
    )
