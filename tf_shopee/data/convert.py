"""CSV (+ image folder) → sharded TFRecords, label map, folds, rejects and manifest.

The library side of ``convert_tfrecords.py`` (console entry point ``tf-shopee-convert``)::

    python convert_tfrecords.py --csv train.csv --images train_images --out tfrecords/train

What it writes into ``--out`` (the shared contract read by :mod:`tf_shopee.data.manifest`):

* ``{split}-{i:05d}-of-{n:05d}.tfrec``: postings in :mod:`tf_shopee.data.schema` format; split is
  ``train`` when the CSV has ``label_group`` and ``test`` otherwise.
* ``label_map.json``: ``{"<label_group>": dense label index}``, label groups in increasing numeric
  order, computed from every CSV row (before rejects), so it is reproducible from the CSV alone.
* ``rejects.csv``: ``posting_id,row,reason`` for postings left out because of their image.
* ``manifest.json``: counts, folds, shard checksums and options; written last, so a folder with a
  manifest is a finished conversion.
* ``.convert_progress.json``: the shards finished so far, with the CSV checksum and options; it is
  what lets an interrupted run resume.

Decisions worth knowing:

* Rows are numbered from 0 in messages and in rejects.csv (header excluded), as in a pandas index.
* Folds: fold k is the k-th test split of ``sklearn.model_selection.GroupKFold(n_splits=folds)``
  (no shuffling) over label_group, on the CSV rows in file order before any reject, so
  ``--folds 3`` fold 0 is the held-out third used by the benchmarks.
* Shards: rows are ordered by a keyed hash of their posting_id (``--shuffle-seed``; -1 keeps the
  CSV order) and cut into runs of ``--examples-per-shard``; shard i always receives the same rows
  (a rejected row simply leaves a gap), so an interrupted run can redo single shards and its
  output is byte-identical to a clean run. Shuffling here means every shard mixes label groups and
  folds even when the CSV is sorted by group.
* Images (:mod:`tf_shopee.data.images`): JPEG files are stored byte for byte; other formats
  (PNG, WebP, GIF, ...) and photos with a side longer than ``--max-side`` are decoded and
  re-encoded as JPEG (transparency composited on white). EXIF orientation is not applied,
  deliberately: ``tf.io.decode_jpeg`` ignores it, and so does the exported model when it decodes
  raw JPEG bytes at serving time, so training sees the pixels exactly as serving will.
* A missing ``image_phash`` (no column, or an empty cell) is computed with ``imagehash.phash`` on
  the full-size decoded photo when there is one: on the 30 real sample photos that reproduces
  Kaggle's image_phash exactly for 29 and within 2 bits for the last.
* The CSV is read by :mod:`tf_shopee.data.postings_csv`, the reader ``predict.py`` uses too: the
  encoding is detected (UTF-8, or a cp1252 / latin-1 file decoded as such) or taken from
  ``--encoding``; what was decided is printed (also with ``--quiet``) and recorded in the
  manifest's ``encoding``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tf_shopee.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageOptions,
    ImageResult,
    image_results,
)
from tf_shopee.data.manifest import LABEL_MAP_NAME, MANIFEST_NAME, REJECTS_NAME
from tf_shopee.data.postings_csv import (  # noqa: F401  (read_csv_bytes: public here too)
    CsvTable,
    read_csv_bytes,
    read_csv_table,
)
from tf_shopee.data.schema import (
    MISSING_INTEGER,
    SCHEMA_VERSION,
    SHARD_SUFFIX,
    Posting,
    serialize_posting,
    shard_name,
)
from tf_shopee.errors import UserError, exit_on_user_error
from tf_shopee.io_utils import (
    TEMPORARY_SUFFIX,
    atomic_path,
    refuse_overwriting_inputs,
    sha256_file,
    write_json_atomic,
)

DEFAULT_FOLDS = 5
# About 100-200 MB per shard at the default --max-side: the size TensorFlow's guides recommend
# for reading many files in parallel; the real train set (34,250 rows) makes 17 shards.
DEFAULT_EXAMPLES_PER_SHARD = 2048
# Large enough for every model trained on Shopee (512 px is the usual top resolution); smaller
# files make the input pipeline cheaper.
DEFAULT_MAX_SIDE = 512
DEFAULT_JPEG_QUALITY = 90
DEFAULT_MAX_REJECT_FRACTION = 0.01
DEFAULT_SHUFFLE_SEED = 0

PROGRESS_NAME = ".convert_progress.json"


# --------------------------------------------------------------------------------------------
# Planning: labels, folds, shard assignment


def build_label_map(label_groups: list[int]) -> dict[int, int]:
    """Dense label indices 0..n-1 for the label groups, in increasing numeric order."""
    return {label_group: index for index, label_group in enumerate(sorted(set(label_groups)))}


def assign_folds(label_groups: list[int], folds: int) -> list[int]:
    """Fold of each row: fold k = the k-th test split of GroupKFold(n_splits=folds), no shuffle."""
    import numpy as np
    from sklearn.model_selection import GroupKFold

    distinct = len(set(label_groups))
    if distinct < folds:
        raise UserError(
            f"--folds {folds} needs at least {folds} label groups; the CSV has {distinct}"
        )
    groups = np.asarray(label_groups, dtype=np.int64)
    fold_of_row = np.full(len(groups), -1, dtype=np.int64)
    splitter = GroupKFold(n_splits=folds)
    for fold, (_, test_rows) in enumerate(splitter.split(np.zeros(len(groups)), groups=groups)):
        fold_of_row[test_rows] = fold
    return fold_of_row.tolist()


def shard_order(posting_ids: list[str], shuffle_seed: int) -> list[int]:
    """Row order used to fill shards: a keyed hash of posting_id, or file order for seed -1.

    A hash (rather than a random permutation) depends only on the ids and the seed, never on a
    random-number library version, so the same CSV always fills the same shards.
    """
    if shuffle_seed < 0:
        return list(range(len(posting_ids)))
    key = str(shuffle_seed).encode("utf-8")

    def hashed(row: int) -> bytes:
        data = posting_ids[row].encode("utf-8")
        return hashlib.blake2b(data, digest_size=16, key=key).digest()

    return sorted(range(len(posting_ids)), key=lambda row: (hashed(row), row))


# --------------------------------------------------------------------------------------------
# The output folder: clean start, resume, refusal


@dataclass
class _ShardRecord:
    """A finished shard, as kept in the progress file."""

    file: str
    sha256: str
    examples: int
    rejects: list[tuple[int, str]] = field(default_factory=list)
    reencoded_images: int = 0
    computed_phashes: int = 0

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "examples": self.examples,
            "rejects": [list(reject) for reject in self.rejects],
            "reencoded_images": self.reencoded_images,
            "computed_phashes": self.computed_phashes,
        }

    @classmethod
    def from_json(cls, payload: dict) -> "_ShardRecord":
        return cls(
            file=payload["file"],
            sha256=payload["sha256"],
            examples=int(payload["examples"]),
            rejects=[(int(row), str(reason)) for row, reason in payload["rejects"]],
            reencoded_images=int(payload["reencoded_images"]),
            computed_phashes=int(payload["computed_phashes"]),
        )


def _our_files(out_dir: Path) -> list[Path]:
    names = {MANIFEST_NAME, LABEL_MAP_NAME, REJECTS_NAME, PROGRESS_NAME}
    found = []
    for path in out_dir.iterdir():
        if not path.is_file():
            continue
        if path.name in names or path.name.endswith(SHARD_SUFFIX):
            found.append(path)
        # Leftovers of atomic_path from a killed run: ".<final name>.<random>.tmp".
        elif path.name.startswith(".") and path.name.endswith(TEMPORARY_SUFFIX):
            found.append(path)
    return found


def _remove_temporaries(out_dir: Path) -> None:
    for path in out_dir.iterdir():
        if path.name.startswith(".") and path.name.endswith(TEMPORARY_SUFFIX) and path.is_file():
            path.unlink()


def _read_json_or_none(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _describe_difference(old: dict, new: dict) -> str:
    differences = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            differences.append(f"{key}: {old.get(key)!r} → {new.get(key)!r}")
    return "; ".join(differences) or "unknown difference"


def _prepare_output(
    out_dir: Path, fingerprint: dict, *, overwrite: bool, say
) -> tuple[dict[str, _ShardRecord], dict | None]:
    """Make ``out_dir`` ready; return (finished shards to keep, existing matching manifest)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        removed = _our_files(out_dir)
        for path in removed:
            path.unlink()
        if removed:
            say(f"--overwrite: removed {len(removed)} files of an earlier conversion in {out_dir}")
        return {}, None

    manifest_path = out_dir / MANIFEST_NAME
    progress_path = out_dir / PROGRESS_NAME
    progress = _read_json_or_none(progress_path) if progress_path.exists() else None
    manifest = _read_json_or_none(manifest_path) if manifest_path.exists() else None

    if manifest is not None or manifest_path.exists():
        if progress is None or progress.get("fingerprint") != fingerprint:
            old = (progress or {}).get("fingerprint") or {}
            detail = _describe_difference(old, fingerprint) if old else "it has no progress file"
            raise UserError(
                f"{out_dir} already holds a finished conversion made from another CSV or with "
                f"other options ({detail}); pass --overwrite to replace it, or choose another --out"
            )
    elif progress is not None:
        if progress.get("fingerprint") != fingerprint:
            detail = _describe_difference(progress.get("fingerprint") or {}, fingerprint)
            raise UserError(
                f"{out_dir} holds an unfinished conversion of another CSV or with other options "
                f"({detail}); pass --overwrite to start clean, or choose another --out"
            )
    else:
        leftovers = [
            path.name for path in _our_files(out_dir) if not path.name.endswith(TEMPORARY_SUFFIX)
        ]
        if leftovers:
            raise UserError(
                f"{out_dir} already holds {', '.join(sorted(leftovers)[:3])}... not written by a "
                "conversion this tool can resume; pass --overwrite to replace them"
            )

    _remove_temporaries(out_dir)
    kept: dict[str, _ShardRecord] = {}
    if progress is not None:
        for payload in progress.get("shards", []):
            try:
                record = _ShardRecord.from_json(payload)
            except (KeyError, TypeError, ValueError):
                continue
            path = out_dir / record.file
            if path.is_file() and sha256_file(path) == record.sha256:
                kept[record.file] = record
    return kept, manifest


