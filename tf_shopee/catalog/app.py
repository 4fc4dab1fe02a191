"""The catalogue web app: upload a photo and/or type a title, see the best catalogue matches
with their photos, scores and the sources that matched; browse any posting's matches; the same
as a JSON API.

    python -m tf_shopee.catalog.app --index INDEX [--model DIR ...] [--host 127.0.0.1] [--port 8000]
    make app                       # the demo's catalogue (make demo runs first when needed)
    make app INDEX=path/to/index   # any index

Served by uvicorn, written with FastAPI (Starlette underneath): the framework parses HTTP and
multipart bodies, which the first version did by hand on ``http.server`` and got wrong under
attack (negative Content-Length, unknown charsets, bodies that never end). What is added here:

* :class:`BodyLimit`, around the whole app: a request declaring more than
  :data:`MAX_UPLOAD_BYTES` is refused before its body is read; a chunked or lying one is cut off
  when it passes the limit; a body that stops arriving for :data:`BODY_TIMEOUT` seconds gets 408;
* :class:`TimedH11Protocol`: a connection that does not finish its request headers within
  :data:`HEADER_TIMEOUT` seconds is closed (uvicorn's keep-alive timeout only covers idle
  connections between requests);
* uploads decoded once, with a pixel limit before any full decode, at most
  :data:`DECODE_SLOTS` at a time (:mod:`tf_shopee.catalog.photos`); every bad upload is a 4xx
  with a sentence, never an empty reply;
* no lock around a request: the body is read by the event loop, the decoding runs in the thread
  pool, and only the model call itself is serialised (:class:`tf_shopee.catalog.live.
  LiveCatalog`), which also reloads the index when a build or add replaces it.

Pages: ``/`` (search form and what the sources mean), ``POST /search``, ``/browse?page=N``,
``/postings/ID``, ``/thumbs/ID.jpg``. API (OpenAPI schema at ``/docs``, served offline):
``POST /api/match``, ``GET /api/postings/{posting_id}``, ``GET /api/health``.
"""

import argparse
import asyncio
import errno
import logging
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from fastapi import File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from tf_shopee.catalog import pages
from tf_shopee.catalog.api_models import (
    HealthResponse,
    MatchResponse,
    PostingResponse,
    decision_info,
    match_items,
)
from tf_shopee.catalog.index import MANIFEST, BuildOptions, build_index, read_manifest
from tf_shopee.catalog.live import DEFAULT_TOP, LiveCatalog, source_meaning
from tf_shopee.catalog.photos import MAX_PIXELS, prepare_query_photo
from tf_shopee.errors import UserError, exit_on_user_error
from tf_shopee.export import METADATA_FILE
from tf_shopee.matching.options import parse_threshold_overrides
from tf_shopee.models.kind import ModelKind

logger = logging.getLogger("tf_shopee.catalog.app")

MAX_UPLOAD_BYTES = 20 * 2**20
MAX_TITLE_CHARACTERS = 1000
MAX_TOP = 100
HEADER_TIMEOUT = 20.0
BODY_TIMEOUT = 30.0
DECODE_SLOTS = 2
_DECODING = threading.BoundedSemaphore(DECODE_SLOTS)
_PLACEHOLDER = (b"<svg xmlns='http://www.w3.org/2000/svg' width='174' height='174'>"
                b"<rect width='100%' height='100%' fill='#ddd'/><text x='50%' y='50%' "
                b"text-anchor='middle' fill='#777' font-family='sans-serif'>no photo</text></svg>")


# --------------------------------------------------------------------------------------------
# Limits around the framework


class BodyLimit:
    """ASGI middleware: request bodies of at most ``max_bytes``, arriving without a pause of
    ``timeout`` seconds (module docstring). Over the limit: 413; too slow: 408; both raised as
    Starlette ``HTTPException`` from ``receive``, so a form being parsed stops there."""

    def __init__(self, app, *, max_bytes: int | None = None, timeout: float | None = None):
        self.app = app
        self.max_bytes = MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
        self.timeout = BODY_TIMEOUT if timeout is None else timeout

    def _too_large(self) -> str:
        return f"the upload is larger than {self.max_bytes / 2**20:.0f} MB"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            # h11 has already refused a Content-Length that is not a number.
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                response_class = (JSONResponse if scope["path"].startswith("/api/")
                                  else PlainTextResponse)
                body = ({"detail": self._too_large()} if response_class is JSONResponse
                        else self._too_large())
                response = response_class(body, status_code=413, headers={"Connection": "close"})
                return await response(scope, receive, send)
        received = 0
        finished = False

        async def limited_receive():
            nonlocal received, finished
            if finished:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"the request body stopped arriving for "
                                         f"{self.timeout:.0f} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._too_large())
                finished = not message.get("more_body", False)
            else:
                finished = True
            return message

        return await self.app(scope, limited_receive, send)


