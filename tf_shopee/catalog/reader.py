"""Reading a catalogue index: one version from start to end, nothing outside its folder.

Writers never change an index folder in place: ``catalog build`` and ``catalog add`` write a new
folder and swap it in by renames (:func:`tf_shopee.io_utils.replace_directory`). A reader therefore
sees one version when it reads every file through one open descriptor of the folder:

* the folder is opened once (``O_DIRECTORY``) and every file is opened relative to that
  descriptor (``openat``), so a swap during the load cannot mix files of two versions;
* every file the manifest lists is opened right after the manifest is read, and the ones read
  later (``thumbnails.bin``, the approximate indexes, the thresholds file) stay open for the
  index's lifetime: a file deleted by the writer that retired this version stays readable
  through its descriptor, so the web app never serves offsets of one ``thumbnails.bin`` against
  another;
* a load that finds a file gone because the folder it opened was retired under it starts again
  on the new folder; a file missing from a folder still in place is a damaged index.

Paths come from the manifest, a file a user (or an attacker) can edit. Each must be a plain
relative path listed in the manifest's ``files``, without ``..``, and is opened one component at
a time with ``O_NOFOLLOW``: no manifest entry reaches a file outside the index folder, not even
through a symlink placed inside it.

Every file is checked while it is parsed (shapes, row counts, vocabulary and idf lengths,
thumbnail offsets): same-size damage that the cheap size check misses is a clear "damaged
index" message naming the file, not a traceback; ``catalog info --verify`` checks every sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tf_shopee.catalog.locking import writer_lock
from tf_shopee.errors import UserError
from tf_shopee.io_utils import PARTIAL_MARK, RETIRED_MARK
from tf_shopee.models.kind import ModelKind

logger = logging.getLogger("tf_shopee.catalog")

INDEX_FORMAT = "tf_shopee.catalog"
INDEX_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
POSTINGS = "postings.csv"
THRESHOLDS = "thresholds.json"
THUMBNAILS = "thumbnails.bin"
THUMBNAIL_OFFSETS = "thumbnails.npy"
CONCAT_SOURCE = "concat"
# A load that meets a swap starts again; a writer's swap takes microseconds, so a few tries do.
_LOAD_ATTEMPTS = 20
_RETRY_SECONDS = 0.05
_SHA256_HEX = set("0123456789abcdef")


class _Vanished(Exception):
    """A file of the opened folder is gone: the folder was retired (or the index is damaged)."""


def check_relative(relative, *, where: str) -> str:
    """A manifest path, checked: a non-empty relative POSIX path without ``.``/``..`` parts.

    Raises:
        UserError: naming ``where`` and the path.
    """
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise UserError(f"{where}: {relative!r} is not a file name of the index")
    parts = relative.split("/")
    if relative.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise UserError(f"{where}: {relative!r} is not a path inside the index folder (an "
                        "edited or damaged manifest); the index is read only from its own folder")
    return relative


def open_confined(folder_descriptor: int, relative: str) -> io.BufferedReader:
    """Open ``relative`` (checked by :func:`check_relative`) under the open folder, following no
    symlink on the way; a regular file only.

    Raises:
        _Vanished: the file (or a folder on its way) does not exist.
        UserError: a symlink, or not a regular file.
    """
    parts = relative.split("/")
    opened = []
    current = folder_descriptor
    try:
        for part in parts[:-1]:
            current = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=current)
            opened.append(current)
        descriptor = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=current)
    except FileNotFoundError:
        raise _Vanished(relative) from None
    except OSError as error:  # ELOOP (a symlink), ENOTDIR
        raise UserError(f"{relative} in the index is not a plain file inside its folder "
                        f"({error.strerror}): the index is damaged or was tampered with") from None
    finally:
        for descriptor_ in opened:
            os.close(descriptor_)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise UserError(f"{relative} in the index is not a regular file")
    return os.fdopen(descriptor, "rb")


@dataclass
class CatalogIndex:
    """A loaded catalogue index (see :mod:`tf_shopee.catalog.index` for the folder).

    Attributes:
        directory: the index folder.
        manifest: the content of ``manifest.json``.
        version: a short hash of the manifest: changes with every build or add.
        posting_ids, titles: one per catalogue row.
        image_phashes: 16-hex-digit hashes per row (``""`` where unknown), or None.
        label_groups: int64 labels, or None.
        embeddings: source name → (rows, dim) float32.
        views: image source name → (rows, views, dim) float32: the catalogue-side augmentation
            views of every photo (``catalog build --catalog-augment N``), searched as one item.
        vectorizer: the fitted TF-IDF vectorizer, or None (no title had a word).
        tfidf_vectors, tfidf_blended: (rows, F) sparse title vectors before / after blending.
    """

    directory: Path
    manifest: dict
    posting_ids: list[str]
    titles: list[str]
    image_phashes: list[str] | None
    label_groups: np.ndarray | None
    version: str = ""
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    views: dict[str, np.ndarray] = field(default_factory=dict)
    vectorizer: object = None
    tfidf_vectors: object = None
    tfidf_blended: object = None
    # Files read after the load, kept open so that they stay this version's (module docstring).
    _kept: dict = field(default_factory=dict, repr=False)
    _thumbnail_offsets: np.ndarray | None = field(default=None, repr=False)
    _rows: dict | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.posting_ids)

    @property
    def models(self) -> list[dict]:
        """The manifest entries of the models (source, kind, fingerprint, path, threshold)."""
        return self.manifest["models"]

    @property
    def tta(self) -> str:
        """The test-time views the catalogue photos were embedded with (``catalog build --tta``;
        empty: none): queries and added rows are embedded the same way."""
        return (self.manifest.get("views") or {}).get("tta") or ""

    @property
    def catalog_augment(self) -> int:
        """Views stored per catalogue photo and searched as one item (``catalog build
        --catalog-augment``; 1: the photo alone): added rows get as many."""
        return int((self.manifest.get("views") or {}).get("catalog_augment") or 1)

    @property
    def has_thumbnails(self) -> bool:
        """Whether small photos of the rows are stored (an index built with images)."""
        return bool(self.manifest.get("thumbnails"))

    def thumbnail(self, row: int) -> bytes | None:
        """JPEG bytes of row ``row``'s photo thumbnail, or None (thread-safe: positional read
        of this version's ``thumbnails.bin``)."""
        if not self.has_thumbnails or not 0 <= row < len(self):
            return None
        start, stop = int(self._thumbnail_offsets[row]), int(self._thumbnail_offsets[row + 1])
        if stop <= start:
            return None
        return os.pread(self._kept[THUMBNAILS].fileno(), stop - start, start)

    def read_kept(self, relative: str) -> bytes:
        """The whole content of a kept file (``thumbnails.bin``, ``ann/...``, the thresholds)."""
        stream = self._kept[relative]
        size = os.fstat(stream.fileno()).st_size
        return os.pread(stream.fileno(), size, 0)

    def kept_path(self, relative: str) -> str:
        """A path that opens this version's kept file even after a swap (``/proc/self/fd/N``),
        for readers that want a path (the thresholds file)."""
        return f"/proc/self/fd/{self._kept[relative].fileno()}"

    def row_of(self, posting_id: str) -> int | None:
        """Row of a posting id (None when absent)."""
        if self._rows is None:
            self._rows = {value: row for row, value in enumerate(self.posting_ids)}
        return self._rows.get(posting_id)

    def close(self) -> None:
        """Close the kept files (also done when the index is garbage-collected)."""
        for stream in self._kept.values():
            stream.close()
        self._kept.clear()


