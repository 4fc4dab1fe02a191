"""New postings against a catalogue index: the same sources, thresholds, union and min2 as
self-matching, adapted to queries.

For each query posting every source finds its nearest *catalogue* rows:

* each model's embeddings (and ``concat`` of image + text) through the index's search
  (:mod:`tf_shopee.catalog.search`: exact, or FAISS IVF for large catalogues);
* ``tfidf``: the query title is vectorised with the catalogue's vocabulary and idf, blended with
  its catalogue neighbours (TF-IDF ≥ the blend threshold, near-identical photos, photos whose
  titles agree) exactly as a catalogue posting was blended with its own, then searched against
  the catalogue's blended vectors (query expansion on one side, database-side augmentation on
  the other);
* ``phash`` and ``phash_text``: Hamming neighbours of the query photo's hash among the
  catalogue's (computed from the photo when the query has none).

Sources whose input a query lacks are left out (a photo-only query has no ``tfidf``, a title-only
one no ``image``/``phash``/``concat``).

The decision comes as in predict.py (defaults < each model's validation threshold < thresholds
file < ``--threshold``; the index contributes the file and overrides it was built with; sources
a query lacks are left out of the union) and the match lists are made by the same decision
function, :func:`tf_shopee.matching.decision.apply_decision`, on query-vs-catalogue lists:
thresholds follow the catalogue's size, and a locally scaled source judges each pair against the
query's background (from its catalogue neighbours) and the catalogue posting's (from the
catalogue's own neighbours, computed once per matcher). Blending (INB) is not available: the
catalogue side is not re-blended per query. Queries may be blended with each other instead
(``--query-blend``, :func:`blend_query_batch`): a batch of new listings often holds several photos
of one product.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tf_shopee.catalog.index import (
    CatalogIndex,
    fill_missing_phashes,
    load_index,
    resolve_models,
)
from tf_shopee.catalog.search import (
    DEFAULT_NPROBE,
    ExactSearch,
    IvfSearch,
    ViewsSearch,
    resolve_mode,
)
from tf_shopee.errors import UserError
from tf_shopee.io_utils import write_json_atomic
from tf_shopee.matching.blend import blend_embeddings, blend_query_rows
from tf_shopee.matching.decision import (
    USE_CATALOGUE,
    Decision,
    apply_decision,
    format_threshold,
)
from tf_shopee.matching.model_free import ModelFreeSettings, blending_graphs
from tf_shopee.matching.options import MatchOptions, PredictOptions
from tf_shopee.matching.plan import MatchPlan, resolve_plan
from tf_shopee.matching.postings import Postings, read_postings
from tf_shopee.matching.precomputed import load_embeddings
from tf_shopee.matching.report import write_matches
from tf_shopee.matching.sources import (
    COMBINED,
    CONCAT,
    PHASH,
    PHASH_TEXT,
    TFIDF,
    PlannedSources,
    concat_parts,
    embed_sources,
    image_based_sources,
)
from tf_shopee.matching.topk import top_k_neighbours
from tf_shopee.models.kind import ModelKind
from tf_shopee.neighbours import Neighbours
from tf_shopee.neighbours.phash import phash_neighbours
from tf_shopee.neighbours.scaling import background_scores
from tf_shopee.neighbours.tfidf import clean_title, filter_by_cosine, sparse_top_k

logger = logging.getLogger("tf_shopee.catalog")


@dataclass
class QueryResult:
    """What :meth:`CatalogMatcher.match` found for a batch of queries.

    Attributes:
        neighbours: source → :class:`Neighbours` of the queries (catalogue rows, best first).
        matches: source → one int array of catalogue rows per query, and ``combined`` (union +
            min2), best first within each source.
        thresholds: the threshold of every source in the union (its units, for this catalogue's
            size).
        plan: the decision and where its rules came from.
        search: source → "exact" or "ann".
    """

    neighbours: dict[str, Neighbours]
    matches: dict[str, list[np.ndarray]]
    thresholds: dict[str, float]
    plan: MatchPlan
    search: dict[str, str] = field(default_factory=dict)


class CatalogMatcher:
    """A catalogue index with its models loaded, ready to match batches of new postings.

    Args:
        index: the loaded :class:`CatalogIndex`.
        models: the index's models (:func:`tf_shopee.catalog.index.resolve_models`), in manifest
            order.
        options: how to match (thresholds, k, min2, switches).
        search: ``exact``, ``ann`` or ``auto`` (see :mod:`tf_shopee.catalog.search`).
        nprobe: cells probed per query by the approximate search.
    """

    def __init__(self, index: CatalogIndex, models: list, options: MatchOptions, *,
                 search: str = "auto", nprobe: int | None = None):
        self.index = index
        self.models = models
        self.options = options
        self.searchers = {}
        self._catalog_backgrounds: dict[str, np.ndarray] = {}
        mode = resolve_mode(search, len(index))
        stored = index.manifest.get("ann") or {}
        for name, matrix in index.embeddings.items():
            views = index.views.get(name)
            if views is not None:  # catalogue-side augmentation: every view is searched
                matrix = views.reshape(-1, views.shape[-1])
            if mode == "ann":
                if name in stored:
                    self.searchers[name] = IvfSearch.load(  # ivf_pq rescores with the matrix
                        index.kept_path(stored[name]["file"]), nprobe=nprobe or DEFAULT_NPROBE,
                        vectors=matrix)
                else:
                    logger.warning(
                        "%s: the index holds no approximate index (built with --ann never, or "
                        "under %s rows): building one in memory now; catalog build --ann always "
                        "stores it", name, "the auto limit")
                    self.searchers[name] = IvfSearch.build(matrix, nprobe=nprobe or
                                                           DEFAULT_NPROBE)
            else:
                self.searchers[name] = ExactSearch(matrix, max_chunk_mb=options.max_chunk_mb)
            if views is not None:
                self.searchers[name] = ViewsSearch(self.searchers[name], views.shape[1])

    @property
    def sources(self) -> list[str]:
        """Every source this catalogue can answer with."""
        names = [entry["source"] for entry in self.index.manifest["embeddings"]]
        if self.options.use_tfidf and self.index.vectorizer is not None:
            names.append(TFIDF)
        if self.options.use_phash and self.index.image_phashes is not None:
            names += [PHASH, PHASH_TEXT] if self.options.use_tfidf else [PHASH]
        return names

    def undecided_sources(self) -> list[str]:
        """The embedding sources that no decision covers: models exported without a threshold
        (``train.py --epochs 0``, ``quality_image.py``) and not given one by a thresholds file or
        ``--threshold`` (at build or here); ``concat`` when a part lacks one. Without a rule
        they cannot say "match", only rank (:meth:`match` with ``rank_only``)."""
        manifest = self.index.manifest
        if self.options.thresholds_file or manifest["thresholds"].get("file"):
            return []
        given = {**manifest["thresholds"].get("overrides", {}),
                 **self.options.threshold_overrides}
        decided = {entry["source"] for entry in manifest["models"]
                   if entry.get("threshold") is not None or entry["source"] in given}
        missing = [entry["source"] for entry in manifest["models"]
                   if entry["source"] not in decided]
        concat = manifest.get("concat")
        if concat and CONCAT not in given and not set(concat) <= decided:
            missing.append(CONCAT)
        return missing

    def plan_for(self, names: list[str]) -> MatchPlan:
        """The decision queries with these sources get (what the app describes)."""
        return self._plan(dict.fromkeys(names), {})

    def match(self, postings: Postings, *, embeddings: dict | None = None,
              rank_only: bool = False, blend_queries: bool = True) -> QueryResult:
        """Neighbours, per-source matches and the combined matches of ``postings`` against the
        catalogue; ``embeddings`` (source → query embeddings) skips the models. With
        ``rank_only`` only the neighbours are found (``matches`` and ``thresholds`` are
        empty, ``plan`` None): a ranking for catalogues without a decision.
        ``blend_queries``: apply ``options.query_blend`` (off for catalogue rows themselves)."""
        neighbours, search, embeddings = self.neighbours(postings, embeddings=embeddings,
                                                         blend_queries=blend_queries)
        if rank_only:
            return QueryResult(neighbours, {}, {}, None, search)
        plan = self._plan(neighbours, embeddings)
        matches = decide(neighbours, plan, self.options,
                         catalog_backgrounds=self.catalog_backgrounds(plan),
                         pool_size=len(self.index))
        return QueryResult(neighbours, matches, plan.decision.thresholds_for(len(self.index)),
                           plan, search)

    def catalog_backgrounds(self, plan: MatchPlan) -> dict[str, np.ndarray]:
        """Each locally scaled (or shifted) member's background of every catalogue row, from
        the catalogue's own neighbours; computed once per source and kept."""
        decision = plan.decision
        needed = [name for name in decision.sources
                  if decision.rules[name].beta or (decision.method == "shift"
                                                   and name in decision.shift_background)]
        missing = [name for name in needed if name not in self._catalog_backgrounds]
        if missing:
            started = time.perf_counter()
            found, _, _ = self.neighbours(self._catalog_postings(), embeddings={
                name: matrix for name, matrix in self.index.embeddings.items()
                if name in missing})
            for name in missing:
                self._catalog_backgrounds[name] = background_scores(
                    found[name], self_matching=True, window=decision.window)
            logger.info("catalogue backgrounds of %s (local scaling) in %.1f s, once", missing,
                        time.perf_counter() - started)
        return {name: self._catalog_backgrounds[name] for name in needed}

    def _catalog_postings(self) -> Postings:
        index = self.index
        return Postings(posting_ids=list(index.posting_ids), titles=list(index.titles),
                        image_phashes=None if index.image_phashes is None
                        else list(index.image_phashes))

    def neighbours(self, postings: Postings, *, embeddings: dict | None = None,
                   blend_queries: bool = False):
        """``(neighbours, search mode, embeddings)`` of ``postings`` against the catalogue, per
        source (no decision). ``blend_queries``: blend the queries' embeddings with each other
        first, as ``options.query_blend`` says (:func:`blend_query_batch`)."""
        if postings.has_images and postings.image_phashes is None:
            fill_missing_phashes(postings)
        has_titles = any(title.strip() for title in postings.titles)
        neighbours, search = {}, {}
        if embeddings is None:
            embeddings = self._embed(postings)
        if blend_queries and self.options.query_blend:
            embeddings = {name: blend_query_batch(
                matrix, neighbours=self.options.query_blend,
                threshold=self.options.query_blend_threshold,
                max_chunk_mb=self.options.max_chunk_mb, name=name)
                for name, matrix in embeddings.items()}
        for name, query_embeddings in embeddings.items():
            started = time.perf_counter()
            searcher = self.searchers[name]
            neighbours[name] = searcher.search(query_embeddings, k=self.options.k)
            if name in self._image_sources() and postings.bad_images:
                # A query whose photo is unusable has a zero embedding: it matches by its
                # title and phash only (predict lists it as a bad image).
                neighbours[name] = neighbours[name].without_queries(postings.bad_images)
            search[name] = searcher.mode
            logger.info("%s: %s search of %d queries in %d rows took %.2f s", name,
                        searcher.mode, len(postings), searcher.num_rows,
                        time.perf_counter() - started)
        neighbours.update(self._model_free(postings, has_titles=has_titles))
        if not neighbours:
            raise UserError("nothing to match with: the queries have neither a title nor a photo "
                            "that this catalogue's sources can use")
        return neighbours, search, embeddings

    def match_rows(self, rows: list[int], *, rank_only: bool = False) -> QueryResult:
        """:meth:`match` for catalogue rows themselves (their stored titles, hashes and
        embeddings; no model call). Each row finds itself too: callers drop it."""
        index = self.index
        postings = Postings(
            posting_ids=[index.posting_ids[row] for row in rows],
            titles=[index.titles[row] for row in rows],
            image_phashes=None if index.image_phashes is None
            else [index.image_phashes[row] for row in rows],
        )
        return self.match(postings, embeddings={name: matrix[rows] for name, matrix
                                                in index.embeddings.items()}, rank_only=rank_only,
                          blend_queries=False)

    def _image_sources(self) -> set[str]:
        """The embedding sources that depend on the photo."""
        return image_based_sources({entry["source"]: ModelKind(model.kind)
                                    for entry, model in zip(self.index.models, self.models)})

    def _embed(self, postings: Postings) -> dict[str, np.ndarray]:
        """The queries' embeddings with each model whose input they have (and ``concat``)."""
        models = {entry["source"]: model for entry, model in zip(self.index.models, self.models)}
        return embed_sources(
            models, postings,
            use_concat=self.options.use_concat and bool(self.index.manifest.get("concat")),
            batch_size=self.options.batch_size, cache_dir=self.options.cache_dir,
            progress=self.options.progress, skip_missing_inputs=True, views=self.options.views)

    def _model_free(self, postings: Postings, *, has_titles: bool) -> dict[str, Neighbours]:
        index, options = self.index, self.options
        settings = ModelFreeSettings(**index.manifest["model_free_settings"])
        use_tfidf = options.use_tfidf and has_titles and index.vectorizer is not None
        query_hashes = postings.image_phashes
        use_phash = (options.use_phash and index.image_phashes is not None
                     and query_hashes is not None and any(query_hashes))
        sources = {}
        image = agreement = None
        if use_phash:
            image = phash_neighbours(query_hashes, k=settings.k, catalog_hashes=index.image_phashes,
                                     max_distance=settings.phash_max_distance,
                                     max_chunk_mb=options.max_chunk_mb)
        if use_tfidf:
            from sklearn.preprocessing import normalize  # scikit-learn costs a second to import

            titles = [clean_title(title) if settings.clean_titles else title
                      for title in postings.titles]
            vectors = normalize(index.vectorizer.transform(titles).astype(np.float32), norm="l2")
            text = sparse_top_k(vectors, index.tfidf_vectors, k=settings.k,
                                max_chunk_mb=options.max_chunk_mb)
            if image is not None:
                agreement = filter_by_cosine(image, vectors, settings.agreement_min_cosine,
                                             catalog_vectors=index.tfidf_vectors)
            graphs = blending_graphs(settings, text, image, agreement)
            if graphs:
                blended = blend_query_rows(vectors, index.tfidf_vectors, graphs)
                text = sparse_top_k(blended, index.tfidf_blended, k=settings.k,
                                    max_chunk_mb=options.max_chunk_mb)
            sources[TFIDF] = text
        if image is not None:
            sources[PHASH] = image
            if agreement is not None:
                sources[PHASH_TEXT] = agreement
        return sources

    def _plan(self, neighbours: dict, embeddings: dict) -> MatchPlan:
        """The decision for these sources (as predict.py resolves it), with the index's file and
        overrides under the user's."""
        manifest = self.index.manifest
        model_thresholds = {entry["source"]: float(entry["threshold"])
                            for entry in manifest["models"]
                            if entry.get("threshold") is not None and entry["source"] in neighbours}
        model_dirs = {entry["source"]: entry.get("path", entry["source"])
                      for entry in manifest["models"] if entry["source"] in neighbours}
        stored_file = manifest["thresholds"].get("file")
        options = dataclasses.replace(
            self.options,
            # This version's file, open since the load (a path would follow a later swap).
            thresholds_file=self.options.thresholds_file or (
                self.index.kept_path(stored_file) if stored_file else ""),
            threshold_overrides={**manifest["thresholds"].get("overrides", {}),
                                 **self.options.threshold_overrides},
        )
        planned = PlannedSources(names=list(neighbours), model_dirs=model_dirs,
                                 model_thresholds=model_thresholds)
        plan = resolve_plan(planned, options, allow_absent=True, use=USE_CATALOGUE)
        if stored_file and not self.options.thresholds_file:
            shown = f"file {self.index.directory / stored_file}"
            plan.origin = {name: shown if origin.startswith("file /proc/") else origin
                           for name, origin in plan.origin.items()}
        if plan.inb_iterations:
            raise UserError(
                f"the decision blends {', '.join(plan.inb_iterations)} with its neighbours "
                "(INB), which a catalogue cannot do per query: search the thresholds again with "
                "predict.py --search-thresholds (it also writes a decision for catalogue "
                "queries when the best one blends), or with --inb-iterations 0")
        return plan

    def check_plan(self, postings: Postings, *, precomputed: bool = False) -> MatchPlan:
        """The decision these queries will be matched with, from the sources they can have
        (which models their inputs allow, titles, photos), before anything is embedded: a
        missing threshold or a decision a catalogue cannot apply fails here, not after
        the embedding. ``precomputed``: the queries' embeddings come from an ``--embeddings``
        folder, so the image models answer without photos."""
        has_titles = any(title.strip() for title in postings.titles)
        has_images = postings.has_images or precomputed
        has_photos = has_images or any(postings.image_phashes or ())
        kinds = {entry["source"]: ModelKind(model.kind)
                 for entry, model in zip(self.index.models, self.models)}
        names = [name for name, kind in kinds.items()
                 if not (kind.uses_images and not has_images)
                 and not (kind.uses_titles and not has_titles)]
        if (self.options.use_concat and self.index.manifest.get("concat")
                and concat_parts({name: kinds[name] for name in names})):
            names.append(CONCAT)
        tfidf = self.options.use_tfidf and has_titles and self.index.vectorizer is not None
        names += [TFIDF] if tfidf else []
        if self.options.use_phash and self.index.image_phashes is not None and has_photos:
            names += [PHASH, PHASH_TEXT] if tfidf else [PHASH]
        return self._plan(dict.fromkeys(names), {})


