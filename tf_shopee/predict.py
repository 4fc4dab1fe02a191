"""Batch prediction: postings → neighbours from every source → thresholds → matches → submission.

This is the job behind ``predict.py``. For a set of postings (a Shopee-style CSV with an image
folder, or a TFRecord folder written by ``convert_tfrecords.py``) it

1. embeds the postings with each exported model (image, text or multimodal SavedModels written by
   ``train.py``), caching the embeddings as ``.npy`` keyed by model and data;
2. finds the nearest neighbours of every posting in every source: each model's embeddings, the
   concatenation of image and text embeddings, TF-IDF over titles, image_phash Hamming distance;
3. turns neighbours into match lists with per-source thresholds (neighbourhood blending first,
   where enabled), takes their union and applies "at least one neighbour" (min2);
4. writes ``posting_id,matches`` atomically and, when labels are present and ``--evaluate`` is
   given, prints mean F1 per source and combined and writes a JSON report.

Thresholds come, in increasing priority, from the shipped defaults (chosen by
``benchmarks/quality_real.py`` on the real Shopee titles), from each model's export (the best
validation threshold found in training), from ``--thresholds FILE`` (written by a threshold
search), and from ``--threshold SOURCE=VALUE``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tf_shopee.errors import UserError, exit_on_user_error
from tf_shopee.io_utils import atomic_path, write_json_atomic

logger = logging.getLogger("tf_shopee.predict")

COMBINED = "combined"
TFIDF = "tfidf"
PHASH = "phash"
CONCAT = "concat"


@dataclass
class PredictOptions:
    """Settings of one prediction job (the command-line flags of ``predict.py``)."""

    csv: str = ""
    images: str = ""
    tfrecords: str = ""
    fold: int | None = None
    models: list[str] = field(default_factory=list)
    thresholds_file: str = ""
    threshold_overrides: dict[str, float] = field(default_factory=dict)
    out: str = "submission.csv"
    evaluate: bool = False
    report: str = ""
    search_thresholds: str = ""
    batch_size: int = 64
    cache_dir: str = ""
    use_tfidf: bool = True
    use_phash: bool = True
    use_concat: bool = True
    min2: bool = True
    # Neighbourhood blending rounds of embedding sources: None = as the thresholds file (or the
    # search) decides, off without one; 0 = off; N = N rounds.
    inb_iterations: int | None = None
    # Neighbours blended per posting that --search-thresholds tries (None = every neighbour of
    # the list, i.e. k): each value is a blending option of its own.
    inb_neighbours: tuple[int | None, ...] = (None,)
    # Blend thresholds --search-thresholds tries (empty = tf_shopee.thresholds.DEFAULT_INB_GRID).
    inb_grid: tuple[float, ...] = ()
    # How --search-thresholds makes thresholds survive a bigger pool (tf_shopee.thresholds).
    threshold_method: str = "local+size"
    k: int = 51
    max_matches: int = 50
    max_chunk_mb: int = 256
    progress: bool = True
    catalog: str = ""  # match against a catalogue index (tf_shopee.catalog) instead of each other
    search: str = "auto"  # with catalog: exact | ann | auto
    nprobe: int = 0  # with catalog and ann: cells probed per query (0: the default)
    encoding: str | None = None  # of --csv; None detects it


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


# --------------------------------------------------------------------------------------------
# Reading postings


def read_postings(options: PredictOptions) -> Postings:
    """Read postings from ``options.csv`` (+ ``options.images``) or ``options.tfrecords``.

    The CSV is read by :func:`tf_shopee.data.postings_csv.read_csv_table`, the reader
    ``convert_tfrecords.py`` uses, so both tools see the same ids, titles and labels.
    """
    if options.tfrecords:
        postings = _read_tfrecord_postings(options.tfrecords, options.fold)
        if options.csv:
            table = _read_csv(options)
            postings = _align_to_csv(postings, table.posting_ids)
            postings.encoding = table.encoding
        return postings
    if not options.csv:
        raise UserError("give --csv (with --images for image models) or --tfrecords")
    if options.fold is not None:
        raise UserError("--fold selects a fold of a TFRecord folder: use it with --tfrecords")
    table = _read_csv(options)
    postings = Postings(
        posting_ids=table.posting_ids,
        titles=table.titles,
        # None when no row has one (no column, or an empty one), as the catalogue code expects.
        image_phashes=table.phashes if any(table.phashes) else None,
        label_groups=None if table.label_groups is None
        else np.asarray(table.label_groups, dtype=np.int64),
        encoding=table.encoding,
    )
    if options.images:
        postings.image_paths, postings.bad_images = _image_paths(
            table, options.images, options.csv
        )
        postings.image_names = table.images
    return postings


def _read_csv(options: PredictOptions):
    from tf_shopee.data.postings_csv import read_csv_table

    table = read_csv_table(options.csv, encoding=options.encoding)
    notice = table.encoding.notice(options.csv)
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
    import tensorflow as tf

    from tf_shopee.data.manifest import load_manifest, name_damaged_shards, shard_paths
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


# --------------------------------------------------------------------------------------------
# Embedding with exported models


def embed_postings(model, postings: Postings, options: PredictOptions) -> np.ndarray:
    """Embed ``postings`` with one loaded export (:func:`tf_shopee.export.load_exported`).

    Returns L2-normalised float32 embeddings, one row per posting. A posting whose image cannot
    be used (missing, empty, truncated, not an image) gets a row of zeros from an image or
    multimodal model and is added to ``postings.bad_images`` with the reason; the run goes on.
    Embeddings are cached in ``options.cache_dir`` under a key made of the model's identity and
    the data's, so running predict again with other thresholds does not embed again; a cache
    file that cannot be read is reported and replaced.
    """
    kind = model.kind
    if kind in ("image", "multimodal") and not postings.has_images:
        raise UserError(
            f"model {model.directory} is a {kind} model: give --images DIR (with an 'image' column "
            "in the CSV) or --tfrecords DIR converted with images"
        )
    uses_images = kind in ("image", "multimodal")
    cache_path = None
    if options.cache_dir:
        key = f"{_model_key(model.directory)}-{postings.data_key()}"
        cache_path = Path(options.cache_dir) / f"{kind}-{key}.npy"
        cached = _read_cache(cache_path, (len(postings), model.embedding_dim), uses_images)
        if cached is not None:
            embeddings, bad_images = cached
            postings.bad_images.update(bad_images)
            logger.info("%s: embeddings read from cache %s", kind, cache_path)
            return embeddings
    started = time.perf_counter()
    embeddings = _embed_in_batches(model, kind, postings, options)
    seconds = time.perf_counter() - started
    logger.info("%s: embedded %d postings in %.1f s (%.1f/s)", kind, len(postings), seconds,
                len(postings) / max(seconds, 1e-9))
    if cache_path is not None:
        if uses_images:
            # Written before the embeddings, which mark the entry complete.
            write_json_atomic(_bad_images_path(cache_path),
                              {str(row): reason for row, reason in postings.bad_images.items()})
        with atomic_path(cache_path) as temporary:
            with open(temporary, "wb") as stream:
                np.save(stream, embeddings)
    return embeddings


def _bad_images_path(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.stem + ".bad_images.json")


def _read_cache(cache_path: Path, shape: tuple[int, int], uses_images: bool):
    """``(embeddings, bad images)`` from a cache entry, or None when there is none or it is
    damaged (then a warning says so and the postings are embedded again)."""
    if not cache_path.is_file():
        return None
    import json

    try:
        embeddings = np.load(cache_path, allow_pickle=False)
        bad_images = {}
        if uses_images:
            payload = json.loads(_bad_images_path(cache_path).read_text(encoding="utf-8"))
            bad_images = {int(row): str(reason) for row, reason in payload.items()}
        problem = None
        if embeddings.shape != shape or embeddings.dtype != np.float32:
            problem = f"holds {embeddings.dtype} {embeddings.shape}, expected float32 {shape}"
        elif not np.isfinite(embeddings).all():
            problem = "holds NaN or infinity"
        elif uses_images and set(np.flatnonzero(~embeddings.any(axis=1))) != set(bad_images):
            problem = "does not agree with its list of unusable images"
    except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways
        problem = f"cannot be read ({type(error).__name__}: {error})"
    if problem is None:
        return embeddings, bad_images
    logger.warning("embedding cache %s %s: embedding again", cache_path, problem)
    return None


def _model_key(model_dir: str) -> str:
    """Identity of an export: its metadata and the checksum of its variables index."""
    digest = hashlib.sha256()
    root = Path(model_dir)
    for relative in ("tf_shopee_export.json", "saved_model.pb", "variables/variables.index"):
        path = root / relative
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _embed_in_batches(model, kind: str, postings: Postings, options: PredictOptions) -> np.ndarray:
    from tqdm import tqdm

    total = len(postings)
    uses_images = kind in ("image", "multimodal")
    uses_titles = kind in ("text", "multimodal")
    embeddings = np.zeros((total, model.embedding_dim), np.float32)
    with tqdm(total=total, desc=f"embed {kind}", unit="posting",
              disable=not options.progress) as progress:
        for start in range(0, total, options.batch_size):
            stop = min(start + options.batch_size, total)
            rows = list(range(start, stop))
            images = None
            if uses_images:
                rows, images = _usable_images(postings, rows)
            if rows:
                titles = [postings.titles[row] for row in rows] if uses_titles else None
                try:
                    embeddings[rows] = model.embed(images=images, titles=titles,
                                                   batch_size=options.batch_size)
                except UserError:
                    raise
                except Exception as error:
                    if not uses_images:
                        raise UserError(
                            f"cannot embed the titles of postings {postings.posting_ids[start]}"
                            f"..{postings.posting_ids[stop - 1]}: {_first_line(error)}"
                        ) from None
                    # An image Pillow reads but TensorFlow's decoder does not: find it.
                    for row, image in zip(rows, images):
                        try:
                            embeddings[row] = model.embed(
                                images=[image],
                                titles=[postings.titles[row]] if uses_titles else None,
                            )[0]
                        except Exception as row_error:  # noqa: BLE001
                            postings.bad_images[row] = (
                                f"{_image_name(postings, row)}: TensorFlow cannot decode it "
                                f"({_first_line(row_error)})"
                            )
            progress.update(stop - start)
    return embeddings


def _first_line(error: Exception) -> str:
    text = (getattr(error, "message", None) or str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _image_name(postings: Postings, row: int) -> str:
    if postings.image_names is not None:
        return postings.image_names[row]
    return f"the TFRecord image of posting {postings.posting_ids[row]}"


def _usable_images(postings: Postings, rows: list[int]) -> tuple[list[int], list[bytes]]:
    """The rows among ``rows`` whose image decodes, and their bytes; the others are recorded in
    ``postings.bad_images`` with the reason."""
    from tf_shopee.data.convert import image_problem

    usable, images = [], []
    for row in rows:
        if row in postings.bad_images:
            continue
        name = _image_name(postings, row)
        if postings.image_bytes is not None:
            data = postings.image_bytes[row]
        else:
            try:
                with open(postings.image_paths[row], "rb") as stream:
                    data = stream.read()
            except OSError as error:
                postings.bad_images[row] = f"cannot read {name}: {error.strerror}"
                continue
        problem = image_problem(data, name)
        if problem is not None:
            postings.bad_images[row] = problem
            continue
        usable.append(row)
        images.append(data)
    return usable, images


# --------------------------------------------------------------------------------------------
# Output


def write_submission(path: str, posting_ids: list[str], matches: list[np.ndarray]) -> None:
    """Write ``posting_id,matches`` (space-separated ids) atomically, so a half-written CSV never
    sits under the final name. Ids are written verbatim, quoted where CSV needs it (a comma or
    a quote inside an id)."""
    import csv

    ids = np.asarray(posting_ids, dtype=object)
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="") as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(["posting_id", "matches"])
            for row, match in enumerate(matches):
                writer.writerow([posting_ids[row],
                                 " ".join(ids[np.asarray(match, dtype=np.int64)])])


def format_f1_table(report: dict) -> str:
    """The ``--evaluate`` table of a :func:`run_prediction` report.

    One row per source: its rule (thresholds in the source's units, for this pool) and its mean
    F1 alone (no min2) when it is in the union; a source the decision leaves out says so and
    shows no F1. Then the combined row, what min2 and blending did, and where the thresholds
    came from.
    """
    from tf_shopee.thresholds import Decision, describe_min2

    decision = Decision.from_dict(report["decision"], where="report")
    thresholds = report["thresholds"]
    f1 = report["f1"]
    recall = report.get("recall_at_1") or {}
    rows = []
    for name in report["sources"]:
        if name in decision.sources:
            rule = decision.rules[name].describe(name, thresholds.get(name))
            rows.append((name, rule, "yes", f"{f1[name]:.4f}", recall.get(name)))
        else:
            rows.append((name, "-", "no (left out of the union)", "-", recall.get(name)))
    union = f"union of {len(decision.sources)} source(s), min2 {describe_min2(decision)}"
    rows.append(("combined", union, "submission", f"{f1['combined']:.4f}", None))
    header = ["source", "rule", "in submission", "mean F1"]
    if recall:
        header.append("recall@1")
    table = [header] + [
        [*row[:4], *([] if not recall else
                     ["-" if row[4] is None else f"{row[4]:.4f}"])] for row in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    origins = sorted(set(report.get("threshold_origin", {}).values()))
    lines.append(f"method: {decision.method}; thresholds from: {', '.join(origins) or '-'}; "
                 "F1 of a source is its matches alone, without min2")
    if report.get("inb"):
        blended = ", ".join(
            f"{name} at {entry['threshold']:g}"
            + ("" if entry.get("neighbours") is None
               else f" over the {entry['neighbours']} nearest")
            + ("" if entry.get("photos_within_bits") is None
               else f" with photos <= {int(entry['photos_within_bits'])} bits")
            + f" ({entry['iterations']} round(s))" for name, entry in report["inb"].items())
        lines.append(f"neighbourhood blending: {blended}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Sources: neighbours of every posting from every model and from the model-free sources


@dataclass
class Sources:
    """Neighbours per source, and the embeddings of the embedding sources (for blending)."""

    neighbours: dict = field(default_factory=dict)
    embeddings: dict = field(default_factory=dict)
    model_thresholds: dict = field(default_factory=dict)  # from each export's validation
    # Embedding sources that depend on photos: their neighbours leave out postings.bad_images.
    image_based: set = field(default_factory=set)
    bad_rows: tuple = ()


def compute_sources(postings: Postings, options: PredictOptions) -> Sources:
    """Embed with every model and find the top-k neighbours in every source."""
    from tf_shopee.export import load_exported
    from tf_shopee.matching import concat_embeddings, top_k_neighbours

    sources = Sources()
    kinds = {}
    for name, model_dir, _ in model_source_names(options.models):
        model = load_exported(model_dir)
        sources.embeddings[name] = embed_postings(model, postings, options)
        kinds[name] = model.kind
        if model.kind in ("image", "multimodal"):
            sources.image_based.add(name)
        if model.threshold is not None:
            sources.model_thresholds[name] = float(model.threshold)
    image_sources = [name for name, kind in kinds.items() if kind == "image"]
    text_sources = [name for name, kind in kinds.items() if kind == "text"]
    if options.use_concat and image_sources and text_sources:
        sources.embeddings[CONCAT] = concat_embeddings(
            sources.embeddings[image_sources[0]], sources.embeddings[text_sources[0]]
        )
        sources.image_based.add(CONCAT)
    sources.bad_rows = tuple(sorted(postings.bad_images))
    for name, embeddings in sources.embeddings.items():
        started = time.perf_counter()
        sources.neighbours[name] = _usable_neighbours(
            sources, name, top_k_neighbours(embeddings, k=options.k,
                                            max_chunk_mb=options.max_chunk_mb)
        )
        logger.info("%s: neighbours in %.1f s", name, time.perf_counter() - started)
    hashes = None
    if options.use_phash and postings.image_phashes is not None and any(postings.image_phashes):
        hashes = postings.image_phashes
    started = time.perf_counter()
    if options.use_tfidf:
        # TF-IDF (blended with its own and the phash neighbours), phash, and phash neighbours
        # whose titles agree: the settings chosen by benchmarks/quality_real.py.
        from tf_shopee.neighbours.model_free import model_free_sources

        sources.neighbours.update(
            model_free_sources(postings.titles, hashes, max_chunk_mb=options.max_chunk_mb)
        )
    elif hashes is not None:
        from tf_shopee.neighbours.phash import phash_neighbours

        sources.neighbours[PHASH] = phash_neighbours(hashes, k=options.k,
                                                     max_chunk_mb=options.max_chunk_mb)
    if options.use_tfidf or hashes is not None:
        logger.info("model-free sources in %.1f s", time.perf_counter() - started)
    if not sources.neighbours:
        raise UserError(
            "nothing to match with: give --model, or keep TF-IDF (drop --no-tfidf), or a CSV with "
            "image_phash"
        )
    return sources


# --------------------------------------------------------------------------------------------
# Thresholds and matches

# Which source's nearest candidate "at least one neighbour" (min2) adds when no thresholds file
# decides, in order of preference: the richest representation present.
MIN2_SOURCE_PREFERENCE = (CONCAT, "multimodal", "text", "image", TFIDF, PHASH)
# Without a thresholds file, the lowest cosine min2 accepts from a model source (the floor the
# shipped model-free search chose for raw TF-IDF cosines before local scaling).
MODEL_MIN2_FLOOR = 0.3


@dataclass
class PlannedSources:
    """The sources a run will build, known before any model is loaded or any embedding made."""

    names: list[str]
    model_dirs: dict[str, str] = field(default_factory=dict)  # embedding source → export
    model_thresholds: dict[str, float] = field(default_factory=dict)  # from each export


def model_source_names(model_dirs: list[str]) -> list[tuple[str, str, dict]]:
    """``(source name, model folder, export metadata)`` per ``--model``, read from the exports'
    metadata only. A source is named by its model's kind; two models of one kind are told apart
    as ``kind:<folder name>``."""
    from tf_shopee.export import read_export_metadata

    named: list[tuple[str, str, dict]] = []
    for model_dir in model_dirs:
        metadata = read_export_metadata(model_dir)
        name = metadata["kind"]
        if any(existing == name for existing, _, _ in named):
            name = f"{metadata['kind']}:{Path(model_dir).name}"
        if any(existing == name for existing, _, _ in named):
            raise UserError(f"--model {model_dir}: two models would both be called {name!r}")
        named.append((name, model_dir, metadata))
    return named


def plan_sources(postings: Postings, options: PredictOptions) -> PlannedSources:
    """The names of the sources :func:`compute_sources` will build for these options."""
    planned = PlannedSources(names=[])
    kinds = []
    for name, model_dir, metadata in model_source_names(options.models):
        planned.names.append(name)
        planned.model_dirs[name] = model_dir
        kinds.append(metadata["kind"])
        if metadata.get("threshold") is not None:
            planned.model_thresholds[name] = metadata["threshold"]
    if options.use_concat and "image" in kinds and "text" in kinds:
        planned.names.append(CONCAT)
    has_hashes = (options.use_phash and postings.image_phashes is not None
                  and any(postings.image_phashes))
    if options.use_tfidf:
        planned.names.append(TFIDF)
        if has_hashes:
            planned.names += [PHASH, "phash_text"]
    elif has_hashes:
        planned.names.append(PHASH)
    if not planned.names:
        raise UserError(
            "nothing to match with: give --model, or keep TF-IDF (drop --no-tfidf), or a CSV with "
            "image_phash"
        )
    return planned


@dataclass
class MatchPlan:
    """The decision a run applies (:class:`tf_shopee.thresholds.Decision`), where each of its
    rules came from, and the blending rounds per embedding source."""

    decision: "Decision"  # noqa: F821 (imported lazily: keeps `import tf_shopee.predict` light)
    origin: dict[str, str]
    inb_iterations: dict[str, int] = field(default_factory=dict)


def default_decision(planned: PlannedSources, *, searching: bool = False,
                     given: frozenset[str] = frozenset()
                     ) -> tuple["Decision", dict[str, str]]:  # noqa: F821
    """The decision without a thresholds file: every model source at its validation threshold,
    with the model-free sources :data:`tf_shopee.thresholds.DEFAULT_DECISION` keeps (the others
    only when none of those is built), min2 on the richest source.

    A model source without a threshold of its own (an export of an untrained model,
    ``train.py --epochs 0``) is an error, unless a search will choose one (``searching``) or
    ``--threshold`` gives it (its name in ``given``): then it holds a placeholder until then."""
    from tf_shopee.thresholds import (
        DEFAULT_DECISION,
        Decision,
        SourceRule,
        check_threshold,
        is_phash_source,
    )

    rules, origin = {}, {}
    for name in planned.names:
        if name in DEFAULT_DECISION.rules:
            rules[name], origin[name] = DEFAULT_DECISION.rules[name], "default"
    for name, value in planned.model_thresholds.items():
        where = f"model export {planned.model_dirs[name]}"
        rules[name] = SourceRule(check_threshold(name, value, where=where))
        origin[name] = "model export"
    parts = [name for name in ("image", "text") if name in planned.model_thresholds]
    if CONCAT in planned.names and len(parts) == 2:
        # No validation ever saw the concatenation: start from the mean of its two parts.
        rules[CONCAT] = SourceRule(float(np.mean([rules[name].threshold for name in parts])))
        origin[CONCAT] = "mean of image and text"
    missing = [name for name in planned.names if name not in rules]
    for name in list(missing):
        if searching or name in given:
            rules[name], origin[name] = SourceRule(0.5), "placeholder (searched or given later)"
            missing.remove(name)
    if missing:
        raise UserError(
            f"no threshold for source(s) {', '.join(missing)}: give --threshold NAME=VALUE, a "
            "--thresholds file, or --search-thresholds on a labelled set"
        )
    model_free = [name for name in planned.names if name in DEFAULT_DECISION.rules]
    kept = [name for name in model_free if name in DEFAULT_DECISION.sources] or model_free
    members = [name for name in planned.names if name not in model_free or name in kept]
    for name in model_free:
        if name not in kept:
            origin[name] = "default (left out of the union by the shipped search)"
    min2_source = DEFAULT_DECISION.min2_source
    if planned.model_dirs or min2_source not in members:
        # A model's embeddings are a better judge of a lonely posting's nearest neighbour.
        min2_source = next(name for name in (*MIN2_SOURCE_PREFERENCE, *members)
                           if name in members)
    if min2_source == DEFAULT_DECISION.min2_source:
        floor = DEFAULT_DECISION.min2_floor  # in that source's (scaled) units
    else:
        floor = None if is_phash_source(min2_source) else MODEL_MIN2_FLOOR
    decision = Decision(
        sources=tuple(members), rules=rules, min2_source=min2_source, min2_floor=floor,
        method=DEFAULT_DECISION.method, window=DEFAULT_DECISION.window,
        search_rows=DEFAULT_DECISION.search_rows,
    ).checked(where="default thresholds")
    return decision, origin


def resolve_plan(planned: PlannedSources, options: PredictOptions,
                 searched: "Decision | None" = None, *,  # noqa: F821
                 allow_absent: bool = False) -> MatchPlan:
    """The decision of this run: a search's (``searched``), else ``--thresholds FILE``'s, else
    the defaults; then ``--threshold`` overrides, ``--no-min2`` and ``--inb-iterations``.

    Runs before anything is embedded, so a bad name or value fails fast.

    Args:
        planned: the sources this run builds.
        options: the run's options (thresholds file, overrides, min2, blending).
        searched: a decision just searched on this run's labelled postings.
        allow_absent: sources of the file or overrides this run lacks are left out (logged)
            instead of being an error: catalogue queries that lack a title or a photo.

    Raises:
        UserError: a thresholds file or ``--threshold`` naming a source this run does not
            build (unless ``allow_absent``), or a bad value.
    """
    from dataclasses import replace

    from tf_shopee.thresholds import EMBEDDING_KINDS, load_thresholds, source_kind, with_threshold

    names = planned.names
    if searched is not None:
        decision, label = searched, f"search on this set ({options.search_thresholds})"
        origin = {name: label for name in decision.sources}
    elif options.thresholds_file:
        decision = load_thresholds(options.thresholds_file)
        absent = [name for name in decision.sources if name not in names]
        if absent and not allow_absent:
            raise UserError(
                f"thresholds file {options.thresholds_file} uses source(s) "
                f"{', '.join(absent)}, which this run does not build (its sources: "
                f"{', '.join(names)}); run with the flags (--model, --no-tfidf, --no-phash, ...) "
                "the thresholds were searched with"
            )
        decision = _without_absent(decision, names, planned)
        origin = {name: f"file {options.thresholds_file}" for name in decision.sources}
    else:
        # Before a search, a model without a threshold of its own is fine: the search gives it.
        decision, origin = default_decision(
            planned, searching=bool(options.search_thresholds),
            given=frozenset(options.threshold_overrides))
    for name, value in options.threshold_overrides.items():
        if name not in names:
            if allow_absent:
                logger.info("--threshold %s=%s: no %s source here; ignored", name, value, name)
                continue
            raise UserError(f"--threshold {name}={value}: this run has no source {name!r} "
                            f"(its sources: {', '.join(names)})")
        decision = with_threshold(decision, name, value)
        origin[name] = "--threshold"
    if not options.min2:
        decision = replace(decision, min2_source=None, min2_floor=None)
    rules = dict(decision.rules)
    iterations: dict[str, int] = {}
    for name in decision.sources:
        if source_kind(name) not in EMBEDDING_KINDS:
            continue
        rule = rules[name]
        if options.inb_iterations == 0:
            rules[name] = replace(rule, inb=None)
        elif options.inb_iterations is not None and rule.inb is None:
            if rule.beta:
                raise UserError(
                    f"--inb-iterations {options.inb_iterations}: source {name!r} is matched on "
                    "locally scaled scores, so its threshold is no blend threshold; let "
                    "--search-thresholds choose blending, or give --threshold "
                    f"{name}=VALUE (a plain cosine threshold, also used to blend)"
                )
            rules[name] = replace(rule, inb=rule.threshold)
        if rules[name].inb is not None:
            iterations[name] = options.inb_iterations or 1
            if rules[name].inb_phash is not None and PHASH not in names:
                raise UserError(f"source {name!r} is blended with the photos' phash neighbours, "
                                "but this run has no phash source (image_phash column, no "
                                "--no-phash)")
    decision = replace(decision, rules=rules).checked(where="match plan")
    return MatchPlan(decision=decision, origin=origin, inb_iterations=iterations)


def _without_absent(decision, names: list[str], planned: PlannedSources):
    """``decision`` restricted to the sources in ``names`` (logged when a member goes); when no
    member is left, the default decision of these sources."""
    from dataclasses import replace

    members = tuple(name for name in decision.sources if name in names)
    if len(members) < len(decision.sources):
        logger.warning("the thresholds file's union uses %s, which these postings lack: matching "
                       "with %s only", [name for name in decision.sources if name not in names],
                       list(members) or "the default decision")
    if not members:
        return default_decision(planned)[0]
    min2_source, min2_floor = decision.min2_source, decision.min2_floor
    if min2_source is not None and min2_source not in members:
        min2_source = next(name for name in (*MIN2_SOURCE_PREFERENCE, *members) if name in members)
        min2_floor = None
    return replace(decision, sources=members, min2_source=min2_source, min2_floor=min2_floor,
                   rules={name: rule for name, rule in decision.rules.items() if name in names})


def blend_embeddings(embeddings: np.ndarray, neighbours, threshold: float, *,
                     phash_neighbours=None, phash_bits: float | None = None,
                     max_neighbours: int | None = None) -> np.ndarray:
    """One round of neighbourhood blending: each embedding becomes the normalised sum of itself
    and its neighbours scoring at least ``threshold`` (among its ``max_neighbours`` nearest,
    itself included, when given), weighted by their scores, and (with ``phash_bits``) of the
    postings whose photos are at most that many bits apart (weighted by their phash score), as
    the model-free TF-IDF source blends titles."""
    from tf_shopee.neighbours import Neighbours
    from tf_shopee.neighbours.tfidf import blend_vectors

    if max_neighbours is not None:
        neighbours = Neighbours(neighbours.indices[:, :max_neighbours],
                                neighbours.scores[:, :max_neighbours])
    graphs = [(neighbours, threshold)]
    if phash_bits is not None:
        if phash_neighbours is None:
            raise UserError("blending with phash neighbours needs image_phash values (and no "
                            "--no-phash)")
        graphs.append((phash_neighbours, 1.0 - phash_bits / 64))
    return np.asarray(blend_vectors(embeddings, graphs).todense(), dtype=np.float32)


# Photos at most this many bits apart are blended into an embedding source when the search tries
# blending with the photo graph (the model-free TF-IDF source's setting).
BLEND_PHASH_BITS = 4


def blend_sources(sources: Sources, plan: MatchPlan, options: PredictOptions) -> None:
    """Neighbourhood blending of each embedding source the plan blends, in place: blend at its
    rule's ``inb`` threshold (with the photos ``inb_phash`` bits apart), search the neighbours
    again, as many rounds as planned."""
    from tf_shopee.matching import top_k_neighbours

    for name, rounds in plan.inb_iterations.items():
        started = time.perf_counter()
        rule = plan.decision.rules[name]
        for _ in range(rounds):
            blended = blend_embeddings(
                sources.embeddings[name], sources.neighbours[name], rule.inb,
                phash_neighbours=sources.neighbours.get(PHASH), phash_bits=rule.inb_phash,
                max_neighbours=rule.inb_neighbours,
            )
            sources.embeddings[name] = blended
            sources.neighbours[name] = _usable_neighbours(
                sources, name,
                top_k_neighbours(blended, k=options.k, max_chunk_mb=options.max_chunk_mb),
            )
        logger.info("%s: blended (%d round(s) at %.3f) in %.1f s", name, rounds, rule.inb,
                    time.perf_counter() - started)


def _usable_neighbours(sources: Sources, name: str, neighbours):
    """Leave postings without a usable photo out of the sources built on photos."""
    if name in sources.image_based and sources.bad_rows:
        return neighbours.without_rows(sources.bad_rows)
    return neighbours


def match_sources(sources: Sources, plan: MatchPlan, options: PredictOptions) -> dict:
    """Match lists of every source in the union (alone, without min2) and the combination
    (union + min2) under the key ``combined``, exactly as the threshold search scored them."""
    from tf_shopee.thresholds import apply_decision

    per_source, combined = apply_decision(sources.neighbours, plan.decision,
                                          max_matches=options.max_matches)
    return {**per_source, COMBINED: combined}


def blend_variants(sources: Sources, options: PredictOptions) -> dict[str, dict]:
    """Per embedding source, {(blend threshold, phash bits or None, neighbours blended or None)
    → neighbours after one round of :func:`blend_embeddings`} for every threshold of
    ``options.inb_grid`` (default :data:`~tf_shopee.thresholds.DEFAULT_INB_GRID`) and every
    count of ``options.inb_neighbours``, without and (when the postings have phashes) with the
    photos :data:`BLEND_PHASH_BITS` apart: the blending options the search tries (none with
    ``--inb-iterations 0``). :func:`blend_sources` reproduces the chosen one exactly."""
    from tf_shopee.matching import top_k_neighbours
    from tf_shopee.thresholds import DEFAULT_INB_GRID

    variants: dict[str, dict] = {}
    if options.inb_iterations == 0:
        return variants
    phash = sources.neighbours.get(PHASH)
    photo_options = [None] if phash is None else [None, BLEND_PHASH_BITS]
    grid = tuple(options.inb_grid) or DEFAULT_INB_GRID
    for name, embeddings in sources.embeddings.items():
        started = time.perf_counter()
        variants[name] = {
            (blend, bits, count): _usable_neighbours(sources, name, top_k_neighbours(
                blend_embeddings(embeddings, sources.neighbours[name], blend,
                                 phash_neighbours=phash, phash_bits=bits,
                                 max_neighbours=count),
                k=options.k, max_chunk_mb=options.max_chunk_mb,
            ))
            for blend in grid for bits in photo_options for count in options.inb_neighbours
        }
        logger.info("%s: %d blended variants for the search in %.1f s", name,
                    len(variants[name]), time.perf_counter() - started)
    return variants


def search_and_write_thresholds(sources: Sources, labels: np.ndarray,
                                options: PredictOptions) -> "Decision":  # noqa: F821
    """Choose the decision on this labelled set (:func:`tf_shopee.thresholds.search_decision`
    over every source, with the blending options of :func:`blend_variants`); write
    ``thresholds.json`` and ``thresholds.png`` into ``options.search_thresholds``; return the
    decision."""
    from tf_shopee.thresholds import Decision, plot_thresholds, search_decision, write_thresholds

    inb_variants = blend_variants(sources, options)
    started = time.perf_counter()
    result = search_decision(sources.neighbours, labels, method=options.threshold_method,
                             inb_variants=inb_variants, max_matches=options.max_matches)
    out = Path(options.search_thresholds)
    write_thresholds(out / "thresholds.json", result, settings={
        "searched_on_rows": len(labels), "k": options.k, "models": list(options.models),
        "use_tfidf": options.use_tfidf, "use_phash": options.use_phash,
        "use_concat": options.use_concat,
    })
    plot_thresholds(out / "thresholds.png", result)
    decision = Decision.from_dict(result["decision"], where="search result")
    logger.info("thresholds searched on %d labelled postings in %.1f s (F1 %.4f on them; best "
                "single source %s %.4f): %s → %s", len(labels), time.perf_counter() - started,
                result["f1"], result["best_single"]["source"], result["best_single"]["f1"],
                decision.describe(), out)
    return decision


# --------------------------------------------------------------------------------------------
# The job


def run_prediction(options: PredictOptions) -> dict:
    """Read postings, match them with every source, write the submission (and the F1 report).

    Every name and value of ``--thresholds`` / ``--threshold`` is checked against the sources
    this run builds before anything is embedded.

    Returns:
        The report: ``{"rows", "sources", "used_sources", "decision", "thresholds" (of the
        sources in the union, in their units, for this pool's size), "threshold_origin", "min2",
        "inb", "options", "f1" (when labels are present and ``options.evaluate``: each source in
        the union alone, and ``combined``), "recall_at_1" (per embedding source, before
        blending; with ``f1``), "seconds", "submission"}``.
    """
    from tf_shopee.metrics import mean_f1_from_matches, recall_at_1

    if not options.cache_dir:
        options.cache_dir = str(Path(options.out).absolute().parent / ".embedding_cache")
    if options.catalog:  # queries against a catalogue index: tf_shopee.catalog.query
        from tf_shopee.catalog.query import run_catalog_prediction

        return run_catalog_prediction(options)
    started = time.perf_counter()
    check_options(options)
    check_outputs(options)
    from tf_shopee import import_tensorflow

    import_tensorflow()  # its start-up lines once, not twice
    postings = read_postings(options)
    check_outputs(options, postings)
    needs_labels = options.evaluate or options.search_thresholds
    if needs_labels and postings.label_groups is None:
        raise UserError(
            "--evaluate and --search-thresholds need labels: a CSV with a label_group column "
            "(or a labelled TFRecord folder)"
        )
    logger.info("%d postings", len(postings))
    planned = plan_sources(postings, options)
    plan = resolve_plan(planned, options)  # fails on bad names or values before any embedding
    sources = compute_sources(postings, options)
    if options.search_thresholds:
        searched = search_and_write_thresholds(sources, postings.label_groups, options)
        plan = resolve_plan(planned, options, searched=searched)
    recall = None
    if options.evaluate:
        # Before blending: recall@1 measures the embeddings themselves.
        recall = {name: recall_at_1(sources.neighbours[name].indices, postings.label_groups)
                  for name in sources.embeddings}
    blend_sources(sources, plan, options)
    matches = match_sources(sources, plan, options)
    write_submission(options.out, postings.posting_ids, matches[COMBINED])
    bad_images = _report_bad_images(postings, sources)
    decision = plan.decision
    report = {
        "rows": len(postings),
        "sources": list(sources.neighbours),
        "used_sources": list(decision.sources),
        "decision": decision.to_dict(),
        "thresholds": decision.thresholds_for(len(postings)),
        "threshold_origin": plan.origin,
        "min2": {"enabled": decision.min2, "source": decision.min2_source,
                 "floor": decision.min2_floor},
        "inb": {name: {"threshold": decision.rules[name].inb, "iterations": rounds,
                       "photos_within_bits": decision.rules[name].inb_phash,
                       "neighbours": decision.rules[name].inb_neighbours}
                for name, rounds in plan.inb_iterations.items()},
        "inb_iterations": options.inb_iterations,
        "options": describe_options(options),
        "models": list(options.models),
        "submission": str(options.out),
        "bad_images": bad_images,
    }
    if postings.encoding is not None:
        report["csv_encoding"] = postings.encoding.to_json()
    if options.evaluate:
        report["f1"] = {name: float(mean_f1_from_matches(match_lists, postings.label_groups))
                        for name, match_lists in matches.items()}
        report["recall_at_1"] = recall
        if options.search_thresholds:
            report["note"] = "thresholds were searched on this same labelled set (optimistic F1)"
    report["seconds"] = round(time.perf_counter() - started, 2)
    if options.report:
        write_json_atomic(options.report, report)
    return report


def _output_paths(options: PredictOptions) -> dict[str, Path | str]:
    outputs = {"--out": options.out, "--report": options.report}
    if options.search_thresholds:
        search = Path(options.search_thresholds)
        outputs.update({"--search-thresholds thresholds.json": search / "thresholds.json",
                        "--search-thresholds thresholds.png": search / "thresholds.png"})
    return outputs


def check_outputs(options: PredictOptions, postings: Postings | None = None) -> None:
    """Refuse outputs that would overwrite an input (the CSV, a TFRecord folder's file, a model,
    the thresholds file, one of the photos) or each other, before any work starts.

    Called twice: before reading (``postings`` None), and with the postings read, to compare
    the outputs with the photo files the CSV names (an image folder may also hold other files,
    such as the submission itself when it is the working folder).
    """
    from tf_shopee.io_utils import refuse_overwriting_inputs

    if postings is None:
        inputs = {"--csv": options.csv, "--tfrecords": options.tfrecords,
                  "--thresholds": options.thresholds_file}
        inputs.update({f"--model {model}": model for model in options.models})
        refuse_overwriting_inputs(inputs, _output_paths(options))
        return
    if postings.image_paths is None:
        return
    photos = {os.path.realpath(path): row for row, path in enumerate(postings.image_paths)}
    for name, path in _output_paths(options).items():
        row = photos.get(os.path.realpath(path)) if path else None
        if row is not None:
            raise UserError(
                f"{name} {path} is the photo of posting {postings.posting_ids[row]} (an input): "
                "an output must never overwrite an input; choose another path"
            )


def _report_bad_images(postings: Postings, sources: Sources) -> list[dict]:
    """Warn about postings whose photo could not be used; the report's list of them."""
    if not postings.bad_images:
        return []
    listed = [
        {"posting_id": postings.posting_ids[row],
         "image": postings.image_names[row] if postings.image_names is not None else None,
         "reason": reason}
        for row, reason in sorted(postings.bad_images.items())
    ]
    used_by = sorted(sources.image_based) or ["no source (no image model was given)"]
    shown = "\n".join(f"  {item['posting_id']}: {item['reason']}" for item in listed[:10])
    more = ""
    if len(listed) > 10:
        more = f"\n  ... and {len(listed) - 10} more (all in the --report JSON)"
    logger.warning(
        "%d posting(s) have an image that cannot be used; %s leave them out and their other "
        "sources (titles, image_phash) match them:\n%s%s",
        len(listed), ", ".join(used_by), shown, more,
    )
    return listed


def check_options(options: PredictOptions) -> None:
    """Reject bad numeric options and threshold overrides before any work (UserError)."""
    from tf_shopee.thresholds import METHODS, check_source_name, check_threshold

    if options.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.k < 2:
        raise UserError(f"--k must be at least 2 (the posting and a neighbour), got {options.k}")
    if not 1 <= options.max_matches <= options.k:
        raise UserError(f"--max-matches must be between 1 and k={options.k}")
    if options.inb_iterations is not None and options.inb_iterations < 0:
        raise UserError(f"--inb-iterations must be 0 or more, got {options.inb_iterations}")
    for count in options.inb_neighbours:
        if count is not None and not 2 <= count <= options.k:
            raise UserError(f"--inb-neighbours: each count must be from 2 to k={options.k} (or "
                            f"'all'), got {count}")
    for value in options.inb_grid:
        if not (isinstance(value, float) and 0.0 <= value <= 1.0):
            raise UserError(f"--inb-grid: blend thresholds are similarities in [0, 1], got "
                            f"{value!r}")
    if options.threshold_method not in METHODS:
        raise UserError(f"--threshold-method must be one of {', '.join(METHODS)}, got "
                        f"{options.threshold_method!r}")
    for name, value in options.threshold_overrides.items():
        check_source_name(name, where="--threshold")
        check_threshold(name, value, where="--threshold")


def describe_options(options: PredictOptions) -> dict:
    """The settings that decide the matches, JSON-ready (what the demo prints and reports keep)."""
    return {
        "thresholds_file": options.thresholds_file or None,
        "threshold_overrides": dict(options.threshold_overrides),
        "search_thresholds": options.search_thresholds or None,
        "threshold_method": options.threshold_method,
        "use_tfidf": options.use_tfidf,
        "use_phash": options.use_phash,
        "use_concat": options.use_concat,
        "min2": options.min2,
        "inb_iterations": options.inb_iterations,
        "inb_neighbours": list(options.inb_neighbours),
        "inb_grid": list(options.inb_grid),
        "k": options.k,
        "max_matches": options.max_matches,
    }


def _parse_neighbour_counts(text: str) -> tuple[int | None, ...]:
    """``--inb-neighbours``: '10,20,all' → (10, 20, None)."""
    counts = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "all":
            counts.append(None)
        elif part.isdigit():
            counts.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"not a neighbour count or 'all': {part!r}")
    if not counts:
        raise argparse.ArgumentTypeError("give at least one count")
    return tuple(dict.fromkeys(counts))


def _parse_float_list(text: str) -> tuple[float, ...]:
    """``--inb-grid``: '0.2,0.3' → (0.2, 0.3)."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from error
    if not values:
        raise argparse.ArgumentTypeError("give at least one number")
    return values


def _parse_threshold_overrides(values: list[str]) -> dict[str, float]:
    """``SOURCE=VALUE`` strings → {source: value}, each checked (phash values in bits)."""
    from tf_shopee.thresholds import check_source_name, check_threshold

    overrides = {}
    for value in values:
        name, separator, number = value.partition("=")
        name = name.strip()
        if not separator or not name or not number.strip():
            raise UserError(f"--threshold expects SOURCE=VALUE (e.g. tfidf=0.6 or phash=8), got "
                            f"{value!r}")
        check_source_name(name, where=f"--threshold {value}")
        try:
            parsed = float(number)
        except ValueError:
            raise UserError(f"--threshold {value}: {number!r} is not a number") from None
        overrides[name] = check_threshold(name, parsed, where=f"--threshold {value}")
    return overrides


def build_argument_parser() -> argparse.ArgumentParser:
    """The command line of ``predict.py``; every default is :class:`PredictOptions`' own."""
    from tf_shopee.thresholds import METHODS

    defaults = PredictOptions()
    parser = argparse.ArgumentParser(
        prog="predict.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Match postings: embed with exported models, find neighbours (embeddings, TF-IDF "
            "titles, image_phash), apply thresholds, union and min2, write posting_id,matches."
        ),
        epilog=(
            "Sources: one per --model (named by its kind: image, text, multimodal), 'concat' (image"
            " + text embeddings) when both kinds are given, 'tfidf' (titles), 'phash' and "
            "'phash_text' (photos a few bits apart whose titles agree; when the CSV has "
            "image_phash). Without --model only the model-free sources are used.\n\n"
            "Units: phash and phash_text thresholds are Hamming distances in bits (phash=8 "
            "matches photos at most 8 of 64 bits apart); every other threshold is a similarity "
            "in [0, 1].\n\n"
            "Decision, later wins: shipped defaults (chosen on the real Shopee train.csv by "
            "benchmarks/quality_real.py: TF-IDF alone, phash and phash_text left out of the "
            "union) with each model joining the union at its validation threshold < "
            "--thresholds FILE (which sources enter the union, their "
            "thresholds, local scaling, blending and min2, applied exactly as searched) < "
            "--threshold SOURCE=VALUE (a plain threshold; adds the source to the union). "
            "--search-thresholds DIR chooses all of it on this labelled set and writes "
            "DIR/thresholds.json and DIR/thresholds.png.\n\n"
            "examples:\n"
            "  python predict.py --csv test.csv --images test_images --model saved_models/image "
            "--model saved_models/text --out submission.csv\n"
            "  python predict.py --csv train.csv --out train_matches.csv --evaluate "
            "--report report.json\n"
            "  python predict.py --tfrecords tfrecords/train --fold 1 --model saved_models/text "
            "--out fold1.csv --search-thresholds thresholds/\n"
            "  python predict.py --tfrecords tfrecords/train --fold 0 --model saved_models/text "
            "--thresholds thresholds/thresholds.json --out fold0.csv --evaluate\n"
            "  python predict.py --catalog index/ --csv new_listings.csv --images photos "
            "--out matches.csv\n\n"
            "Exit status: 0 done; 2 for bad input (message on stderr)."
        ),
    )
    data = parser.add_argument_group("postings")
    data.add_argument("--csv", default=defaults.csv, help="Shopee-style CSV (posting_id, title; "
                      "image, image_phash, label_group when present), or a .zip holding one")
    data.add_argument("--images", default=defaults.images, metavar="DIR",
                      help="folder the CSV's image column is relative to")
    data.add_argument("--tfrecords", default=defaults.tfrecords, metavar="DIR",
                      help="a folder written by convert_tfrecords.py (instead of --images; with "
                      "--csv only the CSV's postings are matched)")
    data.add_argument("--fold", type=int, default=defaults.fold,
                      help="with --tfrecords: match only the postings of this fold")
    data.add_argument("--catalog", default=defaults.catalog, metavar="INDEX",
                      help="match the postings against this catalogue index (built by python -m "
                      "tf_shopee.catalog build) instead of against each other; matches are "
                      "catalogue posting ids; --model defaults to the index's models")
    data.add_argument("--search", default=defaults.search, choices=("exact", "ann", "auto"),
                      help="with --catalog: exact search, approximate (FAISS IVF), or auto "
                      "(approximate from 200,000 catalogue rows on; default)")
    data.add_argument("--nprobe", type=int, default=defaults.nprobe,
                      help="with --search ann: IVF cells probed per query (default 16)")
    model = parser.add_argument_group("models and thresholds")
    model.add_argument("--model", action="append", default=[], dest="models", metavar="DIR",
                       help="exported SavedModel folder (repeatable)")
    model.add_argument("--thresholds", default=defaults.thresholds_file, metavar="FILE",
                       help="thresholds.json from a threshold search: applied exactly")
    model.add_argument("--threshold", action="append", default=[], metavar="SOURCE=VALUE",
                       help="match SOURCE at a plain threshold (bits for phash sources; "
                       "repeatable)")
    model.add_argument("--search-thresholds", default=defaults.search_thresholds, metavar="DIR",
                       help="choose the decision on this labelled set; write "
                       "DIR/thresholds.json+png")
    model.add_argument("--threshold-method", default=defaults.threshold_method, choices=METHODS,
                       help="how the search makes thresholds hold on a bigger pool: local "
                       "scaling, refitting on sub-pools (size), both, a background shift, or "
                       f"plain fixed thresholds (default {defaults.threshold_method})")
    model.add_argument("--no-tfidf", action="store_true", help="do not use TF-IDF title matches")
    model.add_argument("--no-phash", action="store_true", help="do not use image_phash matches")
    model.add_argument("--no-concat", action="store_true",
                       help="do not add the concatenated image+text source")
    model.add_argument("--no-min2", action="store_true",
                       help="do not give lonely postings their nearest neighbour")
    model.add_argument("--inb-iterations", type=int, default=defaults.inb_iterations,
                       help="neighbourhood blending rounds of embedding sources (default: as "
                       "the thresholds file or search decides, off without one; 0: off)")
    model.add_argument("--inb-neighbours", type=_parse_neighbour_counts, default=None,
                       metavar="LIST",
                       help="with --search-thresholds: how many nearest neighbours (itself "
                       "included) blending may pull in, comma-separated counts or 'all', each "
                       "tried, e.g. 10,20,all (default: all, i.e. --k); big product groups "
                       "blend best over a bounded neighbourhood")
    model.add_argument("--inb-grid", type=_parse_float_list, default=None, metavar="LIST",
                       help="with --search-thresholds: the blend thresholds tried, e.g. "
                       "0.2,0.3,0.4 (default 0.5 to 0.8 by 0.05)")
    model.add_argument("--k", type=int, default=defaults.k,
                       help=f"neighbours per posting (default {defaults.k})")
    model.add_argument("--max-matches", type=int, default=defaults.max_matches,
                       help=f"matches per posting, itself included (default "
                       f"{defaults.max_matches})")
    model.add_argument("--max-chunk-mb", type=int, default=defaults.max_chunk_mb,
                       help=f"memory budget of one similarity chunk in MiB (default "
                       f"{defaults.max_chunk_mb})")
    output = parser.add_argument_group("output")
    output.add_argument("--out", default=defaults.out, help="submission CSV to write")
    output.add_argument("--evaluate", action="store_true",
                        help="print mean F1 per source and combined, and recall@1 (the nearest "
                        "other posting is the same product) per embedding source (needs "
                        "label_group)")
    output.add_argument("--report", default=defaults.report, metavar="JSON",
                        help="write a JSON report")
    output.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"postings per model call (default {defaults.batch_size})")
    output.add_argument("--cache-dir", default=defaults.cache_dir, metavar="DIR",
                        help="embedding cache (default: .embedding_cache beside --out)")
    data.add_argument("--encoding", default=None, metavar="NAME",
                      help="the CSV's text encoding, e.g. cp1252 (default: detected, as "
                      "convert_tfrecords.py does; the decision is printed and reported)")
    output.add_argument("--quiet", action="store_true",
                        help="no progress bars or log lines (warnings stay)")
    return parser


