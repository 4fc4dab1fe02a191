"""The web app's model of a catalogue: the loaded index and models, kept current, and searches
ranked for people; no HTTP here (:mod:`tf_shopee.catalog.app` serves it).

One loaded version is a :class:`CatalogState` (index, matcher, which sources have no decision).
:class:`LiveCatalog` holds the current one and watches the index folder: when a build or add
swaps in a new version (the folder's identity changes), the new version is loaded in a
background thread while requests go on with the old one, then replaces it in one assignment.
A request takes the state once and uses it to the end, so its results, titles and thumbnails
all come from one version. A version that fails to load (a damaged index) is logged and the
previous one kept.

Scores are reported in each source's units: a cosine similarity for the models and TF-IDF, a
Hamming distance in **bits** (of 64) for ``phash`` and ``phash_text``, the units every
threshold, table and thresholds file uses.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tf_shopee.catalog.index import load_index, resolve_models
from tf_shopee.catalog.photos import QueryPhoto
from tf_shopee.catalog.query import CatalogMatcher, QueryResult
from tf_shopee.errors import UserError
from tf_shopee.matching.decision import format_threshold, user_threshold
from tf_shopee.matching.options import MatchOptions
from tf_shopee.matching.postings import Postings
from tf_shopee.matching.sources import COMBINED, is_phash_source

logger = logging.getLogger("tf_shopee.catalog.app")

DEFAULT_TOP = 12
# How often a request may look at the index folder for a new version.
CHECK_SECONDS = 1.0

# What each source compares, for the home page and the API's documentation.
SOURCE_MEANINGS = {
    "image": "the photo, embedded by the image model (cosine similarity)",
    "text": "the title, embedded by the text model (cosine similarity)",
    "multimodal": "photo and title together, embedded by the multimodal model (cosine)",
    "concat": "the image and text embeddings side by side (cosine similarity)",
    "tfidf": "words shared with the catalogue titles, TF-IDF weighted (cosine similarity)",
    "phash": "near-identical photos: perceptual-hash distance in bits of 64 (0 = same photo)",
    "phash_text": "photos a few bits apart whose titles also share words (distance in bits)",
}


def source_meaning(name: str) -> str:
    """What source ``name`` compares (``image:folder`` names mean what their kind means)."""
    return SOURCE_MEANINGS.get(name.split(":", 1)[0], "an embedding source (cosine similarity)")


def shown_score(name: str, score: float) -> float:
    """A neighbour's score in its source's units: bits for phash sources, else the similarity."""
    return float(user_threshold(name, score)) if is_phash_source(name) else round(float(score), 4)


@dataclass
class Match:
    """One catalogue posting shown for a query.

    Attributes:
        row: the catalogue row.
        scores: source → this row's score for the query, in the source's units.
        matched_by: sources whose rule matches it (empty without a decision).
        matched: whether the combined decision lists it (False: nearest candidate only).
    """

    row: int
    scores: dict
    matched_by: list
    matched: bool


@dataclass
class Ranking:
    """A query's answer: the matches in order and what decided them."""

    matches: list[Match]
    decided: bool
    sources: list[str]
    version: str
    seconds: float = 0.0


@dataclass
class CatalogState:
    """One loaded version of the index, ready to answer."""

    index: object
    matcher: CatalogMatcher
    undecided: list[str]
    decision: str  # the decision in one line, or why there is none
    identity: tuple
    loaded_at: float = field(default_factory=time.time)

    @property
    def decided(self) -> bool:
        """Whether every source has a rule (else results are a similarity ranking)."""
        return not self.undecided


def _folder_identity(directory: Path) -> tuple | None:
    try:
        status = os.stat(directory)
    except OSError:
        return None
    return (status.st_dev, status.st_ino)


def load_state(index_dir: str | os.PathLike, models: list[str], *, search: str = "auto",
               thresholds: dict | None = None, tta: str | None = None) -> CatalogState:
    """Load the index and its models into a :class:`CatalogState`. Query photos are embedded
    with the test-time views ``tta`` (None: those the catalogue photos were embedded with,
    ``catalog build --tta``)."""
    identity = _folder_identity(Path(index_dir))
    index = load_index(index_dir)
    loaded = resolve_models(index.manifest, models)
    if tta is None:
        tta = index.tta
    options = MatchOptions(progress=False, threshold_overrides=dict(thresholds or {}), tta=tta)
    matcher = CatalogMatcher(index, loaded, options, search=search)
    undecided = matcher.undecided_sources()
    if undecided:
        decision = (
            f"no match decision is set for {', '.join(undecided)} (its model was exported "
            "without a validation threshold): results are ranked by similarity only, nothing is "
            "marked as a match. Set one with --threshold "
            + " ".join(f"{name}=VALUE" for name in undecided)
            + " when starting the app, or build the index with --thresholds FILE (written by "
            "predict.py --search-thresholds on labelled postings)")
    else:
        plan = matcher.plan_for(matcher.sources)
        decision = plan.decision.describe(len(index))
    return CatalogState(index=index, matcher=matcher, undecided=undecided, decision=decision,
                        identity=identity)