def blend_query_batch(embeddings: np.ndarray, *, neighbours: int, threshold: float,
                      max_chunk_mb: float, name: str = "") -> np.ndarray:
    """Each query's embedding blended with those of its ``neighbours`` nearest other queries
    that score at least ``threshold`` (weighted by score, then normalised), the neighbourhood
    blending of self-matching applied to a batch of queries before the catalogue search.

    A batch of new listings often holds several photos of one product; their mean is a steadier
    picture of the product than any one photo (on the grocery shelf photos against the catalogue
    images, recall@1 rose by 0.04–0.06 with 20 neighbours). A query with no such neighbour, and a
    batch of one query (the app), is unchanged. Unusable photos (zero rows) blend with nothing.
    """
    count = len(embeddings)
    if count < 2:
        return embeddings
    started = time.perf_counter()
    found = top_k_neighbours(embeddings, k=min(neighbours + 1, count), max_chunk_mb=max_chunk_mb,
                             min_score=threshold)
    blended = blend_embeddings(embeddings, found, threshold)
    changed = int(np.sum(np.any(blended != embeddings, axis=1)))
    logger.info("%s: %d of %d queries blended with their nearest other queries (up to %d "
                "scoring >= %.2f) in %.1f s", name or "embeddings", changed, count, neighbours,
                threshold, time.perf_counter() - started)
    return blended


