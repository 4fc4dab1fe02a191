"""A bounded load test of the catalogue app on 127.0.0.1: about 1,000 requests at concurrency 20
mixing searches, browsing and bad uploads (benchmarks/bench_app.py, whose docstring is the
protocol). No 5xx, no reset, every bad request its own 4xx, steady memory; the latencies go to
benchmarks/results/bench_app.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from catalog_helpers import REPOSITORY

REQUESTS = 1000
CONCURRENCY = 20
# Resident memory may grow this much from the warm level to the end (allocator noise, caches
# of a few pages); a leak per request (an upload, a decoded photo) would pass it at once.
MEMORY_SLACK_MB = 150


@pytest.mark.slow
def test_the_app_under_load(catalogue_set, tiny_models, tmp_path):
    from benchmarks import bench_app
    from tf_shopee.catalog.index import BuildOptions, build_index
    from tf_shopee.io_utils import relative_paths, write_json_atomic

    index = tmp_path / "index"
    photos = catalogue_set / "data" / "train_images"
    build_index(BuildOptions(csv=str(catalogue_set / "all.csv"), images=str(photos),
                             models=[str(tiny_models["image"]), str(tiny_models["text"])],
                             out=str(index), progress=False))
    postings = bench_app.catalogue_postings(str(index), str(photos))
    process, url = bench_app.start_app(str(index))
    try:
        report = bench_app.run_load(url, process.pid,
                                    bench_app.make_plan(postings, REQUESTS, seed=0),
                                    concurrency=CONCURRENCY, deadline=900)
    finally:
        process.terminate()
        process.wait(timeout=60)
        Path(process.log_path).unlink(missing_ok=True)
    shown = json.dumps({key: report[key] for key in ("errors", "error_examples", "wrong_status",
                                                     "wrong_examples", "server_memory")})
    assert report["errors"] == 0, shown
    assert report["wrong_status"] == 0, shown
    bad = {key: value for key, value in report["statuses"].items() if key.startswith("bad")}
    assert len(bad) == 6 and all(set(counts) <= {"400", "413"} for counts in bad.values())
    memory = report["server_memory"]
    assert memory["end_mb"] - memory["warm_mb"] < MEMORY_SLACK_MB, shown
    report["command"] = ("pytest tests/catalog/test_app_load.py (100-posting synthetic catalogue, "
                         "tiny untrained image and text models, 64 px photos)")
    report["catalogue"] = {"postings": 100, "models": ["image", "text"]}
    write_json_atomic(REPOSITORY / "benchmarks" / "results" / "bench_app.json",
                      relative_paths(report, REPOSITORY))
