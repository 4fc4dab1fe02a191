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
    inb_iterations: int = 1
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


def format_f1_table(
    f1_by_source: dict[str, float],
    thresholds: dict[str, float],
    recall_at_1: dict[str, float] | None = None,
) -> str:
    """A plain-text table of threshold, mean F1 and (for embedding sources) recall@1 per
    source."""
    recall_at_1 = recall_at_1 or {}
    width = max(len("source"), *(len(name) for name in f1_by_source))
    lines = [f"{'source':<{width}}  threshold  mean F1  recall@1",
             f"{'-' * width}  ---------  -------  --------"]
    for name, value in f1_by_source.items():
        threshold = thresholds.get(name)
        shown = f"{threshold:9.3f}" if threshold is not None else f"{'-':>9}"
        recall = recall_at_1.get(name)
        recall_shown = f"{recall:8.4f}" if recall is not None else f"{'-':>8}"
        lines.append(f"{name:<{width}}  {shown}  {value:7.4f}  {recall_shown}")
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
    for model_dir in options.models:
        model = load_exported(model_dir)
        name = model.kind
        if name in sources.embeddings:  # two models of one kind: name them by folder
            name = f"{model.kind}:{Path(model_dir).name}"
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

# Which source's nearest candidate "at least one neighbour" (min2) adds, in order of preference:
# the richest representation present.
MIN2_SOURCE_PREFERENCE = (CONCAT, "multimodal", "text", "image", TFIDF, PHASH)


@dataclass
class MatchPlan:
    """Thresholds per source and how the sources are combined."""

    thresholds: dict[str, float]
    min2: bool
    min2_source: str | None
    min2_floor: float | None
    origin: dict[str, str]  # where each threshold came from, for the report


def resolve_plan(sources: Sources, options: PredictOptions) -> MatchPlan:
    """Thresholds of every source, from defaults < model exports < --thresholds < --threshold."""
    from tf_shopee.thresholds import DEFAULT_COMBINATION, DEFAULT_THRESHOLDS, load_thresholds

    thresholds: dict[str, float] = {}
    origin: dict[str, str] = {}
    combination = dict(DEFAULT_COMBINATION)
    if sources.embeddings:
        # The shipped min2 source is a model-free one; a model's embeddings are a better judge of
        # a lonely posting's nearest neighbour (MIN2_SOURCE_PREFERENCE picks it below).
        combination.pop("min2_source", None)
    for name, value in DEFAULT_THRESHOLDS.items():
        thresholds[name], origin[name] = float(value), "default"
    for name, value in sources.model_thresholds.items():
        thresholds[name], origin[name] = value, "model export"
    image_text = [name for name in ("image", "text") if name in sources.model_thresholds]
    if CONCAT in sources.neighbours and len(image_text) == 2:
        # No validation ever saw the concatenation: start from the mean of its two parts.
        thresholds[CONCAT] = float(np.mean([sources.model_thresholds[name] for name in image_text]))
        origin[CONCAT] = "mean of image and text"
    if options.thresholds_file:
        payload = load_thresholds(options.thresholds_file)
        for name, value in payload["thresholds"].items():
            thresholds[name], origin[name] = float(value), f"file {options.thresholds_file}"
        if payload.get("combined"):
            combination = payload["combined"]
    for name, value in options.threshold_overrides.items():
        thresholds[name], origin[name] = float(value), "--threshold"
    missing = [name for name in sources.neighbours if name not in thresholds]
    if missing:
        raise UserError(
            f"no threshold for source(s) {', '.join(missing)}: give --threshold NAME=VALUE, a "
            "--thresholds file, or --search-thresholds on a labelled set"
        )
    min2_source = combination.get("min2_source")
    if min2_source not in sources.neighbours:
        min2_source = next(
            (name for name in (*MIN2_SOURCE_PREFERENCE, *sources.neighbours)
             if name in sources.neighbours),
            None,
        )
    return MatchPlan(
        thresholds={name: thresholds[name] for name in sources.neighbours},
        min2=options.min2 and bool(combination.get("min2", True)),
        min2_source=min2_source,
        min2_floor=combination.get("min2_floor"),
        origin={name: origin[name] for name in sources.neighbours},
    )