def decide(neighbours: dict[str, Neighbours], plan: MatchPlan, options: MatchOptions, *,
           catalog_backgrounds: dict | None = None,
           pool_size: int | None = None) -> dict[str, list[np.ndarray]]:
    """Per-source and combined match lists of query-vs-catalogue neighbours under the plan's
    decision (:func:`tf_shopee.matching.decision.apply_decision`, ``self_matching=False``).

    Args:
        neighbours: source → the queries' catalogue neighbours.
        plan: the decision to apply.
        options: ``max_matches``: catalogue rows per query at most.
        catalog_backgrounds: source → background of every catalogue row, for locally scaled
            members (:meth:`CatalogMatcher.catalog_backgrounds`).
        pool_size: catalogue rows (thresholds follow it).

    Returns:
        source → one int array of catalogue rows per query (best first) for every source in the
        union, plus ``combined``.
    """
    per_source, combined = apply_decision(
        neighbours, plan.decision, self_matching=False, catalog_backgrounds=catalog_backgrounds,
        pool_size=pool_size, max_matches=options.max_matches)
    return {**per_source, COMBINED: combined}


# --------------------------------------------------------------------------------------------
# Evaluation


def evaluate_queries(matches: dict[str, list[np.ndarray]], neighbours: dict[str, Neighbours],
                     query_labels: np.ndarray, catalog_labels: np.ndarray) -> dict:
    """Quality of query-vs-catalogue matches against the labels of both sides.

    * mean F1 per source and combined: per query ``2 |P ∩ T| / (|P| + |T|)`` where ``P`` are the
      catalogue rows matched and ``T`` the catalogue rows of the query's product (a query whose
      product is not in the catalogue scores 1 when nothing is matched, else 0);
    * top-1 accuracy: the first catalogue row of the combined list (what the submission lists
      first) is the query's product;
    * recall@1 per source: the nearest catalogue row of that source is the query's product.

    Top-1 and recall@1 count the queries whose product is in the catalogue.
    """
    query_labels = np.asarray(query_labels)
    catalog_labels = np.asarray(catalog_labels)
    labels, catalog_ids = np.unique(catalog_labels, return_inverse=True)
    group_sizes = np.bincount(catalog_ids, minlength=len(labels))
    position = np.searchsorted(labels, query_labels)
    position = np.clip(position, 0, max(len(labels) - 1, 0))
    present = (labels[position] == query_labels) if len(labels) else np.zeros(
        len(query_labels), bool)
    true_sizes = np.where(present, group_sizes[position] if len(labels) else 0, 0)

    def f1(lists) -> float:
        scores = np.empty(len(lists))
        for row, found in enumerate(lists):
            hits = int((catalog_labels[found] == query_labels[row]).sum()) if len(found) else 0
            denominator = len(found) + true_sizes[row]
            scores[row] = 1.0 if denominator == 0 else 2.0 * hits / denominator
        return float(scores.mean()) if len(scores) else 0.0

    counted = int(present.sum())

    def share(first: np.ndarray) -> float | None:
        if counted == 0:
            return None
        right = (first >= 0) & (catalog_labels[np.maximum(first, 0)] == query_labels)
        return float(right[present].mean())

    combined_first = np.asarray([found[0] if len(found) else -1
                                 for found in matches[COMBINED]], dtype=np.int64)
    return {
        "f1": {name: f1(lists) for name, lists in matches.items()},
        "top1_accuracy": share(combined_first),
        "recall_at_1": {name: share(found.indices[:, 0].astype(np.int64))
                        for name, found in neighbours.items()},
        "queries": int(len(query_labels)),
        "queries_with_product_in_catalogue": counted,
    }


