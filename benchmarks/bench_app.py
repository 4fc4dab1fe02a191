#!/usr/bin/env python
"""A bounded load test of the catalogue web app (tf_shopee.catalog.app), on 127.0.0.1 only.

    python -m benchmarks.bench_app --index INDEX --photos DIR [--requests 1000]
        [--concurrency 20] [--json benchmarks/results/bench_app.json]

``tests/catalog/test_app_load.py`` runs it in the suite (1,000 requests at concurrency 20 over a
synthetic catalogue with tiny image and text models) and writes ``bench_app.json``.

Protocol:

* The app runs as users start it, in its own process (``python -m tf_shopee.catalog.app
  --index INDEX --host 127.0.0.1 --port P``); requests go to 127.0.0.1 only, each on a new
  connection, from ``--concurrency`` client threads, ``--requests`` in all, in a fixed random
  order (``--seed``). The run stops by itself: after the count, or at ``--deadline`` seconds.
* The mix: 30 % ``POST /api/match`` with a catalogue photo (re-encoded at 80 % size, so not
  byte-identical) and its title; 10 % ``POST /search`` (the HTML page) with a title; 25 %
  browsing (``/browse?page=N``, ``/postings/ID``); 15 % thumbnails; 5 % ``/api/health`` and
  ``/api/postings/ID``; 15 % bad requests: a truncated JPEG, a text file as a photo, a PNG
  claiming 20,000 × 20,000 pixels, an empty form, a page number ``²``, and a body declaring
  60 MB (each must get its own 4xx).
* Counted: status per kind; a 5xx, a connection reset or a request without a status is an
  error; an unexpected status (e.g. 200 for a bad upload) is a wrong answer.
* Latency: wall time of each request from connect to the last byte, p50 and p95 per kind
  (searches, browsing, bad requests) and over all.
* Memory: the server's resident memory (``/proc/PID/status``) after the first 20 % of the
  requests (warm: models called, pages rendered) and at the end; "steady" means the end is
  within ``--memory-slack-mb`` of the warm level.
* The load average before and after is recorded: the machine is shared, so latencies compare
  only within one run.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import REPOSITORY, command_line

KINDS = ("search", "browse", "bad")


# --------------------------------------------------------------------------------------------
# The server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_app(index: str, *, port: int | None = None, timeout: float = 300
              ) -> tuple[subprocess.Popen, str]:
    """The app in its own process, ready (``/api/health`` answers); (process, base URL)."""
    port = port or free_port()
    # Its log goes to a file: a pipe nobody reads fills up and blocks the server's next log line.
    log = tempfile.NamedTemporaryFile(prefix="bench_app_", suffix=".log", delete=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "tf_shopee.catalog.app", "--index", str(index), "--host",
         "127.0.0.1", "--port", str(port)], cwd=REPOSITORY, stdout=log, stderr=log)
    process.log_path = log.name
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app stopped: {Path(log.name).read_text()[-2000:]}")
        try:
            if _get(url, "/api/health")[0] == 200:
                return process, url
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the app did not start in time")


def resident_mb(pid: int) -> float:
    """Resident memory of a process in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# --------------------------------------------------------------------------------------------
# Requests