def _write_progress(out_dir: Path, fingerprint: dict, records: dict[str, _ShardRecord]) -> None:
    write_json_atomic(
        out_dir / PROGRESS_NAME,
        {
            "fingerprint": fingerprint,
            "shards": [records[name].to_json() for name in sorted(records)],
        },
    )


def _write_rejects(out_dir: Path, rejects: list[tuple[int, str]], posting_ids: list[str]) -> None:
    with atomic_path(out_dir / REJECTS_NAME) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["posting_id", "row", "reason"])
            for row, reason in sorted(rejects):
                writer.writerow([posting_ids[row], row, reason])


# --------------------------------------------------------------------------------------------
# The conversion


@contextlib.contextmanager
def _output_errors(out_dir: Path):
    """Turn a failure to write the output folder (permissions, full disk) into a UserError."""
    try:
        yield
    except Exception as error:
        # TensorFlow's file errors are not OSErrors; look them up only if TF is loaded already,
        # so refusing a bad folder does not cost TensorFlow's start-up time.
        tensorflow = sys.modules.get("tensorflow")
        if isinstance(error, OSError) or (
            tensorflow is not None and isinstance(error, tensorflow.errors.OpError)
        ):
            message = getattr(error, "message", None) or str(error)
            raise UserError(f"cannot write the output folder {out_dir}: {message}") from None
        raise