# --------------------------------------------------------------------------------------------
# predict.py --catalog


def run_catalog_prediction(options: PredictOptions) -> dict:
    """``predict.py --catalog INDEX``: match the postings of ``options`` against the index, write
    ``posting_id,matches`` (catalogue ids) and, with ``--evaluate``, score them.

    Returns:
        The report (rows, sources, thresholds, search mode, and with labels f1 / top1_accuracy /
        recall_at_1).
    """
    started = time.perf_counter()
    index = load_index(options.catalog)
    _refuse_overwrite(options)
    models = resolve_models(index.manifest, options.models)
    postings = read_postings(**options.postings_arguments())
    if options.evaluate and (postings.label_groups is None or index.label_groups is None):
        raise UserError("--evaluate with --catalog needs label_group in the queries' CSV and in "
                        "the catalogue the index was built from")
    logger.info("%d queries against a catalogue of %d postings", len(postings), len(index))
    built_tta = index.tta
    if built_tta != (options.tta or ""):
        logger.warning("the catalogue's photos were embedded with --tta %s, these queries with "
                       "--tta %s: %s to embed them the same way (the app does by default)",
                       built_tta or "none", options.tta or "none",
                       f"pass --tta {built_tta}" if built_tta else "drop --tta")
    matcher = CatalogMatcher(index, models, options, search=options.search,
                             nprobe=options.nprobe or None)
    # A bad decision fails before the queries are embedded.
    matcher.check_plan(postings, precomputed=bool(options.embeddings))
    embeddings = None
    if options.embeddings:  # the queries' embeddings, made by python -m tf_shopee.beam embed
        embeddings = load_embeddings(
            options.embeddings, {entry["source"]: model.directory
                                 for entry, model in zip(index.models, models)}, postings,
            use_concat=options.use_concat and bool(index.manifest.get("concat")))
    result = matcher.match(postings, embeddings=embeddings)
    write_matches(options.out, postings.posting_ids, index.posting_ids,
                  result.matches[COMBINED])
    report = {
        "rows": len(postings),
        "catalog": str(options.catalog),
        "catalog_rows": len(index),
        "sources": list(result.neighbours),
        "search": result.search,
        "thresholds": result.thresholds,
        "threshold_origin": result.plan.origin,
        "decision": result.plan.decision.to_dict(),
        "min2": {"enabled": result.plan.decision.min2,
                 "source": result.plan.decision.min2_source,
                 "floor": result.plan.decision.min2_floor},
        "submission": str(options.out),
        "options": options.describe(),
        "catalog_views": index.manifest.get("views"),
    }
    if options.evaluate:
        report.update(evaluate_queries(result.matches, result.neighbours, postings.label_groups,
                                       index.label_groups))
    report["seconds"] = round(time.perf_counter() - started, 2)
    if options.report:
        write_json_atomic(options.report, report)
    return report


