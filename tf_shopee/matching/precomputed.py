"""Embeddings computed elsewhere: the output folder of ``python -m tf_shopee.beam embed``, and
reading it back into what the embedding layer returns.

The folder (written by :mod:`tf_shopee.beam`, read here; this module owns its format)::

    OUT/
      manifest.json                    written last: models (fingerprints), counts, dimensions,
                                       shards (records, bytes, sha256), bad photos, TF-IDF files
      shards/shard-00003-of-00010-KEY.tfrecord
                                       one tf.train.Example per posting, in input order:
                                       posting_id, image_phash, bad_image (the reason its photo
                                       cannot be used, or empty) and embedding/<source> (float32,
                                       absent when that source has none for the posting)
      shards/shard-00003-of-00010-KEY.json
                                       the shard's summary, written after its records: a shard
                                       without one is unfinished
      tfidf/vocabulary.json, tfidf/idf.npy
                                       the TF-IDF vocabulary (terms in column order) and idf of
                                       every title, as a catalogue index stores them

``KEY`` is a hash of what the shard's records depend on (its postings, the models' fingerprints,
the batch size), so a run resumed after a kill keeps exactly the shards it would write again.
Shard files are written under a temporary name and renamed, so a file under a final name is
always whole; the manifest is written last, so a folder without one is an unfinished run.

:func:`load_embeddings` gives predict.py and the catalogue the ``source → (N, D)`` arrays that
:func:`tf_shopee.matching.sources.embed_sources` would have made, after checking that the
folder was made with the very models given (:func:`~tf_shopee.export.model_fingerprint`)
and that every shard is complete: nothing is embedded again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from tf_shopee.errors import UserError
from tf_shopee.export import model_fingerprint
from tf_shopee.io_utils import read_json, sha256_file
from tf_shopee.matching.postings import Postings
from tf_shopee.matching.sources import concat_embeddings, concat_parts
from tf_shopee.models.kind import ModelKind

logger = logging.getLogger("tf_shopee.matching")

EMBEDDINGS_FORMAT = "tf_shopee.embeddings"
EMBEDDINGS_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
TFIDF_VOCABULARY = "tfidf/vocabulary.json"
TFIDF_IDF = "tfidf/idf.npy"
EMBEDDING_FEATURE = "embedding/"


def shard_stem(shard: int, num_shards: int, key: str) -> str:
    """The file name (without extension) of a shard: ``shard-00003-of-00010-KEY``."""
    return f"shard-{shard:05d}-of-{num_shards:05d}-{key}"


def encode_posting(posting_id: str, image_phash: str, bad_image: str,
                   vectors: Mapping[str, np.ndarray | None]) -> bytes:
    """One shard record: a serialised ``tf.train.Example`` (see the module docstring)."""
    import tensorflow as tf

    def text(value: str):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))

    features = {"posting_id": text(posting_id), "image_phash": text(image_phash or ""),
                "bad_image": text(bad_image or "")}
    for source, vector in vectors.items():
        if vector is not None:
            features[EMBEDDING_FEATURE + source] = tf.train.Feature(
                float_list=tf.train.FloatList(value=np.asarray(vector, np.float32)))
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString(deterministic=True)  # the same bytes in every process


@dataclass
class Shard:
    """The records of one shard, decoded.

    Attributes:
        posting_ids, image_phashes, bad_images: one per record ("" when none).
        embeddings: source → (records, dim) float32, zeros where the posting has none.
        present: source → bool (records,), whether the posting has that embedding.
    """

    posting_ids: list[str]
    image_phashes: list[str]
    bad_images: list[str]
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    present: dict[str, np.ndarray] = field(default_factory=dict)


def read_shard(path: str | os.PathLike, dimensions: Mapping[str, int]) -> Shard:
    """Decode one shard file (``dimensions``: source → embedding width)."""
    import tensorflow as tf

    spec = {"posting_id": tf.io.FixedLenFeature([], tf.string),
            "image_phash": tf.io.FixedLenFeature([], tf.string, default_value=""),
            "bad_image": tf.io.FixedLenFeature([], tf.string, default_value="")}
    for source in dimensions:
        spec[EMBEDDING_FEATURE + source] = tf.io.VarLenFeature(tf.float32)
    columns: dict[str, list] = {name: [] for name in spec}

    def parse(records):
        parsed = tf.io.parse_example(records, spec)
        for source in dimensions:
            values = parsed[EMBEDDING_FEATURE + source]
            rows = tf.shape(records)[0]
            lengths = tf.math.bincount(tf.cast(values.indices[:, 0], tf.int32), minlength=rows,
                                       maxlength=rows)
            parsed[EMBEDDING_FEATURE + source] = (tf.sparse.to_dense(values), lengths)
        return parsed

    dataset = tf.data.TFRecordDataset(str(path)).batch(4096).map(parse)
    try:
        for batch in dataset.as_numpy_iterator():
            for name in ("posting_id", "image_phash", "bad_image"):
                columns[name].extend(value.decode("utf-8") for value in batch[name])
            for source in dimensions:
                columns[EMBEDDING_FEATURE + source].append(batch[EMBEDDING_FEATURE + source])
    except tf.errors.OpError as error:
        raise UserError(f"embedding shard {path} cannot be read ({error.message.splitlines()[0]}):"
                        " run beam embed again (it rewrites what is damaged)") from None
    shard = Shard(columns["posting_id"], columns["image_phash"], columns["bad_image"])
    for source, dim in dimensions.items():
        matrices, presents = [], []
        for dense, lengths in columns[EMBEDDING_FEATURE + source]:
            if np.any((lengths != 0) & (lengths != dim)):
                raise UserError(f"embedding shard {path}: a {source} embedding is not "
                                f"{dim}-dimensional as the manifest says")
            matrix = np.zeros((len(lengths), dim), np.float32)
            if dense.shape[1]:
                matrix[:, :dense.shape[1]] = dense
            matrices.append(matrix)
            presents.append(lengths == dim)
        matrix = np.concatenate(matrices) if matrices else np.zeros((0, dim), np.float32)
        present = np.concatenate(presents) if presents else np.zeros(0, bool)
        shard.embeddings[source] = matrix
        shard.present[source] = present
    return shard


def read_manifest(directory: str | os.PathLike) -> dict:
    """Read and check ``OUT/manifest.json`` of a ``beam embed`` output.

    Raises:
        UserError: the folder is missing, unfinished (no manifest: the run was interrupted or is
            still going), not an embeddings folder, or of another format version.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"embeddings folder not found: {directory} (make one with "
                        "python -m tf_shopee.beam embed)")
    path = directory / MANIFEST
    if not path.is_file():
        raise UserError(
            f"{directory} has no {MANIFEST}: the beam embed run that writes it was interrupted "
            "or has not finished (its shards are incomplete); run the same command again, it "
            "resumes from the finished shards")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != EMBEDDINGS_FORMAT:
        raise UserError(f"{path}: not a tf_shopee embeddings manifest (format "
                        f"{EMBEDDINGS_FORMAT!r})")
    if manifest.get("format_version") != EMBEDDINGS_FORMAT_VERSION:
        raise UserError(f"{path}: embeddings format version {manifest.get('format_version')!r}; "
                        f"this tf_shopee reads version {EMBEDDINGS_FORMAT_VERSION}: embed again")
    return manifest


