#!/usr/bin/env python3
"""Speed of embedding matching (top-51 + threshold → match lists) and of TF-IDF title neighbours.

Protocol. The same L2-normalised float32 embeddings with product-like cluster structure (groups of
2..50 postings with a long tail, mean about 3 as in Shopee's train.csv; groups of a family share
part of their centre, so some pairs of different groups score high too; within-group cosines spread
around the threshold) are matched by:

* ``matcher``: the project's :func:`tf_shopee.matching.top_k_neighbours` (k=51, ``min_score`` =
  the threshold, i.e. the lowest threshold in use) + ``matches_from_neighbours``;
* ``matcher_exact``: the same without ``min_score`` (the full exact top-51, then the threshold);
* ``faiss``: faiss-cpu ``IndexFlatIP`` add + search k=51 (exact, BLAS + heaps), its OpenMP threads
  pinned to the CPU count (``faiss.omp_set_num_threads``) with ``OMP_WAIT_POLICY=PASSIVE``;
  ``faiss_1thread`` the same on one thread. FAISS's OpenMP threads wait for each other at every
  block: when another process keeps one of the two cores busy, the two-thread run slows down
  far more than the matcher does, so both variants are timed and the faster one is the
  reference of the ``× FAISS`` column;
* ``numpy_matmul``: NumPy chunked matmul alone, ``E[chunk] @ E.T`` for every chunk — the floor
  every exact method pays, with nothing selected;
* ``notebook``: the usual Kaggle-notebook pattern, chunked matmul + per-row ``np.where(row >= t)``.

Each method runs in its own subprocess (so peak RSS is its own; TensorFlow and FAISS thread pools
do not meet), after imports and a small warm-up (TensorFlow traces its functions once per process:
about 2 s, outside the timing). Time is the best of ``--repeat`` runs. Memory is the resident set
sampled every 5 ms by a psutil thread: ``peak_rss_mb`` overall and ``working_mb`` above the level
after the data was built (the embeddings themselves are not counted). CPU seconds (all threads)
are recorded too: on a shared machine they move less than wall-clock time. The matcher's match
lists are checked against the notebook's (same pairs, each row capped at its best 50, self first).

TF-IDF: :func:`tf_shopee.neighbours.tfidf.tfidf_neighbours` (k=51) against a plain scikit-learn
chunk loop (``TfidfVectorizer().fit_transform``, ``(X[chunk] @ X.T).toarray()``, ``argpartition``
+ sort, chunk rows sized to ``--max-chunk-mb``) on random-word product titles with the same group
structure. Both must find the same neighbours (same-group count and k-th score sum recorded).

    python -m benchmarks.bench_matching --n 34250 --dim 512 \\
        --json benchmarks/results/bench_matching.json --scaling 10000,20000,40000,80000

On a shared machine the numbers move with the load; the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPOSITORY, command_line

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "bench_matching.json"
EMBEDDING_METHODS = (
    "matcher", "matcher_exact", "faiss", "faiss_1thread", "numpy_matmul", "notebook"
)
TFIDF_METHODS = ("tfidf_project", "tfidf_sklearn_loop")
K = 51
MAX_MATCHES = 50
NUMPY_CHUNK_ROWS = 2048  # 2048 × 34,250 float32 = 280 MB per chunk, like the matcher's budget


# --- data ----------------------------------------------------------------------------------------


def group_sizes(rng: np.random.Generator, postings: int) -> np.ndarray:
    """Group sizes 2..50 with a long tail (Zipf), mean about 3, summing to ``postings``."""
    sizes = []
    total = 0
    while total < postings:
        size = int(min(MAX_MATCHES, 1 + rng.zipf(2.3)))
        size = min(size, postings - total) if postings - total >= 2 else size
        sizes.append(size)
        total += size
    sizes[-1] -= total - postings
    if sizes[-1] < 1:
        sizes.pop()
    return np.array(sizes)


def product_embeddings(postings: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(postings, dim) L2-normalised float32 embeddings and their group labels.

    Families of 1-5 groups share a centre direction (postings of sibling groups score about 0.45
    with each other, some above 0.6), each group has its own spread (within-group cosines from
    about 0.45 to 0.85), and rows are shuffled so groups are not contiguous.
    """
    rng = np.random.default_rng(seed)
    sizes = group_sizes(rng, postings)
    num_groups = len(sizes)
    family_of_group = np.repeat(np.arange(num_groups), rng.integers(1, 6, num_groups))[:num_groups]
    family_centres = rng.standard_normal((family_of_group.max() + 1, dim)).astype(np.float32)
    group_centres = family_centres[family_of_group] + 0.6 * rng.standard_normal(
        (num_groups, dim)
    ).astype(np.float32)
    group_centres /= np.linalg.norm(group_centres, axis=1, keepdims=True)
    labels = rng.permutation(np.repeat(np.arange(num_groups), sizes))
    spread = rng.uniform(0.45, 1.05, num_groups).astype(np.float32)
    noise = rng.standard_normal((postings, dim)).astype(np.float32) / np.sqrt(dim)
    embeddings = group_centres[labels] + spread[labels, None] * noise
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings.astype(np.float32), labels