def _timed_protocol_class():
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        """uvicorn's HTTP/1.1 protocol with a deadline for request headers: a connection that
        has not sent a whole request head within :data:`HEADER_TIMEOUT` seconds of connecting
        (or of starting its next request) is closed."""

        header_timeout = HEADER_TIMEOUT
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def _arm(self):
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

        def _disarm(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def data_received(self, data):
            if self._waiting_for_headers():
                self._arm()
            super().data_received(data)
            if not self._waiting_for_headers():
                self._disarm()

        def _expired(self):
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                logger.info("closing a connection that sent no whole request in %.0f s",
                            self.header_timeout)
                self.transport.close()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

    return TimedH11Protocol


# --------------------------------------------------------------------------------------------
# The application


def _decode_upload(data: bytes):
    with _DECODING:  # bounds the memory of concurrent decodes (each up to MAX_PIXELS × 3 bytes)
        return prepare_query_photo(data)


def _checked_title(title) -> str:
    title = (title if isinstance(title, str) else "").strip()
    if len(title) > MAX_TITLE_CHARACTERS:
        raise UserError(f"the title has {len(title):,} characters; at most "
                        f"{MAX_TITLE_CHARACTERS:,} are read")
    return title


def _whole_number(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 9):
        raise UserError(f"{what} must be a whole number (0, 1, 2, ...), got {text[:20]!r}")
    return int(text)


def create_app(live: LiveCatalog):
    """The FastAPI application over ``live`` (serve :func:`asgi_app` of it, which adds the body
    limits)."""
    app = FastAPIOffline(
        title="tf_shopee catalogue",
        description=(
            "Match a photo and/or a title against a catalogue index built by "
            "`python -m tf_shopee.catalog build`. Scores are in each source's units: a cosine "
            "similarity, or for `phash` and `phash_text` a Hamming distance in bits of 64. "
            "Sources: " + "; ".join(f"`{name}`: {source_meaning(name)}"
                                    for name in live.state.matcher.sources) + "."),
        version="1",
    )
    app.state.live = live

    def error_page(state, error: str, status: int, title: str = ""):
        return HTMLResponse(pages.home(state, error=error, title=title), status_code=status)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home():
        return HTMLResponse(pages.home(live.current()))

    @app.post("/search", response_class=HTMLResponse, include_in_schema=False)
    async def search_page(request: Request):
        state = live.current()
        title = ""
        try:
            async with request.form(max_files=2, max_fields=8, max_part_size=64 * 1024) as form:
                title = _checked_title(form.get("title"))
                upload = form.get("photo")
                data = await upload.read() if hasattr(upload, "read") else b""
            photo = await run_in_threadpool(_decode_upload, data) if data else None
            state, ranking = await run_in_threadpool(live.search, photo, title)
            return HTMLResponse(pages.results(state, ranking, title=title,
                                              shown_photo=photo.shown if photo else None))
        except UserError as error:
            return error_page(state, str(error), 400, title)
        except HTTPException as error:
            return error_page(state, str(error.detail), error.status_code, title)

    @app.get("/browse", response_class=HTMLResponse, include_in_schema=False)
    def browse(request: Request):
        state = live.current()
        try:
            number = _whole_number(request.query_params.get("page", "0"), "page")
        except UserError as error:
            return HTMLResponse(pages.not_found(state, str(error)), status_code=400)
        return HTMLResponse(pages.browse(state, number))

    @app.get("/postings/{posting_id:path}", response_class=HTMLResponse, include_in_schema=False)
    def posting_page(posting_id: str):
        state = live.current()
        row = state.index.row_of(posting_id)
        if row is None:
            return HTMLResponse(pages.not_found(
                state, f"no posting {posting_id[:100]!r} in this catalogue"), status_code=404)
        return HTMLResponse(pages.posting(state, row, live.posting_matches(state, row)))

    @app.get("/thumbs/{name:path}", include_in_schema=False)
    def thumbnail(name: str, v: str = ""):
        state = live.current()
        row = state.index.row_of(name.removesuffix(".jpg"))
        if row is None:
            return Response(_PLACEHOLDER, media_type="image/svg+xml", status_code=404)
        payload = state.index.thumbnail(row)
        # A URL names its version (?v=): cached for good when it is the one served.
        headers = {"Cache-Control": "public, max-age=604800, immutable"} if (
            v == state.index.version) else {"Cache-Control": "no-cache"}
        if not payload:
            return Response(_PLACEHOLDER, media_type="image/svg+xml", headers=headers)
        return Response(payload, media_type="image/jpeg", headers=headers)

    @app.post("/api/match", response_model=MatchResponse, tags=["api"],
              responses={400: {"description": "no photo and no title, a photo that cannot be "
                                              "read, or too many pixels"},
                         413: {"description": "a body over 20 MB"}})
    async def api_match(
        photo: UploadFile | None = File(
            None, description=f"a JPEG, PNG, GIF, BMP or WebP photo (up to "
            f"{MAX_PIXELS / 1e6:.0f} megapixels; JPEGs of any size)"),
        title: str = Form("", description="the posting's title",
                          max_length=MAX_TITLE_CHARACTERS),
        top: int = Form(DEFAULT_TOP, ge=1, le=MAX_TOP, description="catalogue postings returned"),
    ):
        """Rank the catalogue for a photo and/or a title: the postings the decision matches,
        then the nearest others (``matched`` false). Without a decision (models exported
        without thresholds), a ranking by similarity (``decision.set`` false)."""
        try:
            data = await photo.read() if photo is not None else b""
            query_photo = await run_in_threadpool(_decode_upload, data) if data else None
            state, ranking = await run_in_threadpool(live.search, query_photo,
                                                     _checked_title(title), top=top)
        except UserError as error:
            return JSONResponse({"detail": str(error)}, status_code=400)
        return MatchResponse(
            index_version=state.index.version, title=title.strip(),
            photo=None if query_photo is None else {
                "width": query_photo.size[0], "height": query_photo.size[1],
                "phash": query_photo.phash},
            decision=decision_info(state), sources=ranking.sources,
            matches=match_items(state, ranking, pages.thumbnail_url),
            seconds=round(ranking.seconds, 4))

    @app.get("/api/postings/{posting_id:path}", response_model=PostingResponse, tags=["api"],
             responses={404: {"description": "no such posting id"}})
    def api_posting(posting_id: str, top: int = Query(DEFAULT_TOP, ge=1, le=MAX_TOP)):
        """A catalogue posting and its own matches in the catalogue (itself left out)."""
        state = live.current()
        row = state.index.row_of(posting_id)
        if row is None:
            return JSONResponse({"detail": f"no posting {posting_id[:100]!r} in this catalogue"},
                                status_code=404)
        ranking = live.posting_matches(state, row, top=top)
        index = state.index
        return PostingResponse(
            index_version=index.version, posting_id=posting_id, title=index.titles[row],
            label_group=None if index.label_groups is None else int(index.label_groups[row]),
            image_phash=(index.image_phashes[row] or None) if index.image_phashes else None,
            thumbnail=pages.thumbnail_url(state, posting_id) if index.has_thumbnails else None,
            decision=decision_info(state),
            matches=match_items(state, ranking, pages.thumbnail_url))

    @app.get("/api/health", response_model=HealthResponse, tags=["api"])
    def api_health():
        """What is served: the index version, its size, sources, models and decision."""
        state = live.current()
        return HealthResponse(
            status="ok", index=str(live.directory), index_version=state.index.version,
            postings=len(state.index), sources=state.matcher.sources,
            models=[{"source": entry["source"], "kind": entry["kind"],
                     "fingerprint": entry["fingerprint"][:12]}
                    for entry in state.index.models],
            decision=decision_info(state),
            loaded_at=datetime.fromtimestamp(state.loaded_at, timezone.utc).isoformat(
                timespec="seconds"),
            reload_error=live.reload_error or None)

    return app


def asgi_app(live: LiveCatalog):
    """The application as served: :func:`create_app` inside :class:`BodyLimit`."""
    return BodyLimit(create_app(live))


# --------------------------------------------------------------------------------------------
# Serving


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound socket for the server (bound here, before uvicorn starts, so that a port in use
    is a clear message, not a traceback from the event loop).

    Raises:
        UserError: the port is taken or the address cannot be used, naming ``APP_PORT``.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is already in use (another `make app` or server is "
                f"running there): stop it, or choose another port: make app APP_PORT={port + 1} "
                f"(python -m tf_shopee.catalog.app --port {port + 1})") from None
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.set_inheritable(True)
    return sock


def make_server(live: LiveCatalog, *, log_level: str = "info"):
    """A uvicorn server for ``live`` (run it with ``server.run(sockets=[listen_socket(...)])``)."""
    import uvicorn

    config = uvicorn.Config(
        asgi_app(live), http=_timed_protocol_class(), lifespan="off", log_level=log_level,
        timeout_keep_alive=5, backlog=2048, limit_concurrency=512,
        h11_max_incomplete_event_size=64 * 1024)
    return uvicorn.Server(config)


class ServerThread:
    """The app served from a background thread (tests, notebooks): ``url``, then ``stop()``."""

    def __init__(self, live: LiveCatalog, host: str = "127.0.0.1", port: int = 0, *,
                 log_level: str = "warning"):
        self.socket = listen_socket(host, port)
        self.server = make_server(live, log_level=log_level)
        self.url = f"http://{host}:{self.socket.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       daemon=True, name="catalogue-app")
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the app server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


# --------------------------------------------------------------------------------------------
# Command line

# The demo's models (tf_shopee.demo writes them to DEMO_DIR/saved_models/<kind>).
DEMO_MODEL_KINDS = (ModelKind.IMAGE, ModelKind.TEXT)


def demo_index(demo_dir: str) -> Path:
    """The demo's catalogue index ``DEMO_DIR/catalog``: the demo's synthetic postings with the
    demo's fine-tuned image and trained text models. The app never trains: without the demo's
    models it stops and says to run ``make demo`` (``make app`` runs it first). An index built
    without the models, or with other ones, is built again (embedding only)."""
    root = Path(demo_dir)
    index_dir = root / "catalog"
    models = [str(root / "saved_models" / kind) for kind in DEMO_MODEL_KINDS]
    missing = [model for model in models if not (Path(model) / METADATA_FILE).is_file()]
    if missing:
        raise UserError(
            f"no trained demo models in {root / 'saved_models'} (missing {', '.join(missing)}): "
            f"run `make demo DEMO_DIR={demo_dir}` first (`make app` does), or give --index")
    if (index_dir / MANIFEST).is_file():
        try:
            built_with = len(read_manifest(index_dir)["models"])
        except UserError as error:  # damaged, or written by another version: build it again
            print(f"{error}: building it again", flush=True)
        else:
            if built_with == len(models):
                return index_dir
            print(f"{index_dir} was built without the demo's models: building it again",
                  flush=True)
    print(f"building the demo's catalogue index {index_dir}", flush=True)
    build_index(BuildOptions(csv=str(root / "data" / "train.csv"),
                             images=str(root / "data" / "train_images"),
                             models=models, out=str(index_dir), overwrite=True))
    return index_dir


def build_argument_parser() -> argparse.ArgumentParser:
    """The app's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m tf_shopee.catalog.app",
        description="Web app and JSON API over a catalogue index: upload a photo and/or type a "
        "title to see the catalogue's best matches; browse any posting's matches. The API's "
        "schema is at /docs. The app reloads the index when catalog build or add replaces it.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--index", default="", metavar="INDEX",
                       help="catalogue index (python -m tf_shopee.catalog build)")
    where.add_argument("--demo", default="demo_run", metavar="DEMO_DIR",
                       help="without --index: the demo's catalogue DEMO_DIR/catalog, built from "
                       "the demo's models when missing (run make demo first; default demo_run)")
    parser.add_argument("--model", action="append", default=[], dest="models", metavar="DIR",
                        help="the index's models (SavedModel folders or LiteRT .tflite files), "
                        "when they moved (default: the stored paths)")
    parser.add_argument("--tta", default=None, metavar="VIEWS",
                        help="test-time views of uploaded photos, averaged: flip, crop, "
                        "flip,crop or none (default: those the catalogue photos were embedded "
                        "with, catalog build --tta)")
    parser.add_argument("--threshold", action="append", default=[], metavar="SOURCE=VALUE",
                        help="a source's threshold (repeatable; bits for phash): sets a match "
                        "decision for models exported without one")
    parser.add_argument("--search", default="auto", choices=("exact", "ann", "auto"),
                        help="catalogue search: exact, ann (FAISS IVF) or auto (ann for large "
                        "catalogues; default auto)")
    parser.add_argument("--top", type=int, default=DEFAULT_TOP,
                        help=f"matches shown per query (default {DEFAULT_TOP})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    return parser


@exit_on_user_error
def main(argv=None) -> None:
    """Entry point: build or load the index, then serve until interrupted."""
    arguments = build_argument_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if not 1 <= arguments.top <= MAX_TOP:
        raise UserError(f"--top must be from 1 to {MAX_TOP}, got {arguments.top}")
    if not 0 <= arguments.port <= 65535:
        raise UserError(f"--port must be from 0 to 65535, got {arguments.port}")
    # The port first: a second `make app` says so before loading anything.
    sock = listen_socket(arguments.host, arguments.port)
    index_dir = arguments.index or str(demo_index(arguments.demo))
    live = LiveCatalog(index_dir, arguments.models, search=arguments.search, top=arguments.top,
                       thresholds=parse_threshold_overrides(arguments.threshold),
                       tta=arguments.tta)
    host, port = sock.getsockname()[:2]
    print(f"serving {index_dir} ({len(live.state.index):,} postings) on http://{host}:{port}/ "
          f"(API schema at http://{host}:{port}/docs; Ctrl-C stops)", flush=True)
    try:
        make_server(live).run(sockets=[sock])
    finally:
        sock.close()


if __name__ == "__main__":
    main()