def _multipart(fields: dict) -> tuple[bytes, str]:
    boundary = "----tfshopeeload"
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(f"--{boundary}\r\n".encode())
        if isinstance(value, bytes):
            body.write(f'Content-Disposition: form-data; name="{name}"; filename="p.jpg"\r\n'
                       "Content-Type: image/jpeg\r\n\r\n".encode() + value)
        else:
            body.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode())
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _get(url: str, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(*_host_port(url), timeout=120)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _post(url: str, path: str, fields: dict) -> tuple[int, bytes]:
    body, content_type = _multipart(fields)
    connection = http.client.HTTPConnection(*_host_port(url), timeout=120)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _declared_too_large(url: str) -> tuple[int, bytes]:
    """A body declaring 60 MB: the answer must come before the body (it is never sent)."""
    with socket.create_connection(_host_port(url), timeout=120) as connection:
        connection.sendall(b"POST /api/match HTTP/1.1\r\nHost: load\r\nContent-Type: multipart/"
                           b"form-data; boundary=b\r\nContent-Length: 60000000\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, answer


def png_bomb_header(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG claiming ``width`` × ``height`` pixels with a stub of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                             0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


def make_plan(postings: list[tuple[str, str, bytes]], count: int, seed: int) -> list[tuple]:
    """``count`` requests (kind, name, function, expected statuses), in a seeded order.

    Args:
        postings: (posting_id, title, photo bytes) of catalogue postings to query with.
    """
    rng = random.Random(seed)
    bad = [
        ("truncated JPEG", lambda url, photo: _post(url, "/api/match",
                                                    {"photo": photo[: len(photo) // 3]}), {400}),
        ("text as a photo", lambda url, photo: _post(url, "/search",
                                                     {"photo": b"just text"}), {400}),
        ("20000x20000 PNG", lambda url, photo: _post(url, "/api/match",
                                                     {"photo": png_bomb_header()}), {400}),
        ("empty form", lambda url, photo: _post(url, "/api/match", {}), {400}),
        ("page ²", lambda url, photo: _get(url, "/browse?page=%C2%B2"), {400}),
        ("declares 60 MB", lambda url, photo: _declared_too_large(url), {413}),
    ]
    plan = []
    for number in range(count):
        posting_id, title, photo = postings[rng.randrange(len(postings))]
        quoted = urllib.parse.quote(posting_id, safe="")
        draw = rng.random()
        if draw < 0.30:
            words = " ".join(title.split()[:4])
            plan.append(("search", "api match", lambda url, p=photo, t=words: _post(
                url, "/api/match", {"photo": p, "title": t}), {200}))
        elif draw < 0.40:
            plan.append(("search", "search page", lambda url, t=title: _post(
                url, "/search", {"title": t}), {200}))
        elif draw < 0.65:
            if rng.random() < 0.5:
                path = f"/browse?page={rng.randrange(3)}"
            else:
                path = f"/postings/{quoted}"
            plan.append(("browse", "page", lambda url, p=path: _get(url, p), {200}))
        elif draw < 0.80:
            plan.append(("browse", "thumbnail", lambda url, q=quoted: _get(
                url, f"/thumbs/{q}.jpg"), {200}))
        elif draw < 0.85:
            path = "/api/health" if rng.random() < 0.5 else f"/api/postings/{quoted}"
            plan.append(("browse", "api", lambda url, p=path: _get(url, p), {200}))
        else:
            name, function, expected = bad[number % len(bad)]
            plan.append(("bad", name, lambda url, f=function, p=photo: f(url, p), expected))
    return plan


def percentile(values: list[float], share: float) -> float | None:
    """The ``share`` percentile (nearest rank) of ``values``, in milliseconds, or None."""
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(share * len(ordered)))], 1)


def run_load(url: str, pid: int, plan: list[tuple], *, concurrency: int = 20,
             deadline: float = 600) -> dict:
    """Send ``plan`` with ``concurrency`` threads; statuses, errors, latencies and memory."""
    results: list[dict] = [None] * len(plan)
    memory = {"start_mb": round(resident_mb(pid), 1)}
    warm_at = len(plan) // 5
    done = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline

    def one(number: int) -> None:
        kind, name, function, expected = plan[number]
        if time.monotonic() > stop_at:
            results[number] = {"kind": kind, "name": name, "error": "deadline"}
            return
        started = time.perf_counter()
        try:
            status, _ = function(url)
            outcome = {"status": status}
        except (ConnectionError, http.client.HTTPException, OSError) as error:
            outcome = {"error": f"{type(error).__name__}: {error}"}
        outcome.update(kind=kind, name=name, seconds=time.perf_counter() - started,
                       expected=sorted(expected))
        results[number] = outcome
        with lock:
            done[0] += 1
            if done[0] == warm_at:
                memory["warm_mb"] = round(resident_mb(pid), 1)

    load_before = os.getloadavg()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(len(plan))))
    seconds = time.perf_counter() - started
    memory["end_mb"] = round(resident_mb(pid), 1)
    errors = [result for result in results if "error" in result
              or result["status"] >= 500]
    wrong = [result for result in results if "status" in result and result["status"] < 500
             and result["status"] not in result["expected"]]
    statuses: dict[str, dict] = {}
    for result in results:
        key = f"{result['kind']}: {result['name']}"
        value = str(result.get("status", result.get("error", "?").split(":")[0]))
        statuses.setdefault(key, {}).setdefault(value, 0)
        statuses[key][value] += 1
    latency = {}
    for kind in (*KINDS, "all"):
        times = [result["seconds"] for result in results if "seconds" in result
                 and (kind == "all" or result["kind"] == kind)]
        latency[kind] = {"requests": len(times), "p50_ms": percentile(times, 0.50),
                         "p95_ms": percentile(times, 0.95)}
    return {
        "requests": len(plan), "concurrency": concurrency, "seconds": round(seconds, 1),
        "requests_per_second": round(len(plan) / seconds, 1),
        "errors": len(errors), "error_examples": errors[:5],
        "wrong_status": len(wrong), "wrong_examples": wrong[:5],
        "statuses": statuses, "latency": latency, "server_memory": memory,
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
    }


def catalogue_postings(index: str, photos: str, limit: int = 200) -> list[tuple[str, str, bytes]]:
    """(posting_id, title, photo re-encoded at 80 % size) of up to ``limit`` catalogue rows."""
    import pandas as pd
    from PIL import Image

    frame = pd.read_csv(Path(index) / "postings.csv", dtype=str, keep_default_na=False)
    source = pd.read_csv(Path(photos).parent / "train.csv", dtype=str, keep_default_na=False) \
        if (Path(photos).parent / "train.csv").is_file() else None
    images = dict(zip(source["posting_id"], source["image"])) if source is not None else {}
    postings = []
    for posting_id, title in zip(frame["posting_id"][:limit], frame["title"][:limit]):
        name = images.get(posting_id)
        if not name:
            continue
        with Image.open(Path(photos) / name) as image:
            image = image.convert("RGB").resize((image.width * 4 // 5, image.height * 4 // 5))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
        postings.append((posting_id, title, buffer.getvalue()))
    if not postings:
        raise SystemExit(f"no photo of {index}'s postings found in {photos}")
    return postings


def main(argv=None) -> dict:
    """Command line: start the app on an index, load it, print and save the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="a catalogue index built with photos")
    parser.add_argument("--photos", required=True,
                        help="the folder of the catalogue's photos (train.csv beside it)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=600)
    parser.add_argument("--json", default="", help="write the results here")
    arguments = parser.parse_args(argv)
    postings = catalogue_postings(arguments.index, arguments.photos)
    process, url = start_app(arguments.index)
    try:
        report = run_load(url, process.pid, make_plan(postings, arguments.requests,
                                                      arguments.seed),
                          concurrency=arguments.concurrency, deadline=arguments.deadline)
    finally:
        process.terminate()
        process.wait(timeout=60)
        Path(process.log_path).unlink(missing_ok=True)
    report["command"] = command_line("bench_app", argv)
    print(json.dumps({key: report[key] for key in ("requests", "errors", "wrong_status",
                                                   "latency", "server_memory")}, indent=2))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