def _refuse_overwrite(options: PredictOptions) -> None:
    out = Path(options.out).resolve()
    for value in (options.csv, options.images, options.tfrecords, options.catalog,
                  options.thresholds_file, *options.models):
        if value and (Path(value).resolve() == out or Path(value).resolve() in out.parents):
            raise UserError(f"--out {options.out} would overwrite an input ({value})")


def format_catalog_table(report: dict) -> str:
    """Mean F1 and recall@1 per source (with its rule, thresholds in the source's units: bits
    for phash), and the combined top-1 accuracy, as plain text."""
    decision = Decision.from_dict(report["decision"], where="report")
    names = list(report["f1"])
    rules = {}
    for name in names:
        threshold = report["thresholds"].get(name)
        if name in decision.rules:
            rules[name] = decision.rules[name].describe(name, threshold)
        else:
            rules[name] = "-" if threshold is None else format_threshold(name, threshold)
    width = max(len("source"), *(len(name) for name in names))
    rule_width = max(len("rule"), *(len(rule) for rule in rules.values()))
    lines = [f"{'source':<{width}}  {'rule':<{rule_width}}  mean F1  recall@1",
             f"{'-' * width}  {'-' * rule_width}  -------  --------"]
    for name in names:
        recall = report["recall_at_1"].get(name)
        recall_text = f"{recall:8.4f}" if recall is not None else f"{'-':>8}"
        lines.append(f"{name:<{width}}  {rules[name]:<{rule_width}}  {report['f1'][name]:7.4f}"
                     f"  {recall_text}")
    top1 = report["top1_accuracy"]
    lines.append(f"top-1 accuracy (first listed match is the product): "
                 f"{'-' if top1 is None else f'{top1:.4f}'} over "
                 f"{report['queries_with_product_in_catalogue']} of {report['queries']} queries "
                 "whose product is in the catalogue")
    return "\n".join(lines)