# --------------------------------------------------------------------------------------------
# The manifest


def _damaged(directory, message: str) -> UserError:
    return UserError(f"catalogue index {directory}: {message}; the index is damaged or was "
                     "edited: build it again (python -m tf_shopee.catalog build), or check every "
                     "file with catalog info --verify")


def check_manifest(manifest, directory) -> dict:
    """Check the structure of a manifest and that its parts agree with each other.

    Raises:
        UserError: naming the first field that is missing, of the wrong type, or inconsistent
            (e.g. embeddings of a source with no model, ``models: []`` in an index that holds
            model embeddings).
    """
    where = f"{directory}/{MANIFEST}"
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise UserError(f"{where}: not a tf_shopee catalogue manifest (format {INDEX_FORMAT!r})")
    if manifest.get("format_version") != INDEX_FORMAT_VERSION:
        raise UserError(
            f"{where}: catalogue format version {manifest.get('format_version')!r}; this "
            f"tf_shopee reads version {INDEX_FORMAT_VERSION}: build the index again")

    def require(name, kinds, description):
        value = manifest.get(name)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise _damaged(directory, f"{MANIFEST} field {name!r} is {value!r}, expected "
                           f"{description}")
        return value

    rows = require("rows", (int,), "a number of rows")
    if rows < 0:
        raise _damaged(directory, f"{MANIFEST} says {rows} rows")
    for name in ("has_labels", "has_images", "has_phash", "thumbnails"):
        require(name, (bool,), "true or false")
    files = require("files", (dict,), "the table of files")
    for relative, entry in files.items():
        check_relative(relative, where=where)
        if (not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int)
                or not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64
                or not set(entry["sha256"]) <= _SHA256_HEX):
            raise _damaged(directory, f"{MANIFEST} entry of {relative} is {entry!r}")

    def listed(relative, what):
        check_relative(relative, where=f"{where} ({what})")
        if relative not in files:
            raise _damaged(directory, f"{what} {relative!r} is not among the manifest's files")
        return relative

    listed(POSTINGS, "the postings table")
    models = require("models", (list,), "a list of models")
    sources = []
    for entry in models:
        if (not isinstance(entry, dict) or not isinstance(entry.get("source"), str)
                or entry.get("kind") not in {kind.value for kind in ModelKind}
                or not isinstance(entry.get("fingerprint"), str)
                or not isinstance(entry.get("path"), str)
                or (entry.get("threshold") is not None
                    and not isinstance(entry["threshold"], (int, float)))):
            raise _damaged(directory, f"{MANIFEST} model entry {entry!r}")
        sources.append(entry["source"])
    concat = manifest.get("concat")
    if concat is not None and (not isinstance(concat, list) or len(concat) != 2
                               or not set(concat) <= set(sources)):
        raise _damaged(directory, f"{MANIFEST} concat {concat!r} does not name two of its "
                       f"models ({sources})")
    embeddings = require("embeddings", (list,), "a list of embedding files")
    stored = []
    for entry in embeddings:
        if (not isinstance(entry, dict) or not isinstance(entry.get("source"), str)
                or not isinstance(entry.get("dim"), int) or entry["dim"] < 1):
            raise _damaged(directory, f"{MANIFEST} embeddings entry {entry!r}")
        listed(entry.get("file"), f"the embeddings of {entry['source']}")
        if "views_file" in entry:
            if not isinstance(entry.get("views"), int) or entry["views"] < 2:
                raise _damaged(directory, f"{MANIFEST} embeddings entry {entry!r}: views")
            listed(entry["views_file"], f"the catalogue views of {entry['source']}")
        stored.append(entry["source"])
    expected = sources + ([CONCAT_SOURCE] if concat else [])
    if sorted(stored) != sorted(expected) or len(set(stored)) != len(stored):
        raise _damaged(directory, f"{MANIFEST} holds embeddings of {stored or 'no source'} but "
                       f"its models give {expected or 'no source'} (models: "
                       f"{[entry.get('source') for entry in models]}): an index's model sources "
                       "cannot be dropped or added by editing its manifest")
    tfidf = manifest.get("tfidf")
    if tfidf is not None:
        if not isinstance(tfidf, dict):
            raise _damaged(directory, f"{MANIFEST} tfidf {tfidf!r}")
        for name in ("vocabulary", "idf", "vectors", "blended"):
            listed(tfidf.get(name), f"the TF-IDF {name}")
    if manifest["thumbnails"]:
        listed(THUMBNAILS, "the thumbnails")
        listed(THUMBNAIL_OFFSETS, "the thumbnail offsets")
    thresholds = require("thresholds", (dict,), "the thresholds entry")
    if thresholds.get("file") is not None:
        listed(thresholds["file"], "the thresholds file")
    overrides = thresholds.get("overrides", {})
    if not isinstance(overrides, dict) or not all(
            isinstance(value, (int, float)) and not isinstance(value, bool)
            for value in overrides.values()):
        raise _damaged(directory, f"{MANIFEST} threshold overrides {overrides!r}")
    ann = manifest.get("ann") or {}
    if not isinstance(ann, dict):
        raise _damaged(directory, f"{MANIFEST} ann {ann!r}")
    for name, entry in ann.items():
        if name not in stored or not isinstance(entry, dict):
            raise _damaged(directory, f"{MANIFEST} approximate index of {name!r}")
        listed(entry.get("file"), f"the approximate index of {name}")
    settings = require("model_free_settings", (dict,), "the model-free settings")
    from tf_shopee.matching.model_free import ModelFreeSettings

    try:
        ModelFreeSettings(**settings)
    except TypeError as error:
        raise _damaged(directory, f"{MANIFEST} model_free_settings: {error}") from None
    require("history", (list,), "the list of builds and adds")
    return manifest


