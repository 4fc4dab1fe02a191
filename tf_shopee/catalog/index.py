"""The persistent catalogue index: one versioned folder, written atomically.

``python -m tf_shopee.catalog build`` embeds a catalogue with each exported model and stores what
matching new postings against it needs, so that no catalogue posting is ever embedded twice::

    INDEX/
      manifest.json              written last: format, counts, models (fingerprints), files + sha256
      postings.csv               posting_id, title, image_phash, label_group of every row
      embeddings/source-N.npy    float32 (rows, dim), L2-normalised, one per embedding source
      embeddings/source-N.views.npy  float32 (rows, views, dim): catalogue-side augmentation
                                 (``--catalog-augment N``), the views searched as one item
      tfidf/vocabulary.json      the TF-IDF vocabulary and idf fitted on the catalogue titles,
      tfidf/idf.npy              with the catalogue's title vectors before and after
      tfidf/vectors.npz          neighbourhood blending (what a query is blended with and
      tfidf/blended.npz          searched against)
      thresholds.json            the thresholds file given to build (optional)
      thumbnails.bin + .npy      small JPEGs of the photos and their offsets (the web app's)
      ann/source-N.faiss         approximate-search index per embedding source (large catalogues)

The whole folder is written under a hidden temporary name beside ``INDEX`` and swapped into
place by renames (:func:`tf_shopee.io_utils.replace_directory`); ``manifest.json`` is the last
file written in it, so a folder without one is never taken for an index. Writers (build, add)
hold an exclusive lock, ``fcntl.flock`` on ``.INDEX.lock`` beside the index, from before they
read the index until the new version is in place: a second writer waits (or, with
``--no-wait``, stops at once), so two ``catalog add`` never lose each other's rows. Under the
lock a writer first repairs what a killed writer left: a swap interrupted between its two renames
is rolled back, and stale ``.INDEX.partial-PID`` / ``.INDEX.old-PID`` copies are removed.
Readers take no lock: :mod:`tf_shopee.catalog.reader` reads one version from start to end.

Photos are decoded with a pixel limit (:mod:`tf_shopee.catalog.photos`), and a row whose photo
was rejected (missing, outside the image folder, undecodable) never has that file opened again:
it gets no thumbnail and no computed phash.

A model (a SavedModel folder or a LiteRT ``.tflite`` file) is identified by the sha256 of its
export's metadata, graph and variables, or of the ``.tflite`` file
(:func:`tf_shopee.export.model_fingerprint`): ``catalog add`` and ``predict.py --catalog`` refuse
a model whose fingerprint differs from the one the index was built with, since its embeddings
would not be comparable with the stored ones.

How photos are embedded is part of the index too (``manifest["views"]``): ``--tta`` stores each
catalogue photo as the mean of its test-time views, ``--catalog-augment N`` stores N views of it
(the photo and N − 1 shop-like variants, :mod:`tf_shopee.data.views`) that a query searches as
one item (its best view counts); ``catalog add`` embeds new rows the same way.

``catalog add`` embeds only the new postings; the model-free part (TF-IDF vocabulary and idf,
blended title vectors, phash graph) is refitted on the whole catalogue from the stored titles
and hashes, which needs no model and keeps "fitted on the catalogue" true as it grows. An index
built from A and then added B holds the same rows, embeddings and TF-IDF state as one built from
A + B.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sparse
from tqdm import tqdm

from tf_shopee.catalog.locking import writer_lock
from tf_shopee.catalog.photos import PhotoError, decode_photo, jpeg_bytes
from tf_shopee.catalog.reader import (  # noqa: F401 - the index's public names, re-exported
    INDEX_FORMAT,
    INDEX_FORMAT_VERSION,
    MANIFEST,
    POSTINGS,
    THRESHOLDS,
    THUMBNAIL_OFFSETS,
    THUMBNAILS,
    CatalogIndex,
    check_manifest,
    load_index,
    read_manifest,
    verify_files,
)
from tf_shopee.catalog.search import ANN_INDEX_KINDS, ANN_MIN_ROWS, IvfSearch
from tf_shopee.data.views import augment_spec, parse_tta
from tf_shopee.errors import UserError
from tf_shopee.export import load_exported, model_fingerprint
from tf_shopee.io_utils import PARTIAL_MARK, replace_directory, sha256_file
from tf_shopee.matching.decision import check_threshold, load_thresholds
from tf_shopee.matching.embedding import DEFAULT_BATCH_SIZE, embed_postings_views
from tf_shopee.matching.model_free import DEFAULT_SETTINGS, model_free_state
from tf_shopee.matching.postings import Postings, read_postings
from tf_shopee.matching.precomputed import load_embeddings
from tf_shopee.matching.sources import (
    CONCAT,
    PHASH,
    PHASH_TEXT,
    TFIDF,
    check_source_name,
    concat_parts,
    embed_sources,
    model_source_name,
)
from tf_shopee.matching.topk import DEFAULT_MAX_CHUNK_MB
from tf_shopee.models.kind import ModelKind

logger = logging.getLogger("tf_shopee.catalog")

THUMBNAIL_SIZE = 160


# --------------------------------------------------------------------------------------------
# Building and adding


@dataclass
class BuildOptions:
    """Settings of ``catalog build`` / ``catalog add`` (the command-line flags), checked when
    made, before anything is read or embedded."""

    csv: str = ""
    images: str = ""
    tfrecords: str = ""
    fold: int | None = None
    models: list[str] = field(default_factory=list)
    out: str = ""
    thresholds_file: str = ""
    threshold_overrides: dict[str, float] = field(default_factory=dict)
    use_concat: bool = True
    thumbnails: bool = True
    ann: str = "auto"  # "auto" (from ANN_MIN_ROWS rows on), "always", "never"
    ann_index: str = "ivf_flat"  # or "ivf_pq" (a fifteenth of the memory; see catalog.search)
    embeddings: str = ""  # a beam embed output: read instead of embedding
    batch_size: int = DEFAULT_BATCH_SIZE
    max_chunk_mb: int = DEFAULT_MAX_CHUNK_MB
    progress: bool = True
    overwrite: bool = False
    encoding: str | None = None  # the CSV's text encoding; None detects it
    wait: bool = True  # wait for another writer of the same index (False: --no-wait)
    tta: str = ""  # test-time views averaged into each catalogue photo's embedding
    catalog_augment: int = 1  # views per catalogue photo, searched as one item

    def __post_init__(self):
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_chunk_mb <= 0:
            raise UserError(f"--max-chunk-mb must be positive, got {self.max_chunk_mb}")
        if self.ann not in ANN_MODES:
            raise UserError(f"--ann must be {', '.join(ANN_MODES)}, got {self.ann!r}")
        if self.ann_index not in ANN_INDEX_KINDS:
            raise UserError(f"--ann-index must be {', '.join(ANN_INDEX_KINDS)}, got "
                            f"{self.ann_index!r}")
        parse_tta(self.tta)
        augment_spec(self.catalog_augment)
        if self.embeddings and (parse_tta(self.tta).count > 1 or self.catalog_augment > 1):
            raise UserError("--embeddings holds one plain embedding per photo: --tta and "
                            "--catalog-augment need the photos embedded here (drop --embeddings "
                            "or those options)")
        self.threshold_overrides = {
            check_source_name(name, where=f"--threshold {name}={value}"):
            check_threshold(name, value, where=f"--threshold {name}={value}")
            for name, value in self.threshold_overrides.items()
        }
        if self.thresholds_file:
            load_thresholds(self.thresholds_file)  # a bad file is refused before any embedding


ANN_MODES = ("auto", "always", "never")


def read_catalogue_postings(options: BuildOptions) -> Postings:
    """The postings of a catalogue CSV (+ images) or TFRecord folder, read as predict.py reads
    them; photos without an ``image_phash`` get one computed (the hash Kaggle's CSV carries)."""
    postings = read_postings(csv=options.csv, images=options.images,
                             tfrecords=options.tfrecords, fold=options.fold,
                             encoding=options.encoding)
    fill_missing_phashes(postings, progress=options.progress)
    return postings


def fill_missing_phashes(postings, *, progress: bool = False) -> None:
    """Compute ``image_phash`` (imagehash's 64-bit pHash, 16 hex digits) for postings that have a
    photo but no hash, in place. Unreadable photos (and those over the pixel limit of
    :mod:`tf_shopee.catalog.photos`) keep an empty hash: they match by the other sources. Rows
    in ``postings.bad_images`` (missing, outside the image folder) are not opened at all."""
    if not postings.has_images:
        return
    hashes = list(postings.image_phashes or [""] * len(postings))
    missing = [row for row, value in enumerate(hashes)
               if not value and row not in postings.bad_images]
    if not missing:
        return
    import imagehash  # only when a photo has no hash: it imports SciPy's signal tools

    unreadable = 0
    for row in tqdm(missing, desc="phash", unit="photo", disable=not progress):
        try:
            image, _ = decode_photo(_image_bytes(postings, row))
            hashes[row] = str(imagehash.phash(image))
        except (PhotoError, OSError):
            unreadable += 1
    if unreadable:
        logger.warning("%d photo(s) could not be read for a phash; they match by other sources",
                       unreadable)
    postings.image_phashes = hashes


def _image_bytes(postings, row: int) -> bytes:
    if postings.image_bytes is not None:
        return postings.image_bytes[row]
    with open(postings.image_paths[row], "rb") as stream:
        return stream.read()


def _thumbnails(postings, progress: bool) -> tuple[bytes, np.ndarray]:
    """Small JPEGs of every posting's photo, concatenated, and the (rows + 1) offsets. A row
    whose photo was rejected (``postings.bad_images``) gets none and its file is not opened."""
    parts, offsets, total = [], [0], 0
    for row in tqdm(range(len(postings)), desc="thumbnails", unit="photo",
                    disable=not progress):
        payload = b""
        if row not in postings.bad_images:
            try:
                image, _ = decode_photo(_image_bytes(postings, row), side=THUMBNAIL_SIZE)
                payload = jpeg_bytes(image, THUMBNAIL_SIZE)
            except (PhotoError, OSError):
                pass  # no thumbnail: the app shows a placeholder
        parts.append(payload)
        total += len(payload)
        offsets.append(total)
    return b"".join(parts), np.asarray(offsets, dtype=np.int64)


# Loaded exports by fingerprint: a process that builds, adds to and queries an index (the app,
# a notebook, the tests) loads each SavedModel once.
_LOADED_MODELS: dict[str, object] = {}


def load_models(paths: list[str]) -> list:
    """Load exported models (:func:`tf_shopee.export.load_exported`) with their fingerprints."""
    models = []
    for path in paths:
        fingerprint = model_fingerprint(path)
        if fingerprint not in _LOADED_MODELS:
            model = load_exported(path)
            model.fingerprint = fingerprint
            _LOADED_MODELS[fingerprint] = model
        model = copy.copy(_LOADED_MODELS[fingerprint])  # the same graph, under this path
        model.directory = Path(path)
        models.append(model)
    return models


def source_names(models: list) -> list[str]:
    """Source name of each model, as predict.py names them: its kind, or ``kind:folder`` for a
    second model of the same kind."""
    names: list[str] = []
    for model in models:
        names.append(model_source_name(ModelKind(model.kind), model.directory, names))
    return names


def resolve_models(manifest: dict, paths: list[str]) -> list:
    """The index's models, loaded: from ``paths`` when given (each must be one the index was built
    with), else from the paths stored in the manifest. A model whose fingerprint differs from the
    stored one is refused.

    Raises:
        UserError: naming the model that differs, is missing or is not the index's.
    """
    entries = manifest["models"]
    if paths:
        given = load_models(paths)
        by_fingerprint = {model.fingerprint: model for model in given}
        for model in given:
            if not any(entry["fingerprint"] == model.fingerprint for entry in entries):
                built_with = "; ".join(f"{entry['source']} from {entry['path']} "
                                       f"(fingerprint {entry['fingerprint'][:12]})"
                                       for entry in entries) or "no model"
                raise UserError(
                    f"model {model.directory} (a {model.kind} model, fingerprint "
                    f"{model.fingerprint[:12]}) is not a model this catalogue index was built "
                    f"with ({built_with}); its embeddings would not be comparable: build the "
                    "index again with this model, or pass the original"
                )
        missing = [entry for entry in entries if entry["fingerprint"] not in by_fingerprint]
        if missing:
            raise UserError(
                "the catalogue index was built with "
                + ", ".join(f"{entry['source']} from {entry['path']}" for entry in missing)
                + ": pass it with --model as well (or no --model to use the stored paths)"
            )
        return [by_fingerprint[entry["fingerprint"]] for entry in entries]
    models = []
    for entry in entries:
        if not Path(entry["path"]).exists():
            raise UserError(
                f"the {entry['source']} model this index was built with is no longer at "
                f"{entry['path']}: pass its new location with --model DIR"
            )
        (model,) = load_models([entry["path"]])
        if model.fingerprint != entry["fingerprint"]:
            raise UserError(
                f"the model at {entry['path']} has changed since the index was built (fingerprint "
                f"{model.fingerprint[:12]}, index built with {entry['fingerprint'][:12]}): its "
                "embeddings would not be comparable; build the index again or pass the original "
                "model with --model"
            )
        models.append(model)
    return models


def _embed(models: list, names: list[str], postings: Postings, options: BuildOptions
           ) -> tuple[dict, dict]:
    """Embeddings per source of ``postings``, plus ``concat`` when an image and a text model are
    present (as predict.py forms it); read from a ``beam embed`` output with ``--embeddings``.
    And, with ``--catalog-augment N``, the N views of every photo per image source (view 0 is the
    stored embedding itself)."""
    if options.embeddings:
        embeddings = load_embeddings(options.embeddings, {name: model.directory for name, model
                                                          in zip(names, models)}, postings,
                                     use_concat=options.use_concat, fill_phashes=True)
    else:
        embeddings = embed_sources(dict(zip(names, models)), postings,
                                   use_concat=options.use_concat, batch_size=options.batch_size,
                                   progress=options.progress, views=parse_tta(options.tta))
    views = {}
    if options.catalog_augment > 1:
        for name, model in zip(names, models):
            if ModelKind(model.kind) is not ModelKind.IMAGE:
                continue
            matrix = embed_postings_views(model, postings, augment_spec(options.catalog_augment),
                                          batch_size=options.batch_size,
                                          progress=options.progress)
            matrix[:, 0] = embeddings[name]
            views[name] = matrix
    if postings.bad_images and any(ModelKind(model.kind).uses_images for model in models):
        # Their image embeddings are zeros: no query reaches them through a photo source.
        shown = "\n".join(f"  {postings.posting_ids[row]}: {reason}"
                          for row, reason in sorted(postings.bad_images.items())[:10])
        logger.warning("%d catalogue posting(s) have a photo that cannot be used; they are "
                       "found by their titles and phash only:\n%s%s", len(postings.bad_images),
                       shown, "\n  ..." if len(postings.bad_images) > 10 else "")
    return embeddings, views


def _concat_parts(models: list, names: list[str]) -> list[str] | None:
    """The (image, text) source names whose concatenation forms ``concat``, or None."""
    return concat_parts({name: ModelKind(model.kind) for name, model in zip(names, models)})


def build_index(options: BuildOptions) -> dict:
    """``catalog build``: read, embed, fit the model-free state and write the index atomically.

    Returns:
        The manifest written.
    """
    started = time.perf_counter()
    out = _check_destination(options)
    with writer_lock(out, wait=options.wait):
        _check_replaceable(out, options)  # under the lock: another build may have just written
        postings = read_catalogue_postings(options)
        models = load_models(options.models)
        names = source_names(models)
        concat = _concat_parts(models, names) if options.use_concat else None
        check_decision_sources(
            catalogue_sources(names, concat, postings.titles,
                              has_phash=bool(postings.image_phashes and any(
                                  postings.image_phashes))), options)
        logger.info("catalogue: %d postings, %d model(s)", len(postings), len(models))
        manifest = _build_locked(out, options, postings, models, names, concat)
    logger.info("catalogue index written to %s in %.1f s", out, time.perf_counter() - started)
    return manifest


def _build_locked(out: Path, options: BuildOptions, postings: Postings, models: list,
                  names: list[str], concat: list[str] | None) -> dict:
    embeddings, views = _embed(models, names, postings, options)
    thumbnails = _thumbnails(postings, options.progress) if (
        options.thumbnails and postings.has_images) else None
    model_entries = [
        {"source": name, "kind": model.kind, "embedding_dim": model.embedding_dim,
         "fingerprint": model.fingerprint, "path": str(Path(model.directory).resolve()),
         "threshold": model.threshold}
        for name, model in zip(names, models)
    ]
    thresholds = {"file": None, "overrides": dict(options.threshold_overrides)}
    history = [_history_entry("build", options, len(postings))]
    ann = _ann_plan(options.ann, len(postings), ANN_MIN_ROWS)
    return _write(out, postings.posting_ids, postings.titles, postings.image_phashes,
                  postings.label_groups, embeddings, thumbnails, model_entries, concat,
                  thresholds, history, ann, options, has_images=postings.has_images,
                  existing=None, views=views)


def add_to_index(index_dir: str, options: BuildOptions) -> dict:
    """``catalog add``: embed only the new postings, append them, refit the model-free state and
    write the index again atomically (the old one stays whole until the new one is in place).

    Returns:
        The manifest written.
    """
    started = time.perf_counter()
    _check_not_input(Path(index_dir), options)
    with writer_lock(index_dir, wait=options.wait):
        # Read under the lock: a writer that finished while this one waited is included.
        index = load_index(index_dir)
        try:
            manifest = _add_locked(index_dir, index, options)
        finally:
            index.close()
    logger.info("added %d postings (%d in all) in %.1f s", manifest["history"][-1]["rows"],
                manifest["rows"], time.perf_counter() - started)
    return manifest


def _add_locked(index_dir: str, index: CatalogIndex, options: BuildOptions) -> dict:
    manifest = index.manifest
    check_decision_sources(
        catalogue_sources([entry["source"] for entry in manifest["models"]],
                          manifest.get("concat"), index.titles if manifest.get("tfidf") else [],
                          has_phash=manifest["has_phash"] or manifest["has_images"]), options)
    models = resolve_models(manifest, options.models)
    names = [entry["source"] for entry in manifest["models"]]
    postings = read_catalogue_postings(options)
    duplicated = sorted(set(postings.posting_ids) & set(index.posting_ids))
    if duplicated:
        raise UserError(f"{len(duplicated)} posting id(s) of {options.csv or options.tfrecords} "
                        f"are already in the catalogue: {', '.join(duplicated[:5])}")
    if manifest["has_labels"] != (postings.label_groups is not None):
        raise UserError("the catalogue " + ("has" if manifest["has_labels"] else "has no")
                        + " label_group column; the new postings must match")
    if manifest["has_images"] != postings.has_images:
        raise UserError("the catalogue was built " + ("with" if manifest["has_images"] else
                        "without") + " images; give the new postings the same way")
    options.use_concat = bool(manifest.get("concat"))
    options.tta = index.tta  # new rows are embedded as the old ones were
    options.catalog_augment = index.catalog_augment
    if options.embeddings and (parse_tta(options.tta).count > 1 or options.catalog_augment > 1):
        raise UserError("this catalogue's photos were embedded with views (--tta "
                        f"{options.tta or 'none'}, --catalog-augment {options.catalog_augment}); "
                        "--embeddings holds one plain embedding per photo: add the new postings "
                        "with --images so they are embedded the same way")
    new_embeddings, new_views = _embed(models, names, postings, options)
    embeddings = {name: np.concatenate([index.embeddings[name], new_embeddings[name]])
                  for name in index.embeddings}
    views = {name: np.concatenate([index.views[name], new_views[name]])
             for name in index.views}
    thumbnails = None
    if index.has_thumbnails:
        old_blob = index.read_kept(THUMBNAILS)
        old_offsets = index._thumbnail_offsets
        new_blob, new_offsets = _thumbnails(postings, options.progress)
        thumbnails = (old_blob + new_blob,
                      np.concatenate([old_offsets, old_offsets[-1] + new_offsets[1:]]))
    phashes = None
    if manifest["has_phash"] or postings.image_phashes is not None:
        phashes = list(index.image_phashes or [""] * len(index)) + list(
            postings.image_phashes or [""] * len(postings))
    labels = None
    if manifest["has_labels"]:
        labels = np.concatenate([index.label_groups, postings.label_groups])
    thresholds = dict(manifest["thresholds"])
    thresholds["overrides"] = {**thresholds["overrides"], **options.threshold_overrides}
    if thresholds["file"] and not options.thresholds_file:
        options.thresholds_file = index.kept_path(thresholds["file"])  # this version's file
    history = manifest["history"] + [_history_entry("add", options, len(postings))]
    rows = len(index) + len(postings)
    ann = _ann_plan(manifest.get("ann_mode", "auto") if options.ann == "auto" else options.ann,
                    rows, ANN_MIN_ROWS)
    return _write(Path(index_dir), index.posting_ids + postings.posting_ids,
                  index.titles + postings.titles, phashes, labels, embeddings, thumbnails,
                  manifest["models"], manifest.get("concat"), thresholds, history, ann,
                  options, has_images=manifest["has_images"], existing=index, views=views)


def _ann_plan(mode: str, rows: int, min_rows: int) -> dict:
    return {"mode": mode, "build": mode == "always" or (mode == "auto" and rows >= min_rows)}


def _history_entry(action: str, options: BuildOptions, rows: int) -> dict:
    return {"action": action, "rows": rows, "csv": options.csv, "images": options.images,
            "tfrecords": options.tfrecords, "fold": options.fold,
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _check_not_input(out: Path, options: BuildOptions) -> None:
    resolved = out.resolve()
    inputs = [options.csv, options.images, options.tfrecords, options.thresholds_file,
              options.embeddings, *options.models]
    for value in inputs:
        if not value:
            continue
        path = Path(value).resolve()
        if path == resolved or resolved in path.parents or path in resolved.parents:
            raise UserError(f"--out {out} would overwrite or sit inside an input ({value}): "
                            "choose another folder")


def _check_destination(options: BuildOptions) -> Path:
    if not options.out:
        raise UserError("give --out INDEX (the folder to write)")
    out = Path(options.out)
    _check_not_input(out, options)
    _check_replaceable(out, options)
    return out


def _check_replaceable(out: Path, options: BuildOptions) -> None:
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--out {out} exists and is not a folder")
        if (out / MANIFEST).is_file():
            if not options.overwrite:
                raise UserError(f"{out} already holds a catalogue index: add postings with "
                                "catalog add, or pass --overwrite to build it anew")
        elif any(out.iterdir()):
            raise UserError(f"--out {out} exists and is not a catalogue index: choose another "
                            "folder")


# sklearn's TfidfVectorizer's default tokens: two or more word characters.
_TFIDF_TOKEN = re.compile(r"(?u)\b\w\w+\b")


def catalogue_sources(model_sources: list[str], concat, titles, *, has_phash: bool) -> list[str]:
    """The sources a catalogue answers with: its models', ``concat``, ``tfidf`` when a title has
    a term, ``phash`` (and ``phash_text`` with ``tfidf``) when photos have hashes."""
    from tf_shopee.neighbours.tfidf import clean_title

    names = list(model_sources) + ([CONCAT] if concat else [])
    has_terms = any(_TFIDF_TOKEN.search(clean_title(title)) for title in titles)
    if has_terms:
        names.append(TFIDF)
    if has_phash:
        names += [PHASH, PHASH_TEXT] if has_terms else [PHASH]
    return names


def check_decision_sources(names: list[str], options: BuildOptions) -> None:
    """Refuse thresholds (``--threshold``, ``--thresholds``) for sources this catalogue does not
    have, as predict.py refuses them: stored, they would be ignored at every query.

    Raises:
        UserError: naming the source and the catalogue's sources.
    """
    for name, value in options.threshold_overrides.items():
        if name not in names:
            raise UserError(f"--threshold {name}={value}: this catalogue has no source {name!r} "
                            f"(its sources: {', '.join(names) or 'none'})")
    if options.thresholds_file:
        decision = load_thresholds(options.thresholds_file)
        absent = [name for name in decision.sources if name not in names]
        if absent:
            raise UserError(
                f"thresholds file {options.thresholds_file} uses source(s) {', '.join(absent)}, "
                f"which this catalogue does not have (its sources: {', '.join(names)}): give "
                "the models and data the thresholds were searched with")


def _write(out: Path, posting_ids, titles, phashes, labels, embeddings, thumbnails, models,
           concat, thresholds, history, ann, options: BuildOptions, *, has_images: bool,
           existing, views: dict) -> dict:
    """Write every file of the index into a temporary folder beside ``out``, the manifest last,
    then swap it into place."""
    temporary = out.parent / f".{out.name}{PARTIAL_MARK}{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        has_phash = phashes is not None and any(phashes)
        frame = pd.DataFrame({"posting_id": posting_ids, "title": titles,
                              "image_phash": phashes if has_phash else [""] * len(posting_ids)})
        if labels is not None:
            frame["label_group"] = labels
        frame.to_csv(temporary / POSTINGS, index=False)
        embedding_entries = []
        (temporary / "embeddings").mkdir()
        for number, (name, matrix) in enumerate(embeddings.items()):
            relative = f"embeddings/source-{number}.npy"
            np.save(temporary / relative, np.ascontiguousarray(matrix, dtype=np.float32))
            entry = {"source": name, "file": relative, "dim": int(matrix.shape[1])}
            if name in views:
                entry["views_file"] = relative.replace(".npy", ".views.npy")
                entry["views"] = int(views[name].shape[1])
                np.save(temporary / entry["views_file"],
                        np.ascontiguousarray(views[name], dtype=np.float32))
            embedding_entries.append(entry)
        started = time.perf_counter()
        state = model_free_state(titles, phashes if has_phash else None,
                                 settings=DEFAULT_SETTINGS, max_chunk_mb=options.max_chunk_mb)
        logger.info("model-free catalogue state (TF-IDF, phash) in %.1f s",
                    time.perf_counter() - started)
        tfidf = None
        if state.vectorizer is not None:
            (temporary / "tfidf").mkdir()
            terms = [""] * len(state.vectorizer.vocabulary_)
            for term, column in state.vectorizer.vocabulary_.items():
                terms[column] = term
            tfidf = {"vocabulary": "tfidf/vocabulary.json", "idf": "tfidf/idf.npy",
                     "vectors": "tfidf/vectors.npz", "blended": "tfidf/blended.npz",
                     "vocabulary_size": len(terms)}
            (temporary / tfidf["vocabulary"]).write_text(json.dumps(terms, ensure_ascii=False),
                                                         encoding="utf-8")
            np.save(temporary / tfidf["idf"], state.vectorizer.idf_.astype(np.float32))
            sparse.save_npz(temporary / tfidf["vectors"], state.vectors)
            sparse.save_npz(temporary / tfidf["blended"], state.blended)
        if options.thresholds_file:
            shutil.copyfile(options.thresholds_file, temporary / THRESHOLDS)
            thresholds = {**thresholds, "file": THRESHOLDS}
        if thumbnails is not None:
            (temporary / THUMBNAILS).write_bytes(thumbnails[0])
            np.save(temporary / THUMBNAIL_OFFSETS, thumbnails[1])
        ann_entries = {}
        if ann["build"]:
            (temporary / "ann").mkdir()
            for entry in embedding_entries:
                name = entry["source"]
                relative = entry["file"].replace("embeddings/", "ann/").replace(".npy", ".faiss")
                old = (existing.manifest.get("ann", {}).get(name) if existing is not None
                       else None)
                # An augmented source is searched over all its views (ViewsSearch).
                rows = (views[name].reshape(-1, views[name].shape[-1]) if name in views
                        else embeddings[name])
                if old is not None:
                    # Keep the trained cells; only the new rows are assigned to them.
                    search = IvfSearch.load(existing.kept_path(old["file"]))
                    search.add(rows[search.num_rows:])
                    trained_rows = old["trained_rows"]
                else:
                    search = IvfSearch.build(rows, kind=options.ann_index)
                    trained_rows = search.num_rows
                search.save(temporary / relative)
                ann_entries[name] = {"file": relative, "cells": search.num_cells,
                                     "trained_rows": trained_rows, "kind": search.kind}
                if search.num_rows > 4 * trained_rows:
                    logger.warning(
                        "%s: the approximate index's cells were trained on %d rows and now hold "
                        "%d; recall may drop: rebuild the index (catalog build) to retrain them",
                        name, trained_rows, search.num_rows)
        files = {}
        for path in sorted(temporary.rglob("*")):
            if path.is_file():
                relative = path.relative_to(temporary).as_posix()
                files[relative] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        from tf_shopee import __version__

        manifest = {
            "format": INDEX_FORMAT,
            "format_version": INDEX_FORMAT_VERSION,
            "tf_shopee_version": __version__,
            "rows": len(posting_ids),
            "has_labels": labels is not None,
            "has_images": has_images,
            "has_phash": has_phash,
            "thumbnails": thumbnails is not None,
            "models": models,
            "embeddings": embedding_entries,
            "concat": concat,
            "tfidf": tfidf,
            "model_free_settings": DEFAULT_SETTINGS.to_dict(),
            "views": {"tta": options.tta or None,
                      "catalog_augment": int(options.catalog_augment)},
            "thresholds": thresholds,
            "ann_mode": ann["mode"],
            "ann": ann_entries,
            "history": history,
            "files": files,
        }
        (temporary / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        replace_directory(temporary, out)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return manifest