def verify_shards(directory: str | os.PathLike, manifest: dict, *,
                  checksums: bool = False) -> None:
    """Check that every shard the manifest lists is there with its size (and sha256).

    Raises:
        UserError: naming the first shard that is missing or differs (incomplete shards).
    """
    directory = Path(directory)
    for entry in manifest["shards"]:
        path = directory / entry["file"]
        if not path.is_file():
            raise UserError(f"embeddings {directory}: shard {entry['file']} is missing (incomplete"
                            " shards): run beam embed again")
        if path.stat().st_size != entry["bytes"]:
            raise UserError(f"embeddings {directory}: shard {entry['file']} has "
                            f"{path.stat().st_size} bytes, the manifest says {entry['bytes']} "
                            "(incomplete or damaged shard): run beam embed again")
        if checksums and sha256_file(path) != entry["sha256"]:
            raise UserError(f"embeddings {directory}: shard {entry['file']} does not match its "
                            "sha256 (damaged shard): run beam embed again")


def iter_shards(directory: str | os.PathLike, manifest: dict,
                sources: list[str] | None = None) -> Iterator[Shard]:
    """The shards of a verified output, in order, decoded one at a time (a catalogue index can
    be filled shard by shard without holding every embedding at once)."""
    dimensions = {entry["source"]: int(entry["embedding_dim"]) for entry in manifest["models"]
                  if sources is None or entry["source"] in sources}
    for entry in manifest["shards"]:
        shard = read_shard(Path(directory) / entry["file"], dimensions)
        if len(shard.posting_ids) != entry["records"]:
            raise UserError(f"embeddings {directory}: shard {entry['file']} holds "
                            f"{len(shard.posting_ids)} records, the manifest says "
                            f"{entry['records']} (incomplete shard): run beam embed again")
        yield shard