def _check_options(
    folds, examples_per_shard, max_side, max_pixels, jpeg_quality, max_reject_fraction, workers
) -> None:
    def need(condition: bool, message: str) -> None:
        if not condition:
            raise UserError(message)

    need(isinstance(folds, int) and folds >= 2, f"--folds must be an integer >= 2, got {folds}")
    need(examples_per_shard >= 1, f"--examples-per-shard must be >= 1, got {examples_per_shard}")
    need(max_side >= 1, f"--max-side must be >= 1, got {max_side}")
    need(max_pixels >= 1, f"--max-pixels must be >= 1, got {max_pixels}")
    need(1 <= jpeg_quality <= 100, f"--jpeg-quality must be in 1..100, got {jpeg_quality}")
    need(
        0.0 <= max_reject_fraction <= 1.0,
        f"--max-reject-fraction must be in 0..1, got {max_reject_fraction}",
    )
    need(workers is None or workers >= 1, f"--workers must be >= 1, got {workers}")


def convert_csv(
    csv_path: str | os.PathLike,
    images_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    folds: int = DEFAULT_FOLDS,
    examples_per_shard: int = DEFAULT_EXAMPLES_PER_SHARD,
    max_side: int = DEFAULT_MAX_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    shuffle_seed: int = DEFAULT_SHUFFLE_SEED,
    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
    encoding: str | None = None,
) -> dict:
    """Convert a posting CSV (and its image folder) into a TFRecord folder; return the manifest.

    Args:
        csv_path: CSV with posting_id, title and optionally image, image_phash, label_group
            (the Kaggle layout); a .zip holding one CSV also works.
        images_dir: folder the ``image`` column is relative to; None converts text-only.
        out_dir: output folder (created).
        folds: GroupKFold splits over label_group (ignored for an unlabelled CSV).
        examples_per_shard: rows per shard (before rejects).
        max_side: photos with a longer side are downscaled to it and re-encoded.
        max_pixels: images whose header announces more pixels are rejected without decoding.
        jpeg_quality: quality for re-encoded images.
        shuffle_seed: key of the posting_id hash that orders rows into shards; -1 = file order.
        max_reject_fraction: fail when more than this fraction of rows is rejected.
        overwrite: remove an earlier conversion in ``out_dir`` first instead of resuming.
        workers: image processes (default: the CPU cores this process may use). More than one
            starts "spawn" processes, so a calling script needs the usual
            ``if __name__ == "__main__":`` guard.
        progress: show a progress bar and status lines on stderr (warnings are printed anyway).
        encoding: the CSV's encoding; None detects it (:mod:`tf_shopee.data.postings_csv`).

    Returns:
        The manifest dict, also written to ``out_dir/manifest.json``.

    Raises:
        UserError: bad CSV or options (before any shard is written), an output folder holding a
            different conversion, or too many rejected rows (see ``out_dir/rejects.csv``).
    """
    from tf_shopee import __version__

    _check_options(
        folds, examples_per_shard, max_side, max_pixels, jpeg_quality, max_reject_fraction, workers
    )
    if workers is None:
        # The CPUs this process may run on (a container or taskset can allow fewer than exist).
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        workers = workers or os.cpu_count() or 1

    def say(message: str) -> None:
        if progress:
            print(f"convert: {message}", file=sys.stderr, flush=True)

    csv_path = Path(csv_path).absolute()
    out_dir = Path(out_dir).absolute()
    if images_dir is not None:
        images_dir = Path(images_dir).absolute()
        if not images_dir.is_dir():
            raise UserError(f"--images {images_dir} is not a folder")

    table = read_csv_table(csv_path, encoding=encoding)
    written_names = [MANIFEST_NAME, LABEL_MAP_NAME, REJECTS_NAME, PROGRESS_NAME]
    refuse_overwriting_inputs(
        {"--csv": csv_path},
        {f"--out {name}": out_dir / name for name in written_names},
    )
    if csv_path.name.endswith(SHARD_SUFFIX) and csv_path.parent == out_dir:
        raise UserError(f"--csv {csv_path} is named like a shard of --out {out_dir}")
    rows = len(table)
    if images_dir is not None and table.images is None:
        say("the CSV has no image column: converting text-only (ignoring --images)")
    has_images = images_dir is not None and table.images is not None
    has_labels = table.label_groups is not None
    split = "train" if has_labels else "test"
    notice = table.encoding.notice(csv_path)
    if notice:
        # A change to the text itself: shown even with --quiet.
        print(f"convert: warning: {notice}", file=sys.stderr, flush=True)
    if rows and table.wordless_titles == rows:
        # Not an error: photos and phashes can still be matched. But no text model can train on
        # these titles and TF-IDF matches nothing, which train.py and predict.py say too.
        print(f"convert: warning: none of the {rows} titles has a word (two letters or digits "
              "in a row): train.py --model text will refuse this set and TF-IDF matches nothing; "
              "only image models and image_phash can match these postings",
              file=sys.stderr, flush=True)

    label_map = build_label_map(table.label_groups) if has_labels else {}
    fold_of_row = (
        assign_folds(table.label_groups, folds) if has_labels else [MISSING_INTEGER] * rows
    )
    order = shard_order(table.posting_ids, shuffle_seed)
    shard_count = max(1, math.ceil(rows / examples_per_shard))
    shard_rows = [
        order[index * examples_per_shard : (index + 1) * examples_per_shard]
        for index in range(shard_count)
    ]
    shard_names = [shard_name(split, index, shard_count) for index in range(shard_count)]

    output_options = {
        "folds": folds if has_labels else 0,
        "examples_per_shard": examples_per_shard,
        "max_side": max_side,
        "max_pixels": max_pixels,
        "jpeg_quality": jpeg_quality,
        "shuffle_seed": shuffle_seed,
    }
    csv_sha256 = sha256_file(csv_path)
    # Everything the shard bytes depend on; a resumed run must match it exactly.
    fingerprint = {
        "schema_version": SCHEMA_VERSION,
        "created_by": f"tf_shopee {__version__}",
        "source_csv_sha256": csv_sha256,
        "images_dir": str(images_dir) if has_images else None,
        "split": split,
        **output_options,
    }
    if table.encoding.name != "utf-8":
        # The titles in the shards depend on it. Only recorded when it is not UTF-8, so a
        # conversion made before encodings were detected still resumes.
        fingerprint["encoding"] = table.encoding.name

    with _output_errors(out_dir):
        kept, existing_manifest = _prepare_output(
            out_dir, fingerprint, overwrite=overwrite, say=say
        )
        if existing_manifest is not None and set(kept) == set(shard_names):
            say(f"{out_dir} already holds this conversion (shard checksums match): nothing to do")
            return existing_manifest
        if kept:
            say(f"resuming: keeping {len(kept)} of {shard_count} shards already written")
        # From here on the folder is being changed: it must not look finished.
        (out_dir / MANIFEST_NAME).unlink(missing_ok=True)

        records: dict[str, _ShardRecord] = dict(kept)
        _write_progress(out_dir, fingerprint, records)
        rejects: list[tuple[int, str]] = [
            reject for record in kept.values() for reject in record.rejects
        ]
        allowed_rejects = math.floor(max_reject_fraction * rows)

        def fail_on_rejects(finished: bool) -> None:
            if len(rejects) <= allowed_rejects:
                return
            _write_rejects(out_dir, rejects, table.posting_ids)
            stopped = "" if finished else " (stopped early: the limit could not be met any more)"
            raise UserError(
                f"{len(rejects)} of {rows} rows rejected, more than --max-reject-fraction "
                f"{max_reject_fraction} allows ({allowed_rejects}){stopped}; the reasons are in "
                f"{out_dir / REJECTS_NAME}. Fix the images (or raise --max-reject-fraction) and "
                "run the same command again: finished shards are kept."
            )

        fail_on_rejects(finished=False)
        todo = [index for index in range(shard_count) if shard_names[index] not in kept]
        tasks = []
        if has_images:
            for index in todo:
                for row in shard_rows[index]:
                    tasks.append((row, table.images[row], not table.phashes[row]))
        options = ImageOptions(
            images_root=os.path.realpath(images_dir) if has_images else "",
            max_side=max_side,
            max_pixels=max_pixels,
            jpeg_quality=jpeg_quality,
        )

        # Imported before the progress bar starts, so TensorFlow's start-up does not skew its rate.
        from tf_shopee import import_tensorflow

        import_tensorflow()
        from tqdm import tqdm

        progress_bar = tqdm(
            total=sum(len(shard_rows[index]) for index in todo),
            unit="posting",
            desc="convert",
            disable=not progress,
            file=sys.stderr,
        )
        results = (
            image_results(tasks, options, min(workers, max(1, len(tasks)))) if has_images else None
        )
        try:
            for index in todo:
                record = _write_shard(
                    out_dir / shard_names[index],
                    shard_rows[index],
                    table=table,
                    results=results,
                    label_map=label_map,
                    fold_of_row=fold_of_row,
                    progress_bar=progress_bar,
                )
                records[record.file] = record
                rejects.extend(record.rejects)
                _write_progress(out_dir, fingerprint, records)
                fail_on_rejects(finished=False)
        finally:
            progress_bar.close()
            if results is not None:
                results.close()  # shuts the worker pool down, also on errors

        fail_on_rejects(finished=True)
        _write_rejects(out_dir, rejects, table.posting_ids)
        if has_labels:
            write_json_atomic(
                out_dir / LABEL_MAP_NAME,
                {str(label_group): index for label_group, index in label_map.items()},
            )
        else:
            (out_dir / LABEL_MAP_NAME).unlink(missing_ok=True)
        manifest = _build_manifest(
            out_dir=out_dir,
            table=table,
            records=[records[name] for name in shard_names],
            rejects=rejects,
            label_map=label_map,
            fold_of_row=fold_of_row,
            folds=folds if has_labels else 0,
            split=split,
            csv_path=csv_path,
            csv_sha256=csv_sha256,
            images_dir=images_dir if has_images else None,
            options={**output_options, "max_reject_fraction": max_reject_fraction},
        )
        write_json_atomic(out_dir / MANIFEST_NAME, manifest)  # last: the folder is now complete
        say(
            f"wrote {manifest['counts']['written']} postings in {shard_count} shards to {out_dir} "
            f"({len(rejects)} rejected, {manifest['counts']['reencoded_images']} images re-encoded)"
        )
        return manifest


