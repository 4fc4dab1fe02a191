#!/usr/bin/env python
"""Approximate catalogue search (FAISS IVF, tf_shopee.catalog.search) against the exact matcher.

    python -m benchmarks.bench_ann --n 1000000 --dim 256 --json benchmarks/results/bench_ann_1m.json

Protocol:

* Data: ``--n`` catalogue embeddings and ``--queries`` new postings of catalogue products,
  L2-normalised, from a product-like hierarchy (``--data hierarchical``, the default):
  categories → sub-categories of about 300 postings → products (long-tailed group sizes, mean
  about 3, as in Shopee) → postings. Typical cosines: two postings of one product 0.6–0.8,
  sibling products of a sub-category 0.3–0.5, same category 0.1–0.3, unrelated 0.
  ``--data flat`` uses bench_matching.py's families-of-groups generator instead, which has no
  structure above a few sibling groups: its 51st neighbour is close to random in 256
  dimensions, a worst case for any index that prunes by clusters (reported as such).
* Exact: ``ExactSearch`` (the project's tiled TF matcher, ``top_k_neighbours`` with a
  catalogue), k = 51, on the first ``--exact-queries`` queries; its time is scaled linearly to
  all ``--queries`` (queries are independent rows of the same tiled product).
* Approximate: ``IvfSearch.build`` (k-means on a sample of 50 rows per cell, about 4 √N cells,
  then every row added), then ``search`` of all queries, k = 51, for each ``--nprobe``.
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

from benchmarks.common import command_line

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
    from bench_matching import product_embeddings

    embeddings, labels = product_embeddings(n + queries, dim, seed=seed)
    return embeddings[:n], embeddings[n:], labels[:n], labels[n:]


class PeakMemory:
    """Peak resident memory above the level at entry (bench_matching.py's sampler, every 5 ms)."""

    def __enter__(self):
        from bench_matching import RssSampler

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
    from tf_shopee.catalog.search import ExactSearch, IvfSearch, import_faiss

    faiss = import_faiss()  # OpenMP threads: one per core, waiting passively
    generate = hierarchical_embeddings if arguments.data == "hierarchical" else flat_embeddings
    started = time.perf_counter()
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

    load_before = load_average()
    with PeakMemory() as memory:
        started = time.perf_counter()
        search = IvfSearch.build(catalogue, seed=arguments.seed)
        build_seconds = time.perf_counter() - started
    index_mb = faiss.serialize_index(search.index).nbytes / 2**20
    result["ann"] = {
        "method": "faiss IndexIVFFlat, inner product",
        "cells": search.num_cells,
        "build_seconds": round(build_seconds, 2),
        "build_working_mb": memory.above_start_mb,
        "index_mb": round(index_mb, 1),
        "load_average_build": {"before": load_before, "after": load_average()},
        "by_nprobe": [],
    }
    print(f"ann: {search.num_cells} cells built in {build_seconds:.1f} s, index "
          f"{index_mb:.0f} MB", flush=True)
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
        result["ann"]["by_nprobe"].append({
            "nprobe": nprobe, "seconds": round(seconds, 3),
            "queries_per_second": round(arguments.queries / seconds, 1),
            "speedup_vs_exact": round(speedup, 1), "recall_at_51": round(recall, 4),
            "working_mb": memory.above_start_mb,
            "load_average": {"before": load_before, "after": load_average()},
        })
        print(f"  nprobe {nprobe}: {seconds:.2f} s for {arguments.queries} queries, "
              f"{speedup:.1f}x exact, recall@51 {recall:.4f}", flush=True)
        save(arguments.json, result)
    return result


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
    parser.add_argument("--data", choices=("hierarchical", "flat"), default="hierarchical")
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
