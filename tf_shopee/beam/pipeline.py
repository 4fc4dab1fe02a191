"""``beam embed``: every posting embedded by every exported model, as an Apache Beam pipeline.

The launcher (this process) reads the postings with the project's readers
(:func:`tf_shopee.matching.postings.read_postings`), identifies each model by its fingerprint,
cuts the postings into shards of ``shard_size`` consecutive rows, and stages each unfinished
shard's rows (ids, titles, phashes, photo locations; the photo bytes themselves only for a
TFRecord input) under ``OUT/inputs/``. The pipeline then, on any runner:

1. reads the staged shards and spreads them over the workers (``Reshuffle``);
2. reads each shard's photos through Beam's filesystems (local paths, ``gs://``, ``s3://``) and
   computes the pHash of photos that have none (the catalogue's own
   :func:`~tf_shopee.catalog.index.fill_missing_phashes`);
3. runs ``RunInference`` once per model with the project's
   :class:`~tf_shopee.beam.handler.SavedModelHandler` (predict.py's embedding function: a photo
   that cannot be used costs its row only);
4. writes each shard (:mod:`tf_shopee.matching.precomputed` owns the format) under a temporary
   name, renames it, then writes its summary (counts, bad photos, the titles' TF-IDF document
   frequencies): a shard is finished when its summary exists;
5. combines the summaries into the TF-IDF vocabulary and idf of all titles and writes
   ``manifest.json`` last.

A run killed midway leaves finished shards (whole, under their final names), perhaps hidden
temporary files, and no manifest. Running the same command again keeps the finished shards whose
key still matches (same postings, models and batch size), embeds only the others, and writes the
same output as an uninterrupted run, byte for byte.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import pickle
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tf_shopee.beam.handler import SavedModelHandler, is_remote, local_model_directory
from tf_shopee.errors import UserError
from tf_shopee.export import model_fingerprint, read_export_metadata
from tf_shopee.matching.embedding import DEFAULT_BATCH_SIZE
from tf_shopee.matching.postings import Postings, read_postings
from tf_shopee.matching.precomputed import (
    EMBEDDINGS_FORMAT,
    EMBEDDINGS_FORMAT_VERSION,
    MANIFEST,
    SHARDS,
    TFIDF_IDF,
    TFIDF_VOCABULARY,
    encode_posting,
    shard_stem,
)
from tf_shopee.matching.sources import model_source_name
from tf_shopee.models.kind import ModelKind

logger = logging.getLogger("tf_shopee.beam")

DEFAULT_SHARD_SIZE = 1024
INPUTS = "inputs"


@dataclass
class EmbedOptions:
    """The settings of ``beam embed`` (its flags but the Beam pipeline options), checked when
    made, before anything is read."""

    csv: str = ""
    images: str = ""
    tfrecords: str = ""
    fold: int | None = None
    encoding: str | None = None
    models: list[str] = field(default_factory=list)
    out: str = ""
    batch_size: int = DEFAULT_BATCH_SIZE
    shard_size: int = DEFAULT_SHARD_SIZE
    threads: int = 0
    progress: bool = True

    def __post_init__(self):
        if not (self.csv or self.tfrecords):
            raise UserError("give --csv (with --images for image models) or --tfrecords")
        if not self.models:
            raise UserError("give at least one --model (an exported SavedModel folder)")
        if not self.out:
            raise UserError("give --out DIR (the folder to write the embeddings to)")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.shard_size < 1 or self.shard_size % self.batch_size:
            raise UserError(f"--shard-size must be a positive multiple of --batch-size "
                            f"({self.batch_size}), so that shards are embedded in predict.py's "
                            f"own batches; got {self.shard_size}")
        if self.threads < 0:
            raise UserError(f"--threads must be 0 (TensorFlow's default) or more, got "
                            f"{self.threads}")
        if not is_remote(self.out):
            out = Path(self.out).resolve()
            for flag, value in (("--csv", self.csv), ("--images", self.images),
                                ("--tfrecords", self.tfrecords),
                                *(("--model", model) for model in self.models)):
                if not value or is_remote(value):
                    continue
                path = Path(value).resolve()
                if path == out or out in path.parents or path in out.parents:
                    raise UserError(f"--out {self.out} would overwrite or sit inside an input "
                                    f"({flag} {value}): choose another folder")


@dataclass
class ShardInput:
    """One shard on its way through the pipeline: its rows, then each model's embeddings.

    Attributes:
        shard: its number; stem: its file name without extension.
        rows: per posting: ``row`` (in the input), ``posting_id``, ``title``, ``image_phash``,
            ``image_path`` (read by the pipeline), ``image_name`` (for messages),
            ``image_bytes`` (a TFRecord input's photo, then every photo once read) and
            ``bad_image`` (why its photo cannot be used, or "").
        embeddings: source → (rows, dim) float32, filled by RunInference.
        phashes_computed: photos whose pHash the pipeline computed.
    """

    shard: int
    stem: str
    rows: list[dict]
    embeddings: dict = field(default_factory=dict)
    phashes_computed: int = 0

    def num_bytes(self) -> int:
        """Approximate size (RunInference's byte metric)."""
        return sum(len(row.get("image_bytes") or b"") + len(row["title"]) + 64
                   for row in self.rows)


@dataclass
class ModelEntry:
    """A model of the run as the manifest records it."""

    source: str
    kind: str
    embedding_dim: int
    fingerprint: str
    path: str
    threshold: float | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class EmbedPlan:
    """What a run does, decided by the launcher before the pipeline starts."""

    options: EmbedOptions
    models: list[ModelEntry]
    postings: Postings
    stems: list[str]
    finished: list[dict]  # summaries of shards a previous run finished
    pending: list[int]
    needs_photos: bool
    fill_phashes: bool

    @property
    def num_shards(self) -> int:
        return len(self.stems)


# --------------------------------------------------------------------------------------------
# The launcher's side


def read_embed_postings(options: EmbedOptions) -> Postings:
    """The postings, read by the project's readers; with ``--images`` on a Beam filesystem
    (``gs://``...) the photo paths are joined to it and checked by the workers when read."""
    if options.images and is_remote(options.images):
        from apache_beam.io.filesystems import FileSystems

        from tf_shopee.data.postings_csv import read_csv_table

        if options.tfrecords:
            raise UserError("--images is for a CSV input; a TFRecord folder holds its photos")
        postings = read_postings(csv=options.csv, encoding=options.encoding)
        table = read_csv_table(options.csv, encoding=options.encoding)
        if table.images is None:
            raise UserError(f"--images was given but CSV {options.csv} has no 'image' column")
        postings.image_names = list(table.images)
        postings.image_paths = [FileSystems.join(options.images, name) if name else ""
                                for name in table.images]
        postings.bad_images = {row: "no image named in the CSV"
                               for row, name in enumerate(table.images) if not name}
        return postings
    return read_postings(csv=options.csv, images=options.images, tfrecords=options.tfrecords,
                         fold=options.fold, encoding=options.encoding)


def model_entries(model_dirs: list[str]) -> list[ModelEntry]:
    """Each ``--model``'s source name (as predict.py names it), kind, width and fingerprint."""
    entries: list[ModelEntry] = []
    for model_dir in model_dirs:
        local = local_model_directory(model_dir)
        metadata = read_export_metadata(local)
        kind = ModelKind.parse(metadata["kind"], where=f"--model {model_dir}")
        source = model_source_name(kind, model_dir, [entry.source for entry in entries])
        entries.append(ModelEntry(source=source, kind=str(kind),
                                  embedding_dim=int(metadata["embedding_dim"]),
                                  fingerprint=model_fingerprint(local),
                                  path=model_dir if is_remote(model_dir)
                                  else str(Path(model_dir).resolve()),
                                  threshold=metadata.get("threshold")))
    return entries


def _image_identity(postings: Postings, row: int) -> str:
    if postings.image_bytes is not None:
        return hashlib.sha256(postings.image_bytes[row]).hexdigest()[:16]
    if postings.image_paths is None:
        return ""
    path = postings.image_paths[row]
    if is_remote(path) or not path:
        return path
    try:
        stat = os.stat(path)
        return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        return f"{path}|missing"


def shard_rows(postings: Postings, start: int, stop: int) -> list[dict]:
    """The rows of one shard as the pipeline carries them (see :class:`ShardInput`)."""
    rows = []
    for row in range(start, stop):
        rows.append({
            "row": row,
            "posting_id": postings.posting_ids[row],
            "title": postings.titles[row],
            "image_phash": (postings.image_phashes[row] or "") if postings.image_phashes else "",
            "image_path": postings.image_paths[row] if postings.image_paths is not None else "",
            "image_name": postings.image_names[row] if postings.image_names is not None else "",
            "image_bytes": postings.image_bytes[row] if postings.image_bytes is not None
            else None,
            "bad_image": postings.bad_images.get(row, ""),
        })
    return rows


def shard_key(postings: Postings, start: int, stop: int, models: list[ModelEntry],
              batch_size: int) -> str:
    """Hash of what a shard's records depend on: its postings (ids, titles, phashes, photo
    identities, known bad photos), the models and the batch size."""
    digest = hashlib.sha256(json.dumps(
        [EMBEDDINGS_FORMAT_VERSION, batch_size,
         [(entry.source, entry.fingerprint) for entry in models]]).encode("utf-8"))
    phashes = postings.image_phashes
    for row in range(start, stop):
        digest.update(json.dumps([postings.posting_ids[row], postings.titles[row],
                                  (phashes[row] or "") if phashes else "",
                                  _image_identity(postings, row),
                                  postings.bad_images.get(row, "")]).encode("utf-8"))
    return digest.hexdigest()[:12]


def _join(*parts: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(*parts)


def _exists(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


def _read_bytes(path: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as stream:
        return stream.read()


def write_atomically(path: str, payload: bytes) -> None:
    """Write ``payload`` under a hidden temporary name beside ``path`` and rename it into place
    (through Beam's filesystems): a file under its final name is always whole."""
    from apache_beam.io.filesystems import FileSystems

    directory, name = path.rsplit("/", 1)
    temporary = f"{directory}/.tmp-{uuid.uuid4().hex[:8]}-{name}"
    with FileSystems.create(temporary) as stream:
        stream.write(payload)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([temporary], [path])


def plan_embedding(options: EmbedOptions) -> EmbedPlan:
    """Read the postings and models, cut the shards, find the ones a previous run finished."""
    from apache_beam.io.filesystems import FileSystems

    postings = read_embed_postings(options)
    models = model_entries(options.models)
    kinds = [ModelKind(entry.kind) for entry in models]
    needs_images = any(kind.uses_images for kind in kinds)
    if needs_images and not postings.has_images:
        image_models = ", ".join(entry.path for entry, kind in zip(models, kinds)
                                 if kind.uses_images)
        raise UserError(f"{image_models}: an image model needs the photos: give --images DIR "
                        "(with an 'image' column in the CSV) or --tfrecords DIR converted with "
                        "images")
    missing_phash = postings.image_phashes is None or not all(postings.image_phashes)
    fill_phashes = postings.has_images and missing_phash
    num_shards = max(1, math.ceil(len(postings) / options.shard_size))
    stems = []
    for shard in range(num_shards):
        start, stop = shard * options.shard_size, min(len(postings),
                                                      (shard + 1) * options.shard_size)
        stems.append(shard_stem(shard, num_shards,
                                shard_key(postings, start, stop, models, options.batch_size)))
    shards_dir = _join(options.out, SHARDS)
    if not _exists(options.out):
        FileSystems.mkdirs(options.out)
    elif not is_remote(options.out) and any(Path(options.out).iterdir()) and not (
            _exists(shards_dir) or _exists(manifest_path := _join(options.out, MANIFEST))):
        raise UserError(f"--out {options.out} exists and is not a beam embed output: choose "
                        "another folder")
    if not _exists(shards_dir):
        FileSystems.mkdirs(shards_dir)
    manifest_path = _join(options.out, MANIFEST)
    if _exists(manifest_path):
        # From here on the folder is a run in progress: it must not look finished.
        FileSystems.delete([manifest_path])
    finished, pending = [], []
    for shard, stem in enumerate(stems):
        summary = _finished_summary(shards_dir, stem)
        if summary is None:
            pending.append(shard)
        else:
            finished.append(summary)
    return EmbedPlan(options=options, models=models, postings=postings, stems=stems,
                     finished=finished, pending=pending,
                     needs_photos=needs_images or fill_phashes, fill_phashes=fill_phashes)


def _finished_summary(shards_dir: str, stem: str) -> dict | None:
    """The summary of a shard a previous run finished (its records whole under the final name,
    of the size the summary records), or None. The records are not read back: a file only gets
    its final name once whole (at 50M postings, reading every finished shard again would cost
    more than a resume saves)."""
    from apache_beam.io.filesystems import FileSystems

    summary_path = _join(shards_dir, f"{stem}.json")
    if not _exists(summary_path):
        return None
    try:
        summary = json.loads(_read_bytes(summary_path).decode("utf-8"))
        matched = FileSystems.match([_join(shards_dir, f"{stem}.tfrecord")])[0].metadata_list
    except (OSError, ValueError):
        return None
    if len(matched) != 1 or matched[0].size_in_bytes != summary.get("bytes"):
        return None
    return summary


def stage_inputs(plan: EmbedPlan) -> list[str]:
    """Write each pending shard's rows to ``OUT/inputs/STEM.pkl``; their paths."""
    from apache_beam.io.filesystems import FileSystems

    options = plan.options
    inputs_dir = _join(options.out, INPUTS)
    if not _exists(inputs_dir):
        FileSystems.mkdirs(inputs_dir)
    paths = []
    for shard in plan.pending:
        start = shard * options.shard_size
        stop = min(len(plan.postings), start + options.shard_size)
        staged = ShardInput(shard=shard, stem=plan.stems[shard],
                            rows=shard_rows(plan.postings, start, stop))
        path = _join(inputs_dir, f"{staged.stem}.pkl")
        write_atomically(path, pickle.dumps(staged, protocol=pickle.HIGHEST_PROTOCOL))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# The workers' side


def load_staged(path: str) -> ShardInput:
    """A staged shard (written by :func:`stage_inputs`)."""
    return pickle.loads(_read_bytes(path))


def read_photos(shard: ShardInput, fill_phashes: bool) -> ShardInput:
    """The shard with its photos' bytes read (a photo that cannot be read is marked bad with
    the reason, as predict.py does) and the missing pHashes computed."""
    from apache_beam.io.filesystems import FileSystems

    from tf_shopee.catalog.index import fill_missing_phashes

    rows = [dict(row) for row in shard.rows]
    for row in rows:
        if row["image_bytes"] is not None or row["bad_image"] or not row["image_path"]:
            continue
        try:
            with FileSystems.open(row["image_path"]) as stream:
                row["image_bytes"] = stream.read()
        except Exception as error:  # noqa: BLE001 - every filesystem fails in its own way
            row["bad_image"] = f"cannot read {row['image_name'] or row['image_path']}: {error}"
    computed = 0
    if fill_phashes:
        postings = Postings(posting_ids=[row["posting_id"] for row in rows],
                            titles=[row["title"] for row in rows],
                            image_phashes=[row["image_phash"] for row in rows],
                            image_bytes=[row["image_bytes"] or b"" for row in rows])
        missing = sum(1 for row in rows if not row["image_phash"])
        fill_missing_phashes(postings)
        for row, value in zip(rows, postings.image_phashes):
            row["image_phash"] = value or ""
        computed = missing - sum(1 for row in rows if not row["image_phash"])
    return ShardInput(shard=shard.shard, stem=shard.stem, rows=rows,
                      phashes_computed=computed)


def attach_embeddings(result, source: str) -> ShardInput:
    """A RunInference result folded back into its shard: the embeddings under ``source``, the
    photos the model could not use marked bad."""
    shard, (embeddings, bad) = result.example, result.inference
    rows = shard.rows
    if bad:
        rows = [dict(row, bad_image=row["bad_image"] or bad.get(index, ""))
                if index in bad else row for index, row in enumerate(rows)]
    return ShardInput(shard=shard.shard, stem=shard.stem, rows=rows,
                      embeddings={**shard.embeddings, source: embeddings},
                      phashes_computed=shard.phashes_computed)


def title_document_frequencies(titles: list[str]) -> Counter:
    """How many of ``titles`` hold each term, tokenised exactly as the TF-IDF source does
    (:func:`tf_shopee.neighbours.tfidf.tfidf_vectors` with the default model-free settings)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from tf_shopee.matching.model_free import DEFAULT_SETTINGS
    from tf_shopee.neighbours.tfidf import clean_title

    analyse = TfidfVectorizer(dtype=np.float32).build_analyzer()
    frequencies: Counter = Counter()
    for title in titles:
        title = title or ""
        frequencies.update(set(analyse(clean_title(title) if DEFAULT_SETTINGS.clean_titles
                                       else title)))
    return frequencies


def write_shard(shard: ShardInput, out: str, models: list[dict]) -> dict:
    """Write a shard's records (temporary name, then renamed), then its summary; the summary."""
    image_sources = {entry["source"] for entry in models if ModelKind(entry["kind"]).uses_images}
    records = []
    embedded = {entry["source"]: 0 for entry in models}
    bad_photos = []
    for index, row in enumerate(shard.rows):
        vectors = {}
        for entry in models:
            source = entry["source"]
            unusable = source in image_sources and row["bad_image"]
            vectors[source] = None if unusable else shard.embeddings[source][index]
            embedded[source] += 0 if unusable else 1
        if row["bad_image"] and image_sources:
            bad_photos.append({"posting_id": row["posting_id"], "image": row["image_name"],
                               "reason": row["bad_image"]})
        records.append(encode_posting(row["posting_id"], row["image_phash"],
                                      row["bad_image"] if image_sources else "", vectors))
    payload = tfrecord_bytes(records)
    shards_dir = _join(out, SHARDS)
    write_atomically(_join(shards_dir, f"{shard.stem}.tfrecord"), payload)
    frequencies = title_document_frequencies([row["title"] for row in shard.rows])
    summary = {
        "shard": shard.shard, "stem": shard.stem,
        "file": f"{SHARDS}/{shard.stem}.tfrecord", "summary": f"{SHARDS}/{shard.stem}.json",
        "records": len(shard.rows), "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "embedded": embedded, "bad_photos": bad_photos,
        "phashes_computed": shard.phashes_computed,
        "documents": len(shard.rows),
        "document_frequencies": dict(sorted(frequencies.items())),
    }
    # Written after the records: its presence marks the shard finished.
    write_atomically(_join(shards_dir, f"{shard.stem}.json"),
                     json.dumps(summary, ensure_ascii=False).encode("utf-8"))
    return summary


def tfrecord_bytes(records: list[bytes]) -> bytes:
    """``records`` framed as a TFRecord file (TensorFlow's own writer, through a local temporary
    file: the result is then written anywhere by Beam's filesystems)."""
    import tempfile

    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="tf_shopee_shard_") as directory:
        path = os.path.join(directory, "shard.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for record in records:
                writer.write(record)
        with open(path, "rb") as stream:
            return stream.read()


def write_manifest(summaries: list[dict], out: str, header: dict, stems: list[str]) -> dict:
    """The last step: the TF-IDF vocabulary and idf of every title, the manifest, and the
    staged inputs and stale files removed."""
    from apache_beam.io.filesystems import FileSystems

    summaries = sorted(summaries, key=lambda summary: summary["shard"])
    if [summary["stem"] for summary in summaries] != stems:
        raise RuntimeError(f"{len(summaries)} shard summaries for {len(stems)} shards: a shard "
                           "was lost; run beam embed again")
    frequencies: Counter = Counter()
    documents = 0
    for summary in summaries:
        frequencies.update(summary["document_frequencies"])
        documents += summary["documents"]
    tfidf = None
    if frequencies:
        terms = sorted(frequencies)
        counts = np.asarray([frequencies[term] for term in terms], np.float64)
        # scikit-learn's smooth idf: ln((1 + n) / (1 + df)) + 1
        idf = (np.log((1.0 + documents) / (1.0 + counts)) + 1.0).astype(np.float32)
        buffer = io.BytesIO()
        np.save(buffer, idf)
        write_atomically(_join(out, TFIDF_IDF), buffer.getvalue())
        write_atomically(_join(out, TFIDF_VOCABULARY),
                         json.dumps(terms, ensure_ascii=False).encode("utf-8"))
        tfidf = {"vocabulary": TFIDF_VOCABULARY, "idf": TFIDF_IDF, "vocabulary_size": len(terms),
                 "documents": documents}
    sources = [entry["source"] for entry in header["models"]]
    bad_photos = [photo for summary in summaries for photo in summary["bad_photos"]]
    manifest = {
        **header,
        "dimensions": {entry["source"]: entry["embedding_dim"] for entry in header["models"]},
        "counts": {
            "postings": documents,
            "embedded": {source: sum(summary["embedded"][source] for summary in summaries)
                         for source in sources},
            "bad_photos": len(bad_photos),
            "phashes_computed": sum(summary["phashes_computed"] for summary in summaries),
        },
        "shards": [{key: summary[key] for key in ("file", "summary", "records", "bytes",
                                                  "sha256")} for summary in summaries],
        "bad_photos": bad_photos,
        "tfidf": tfidf,
    }
    _remove_leftovers(out, set(stems))
    write_atomically(_join(out, MANIFEST),
                     (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    inputs_dir = _join(out, INPUTS)
    if FileSystems.exists(inputs_dir):
        FileSystems.delete([inputs_dir])
    return manifest


def _remove_leftovers(out: str, stems: set[str]) -> None:
    """Delete shard files of other runs (another input or model) and temporary files of killed
    ones, so the folder holds exactly what the manifest lists."""
    from apache_beam.io.filesystems import FileSystems

    pattern = _join(out, SHARDS, "*")
    stale = []
    for metadata in FileSystems.match([pattern])[0].metadata_list:
        name = metadata.path.rsplit("/", 1)[-1]
        stem = name.rsplit(".", 1)[0]
        if stem not in stems:
            stale.append(metadata.path)
    if stale:
        FileSystems.delete(stale)


# --------------------------------------------------------------------------------------------
# The pipeline


def build_pipeline(pipeline, plan: EmbedPlan, staged: list[str]):
    """Add the embedding steps to ``pipeline`` (see the module docstring)."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference

    options = plan.options
    models = [entry.to_dict() for entry in plan.models]
    header = manifest_header(plan)
    shards = (pipeline
              | "Staged shards" >> beam.Create(staged)
              | "Spread shards" >> beam.Reshuffle()
              | "Read shard" >> beam.Map(load_staged))
    if plan.needs_photos:
        shards = shards | "Read photos" >> beam.Map(read_photos, plan.fill_phashes)
    for entry in plan.models:
        handler = SavedModelHandler(entry.path, source=entry.source, kind=entry.kind,
                                    batch_size=options.batch_size, threads=options.threads)
        shards = (shards
                  | f"Embed {entry.source}" >> RunInference(handler)
                  | f"Attach {entry.source}" >> beam.Map(attach_embeddings, entry.source))
    written = shards | "Write shard" >> beam.Map(write_shard, options.out, models)
    finished = pipeline | "Finished shards" >> beam.Create(plan.finished)
    return ((written, finished)
            | "All shards" >> beam.Flatten()
            | "Summaries" >> beam.combiners.ToList()
            | "Write manifest" >> beam.Map(write_manifest, options.out, header, plan.stems))


def manifest_header(plan: EmbedPlan) -> dict:
    """The manifest's fields known before the pipeline runs."""
    from tf_shopee import __version__

    options = plan.options
    return {
        "format": EMBEDDINGS_FORMAT,
        "format_version": EMBEDDINGS_FORMAT_VERSION,
        "tf_shopee_version": __version__,
        "input": {"csv": options.csv, "images": options.images, "tfrecords": options.tfrecords,
                  "fold": options.fold},
        "postings": len(plan.postings),
        "batch_size": options.batch_size,
        "shard_size": options.shard_size,
        "models": [entry.to_dict() for entry in plan.models],
    }


def run_embed(options: EmbedOptions, pipeline_args: list[str] | None = None) -> dict:
    """``beam embed``: plan, stage, run the pipeline on the chosen runner, return the manifest.

    Args:
        options: what to embed and where.
        pipeline_args: Beam pipeline options (``--runner``, ``--direct_num_workers``,
            ``--project``...), passed to ``PipelineOptions`` as they are.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from tf_shopee.matching.precomputed import read_manifest

    started = time.perf_counter()
    plan = plan_embedding(options)
    logger.info("%d postings in %d shard(s) of %d, %d model(s) (%s); %d shard(s) finished by a "
                "previous run are kept", len(plan.postings), plan.num_shards, options.shard_size,
                len(plan.models), ", ".join(entry.source for entry in plan.models),
                len(plan.finished))
    staged = stage_inputs(plan)
    pipeline_options = PipelineOptions(pipeline_args or [])
    watcher = _ProgressWatcher(plan) if options.progress else None
    try:
        with beam.Pipeline(options=pipeline_options) as pipeline:
            build_pipeline(pipeline, plan, staged)
    finally:
        if watcher is not None:
            watcher.stop()
    seconds = time.perf_counter() - started
    embedded = sum(min(options.shard_size, len(plan.postings) - shard * options.shard_size)
                   for shard in plan.pending)
    logger.info("embedded %d postings in %.1f s (%.1f postings/s) into %s", embedded, seconds,
                embedded / max(seconds, 1e-9), options.out)
    if is_remote(options.out):
        return json.loads(_read_bytes(_join(options.out, MANIFEST)).decode("utf-8"))
    return read_manifest(options.out)


class _ProgressWatcher:
    """Logs finished shards with rate and ETA every 10 s while the pipeline runs (the summaries
    the workers write are counted through Beam's filesystems: any runner)."""

    def __init__(self, plan: EmbedPlan, interval: float = 10.0):
        self.plan = plan
        self.interval = interval
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from apache_beam.io.filesystems import FileSystems

        plan = self.plan
        pending = {plan.stems[shard] for shard in plan.pending}
        pattern = _join(plan.options.out, SHARDS, "shard-*.json")
        while not self._stop.wait(self.interval):
            try:
                names = {metadata.path.rsplit("/", 1)[-1][:-5]
                         for metadata in FileSystems.match([pattern])[0].metadata_list}
            except Exception:  # noqa: BLE001 - progress is best effort
                continue
            done = len(pending & names)
            elapsed = time.perf_counter() - self.started
            rate = done / elapsed
            eta = (len(pending) - done) / rate if rate > 0 else float("nan")
            logger.info("%d/%d shards written (%.2f shards/s, about %.0f s to go)", done,
                        len(pending), rate, eta)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