def product_titles(labels: np.ndarray, seed: int = 0) -> list[str]:
    """Random-word titles: each group shares 3-6 core words, each title adds 2-8 words drawn from a
    Zipf-like vocabulary of 30,000 (so common words such as shop slogans appear everywhere)."""
    rng = np.random.default_rng(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwyz" for v in "aeiou"]
    words = sorted({"".join(rng.choice(syllables, rng.integers(2, 4))) for _ in range(40_000)})
    vocabulary = rng.permutation(np.array(words[:30_000]))
    weights = 1.0 / np.arange(1, len(vocabulary) + 1) ** 1.05
    weights /= weights.sum()
    core = {
        group: rng.choice(len(vocabulary), rng.integers(3, 7), replace=False)
        for group in np.unique(labels)
    }
    titles = []
    for label in labels:
        words = list(vocabulary[core[label]])
        keep = rng.random(len(words)) > 0.15  # sellers drop some of the product's words
        words = [word for word, kept in zip(words, keep) if kept] or words[:1]
        words += list(vocabulary[rng.choice(len(vocabulary), rng.integers(2, 9), p=weights)])
        rng.shuffle(words)
        titles.append(" ".join(words))
    return titles


# --- methods -------------------------------------------------------------------------------------


def run_matcher(embeddings, threshold, max_chunk_mb, exact: bool):
    from tf_shopee.matching.topk import matches_from_neighbours, top_k_neighbours

    neighbours = top_k_neighbours(
        embeddings, k=K, max_chunk_mb=max_chunk_mb, min_score=None if exact else threshold
    )
    return matches_from_neighbours(neighbours, threshold, max_matches=MAX_MATCHES)


def run_faiss(embeddings, threshold, max_chunk_mb):
    import faiss

    del threshold, max_chunk_mb  # FAISS only computes the scores
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    scores, indices = index.search(embeddings, K)
    return scores, indices


def run_numpy_matmul(embeddings, threshold, max_chunk_mb):
    checksum = 0.0
    for start in range(0, embeddings.shape[0], NUMPY_CHUNK_ROWS):
        block = embeddings[start : start + NUMPY_CHUNK_ROWS] @ embeddings.T
        checksum += float(block[0, 0])  # keep the product observable
    return checksum


def run_notebook(embeddings, threshold, max_chunk_mb):
    matches = []
    for start in range(0, embeddings.shape[0], NUMPY_CHUNK_ROWS):
        block = embeddings[start : start + NUMPY_CHUNK_ROWS] @ embeddings.T
        for row in range(block.shape[0]):
            matches.append(np.where(block[row] >= threshold)[0])
    return matches


def run_tfidf_project(titles, max_chunk_mb):
    from tf_shopee.neighbours.tfidf import tfidf_neighbours

    return tfidf_neighbours(titles, k=K, max_chunk_mb=max_chunk_mb)


def run_tfidf_sklearn_loop(titles, max_chunk_mb):
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectors = TfidfVectorizer().fit_transform(titles).astype(np.float32)
    transposed = vectors.T.tocsr()
    # The dense block (4 bytes per pair), its negation and argpartition's int64 indices: 16 bytes
    # per pair, kept within the same budget as the project's search.
    chunk = max(64, int(max_chunk_mb * 2**20 / (16 * len(titles))))
    all_indices, all_scores = [], []
    for start in range(0, vectors.shape[0], chunk):
        block = (vectors[start : start + chunk] @ transposed).toarray()
        top = np.argpartition(-block, K - 1, axis=1)[:, :K]
        top_scores = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        all_indices.append(np.take_along_axis(top, order, axis=1))
        all_scores.append(np.take_along_axis(top_scores, order, axis=1))
    return np.concatenate(all_scores), np.concatenate(all_indices)


# --- worker: one method in its own process -------------------------------------------------------


class RssSampler:
    """Peak resident set size of this process, sampled in a thread (TF allocates outside Python,
    so tracemalloc would not see it)."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def capped_pairs(matches, embeddings) -> np.ndarray:
    """(row, match) pairs with each row limited to self + its 49 best others, as a sorted array."""
    rows = []
    for row, found in enumerate(matches):
        found = np.asarray(found, dtype=np.int64)
        others = found[found != row]
        if len(others) > MAX_MATCHES - 1:
            scores = embeddings[others] @ embeddings[row]
            order = np.lexsort((others, -scores))
            others = others[order[: MAX_MATCHES - 1]]
        rows.append(np.stack([np.full(len(others) + 1, row), np.append(row, others)], axis=1))
    pairs = np.concatenate(rows)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def worker(args) -> dict:
    import psutil

    process = psutil.Process()
    if args.worker in TFIDF_METHODS:
        _, labels = product_embeddings(args.n, 8, seed=args.seed)
        data = product_titles(labels, seed=args.seed)
    else:
        data, labels = product_embeddings(args.n, args.dim, seed=args.seed)
    # Imports and warm-up (TF traces its tile functions once per process) stay outside the clock.
    if args.worker.startswith("matcher"):
        run_matcher(data[: min(len(data), 3000)], args.threshold, args.max_chunk_mb, False)
        run_matcher(data[: min(len(data), 3000)], args.threshold, args.max_chunk_mb, True)
    elif args.worker.startswith("faiss"):
        import faiss

        faiss.omp_set_num_threads(1 if args.worker == "faiss_1thread" else os.cpu_count() or 1)
    elif args.worker == "tfidf_project":
        run_tfidf_project(data[:500], args.max_chunk_mb)
    elif args.worker == "tfidf_sklearn_loop":
        run_tfidf_sklearn_loop(data[:500], args.max_chunk_mb)
    function = {
        "matcher": lambda: run_matcher(data, args.threshold, args.max_chunk_mb, False),
        "matcher_exact": lambda: run_matcher(data, args.threshold, args.max_chunk_mb, True),
        "faiss": lambda: run_faiss(data, args.threshold, args.max_chunk_mb),
        "faiss_1thread": lambda: run_faiss(data, args.threshold, args.max_chunk_mb),
        "numpy_matmul": lambda: run_numpy_matmul(data, args.threshold, args.max_chunk_mb),
        "notebook": lambda: run_notebook(data, args.threshold, args.max_chunk_mb),
        "tfidf_project": lambda: run_tfidf_project(data, args.max_chunk_mb),
        "tfidf_sklearn_loop": lambda: run_tfidf_sklearn_loop(data, args.max_chunk_mb),
    }[args.worker]
    baseline = process.memory_info().rss
    seconds, cpu_seconds = [], []
    with RssSampler() as sampler:
        for _ in range(args.repeat):
            start, cpu_start = time.perf_counter(), time.process_time()
            output = function()
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu_start)
    report = {
        "method": args.worker,
        "n": args.n,
        "seconds": min(seconds),
        "runs": [round(value, 3) for value in seconds],
        "cpu_seconds": round(min(cpu_seconds), 3),  # all threads of the process
        "peak_rss_mb": round(sampler.peak / 2**20, 1),
        "working_mb": round((sampler.peak - baseline) / 2**20, 1),
    }
    if args.worker in ("matcher", "matcher_exact", "notebook"):
        pairs = capped_pairs(output, data)
        report["pairs"] = int(len(pairs) - args.n)  # matches other than self
        report["pairs_sha256"] = hashlib.sha256(pairs.astype(np.int64).tobytes()).hexdigest()
    if args.worker.startswith("faiss"):
        import faiss

        scores, _ = output
        report["pairs"] = int((scores[:, 1:] >= args.threshold).sum())
        report["threads"] = faiss.omp_get_max_threads()
    if args.worker in TFIDF_METHODS:
        if args.worker == "tfidf_project":
            scores, indices = output.scores, output.indices
        else:
            scores, indices = output
        same_group = (labels[indices] == labels[:, None]) & (indices >= 0) & (scores > 0)
        report["same_group_neighbours"] = int(same_group.sum())
        kth = np.where(np.isfinite(scores[:, -1]), scores[:, -1], 0.0)
        report["kth_score_sum"] = round(float(kth.sum()), 3)
    return report


def spawn(method: str, n: int, args, repeat: int | None = None) -> dict:
    command = [
        sys.executable, "-m", "benchmarks.bench_matching", "--worker", method,
        "--n", str(n), "--dim", str(args.dim),
        "--threshold", str(args.threshold), "--max-chunk-mb", str(args.max_chunk_mb),
        "--repeat", str(repeat or args.repeat), "--seed", str(args.seed),
    ]  # fmt: skip
    # PASSIVE: waiting OpenMP threads sleep instead of spinning on a core another job needs.
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", OMP_WAIT_POLICY="PASSIVE")
    load_before = os.getloadavg()[0]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment,
                               cwd=REPOSITORY)
    if completed.returncode != 0:
        raise SystemExit(f"{method} at n={n} failed:\n{completed.stderr[-3000:]}")
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    report["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(
        f"  {method:20s} n={n:6d} {report['seconds']:8.2f} s  "
        f"working {report['working_mb']:7.1f} MB  (load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    return report


def versions() -> dict:
    import faiss
    import sklearn

    from tf_shopee import __version__

    found = {"tf_shopee": __version__, "numpy": np.__version__, "faiss": faiss.__version__}
    found["sklearn"] = sklearn.__version__
    found["python"] = platform.python_version()
    found["tensorflow"] = subprocess.run(
        [sys.executable, "-c", "import tensorflow as t; print(t.__version__)"],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    ).stdout.strip()  # fmt: skip
    return found


def fastest_faiss_seconds(methods: dict) -> float | None:
    """The reference of the × FAISS column: the faster of FAISS's thread settings."""
    timed = [report["seconds"] for name, report in methods.items() if name.startswith("faiss")]
    return min(timed) if timed else None


def markdown_table(result: dict) -> str:
    lines = [
        f"N = {result['n']:,}, D = {result['dim']}, k = {K}, threshold {result['threshold']}, "
        f"max_chunk_mb {result['max_chunk_mb']}, {os.cpu_count()} CPUs, "
        f"load average {result['load_average_before']} → {result['load_average_after']}",
        "",
        "| method | seconds | × FAISS | × NumPy matmul | CPU seconds | working memory (MB) "
        "| pairs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    faiss_seconds = fastest_faiss_seconds(result["methods"])
    matmul_seconds = result["methods"].get("numpy_matmul", {}).get("seconds")
    for name, report in result["methods"].items():
        vs_faiss = f"{report['seconds'] / faiss_seconds:.2f}" if faiss_seconds else ""
        vs_matmul = f"{report['seconds'] / matmul_seconds:.2f}" if matmul_seconds else ""
        lines.append(
            f"| {name} | {report['seconds']:.2f} | {vs_faiss} | {vs_matmul} | "
            f"{report['cpu_seconds']:.1f} | {report['working_mb']:.0f} | "
            f"{report.get('pairs', '')} |"
        )
    if result.get("scaling"):
        lines += ["", "| N | " + " | ".join(result["scaling_methods"]) + " |"]
        lines.append("|---:|" + "---:|" * len(result["scaling_methods"]))
        for row in result["scaling"]:
            cells = [
                f"{row[name]:.2f} ({row[name + '_cpu_seconds']:.1f} CPU)" if name in row else ""
                for name in result["scaling_methods"]
            ]
            lines.append(f"| {row['n']:,} | " + " | ".join(cells) + " |")
    if result.get("tfidf"):
        lines += [
            "",
            "| TF-IDF method (N titles) | seconds | working memory (MB) |",
            "|---|---:|---:|",
        ]
        for name, report in result["tfidf"].items():
            lines.append(
                f"| {name} ({report['n']:,}) | {report['seconds']:.2f} | "
                f"{report['working_mb']:.0f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=34_250, help="postings (default: Shopee train)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="where to write the results")
    parser.add_argument("--scaling", default="", help="comma-separated N for the scaling table")
    parser.add_argument(
        "--scaling-methods", default="matcher,faiss,numpy_matmul",
        help="methods timed at each scaling N",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; the best counts")
    parser.add_argument("--scaling-repeat", type=int, default=1, help="runs per scaling point")
    parser.add_argument("--threshold", type=float, default=0.6)
    parser.add_argument("--max-chunk-mb", type=float, default=256)
    parser.add_argument("--methods", default=",".join(EMBEDDING_METHODS))
    parser.add_argument("--tfidf-n", type=int, default=None, help="titles (default: --n; 0 skips)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--worker", choices=EMBEDDING_METHODS + TFIDF_METHODS, help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.n < 2 or args.dim < 1:
        parser.error("--repeat must be >= 1, --n >= 2 and --dim >= 1")
    if args.worker:
        print(json.dumps(worker(args)))
        return

    embeddings, labels = product_embeddings(args.n, args.dim, seed=args.seed)
    within = sum(
        int(((embeddings[labels == g] @ embeddings[labels == g].T) >= args.threshold).sum())
        - int((labels == g).sum())
        for g in np.unique(labels)[:2000]
    )
    result = {
        "command": command_line("bench_matching", argv),
        "n": args.n,
        "dim": args.dim,
        "k": K,
        "threshold": args.threshold,
        "max_chunk_mb": args.max_chunk_mb,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "versions": versions(),
        "data": {
            "groups": int(len(np.unique(labels))),
            "mean_group_size": round(args.n / len(np.unique(labels)), 2),
            "largest_group": int(np.bincount(labels).max()),
            "within_group_pairs_above_threshold_first_2000_groups": within,
        },
        "load_average_before": [round(value, 2) for value in os.getloadavg()],
        "methods": {},
    }
    print(f"matching N={args.n} D={args.dim} (load {os.getloadavg()[0]:.1f})", flush=True)
    result["complete"] = False
    for method in args.methods.split(","):
        result["methods"][method] = spawn(method, args.n, args)
        save(args.json, result)
    methods = result["methods"]
    faiss_seconds = fastest_faiss_seconds(methods)
    for name in ("matcher", "matcher_exact"):
        if name in methods and faiss_seconds:
            methods[name]["ratio_vs_faiss"] = round(methods[name]["seconds"] / faiss_seconds, 3)
            methods[name]["cpu_ratio_vs_faiss"] = round(
                methods[name]["cpu_seconds"]
                / min(report["cpu_seconds"] for key, report in methods.items()
                      if key.startswith("faiss")), 3
            )
        if name in methods and "numpy_matmul" in methods:
            methods[name]["ratio_vs_matmul"] = round(
                methods[name]["seconds"] / methods["numpy_matmul"]["seconds"], 3
            )
    if "matcher" in methods:
        result["ratio_vs_faiss"] = methods["matcher"].get("ratio_vs_faiss")
        result["ratio_vs_matmul"] = methods["matcher"].get("ratio_vs_matmul")
    if "notebook" in methods:
        for name in ("matcher", "matcher_exact"):
            if name in methods:
                methods[name]["same_pairs_as_notebook"] = (
                    methods[name]["pairs_sha256"] == methods["notebook"]["pairs_sha256"]
                )

    result["scaling"] = []
    result["scaling_methods"] = args.scaling_methods.split(",") if args.scaling else []
    for n in [int(value) for value in args.scaling.split(",") if value]:
        print(f"scaling N={n}", flush=True)
        row = {"n": n}
        result["scaling"].append(row)
        for method in result["scaling_methods"]:
            report = spawn(method, n, args, repeat=args.scaling_repeat)
            row[method] = report["seconds"]
            row[f"{method}_cpu_seconds"] = report["cpu_seconds"]
            row[f"{method}_working_mb"] = report["working_mb"]
            save(args.json, result)

    tfidf_n = args.n if args.tfidf_n is None else args.tfidf_n
    result["tfidf"] = {}
    if tfidf_n:
        print(f"TF-IDF N={tfidf_n}", flush=True)
        for method in TFIDF_METHODS:
            result["tfidf"][method] = spawn(method, tfidf_n, args)
            save(args.json, result)
    result["complete"] = True
    save(args.json, result)
    print()
    print(result["markdown"])


def save(path: str, result: dict) -> None:
    """Write the results so far (a long run that is interrupted keeps what it measured)."""
    from tf_shopee.io_utils import relative_paths, write_json_atomic

    result["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    result["markdown"] = markdown_table(result)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, relative_paths(result, Path(__file__).resolve().parents[1]))


if __name__ == "__main__":
    main()