def _build_manifest(
    *,
    out_dir: Path,
    table: CsvTable,
    records: list[_ShardRecord],
    rejects: list[tuple[int, str]],
    label_map: dict[int, int],
    fold_of_row: list[int],
    folds: int,
    split: str,
    csv_path: Path,
    csv_sha256: str,
    images_dir: Path | None,
    options: dict,
) -> dict:
    """The manifest.json contents (the shared contract) for a finished conversion."""
    from tf_shopee import __version__

    rejected_rows = {row for row, _ in rejects}
    has_labels = table.label_groups is not None
    fold_counts = {str(fold): 0 for fold in range(folds)}
    label_counts = [0] * len(label_map)
    if has_labels:
        for row, label_group in enumerate(table.label_groups):
            if row not in rejected_rows:
                fold_counts[str(fold_of_row[row])] += 1
                label_counts[label_map[label_group]] += 1
    return {
        "schema_version": SCHEMA_VERSION,
        "created_by": f"tf_shopee {__version__}",
        "split": split,
        "source_csv": str(csv_path),
        "source_csv_sha256": csv_sha256,
        "images_dir": None if images_dir is None else str(images_dir),
        "has_images": images_dir is not None,
        "has_labels": has_labels,
        "num_folds": folds,
        "fold_counts": fold_counts,
        "num_labels": len(label_map),
        "label_counts": label_counts,
        "counts": {
            "rows": len(table),
            "written": sum(record.examples for record in records),
            "rejected": len(rejects),
            "empty_titles": table.empty_titles,
            "wordless_titles": table.wordless_titles,
            "invalid_utf8_titles": table.invalid_utf8_titles,
            "reencoded_images": sum(record.reencoded_images for record in records),
            "computed_phashes": sum(record.computed_phashes for record in records),
        },
        "encoding": table.encoding.to_json(),
        "shards": [
            {
                "file": record.file,
                "sha256": record.sha256,
                "examples": record.examples,
                "bytes": (out_dir / record.file).stat().st_size,
            }
            for record in records
        ],
        "options": options,
    }