def match_models(directory: str | os.PathLike, manifest: dict,
                 model_dirs: Mapping[str, str | os.PathLike]) -> dict[str, str]:
    """Each of our sources (name → export folder) → the output's source embedded by the same
    model, found by fingerprint.

    Raises:
        UserError: a model whose fingerprint is not among the output's (other weights, another
            export): its embeddings would not be comparable.
    """
    made_with = {entry["fingerprint"]: entry["source"] for entry in manifest["models"]}
    matched = {}
    for name, model_dir in model_dirs.items():
        fingerprint = model_fingerprint(model_dir)
        if fingerprint not in made_with:
            listed = "; ".join(f"{entry['source']} from {entry['path']} (fingerprint "
                               f"{entry['fingerprint'][:12]})" for entry in manifest["models"])
            raise UserError(
                f"--model {model_dir} (fingerprint {fingerprint[:12]}) is not a model the "
                f"embeddings in {directory} were made with ({listed}): its embeddings would not "
                "be comparable; embed again with this model, or pass the model they were made "
                "with")
        matched[name] = made_with[fingerprint]
    return matched


def load_embeddings(directory: str | os.PathLike, model_dirs: Mapping[str, str | os.PathLike],
                    postings: Postings, *, use_concat: bool = True,
                    fill_phashes: bool = False) -> dict[str, np.ndarray]:
    """The embeddings of ``postings`` by each model, read from a ``beam embed`` output instead
    of computed: the same ``source → (N, D)`` float32 dict as
    :func:`tf_shopee.matching.sources.embed_sources` (with ``concat`` when an image and a text
    model are both given and ``use_concat``).

    As with embedding in-process, a posting whose photo could not be used gets zeros from the
    photo-based models and its reason in ``postings.bad_images``.

    Args:
        directory: the ``--out`` folder of ``python -m tf_shopee.beam embed``.
        model_dirs: source name → export folder, for every model to read (as predict.py and the
            catalogue name them); each must be one the embeddings were made with.
        postings: the postings to give embeddings to (every one must be in the output; the
            output may hold more).
        use_concat: add ``concat`` (image + text).
        fill_phashes: give postings without an image_phash the one the pipeline computed from
            the photo (what the catalogue does in-process; predict.py's self-matching does not).

    Raises:
        UserError: unfinished or incomplete output, a model it was not made with, postings it
            does not hold.
    """
    manifest = read_manifest(directory)
    verify_shards(directory, manifest)
    matched = match_models(directory, manifest, model_dirs)
    entries = {entry["source"]: entry for entry in manifest["models"]}
    position = {posting_id: row for row, posting_id in enumerate(postings.posting_ids)}
    embeddings = {name: np.zeros((len(postings), int(entries[theirs]["embedding_dim"])),
                                 np.float32) for name, theirs in matched.items()}
    found = np.zeros(len(postings), bool)
    phashes = list(postings.image_phashes or [""] * len(postings))
    computed_phashes = 0
    for shard in iter_shards(directory, manifest, sorted(set(matched.values()))):
        rows = np.asarray([position.get(posting_id, -1) for posting_id in shard.posting_ids])
        mine = rows >= 0
        found[rows[mine]] = True
        for name, theirs in matched.items():
            embeddings[name][rows[mine]] = shard.embeddings[theirs][mine]
        for record in np.flatnonzero(mine):
            row = int(rows[record])
            if shard.bad_images[record]:
                postings.bad_images.setdefault(row, shard.bad_images[record])
            if fill_phashes and not phashes[row] and shard.image_phashes[record]:
                phashes[row] = shard.image_phashes[record]
                computed_phashes += 1
    if not found.all():
        missing = [postings.posting_ids[row] for row in np.flatnonzero(~found)[:5]]
        raise UserError(
            f"{int((~found).sum())} of the {len(postings)} postings have no embeddings in "
            f"{directory} (made from {_input_name(manifest)}"
            f"): {', '.join(missing)} ...; run beam embed on these postings")
    if computed_phashes:
        postings.image_phashes = phashes
    kinds = {name: ModelKind(entries[theirs]["kind"]) for name, theirs in matched.items()}
    logger.info("embeddings of %d postings by %s read from %s (made by beam embed; nothing "
                "embedded here)", len(postings), ", ".join(matched), directory)
    parts = concat_parts(kinds) if use_concat else None
    if parts:
        embeddings["concat"] = concat_embeddings(*(embeddings[name] for name in parts))
    return embeddings


def read_tfidf(directory: str | os.PathLike, manifest: dict) -> tuple[list[str], np.ndarray]:
    """The TF-IDF vocabulary (terms in column order) and idf the pipeline fitted on the titles."""
    directory = Path(directory)
    terms = json.loads((directory / manifest["tfidf"]["vocabulary"]).read_text(encoding="utf-8"))
    return terms, np.load(directory / manifest["tfidf"]["idf"])


def _input_name(manifest: dict) -> str:
    return manifest["input"].get("csv") or manifest["input"].get("tfrecords") or "?"