def options_from_arguments(arguments: argparse.Namespace) -> PredictOptions:
    """The :class:`PredictOptions` of parsed ``predict.py`` arguments."""
    return PredictOptions(
        csv=arguments.csv,
        images=arguments.images,
        tfrecords=arguments.tfrecords,
        fold=arguments.fold,
        models=arguments.models,
        thresholds_file=arguments.thresholds,
        threshold_overrides=_parse_threshold_overrides(arguments.threshold),
        out=arguments.out,
        evaluate=arguments.evaluate,
        report=arguments.report,
        search_thresholds=arguments.search_thresholds,
        batch_size=arguments.batch_size,
        cache_dir=arguments.cache_dir,
        use_tfidf=not arguments.no_tfidf,
        use_phash=not arguments.no_phash,
        use_concat=not arguments.no_concat,
        min2=not arguments.no_min2,
        inb_iterations=arguments.inb_iterations,
        inb_neighbours=(arguments.inb_neighbours if arguments.inb_neighbours is not None
                        else PredictOptions.inb_neighbours),
        inb_grid=arguments.inb_grid or PredictOptions.inb_grid,
        threshold_method=arguments.threshold_method,
        k=arguments.k,
        max_matches=arguments.max_matches,
        max_chunk_mb=arguments.max_chunk_mb,
        progress=not arguments.quiet,
        catalog=arguments.catalog,
        search=arguments.search,
        nprobe=arguments.nprobe,
        encoding=arguments.encoding,
    )


@exit_on_user_error
def main(argv=None) -> dict:
    """Entry point of ``predict.py``."""
    arguments = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if arguments.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    options = options_from_arguments(arguments)
    report = run_prediction(options)
    print(f"wrote {report['rows']} rows to {options.out}")
    if "top1_accuracy" in report:
        from tf_shopee.catalog.query import format_catalog_table

        print(format_catalog_table(report))
    elif "f1" in report:
        print(format_f1_table(report))
    return report