def _write_shard(
    path: Path,
    rows: list[int],
    *,
    table: CsvTable,
    results,
    label_map: dict[int, int],
    fold_of_row: list[int],
    progress_bar,
) -> _ShardRecord:
    import tensorflow as tf

    record = _ShardRecord(file=path.name, sha256="", examples=0)
    with atomic_path(path) as temporary:
        with tf.io.TFRecordWriter(str(temporary)) as writer:
            for row in rows:
                progress_bar.update(1)
                image = ImageResult(row=row, phash=table.phashes[row])
                if results is not None:
                    image = next(results)
                    if image.row != row:  # would mean the task list and the plan disagree
                        raise RuntimeError(f"image result for row {image.row}, expected {row}")
                    if image.reject_reason is not None:
                        record.rejects.append((row, image.reject_reason))
                        continue
                    record.reencoded_images += int(image.reencoded)
                    if not table.phashes[row] and image.phash:
                        record.computed_phashes += 1
                label_group = table.label_groups[row] if table.label_groups is not None else None
                posting = Posting(
                    posting_id=table.posting_ids[row],
                    title=table.titles[row],
                    image=image.image,
                    height=image.height,
                    width=image.width,
                    image_phash=table.phashes[row] or image.phash,
                    label_group=MISSING_INTEGER if label_group is None else label_group,
                    label=MISSING_INTEGER if label_group is None else label_map[label_group],
                    fold=fold_of_row[row],
                )
                writer.write(serialize_posting(posting))
                record.examples += 1
    record.sha256 = sha256_file(path)
    return record


