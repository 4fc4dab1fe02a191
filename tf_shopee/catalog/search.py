"""Nearest catalogue embeddings of new postings: exact or approximate, behind one interface.

Every search answers ``search(queries, k, min_score) → Neighbours`` (indices into the catalogue,
cosine scores, best first), so the thresholds, unions and min2 of :mod:`tf_shopee.catalog.query`
do not care which one ran.

``exact``
    :func:`tf_shopee.matching.top_k_neighbours` with a catalogue: every query is scored against
    every catalogue row in memory-bounded TensorFlow tiles. Cost grows with queries × catalogue;
    right up to a few hundred thousand catalogue rows (see ``benchmarks/bench_ann.py``).
``ann``
    a FAISS inverted-file index (``IndexIVFFlat``, inner product): the catalogue is split into
    ``nlist`` k-means cells and each query scans only the ``nprobe`` cells whose centroids are
    nearest. Scores of the candidates it finds are exact inner products, so thresholds mean the
    same as with the exact search; what can be lost is a neighbour in a cell that was not probed
    (recall@51 measured by ``benchmarks/bench_ann.py``).
``auto``
    ``exact`` below :data:`ANN_MIN_ROWS` catalogue rows, ``ann`` from there on.

The approximate index comes in two kinds (``catalog build --ann-index``):

``ivf_flat``
    ``IndexIVFFlat``: every vector stored whole (4 bytes a dimension), exact scores.
``ivf_pq``
    ``IndexIVFPQ``: the same cells, each vector stored as a product-quantisation code of ``d / 4``
    bytes (one byte per 4 dimensions: 96 bytes for a 384-d embedding instead of 1,536), about a
    fifteenth of ``ivf_flat``'s memory, for catalogues past one machine's memory. Its scores are
    approximations, so it asks the cells for :data:`DEFAULT_REFINE` × k candidates and rescores
    them exactly from the stored embeddings (``vectors``: the catalogue's ``.npy``, memory-mapped,
    read only at the candidates' rows); the returned scores are exact inner products again and
    thresholds mean what they mean with the exact search. ``benchmarks/bench_ann.py`` measures
    both kinds' memory, build time, QPS and recall@51 at 1M rows.

Why FAISS IVF and not ScaNN or HNSW. ScaNN cannot be imported in a process that has imported
TensorFlow 2.21 (its ops are built for 2.20), and this process always has. FAISS is a plain
C++ library with NumPy bindings, already pinned for the benchmarks. Of its indexes, IVF-Flat
builds fast (k-means on a sample, then one assignment pass: 46 s for 100,000 × 256 on these
2 shared cores, where an HNSW graph, M = 32, had not finished after six minutes), takes new rows
(``catalog add``) by assigning them to the existing cells, stores nothing but the vectors, their
ids and the centroids (memory ≈ the exact search's), and trades speed for recall with one
number, ``nprobe``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from tf_shopee.errors import UserError
from tf_shopee.matching.topk import top_k_neighbours
from tf_shopee.neighbours import Neighbours

logger = logging.getLogger("tf_shopee.catalog")

SEARCH_MODES = ("exact", "ann", "auto")
# --search auto switches to the approximate index from this many catalogue rows on. Below it the
# exact search answers a batch of queries in about the time IVF needs to be built.
ANN_MIN_ROWS = 200_000
# Probed cells per query. On the clustered vectors of benchmarks/bench_ann.py it keeps recall@51
# >= 0.99 at 1M rows; raise it (--nprobe) for higher recall, lower it for speed.
DEFAULT_NPROBE = 16
# k-means training: this many sampled rows per cell (FAISS warns below 39) and iterations. Ten
# iterations instead of FAISS's 25 build a 1M-row index in a third of the time; the cells only
# route queries (scores are exact), and recall@51 is measured with these settings.
_TRAINING_ROWS_PER_CELL = 40
_KMEANS_ITERATIONS = 10
ANN_INDEX_KINDS = ("ivf_flat", "ivf_pq")
# ivf_pq: candidates fetched per wanted neighbour before the exact rescoring.
DEFAULT_REFINE = 4
# ivf_pq: product-quantiser codebooks need 256 centroids x 39 points each to train well.
_PQ_MIN_TRAINING_ROWS = 256 * 40
# Rows handed to FAISS at once when adding (bounded temporaries at millions of rows).
_ADD_CHUNK_ROWS = 65_536
# ivf_pq rescoring: bytes of candidate rows gathered at once.
_RESCORE_BLOCK_BYTES = 64 * 2**20


def pq_subquantizers(dim: int) -> int:
    """Sub-quantisers (code bytes) of an ``ivf_pq`` index over ``dim``-d vectors: one per 4
    dimensions (the largest divisor of ``dim`` at most ``dim / 4``), at least 1."""
    target = max(1, dim // 4)
    return next(count for count in range(target, 0, -1) if dim % count == 0)


def ann_cells(num_rows: int) -> int:
    """Number of IVF cells for a catalogue of ``num_rows``: about 4 √N (the usual FAISS rule),
    at least 1 and never more than a sixteenth of the rows (cells need members to train)."""
    return int(max(1, min(round(4 * math.sqrt(num_rows)), num_rows // 16)))


def resolve_mode(mode: str, num_rows: int) -> str:
    """``exact`` or ``ann`` for ``mode`` (``auto`` decides by ``num_rows``)."""
    if mode not in SEARCH_MODES:
        raise UserError(f"--search must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
    if mode == "auto":
        return "ann" if num_rows >= ANN_MIN_ROWS else "exact"
    return mode


class ExactSearch:
    """Exact cosine top-k against a fixed catalogue (:func:`tf_shopee.matching.top_k_neighbours`).

    Args:
        catalog: (M, D) L2-normalised float32 catalogue embeddings.
        max_chunk_mb: working-memory budget of one similarity tile.
    """

    mode = "exact"

    def __init__(self, catalog: np.ndarray, *, max_chunk_mb: float = 256):
        self.catalog = np.ascontiguousarray(catalog, dtype=np.float32)
        self.max_chunk_mb = max_chunk_mb

    @property
    def num_rows(self) -> int:
        """Catalogue rows searched."""
        return self.catalog.shape[0]

    def search(self, queries: np.ndarray, *, k: int, min_score: float | None = None) -> Neighbours:
        """The ``k`` nearest catalogue rows of each query (padding ``-1`` / ``-inf``)."""
        return top_k_neighbours(
            queries, k=k, catalog=self.catalog, max_chunk_mb=self.max_chunk_mb,
            min_score=min_score,
        )


class IvfSearch:
    """Approximate cosine top-k with a FAISS ``IndexIVFFlat`` or ``IndexIVFPQ`` (inner product);
    see the module docstring. Build with :meth:`build` (or :meth:`train` then :meth:`add` batch
    by batch), persist with :meth:`save` / :meth:`load`.

    Args:
        index: a trained FAISS IVF index holding the catalogue rows in catalogue order.
        nprobe: cells scanned per query.
        vectors: the catalogue rows themselves (an array or a memory-mapped ``.npy``), for the
            exact rescoring of an ``ivf_pq`` index's candidates; without them its scores are the
            codes' approximations.
        refine: ``ivf_pq``: candidates fetched per wanted neighbour before rescoring.
    """

    mode = "ann"

    def __init__(self, index, *, nprobe: int = DEFAULT_NPROBE, vectors=None,
                 refine: int = DEFAULT_REFINE):
        self.index = index
        self.nprobe = int(nprobe)
        self.vectors = vectors
        self.refine = int(refine)

    @property
    def kind(self) -> str:
        """``ivf_pq`` for a product-quantised index, else ``ivf_flat``."""
        return "ivf_pq" if hasattr(self.index, "pq") else "ivf_flat"

    @property
    def num_rows(self) -> int:
        """Catalogue rows searched."""
        return int(self.index.ntotal)

    @property
    def num_cells(self) -> int:
        """Number of IVF cells (k-means centroids)."""
        return int(self.index.nlist)

    @classmethod
    def build(cls, catalog: np.ndarray, *, cells: int | None = None, seed: int = 0,
              nprobe: int = DEFAULT_NPROBE, kind: str = "ivf_flat") -> "IvfSearch":
        """Train the cells (and an ``ivf_pq`` index's codebooks) on a sample of ``catalog`` and
        add every row; an ``ivf_pq`` index rescores with ``catalog`` itself.

        Raises:
            UserError: when faiss-cpu is not installed, the catalogue is empty or the kind
                unknown.
        """
        num_rows = len(catalog)
        if num_rows == 0:
            raise UserError("an approximate index needs at least one catalogue row")
        cells = ann_cells(num_rows) if cells is None else int(cells)
        started = time.perf_counter()
        rows = np.arange(num_rows)
        sample_size = training_rows(num_rows, cells, kind)
        if sample_size < num_rows:
            rows = np.sort(np.random.default_rng(seed).choice(num_rows, sample_size,
                                                               replace=False))
        search = cls.train(np.asarray(catalog[rows], dtype=np.float32), cells=cells, seed=seed,
                           nprobe=nprobe, kind=kind)
        search.add(catalog)
        if search.kind == "ivf_pq":
            search.vectors = catalog
        logger.info("approximate index (%s): %d rows in %d cells built in %.1f s", kind,
                    num_rows, cells, time.perf_counter() - started)
        return search

    @classmethod
    def train(cls, sample: np.ndarray, *, cells: int, seed: int = 0,
              nprobe: int = DEFAULT_NPROBE, kind: str = "ivf_flat") -> "IvfSearch":
        """An empty index of ``kind`` whose cells (and codebooks) are trained on ``sample``;
        then :meth:`add` the catalogue batch by batch (shard by shard of a ``beam embed``
        output: the catalogue never has to be in memory at once).

        Args:
            sample: rows drawn from the catalogue (:func:`training_rows` of them).
            cells: IVF cells (:func:`ann_cells` of the catalogue's size).
            kind: ``ivf_flat`` or ``ivf_pq`` (see the module docstring).
        """
        if kind not in ANN_INDEX_KINDS:
            raise UserError(f"--ann-index must be one of {', '.join(ANN_INDEX_KINDS)}, got "
                            f"{kind!r}")
        faiss = import_faiss()
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        dim = sample.shape[1]
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf_pq":
            # 8-bit codes need 256 centroids per sub-quantiser, each trained on ~39 rows; a
            # small catalogue gets fewer bits (the exact rescoring makes up for coarse codes).
            bits = int(min(8, max(1, math.floor(math.log2(max(2, len(sample) // 39))))))
            index = faiss.IndexIVFPQ(quantizer, dim, int(cells), pq_subquantizers(dim), bits,
                                     faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFFlat(quantizer, dim, int(cells), faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.niter = _KMEANS_ITERATIONS
        index.train(sample)
        search = cls(index, nprobe=nprobe)
        search.quantizer = quantizer  # FAISS does not own it: keep it alive with the index
        return search

    def add(self, rows: np.ndarray) -> None:
        """Append catalogue rows (assigned to the existing cells; ids continue the numbering),
        a bounded chunk at a time."""
        for start in range(0, len(rows), _ADD_CHUNK_ROWS):
            self.index.add(np.ascontiguousarray(rows[start:start + _ADD_CHUNK_ROWS],
                                                dtype=np.float32))

    def search(self, queries: np.ndarray, *, k: int, min_score: float | None = None) -> Neighbours:
        """The (approximately) ``k`` nearest catalogue rows of each query, best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.index.d:
            raise UserError(f"queries have shape {queries.shape}; the index holds "
                            f"{self.index.d}-dimensional rows")
        self.index.nprobe = min(self.nprobe, self.num_cells)
        if self.kind == "ivf_pq" and self.vectors is not None:
            scores, indices = self._rescored(queries, k)
        else:
            scores, indices = self.index.search(queries, k)
        scores = scores.astype(np.float32)
        indices = indices.astype(np.int32)
        missing = indices < 0
        if min_score is not None:
            missing |= scores < min_score
        scores[missing] = -np.inf
        indices[missing] = -1
        # FAISS breaks ties arbitrarily; the exact search puts the lower catalogue row first.
        order = np.lexsort((np.where(missing, np.iinfo(np.int32).max, indices), -scores), axis=1)
        return Neighbours(np.take_along_axis(indices, order, axis=1),
                          np.take_along_axis(scores, order, axis=1))

    def _rescored(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``refine`` × k candidates from the codes, rescored exactly from ``vectors`` (only the
        candidates' rows are read), the best ``k`` kept; queries in blocks of bounded memory."""
        fetched = min(max(k, k * self.refine), self.num_rows)
        _, candidates = self.index.search(queries, fetched)
        dim = queries.shape[1]
        block = max(1, _RESCORE_BLOCK_BYTES // (fetched * dim * 4))
        all_scores = np.full((len(queries), k), -np.inf, np.float32)
        all_indices = np.full((len(queries), k), -1, np.int64)
        for start in range(0, len(queries), block):
            found = candidates[start:start + block]
            valid = found >= 0
            safe = np.where(valid, found, 0)
            # Each distinct candidate row read once, in file order (a memmap reads sequentially).
            unique, inverse = np.unique(safe, return_inverse=True)
            rows = np.asarray(self.vectors[unique], dtype=np.float32)
            scores = np.einsum("qd,qcd->qc", queries[start:start + block],
                               rows[inverse.reshape(safe.shape)])
            scores = np.where(valid, scores, -np.inf)
            best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            kept = min(k, best.shape[1])
            all_scores[start:start + len(found), :kept] = np.take_along_axis(scores, best, axis=1)
            all_indices[start:start + len(found), :kept] = np.where(
                np.take_along_axis(valid, best, axis=1), np.take_along_axis(found, best, axis=1),
                -1)
        return all_scores, all_indices

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` (the caller makes the folder atomic)."""
        import_faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | os.PathLike, *, nprobe: int = DEFAULT_NPROBE,
             vectors=None) -> "IvfSearch":
        """Read an index written by :meth:`save` (``vectors``: the catalogue rows an ``ivf_pq``
        index rescores with)."""
        faiss = import_faiss()
        if not Path(path).is_file():
            raise UserError(f"approximate index file not found: {path}")
        return cls(faiss.read_index(str(path)), nprobe=nprobe, vectors=vectors)


def training_rows(num_rows: int, cells: int, kind: str = "ivf_flat") -> int:
    """Rows of the sample an index trains on: 40 per cell, and for ``ivf_pq`` at least enough
    for its codebooks; never more than the catalogue."""
    wanted = cells * _TRAINING_ROWS_PER_CELL
    if kind == "ivf_pq":
        wanted = max(wanted, _PQ_MIN_TRAINING_ROWS)
    return min(num_rows, wanted)


def import_faiss():
    """``import faiss`` with a clear message when faiss-cpu is missing.

    FAISS runs on OpenMP threads, one per core this process may use. OpenMP's default is to
    spin while waiting for work, which makes FAISS several times slower when another job
    shares the cores (measured here at 100k rows under a load of 13: 2000 IVF queries 1.3-1.6 s
    spinning, 0.77 s passive); ``OMP_WAIT_POLICY=PASSIVE`` is set, unless the user set it,
    before FAISS loads its OpenMP runtime.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import faiss
    except ImportError:
        raise UserError(
            "approximate search needs faiss-cpu (pip install faiss-cpu==1.15.1, in "
            "requirements.txt); or use --search exact"
        ) from None
    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    return faiss


class ViewsSearch:
    """A catalogue whose items are several embeddings each (catalogue-side augmentation,
    ``catalog build --catalog-augment N``), searched as one item: an item's score for a query is
    the best of its views'.

    Args:
        searcher: an :class:`ExactSearch` or :class:`IvfSearch` over the (items × views, D) rows,
            item-major (item i's views are rows i*V .. i*V + V - 1).
        views: V.
    """

    def __init__(self, searcher, views: int):
        if views < 1 or searcher.num_rows % views:
            raise UserError(f"a catalogue of {searcher.num_rows} view rows cannot hold {views} "
                            "views per item")
        self.searcher = searcher
        self.views = int(views)
        self.mode = searcher.mode

    @property
    def num_rows(self) -> int:
        """Catalogue items searched."""
        return self.searcher.num_rows // self.views

    def search(self, queries: np.ndarray, *, k: int, min_score: float | None = None) -> Neighbours:
        """The ``k`` nearest items of each query by their best view (padding ``-1`` / ``-inf``)."""
        wide = self.searcher.search(queries, k=min(k * self.views, self.searcher.num_rows),
                                    min_score=min_score)
        count = len(wide.indices)
        indices = np.full((count, k), -1, np.int32)
        scores = np.full((count, k), -np.inf, np.float32)
        items = np.where(wide.indices >= 0, wide.indices // self.views, -1)
        for row in range(count):
            valid = items[row] >= 0
            # Rows are sorted best first, so an item's first occurrence is its best view.
            found, first = np.unique(items[row][valid], return_index=True)
            order = np.argsort(first)[:k]
            indices[row, :len(order)] = found[order]
            scores[row, :len(order)] = wide.scores[row][valid][first[order]]
        return Neighbours(indices, scores)