def blend_sources(sources: Sources, plan: MatchPlan, options: PredictOptions) -> None:
    """Neighbourhood blending of each embedding source, in place (``--inb-iterations``)."""
    from tf_shopee.matching import neighbourhood_blend, top_k_neighbours

    if options.inb_iterations <= 0:
        return
    for name, embeddings in sources.embeddings.items():
        blended = neighbourhood_blend(
            embeddings, sources.neighbours[name], plan.thresholds[name],
            iterations=options.inb_iterations, max_chunk_mb=options.max_chunk_mb,
        )
        sources.embeddings[name] = blended
        sources.neighbours[name] = _usable_neighbours(
            sources, name, top_k_neighbours(blended, k=options.k, max_chunk_mb=options.max_chunk_mb)
        )


def _usable_neighbours(sources: Sources, name: str, neighbours):
    """Leave postings without a usable photo out of the sources built on photos."""
    if name in sources.image_based and sources.bad_rows:
        return neighbours.without_rows(sources.bad_rows)
    return neighbours


def match_sources(sources: Sources, plan: MatchPlan, options: PredictOptions) -> dict:
    """Match lists of every source at its threshold, and the combination (union + min2) under
    the key ``combined``, scored exactly as the threshold search scored them."""
    from tf_shopee.thresholds import match_sources as threshold_and_combine

    per_source, combined = threshold_and_combine(
        sources.neighbours, plan.thresholds, min2=plan.min2, min2_source=plan.min2_source,
        min2_floor=plan.min2_floor, max_matches=options.max_matches,
    )
    return {**per_source, COMBINED: combined}


def search_and_write_thresholds(sources: Sources, labels: np.ndarray, directory: str) -> dict:
    """Tune every source's threshold and the combination on this labelled set; write
    ``thresholds.json`` and ``thresholds.png`` into ``directory``; return the payload."""
    from tf_shopee.thresholds import (
        phash_grid,
        plot_thresholds,
        search_thresholds,
        write_thresholds,
    )

    names = list(sources.neighbours)
    min2_source = next((name for name in MIN2_SOURCE_PREFERENCE if name in names), names[0])
    grid = {PHASH: phash_grid()} if PHASH in names else None
    result = search_thresholds(sources.neighbours, labels, grid=grid, min2=True,
                               min2_source=min2_source, min2_floors=[None, 0.3, 0.4, 0.5])
    out = Path(directory)
    payload = write_thresholds(out / "thresholds.json", result,
                               settings={"searched_on_rows": len(labels)})
    plot_thresholds(out / "thresholds.png", result)
    logger.info("thresholds searched on %d labelled postings → %s", len(labels), out)
    return payload


# --------------------------------------------------------------------------------------------
# The job