def _parse_manifest(payload: bytes, directory) -> dict:
    try:
        manifest = json.loads(payload.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{directory}/{MANIFEST} is not valid JSON: {error}") from None
    return check_manifest(manifest, directory)


def _missing_index_message(directory: Path) -> str:
    return (f"catalogue index not found: {directory} (make one with python -m tf_shopee.catalog "
            "build)")


def _open_folder(directory: Path) -> int:
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _Vanished(str(directory)) from None
    except NotADirectoryError:
        raise UserError(f"{directory} is not a folder: not a catalogue index") from None
    except OSError as error:
        raise UserError(f"cannot read catalogue index {directory}: {error.strerror}") from None


def _moved(directory: Path, descriptor: int) -> bool:
    """Whether ``directory`` no longer names the folder open as ``descriptor`` (swapped)."""
    try:
        now = os.stat(directory)
    except FileNotFoundError:
        return True
    opened = os.fstat(descriptor)
    return (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino)


def _swap_under_way(directory: Path) -> bool:
    """Whether a live writer is between the renames of its swap (or dead ones left copies that a
    recovery can restore)."""
    parent = directory.parent
    return parent.is_dir() and any(parent.glob(f".{directory.name}{RETIRED_MARK}*"))


def _with_retries(directory, read):
    """``read(folder_descriptor)`` on one version of ``directory``; again on the new version when
    the folder was swapped during the read."""
    directory = Path(directory)
    for attempt in range(_LOAD_ATTEMPTS):
        try:
            descriptor = _open_folder(directory)
        except _Vanished:
            if attempt + 1 < _LOAD_ATTEMPTS and _swap_under_way(directory):
                _recover_if_abandoned(directory)
                time.sleep(_RETRY_SECONDS)
                continue
            raise UserError(_missing_index_message(directory)) from None
        try:
            return read(descriptor)
        except _Vanished as vanished:
            if not _moved(directory, descriptor):
                if str(vanished) == MANIFEST:
                    raise UserError(
                        f"{directory} is not a catalogue index (no {MANIFEST}; an interrupted "
                        "build leaves none): build it again with python -m tf_shopee.catalog "
                        "build") from None
                raise _damaged(directory, f"{vanished} is missing") from None
            logger.info("catalogue index %s was replaced while being read: reading the new "
                        "version", directory)
        finally:
            os.close(descriptor)
    raise UserError(f"catalogue index {directory} kept changing while being read "
                    f"({_LOAD_ATTEMPTS} tries): is a writer replacing it in a loop?")


def _recover_if_abandoned(directory: Path) -> None:
    """Restore an index whose writer was killed between the two renames of its swap, when no
    writer holds the lock (one that does recovers it itself)."""
    try:
        with writer_lock(directory, wait=False, quiet=True):
            pass  # taking the lock runs the recovery
    except UserError:
        pass  # a writer is at work, or the folder is read-only: wait for the writer


def read_manifest(directory: str | os.PathLike) -> dict:
    """Read and check ``INDEX/manifest.json`` (:func:`check_manifest`).

    Raises:
        UserError: the folder is missing, unfinished (no manifest), not a catalogue index, of
            another format version, or its manifest is inconsistent.
    """

    def read(descriptor):
        with open_confined(descriptor, MANIFEST) as stream:
            return _parse_manifest(stream.read(), directory)

    return _with_retries(directory, read)


def _open_files(descriptor: int, directory, manifest: dict, *, checksums: bool) -> dict:
    """Every file the manifest lists, opened, with its size (and sha256) checked."""
    files = {}
    try:
        for relative, entry in manifest["files"].items():
            stream = open_confined(descriptor, relative)
            files[relative] = stream
            size = os.fstat(stream.fileno()).st_size
            if size != entry["bytes"]:
                raise UserError(f"catalogue index {directory}: {relative} has {size} bytes, the "
                                f"manifest says {entry['bytes']} (damaged index)")
            if checksums:
                digest = hashlib.sha256()
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
                stream.seek(0)
                if digest.hexdigest() != entry["sha256"]:
                    raise UserError(f"catalogue index {directory}: {relative} does not match "
                                    "its sha256 (damaged index)")
    except BaseException:
        for stream in files.values():
            stream.close()
        raise
    return files


def verify_files(directory: str | os.PathLike, manifest: dict | None = None, *,
                 checksums: bool) -> dict:
    """Check that every file the manifest lists exists inside the folder with its size (and
    sha256); returns the manifest read (one version).

    Raises:
        UserError: naming the first file that is missing or differs.
    """

    def read(descriptor):
        with open_confined(descriptor, MANIFEST) as stream:
            current = _parse_manifest(stream.read(), directory)
        for stream in _open_files(descriptor, directory, current, checksums=checksums).values():
            stream.close()
        return current

    return _with_retries(directory, read)


# Files parsed at load and closed; every other listed file is kept open (CatalogIndex._kept).
def load_index(directory: str | os.PathLike, *, verify_checksums: bool = False) -> CatalogIndex:
    """Load one version of a catalogue index (module docstring), checking every file as it is
    parsed.

    Raises:
        UserError: a missing, unfinished, damaged or tampered index, naming the file.
    """
    directory = Path(directory)

    def read(descriptor):
        with open_confined(descriptor, MANIFEST) as stream:
            payload = stream.read()
        manifest = _parse_manifest(payload, directory)
        files = _open_files(descriptor, directory, manifest, checksums=verify_checksums)
        try:
            index = _parse(directory, manifest, files)
        except BaseException:
            for stream in files.values():
                stream.close()
            raise
        index.version = hashlib.sha256(payload).hexdigest()[:16]
        return index

    return _with_retries(directory, read)


def _parse(directory: Path, manifest: dict, files: dict) -> CatalogIndex:
    """A :class:`CatalogIndex` from the opened files; closes those it has read."""
    import pandas as pd

    rows = manifest["rows"]

    def parsed(relative, parse):
        stream = files.pop(relative)
        try:
            return parse(stream)
        except UserError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, OSError, EOFError,
                UnicodeDecodeError, zipfile.BadZipFile, pd.errors.ParserError) as error:
            raise _damaged(directory, f"{relative} cannot be read ({type(error).__name__}: "
                           f"{str(error)[:200]})") from None
        finally:
            stream.close()

    def postings(stream):
        frame = pd.read_csv(stream, dtype=str, keep_default_na=False, encoding="utf-8")
        needed = ["posting_id", "title", "image_phash"] + (
            ["label_group"] if manifest["has_labels"] else [])
        missing = [name for name in needed if name not in frame.columns]
        if missing:
            raise ValueError(f"no column(s) {', '.join(missing)}")
        if len(frame) != rows:
            raise UserError(f"catalogue index {directory}: {POSTINGS} has {len(frame)} rows, "
                            f"the manifest says {rows} (damaged index)")
        if frame["posting_id"].eq("").any() or frame["posting_id"].duplicated().any():
            raise ValueError("empty or repeated posting ids")
        return frame

    frame = parsed(POSTINGS, postings)
    labels = None
    if manifest["has_labels"]:
        try:
            labels = frame["label_group"].astype(np.int64).to_numpy()
        except (ValueError, OverflowError) as error:
            raise _damaged(directory, f"{POSTINGS} label_group: {error}") from None
    phashes = frame["image_phash"].tolist() if manifest["has_phash"] else None
    if phashes is not None and not all(len(value) in (0, 16) for value in phashes):
        raise _damaged(directory, f"{POSTINGS} holds an image_phash that is not 16 hex digits")
    index = CatalogIndex(directory=directory, manifest=manifest,
                         posting_ids=frame["posting_id"].tolist(), titles=frame["title"].tolist(),
                         image_phashes=phashes, label_groups=labels)

    def matrix(expected_shape):
        def parse(stream):
            array = np.load(stream, allow_pickle=False)
            if array.dtype != np.float32 or array.shape != expected_shape:
                raise ValueError(f"holds {array.dtype} {array.shape}, expected float32 "
                                 f"{expected_shape}")
            return array
        return parse

    for entry in manifest["embeddings"]:
        index.embeddings[entry["source"]] = parsed(entry["file"], matrix((rows, entry["dim"])))
        if "views_file" in entry:
            index.views[entry["source"]] = parsed(
                entry["views_file"], matrix((rows, entry["views"], entry["dim"])))
    tfidf = manifest.get("tfidf")
    if tfidf:
        import scipy.sparse as sparse

        def vocabulary(stream):
            terms = json.loads(stream.read().decode("utf-8"))
            if not isinstance(terms, list) or not all(isinstance(term, str) for term in terms):
                raise ValueError("not a list of terms")
            return terms

        def idf(stream):
            values = np.load(stream, allow_pickle=False)
            if values.ndim != 1 or not np.isfinite(values).all():
                raise ValueError(f"holds {values.dtype} {values.shape}")
            return values

        def vectors(stream):
            matrix_ = sparse.load_npz(stream).tocsr()
            if matrix_.shape != (rows, len(terms)):
                raise ValueError(f"has shape {matrix_.shape}, expected ({rows}, {len(terms)})")
            return matrix_

        terms = parsed(tfidf["vocabulary"], vocabulary)
        weights = parsed(tfidf["idf"], idf)
        if len(weights) != len(terms) or len(set(terms)) != len(terms):
            raise _damaged(directory, f"{tfidf['vocabulary']} holds {len(terms)} terms "
                           f"({len(set(terms))} distinct) for {len(weights)} idf weights")
        index.vectorizer = vectorizer_from(terms, weights)
        index.tfidf_vectors = parsed(tfidf["vectors"], vectors)
        index.tfidf_blended = parsed(tfidf["blended"], vectors)
    if index.has_thumbnails:
        def offsets(stream):
            values = np.load(stream, allow_pickle=False)
            size = os.fstat(files[THUMBNAILS].fileno()).st_size
            if (values.shape != (rows + 1,) or not np.issubdtype(values.dtype, np.integer)
                    or (len(values) and (values[0] != 0 or values[-1] != size))
                    or (np.diff(values) < 0).any()):
                raise ValueError(f"are not {rows + 1} rising offsets into {size} bytes")
            return values.astype(np.int64)

        index._thumbnail_offsets = parsed(THUMBNAIL_OFFSETS, offsets)
    index._kept = files  # what is left: thumbnails.bin, the approximate indexes, thresholds
    return index


def vectorizer_from(terms: list[str], idf: np.ndarray):
    """A fitted TfidfVectorizer rebuilt from its vocabulary (terms in column order) and idf."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(dtype=np.float32,
                                 vocabulary={term: column for column, term in enumerate(terms)})
    vectorizer.idf_ = idf
    return vectorizer


def leftovers(directory: str | os.PathLike) -> list[Path]:
    """Hidden sibling folders of ``directory`` that writers make (partial or retired copies)."""
    directory = Path(directory)
    if not directory.parent.is_dir():
        return []
    return sorted(path for mark in (PARTIAL_MARK, RETIRED_MARK)
                  for path in directory.parent.glob(f".{directory.name}{mark}*"))