# --------------------------------------------------------------------------------------------
# Command line


HELP_DESCRIPTION = """\
Convert a Shopee-style posting CSV and its image folder into sharded TFRecords
(train-*.tfrec when the CSV has label_group, test-*.tfrec otherwise), label_map.json,
rejects.csv and manifest.json (written last). Running the same command again after an
interruption resumes: finished shards whose checksum matches are kept."""

HELP_EPILOG = """\
CSV columns: posting_id and title are required; image, image_phash and label_group are
used when present. Without label_group the CSV is a test set; without an image column or
without --images the conversion is text-only. A missing image_phash is computed from the
photo. Rows are numbered from 0, header excluded.

Images: JPEGs within --max-side are stored byte for byte (EXIF orientation is not applied,
just as tf.io.decode_jpeg and the exported model do not apply it); other formats and larger
photos are re-encoded as JPEG. Missing, corrupt or non-image files, images over
--max-pixels and paths leading outside --images go to rejects.csv with the reason.

Exit status: 0 done; 2 for bad input, an --out holding another conversion, or more
rejects than --max-reject-fraction allows (the message is on stderr).

example:
  python convert_tfrecords.py --csv data/train.csv --images data/train_images \\
      --out tfrecords/train --folds 5"""


def build_argument_parser() -> argparse.ArgumentParser:
    """The ``convert_tfrecords.py`` / ``tf-shopee-convert`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="convert_tfrecords.py",
        description=HELP_DESCRIPTION,
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--csv", required=True, metavar="PATH", help="posting CSV (or a .zip holding one CSV)"
    )
    parser.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="folder the CSV's image column is relative to (omit: text only)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument(
        "--folds",
        type=int,
        default=DEFAULT_FOLDS,
        metavar="K",
        help=f"GroupKFold folds over label_group, no shuffling (default {DEFAULT_FOLDS})",
    )
    parser.add_argument(
        "--examples-per-shard",
        type=int,
        default=DEFAULT_EXAMPLES_PER_SHARD,
        metavar="N",
        help=f"rows per shard before rejects (default {DEFAULT_EXAMPLES_PER_SHARD})",
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=DEFAULT_MAX_SIDE,
        metavar="PX",
        help="downscale and re-encode photos whose longer side exceeds this "
        f"(default {DEFAULT_MAX_SIDE})",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="reject images whose header announces more pixels, without decoding them "
        f"(decompression bombs; default {DEFAULT_MAX_PIXELS})",
    )
    parser.add_argument(
        "--jpeg-quality",
        type=int,
        default=DEFAULT_JPEG_QUALITY,
        metavar="Q",
        help=f"JPEG quality of re-encoded images (default {DEFAULT_JPEG_QUALITY})",
    )
    parser.add_argument(
        "--shuffle-seed",
        type=int,
        default=DEFAULT_SHUFFLE_SEED,
        metavar="SEED",
        help="key of the posting_id hash that orders rows into shards; -1 keeps the CSV order "
        f"(default {DEFAULT_SHUFFLE_SEED})",
    )
    parser.add_argument(
        "--max-reject-fraction",
        type=float,
        default=DEFAULT_MAX_REJECT_FRACTION,
        metavar="F",
        help="fail when more than this fraction of rows is rejected "
        f"(default {DEFAULT_MAX_REJECT_FRACTION})",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an earlier conversion in --out and start clean instead of resuming",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="W",
        help="image worker processes (default: the CPU cores this process may use)",
    )
    parser.add_argument(
        "--encoding",
        default=None,
        metavar="NAME",
        help="the CSV's text encoding, e.g. utf-8, cp1252, latin-1 (default: detected; a "
        "file that is not UTF-8 is read as cp1252, or latin-1, and the decision is printed and "
        "recorded in manifest.json)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar or status lines (warnings stay)"
    )
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point: parse ``argv`` and run :func:`convert_csv`."""
    arguments = build_argument_parser().parse_args(argv)
    return convert_csv(
        arguments.csv,
        arguments.images,
        arguments.out,
        folds=arguments.folds,
        examples_per_shard=arguments.examples_per_shard,
        max_side=arguments.max_side,
        max_pixels=arguments.max_pixels,
        jpeg_quality=arguments.jpeg_quality,
        shuffle_seed=arguments.shuffle_seed,
        max_reject_fraction=arguments.max_reject_fraction,
        overwrite=arguments.overwrite,
        workers=arguments.workers,
        progress=not arguments.quiet,
        encoding=arguments.encoding,
    )


if __name__ == "__main__":
    main()