class LiveCatalog:
    """The current :class:`CatalogState` of an index folder, reloaded when it changes.

    Args:
        index_dir: the index folder.
        models: model folders when they moved (default: the paths the index stores).
        search: ``exact``, ``ann`` or ``auto``.
        thresholds: ``--threshold`` overrides, source → value.
        tta: test-time views of query photos (None: the index's, see :func:`load_state`).
        top: postings shown per query.
        check_seconds: how often the folder is looked at (0: at every request).
    """

    def __init__(self, index_dir: str | os.PathLike, models: list[str] | None = None, *,
                 search: str = "auto", thresholds: dict | None = None, top: int = DEFAULT_TOP,
                 check_seconds: float = CHECK_SECONDS, tta: str | None = None):
        self.directory = Path(index_dir)
        self.models = list(models or [])
        self.search_mode = search
        self.thresholds = dict(thresholds or {})
        self.tta = tta
        self.top = top
        self.check_seconds = check_seconds
        self.state = load_state(self.directory, self.models, search=search,
                                thresholds=self.thresholds, tta=tta)
        self.reload_error = ""
        self._checked = time.monotonic()
        self._failed_identity = None
        self._reloading = threading.Lock()
        # One model call at a time: TensorFlow already spreads one call over every core, and
        # concurrent calls would only contend. Held for the call alone, never for an upload.
        self._model_lock = threading.Lock()

    # ------------------------------------------------------------------------- versions

    def current(self) -> CatalogState:
        """The state to answer with; starts a reload when the folder holds a new version."""
        now = time.monotonic()
        if now - self._checked >= self.check_seconds:
            self._checked = now
            identity = _folder_identity(self.directory)
            if (identity is not None and identity != self.state.identity
                    and identity != self._failed_identity
                    and self._reloading.acquire(blocking=False)):
                threading.Thread(target=self._reload, args=(identity,), daemon=True,
                                 name="catalogue-reload").start()
        return self.state

    def _reload(self, identity: tuple) -> None:
        try:
            started = time.perf_counter()
            state = load_state(self.directory, self.models, search=self.search_mode,
                               thresholds=self.thresholds, tta=self.tta)
            self.state = state  # one assignment: a request sees the old or the new state
            self.reload_error = ""
            logger.info("loaded the new version %s of %s (%d postings) in %.1f s",
                        state.index.version, self.directory, len(state.index),
                        time.perf_counter() - started)
        except UserError as error:
            self._failed_identity = identity
            self.reload_error = str(error)
            logger.error("the index changed but its new version cannot be loaded (%s): still "
                         "serving version %s", error, self.state.index.version)
        finally:
            self._reloading.release()

    def wait_for_version(self, timeout: float = 30.0) -> str:
        """Block until the folder's current version is loaded (tests, scripts); its version."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._checked = 0.0
            state = self.current()
            identity = _folder_identity(self.directory)
            if identity == state.identity or (identity == self._failed_identity):
                return state.index.version
            time.sleep(0.05)
        raise TimeoutError(f"{self.directory} was not reloaded within {timeout} s")

    # ------------------------------------------------------------------------- answers

    def search(self, photo: QueryPhoto | None, title: str, *, top: int | None = None
               ) -> tuple[CatalogState, Ranking]:
        """The catalogue's best matches of one query (a decoded photo, a title or both).

        Raises:
            UserError: neither a photo nor a title.
        """
        title = (title or "").strip()
        if photo is None and not title:
            raise UserError("upload a photo or type a title")
        state = self.current()
        postings = Postings(posting_ids=["query"], titles=[title],
                            image_bytes=[photo.model_bytes] if photo else None,
                            image_phashes=[photo.phash] if photo else None)
        started = time.perf_counter()
        with self._model_lock:
            result = state.matcher.match(postings, rank_only=not state.decided)
        ranking = rank(result, state, exclude=None, top=top or self.top)
        ranking.seconds = time.perf_counter() - started
        return state, ranking

    def posting_matches(self, state: CatalogState, row: int, *, top: int | None = None
                        ) -> Ranking:
        """Catalogue matches of catalogue row ``row`` (itself left out), from its stored
        embeddings: no model is called."""
        started = time.perf_counter()
        result = state.matcher.match_rows([row], rank_only=not state.decided)
        ranking = rank(result, state, exclude=row, top=top or self.top)
        ranking.seconds = time.perf_counter() - started
        return ranking


def rank(result: QueryResult, state: CatalogState, *, exclude: int | None, top: int) -> Ranking:
    """The combined matches in their order, then the nearest candidates no rule matched, up to
    ``top``; without a decision, every candidate by its best similarity."""
    scores: dict[int, dict] = {}
    best: dict[int, float] = {}
    for name, found in result.neighbours.items():
        for row, score in zip(found.indices[0], found.scores[0]):
            if row >= 0:
                row = int(row)
                if name not in scores.setdefault(row, {}):
                    scores[row][name] = shown_score(name, score)
                    best[row] = max(best.get(row, -1.0), float(score))
    matched_by: dict[int, list] = {}
    for name, lists in result.matches.items():
        if name != COMBINED:
            for row in lists[0]:
                matched_by.setdefault(int(row), []).append(name)
    order = [int(row) for row in result.matches[COMBINED][0]] if result.matches else []
    nearest = sorted(best, key=lambda row: -best[row])
    shown, seen = [], set()
    for row in order + nearest:
        if row in seen or row == exclude:
            continue
        seen.add(row)
        shown.append(Match(row, scores.get(row, {}), matched_by.get(row, []),
                           matched=row in order))
        if len(shown) >= top:
            break
    return Ranking(matches=shown, decided=state.decided, sources=list(result.neighbours),
                   version=state.index.version)


def describe_rule(state: CatalogState, name: str) -> str:
    """A source's rule for people (``<= 9 bits``, ``0.612``), or ``no decision``."""
    if name in state.undecided or not state.decided:
        return "no decision"
    plan = state.matcher.plan_for(state.matcher.sources)
    rule = plan.decision.rules.get(name)
    if rule is None:
        return "not in the union"
    threshold = plan.decision.thresholds_for(len(state.index)).get(name, rule.threshold)
    return format_threshold(name, threshold) if not rule.beta else rule.describe(name, threshold)