def run_prediction(options: PredictOptions) -> dict:
    """Read postings, match them with every source, write the submission (and the F1 report).

    Returns:
        The report: ``{"rows", "sources", "thresholds", "threshold_origin", "min2", "f1" and
        "recall_at_1" (per embedding source, before blending; both when labels are present and
        ``options.evaluate``), "seconds", "submission"}``.
    """
    from tf_shopee.metrics import mean_f1_from_matches, recall_at_1

    if options.catalog:  # queries against a catalogue index: tf_shopee.catalog.query
        from tf_shopee.catalog.query import run_catalog_prediction

        return run_catalog_prediction(options)
    started = time.perf_counter()
    if options.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {options.batch_size}")
    if not 1 <= options.max_matches <= options.k:
        raise UserError(f"--max-matches must be between 1 and k={options.k}")
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
    sources = compute_sources(postings, options)
    if options.search_thresholds:
        search_and_write_thresholds(sources, postings.label_groups, options.search_thresholds)
        options.thresholds_file = str(Path(options.search_thresholds) / "thresholds.json")
    plan = resolve_plan(sources, options)
    recall = None
    if options.evaluate:
        # Before blending: recall@1 measures the embeddings themselves.
        recall = {name: recall_at_1(sources.neighbours[name].indices, postings.label_groups)
                  for name in sources.embeddings}
    blend_sources(sources, plan, options)
    matches = match_sources(sources, plan, options)
    write_submission(options.out, postings.posting_ids, matches[COMBINED])
    bad_images = _report_bad_images(postings, sources)
    report = {
        "rows": len(postings),
        "sources": list(sources.neighbours),
        "thresholds": plan.thresholds,
        "threshold_origin": plan.origin,
        "min2": {"enabled": plan.min2, "source": plan.min2_source, "floor": plan.min2_floor},
        "inb_iterations": options.inb_iterations,
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


def _parse_threshold_overrides(values: list[str]) -> dict[str, float]:
    overrides = {}
    for value in values:
        name, separator, number = value.partition("=")
        try:
            overrides[name.strip()] = float(number)
        except ValueError:
            separator = ""
        if not separator or not name.strip():
            raise UserError(f"--threshold expects SOURCE=VALUE (e.g. tfidf=0.6), got {value!r}")
    return overrides


def build_argument_parser() -> argparse.ArgumentParser:
    """The command line of ``predict.py``."""
    parser = argparse.ArgumentParser(
        prog="predict.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Match postings: embed with exported models, find neighbours (embeddings, TF-IDF "
            "titles, image_phash), apply thresholds, union and min2, write posting_id,matches."
        ),
        epilog=(
            "Sources: one per --model (named by its kind: image, text, multimodal), 'concat' (image"
            " + text embeddings) when both kinds are given, 'tfidf' (titles) and 'phash' (when the "
            "CSV has image_phash). Without --model only TF-IDF and phash are used.\n\n"
            "Thresholds, later wins: shipped defaults (chosen on the real Shopee train.csv by "
            "benchmarks/quality_real.py) < each model's validation threshold < --thresholds FILE "
            "< --threshold SOURCE=VALUE. --search-thresholds DIR tunes them on this labelled set "
            "and writes DIR/thresholds.json and DIR/thresholds.png.\n\n"
            "examples:\n"
            "  python predict.py --csv test.csv --images test_images --model saved_models/image "
            "--model saved_models/text --out submission.csv\n"
            "  python predict.py --csv train.csv --out train_matches.csv --evaluate "
            "--report report.json\n"
            "  python predict.py --tfrecords tfrecords/train --fold 0 --model saved_models/text "
            "--out fold0.csv --evaluate\n"
            "  python predict.py --catalog index/ --csv new_listings.csv --images photos "
            "--out matches.csv\n\n"
            "Exit status: 0 done; 2 for bad input (message on stderr)."
        ),
    )
    data = parser.add_argument_group("postings")
    data.add_argument("--csv", default="", help="Shopee-style CSV (posting_id, title; image, "
                      "image_phash, label_group when present), or a .zip holding one")
    data.add_argument("--images", default="", metavar="DIR",
                      help="folder the CSV's image column is relative to")
    data.add_argument("--tfrecords", default="", metavar="DIR",
                      help="a folder written by convert_tfrecords.py (instead of --images; with "
                      "--csv only the CSV's postings are matched)")
    data.add_argument("--fold", type=int, default=None,
                      help="with --tfrecords: match only the postings of this fold")
    data.add_argument("--catalog", default="", metavar="INDEX",
                      help="match the postings against this catalogue index (built by python -m "
                      "tf_shopee.catalog build) instead of against each other; matches are "
                      "catalogue posting ids; --model defaults to the index's models")
    data.add_argument("--search", default="auto", choices=("exact", "ann", "auto"),
                      help="with --catalog: exact search, approximate (FAISS IVF), or auto "
                      "(approximate from 200,000 catalogue rows on; default)")
    data.add_argument("--nprobe", type=int, default=0,
                      help="with --search ann: IVF cells probed per query (default 16)")
    model = parser.add_argument_group("models and thresholds")
    model.add_argument("--model", action="append", default=[], dest="models", metavar="DIR",
                       help="exported SavedModel folder (repeatable)")
    model.add_argument("--thresholds", default="", metavar="FILE",
                       help="thresholds.json from a threshold search")
    model.add_argument("--threshold", action="append", default=[], metavar="SOURCE=VALUE",
                       help="override one source's threshold (repeatable)")
    model.add_argument("--search-thresholds", default="", metavar="DIR",
                       help="tune thresholds on this labelled set; write DIR/thresholds.json+png")
    model.add_argument("--no-tfidf", action="store_true", help="do not use TF-IDF title matches")
    model.add_argument("--no-phash", action="store_true", help="do not use image_phash matches")
    model.add_argument("--no-concat", action="store_true",
                       help="do not add the concatenated image+text source")
    model.add_argument("--no-min2", action="store_true",
                       help="do not give lonely postings their nearest neighbour")
    model.add_argument("--inb-iterations", type=int, default=0,
                       help="neighbourhood blending iterations on embedding sources (default 0)")
    model.add_argument("--k", type=int, default=51, help="neighbours per posting (default 51)")
    model.add_argument("--max-matches", type=int, default=50,
                       help="matches per posting, itself included (default 50)")
    model.add_argument("--max-chunk-mb", type=int, default=256,
                       help="memory budget of one similarity chunk in MiB (default 256)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", default="submission.csv", help="submission CSV to write")
    output.add_argument("--evaluate", action="store_true",
                        help="print mean F1 per source and combined, and recall@1 (the nearest "
                        "other posting is the same product) per embedding source (needs "
                        "label_group)")
    output.add_argument("--report", default="", metavar="JSON", help="write a JSON report")
    output.add_argument("--batch-size", type=int, default=64,
                        help="postings per model call (default 64)")
    output.add_argument("--cache-dir", default="", metavar="DIR",
                        help="embedding cache (default: .embedding_cache beside --out)")
    data.add_argument("--encoding", default=None, metavar="NAME",
                      help="the CSV's text encoding, e.g. cp1252 (default: detected, as "
                      "convert_tfrecords.py does; the decision is printed and reported)")
    output.add_argument("--quiet", action="store_true",
                        help="no progress bars or log lines (warnings stay)")
    return parser


@exit_on_user_error
def main(argv=None) -> dict:
    """Entry point of ``predict.py``."""
    arguments = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if arguments.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    options = PredictOptions(
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
        cache_dir=arguments.cache_dir
        or str(Path(arguments.out).absolute().parent / ".embedding_cache"),
        use_tfidf=not arguments.no_tfidf,
        use_phash=not arguments.no_phash,
        use_concat=not arguments.no_concat,
        min2=not arguments.no_min2,
        inb_iterations=arguments.inb_iterations,
        k=arguments.k,
        max_matches=arguments.max_matches,
        max_chunk_mb=arguments.max_chunk_mb,
        progress=not arguments.quiet,
        catalog=arguments.catalog,
        search=arguments.search,
        nprobe=arguments.nprobe,
        encoding=arguments.encoding,
    )
    report = run_prediction(options)
    print(f"wrote {report['rows']} rows to {options.out}")
    if "top1_accuracy" in report:
        from tf_shopee.catalog.query import format_catalog_table

        print(format_catalog_table(report))
    elif "f1" in report:
        print(format_f1_table(report["f1"], report["thresholds"], report.get("recall_at_1")))
    return report
