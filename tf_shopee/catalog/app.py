"""A small web app over a catalogue index: upload a photo and/or type a title, see the best
catalogue matches with their photos, scores and the sources that matched; browse any catalogue
posting's matches.

    python -m tf_shopee.catalog.app --index INDEX [--model DIR ...] [--port 8000]
    make app                       # the demo's catalogue (make demo runs first when needed)
    make app INDEX=path/to/index   # any index

Why the standard library's ``http.server`` and not Streamlit, Gradio or FastAPI: the app is four
pages and one form, runs on a CPU beside TensorFlow, and must start anywhere the project installs;
a framework would add tens of packages (and Streamlit/Gradio a websocket front end that is harder
to drive from a test) for no feature the app needs. Requests are served by a thread pool; model
calls and searches are serialised by a lock (TensorFlow already uses every core for one call).

Pages: ``/`` (search form), ``POST /search`` (results), ``/browse?page=N`` (catalogue grid),
``/posting/ROW`` (a catalogue posting and its matches), ``/thumb/ROW.jpg`` (stored thumbnails).
"""

from __future__ import annotations

import argparse
import base64
import email.parser
import email.policy
import html
import logging
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tf_shopee.catalog.index import (
    MANIFEST,
    BuildOptions,
    build_index,
    load_index,
    read_manifest,
    resolve_models,
)
from tf_shopee.catalog.query import CatalogMatcher
from tf_shopee.errors import UserError, exit_on_user_error
from tf_shopee.export import METADATA_FILE
from tf_shopee.matching.options import MatchOptions, parse_threshold_overrides
from tf_shopee.matching.postings import Postings
from tf_shopee.models.kind import ModelKind

logger = logging.getLogger("tf_shopee.catalog.app")

DEFAULT_TOP = 12
PAGE_SIZE = 48
MAX_UPLOAD_BYTES = 20 * 2**20
_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232a}
header{background:#ee4d2d;color:#fff;padding:12px 24px}header a{color:#fff;margin-right:18px}
main{padding:16px 24px}form.search{background:#fff;padding:16px;border-radius:8px;
box-shadow:0 1px 3px #0002;display:flex;gap:12px;flex-wrap:wrap;align-items:end}
form.search label{display:flex;flex-direction:column;font-size:13px;gap:4px}
input[type=text]{width:360px;padding:6px}button{padding:8px 18px;background:#ee4d2d;color:#fff;
border:0;border-radius:4px;cursor:pointer}.grid{display:flex;flex-wrap:wrap;gap:12px;margin-top:16px}
.card{background:#fff;width:190px;border-radius:8px;box-shadow:0 1px 3px #0002;padding:8px;
font-size:12px}.card img,.query img{width:174px;height:174px;object-fit:contain;background:#eee}
.card .title{height:3.6em;overflow:hidden}.card.below{opacity:.6}.rank{font-weight:bold}
.sources span{display:inline-block;background:#e8f0fe;border-radius:3px;padding:1px 4px;margin:1px}
.sources span.hit{background:#d7f5dd}.query{display:flex;gap:16px;align-items:center;
background:#fff;padding:12px;border-radius:8px;margin-top:12px}.error{color:#b00020}
.nav a{margin-right:10px}
"""


@dataclass
class Match:
    """One catalogue posting shown for a query."""

    row: int
    scores: dict  # source → score of this catalogue row for the query
    matched_by: list  # sources whose thresholded matches include it
    below_threshold: bool


class CatalogApp:
    """The app's state: a :class:`tf_shopee.catalog.query.CatalogMatcher` and the rendering.

    Args:
        matcher: the loaded catalogue and models.
        top: catalogue postings shown per query.
    """

    def __init__(self, matcher, *, top: int = DEFAULT_TOP):
        self.matcher = matcher
        self.index = matcher.index
        self.top = top
        self.lock = threading.Lock()

    # ----------------------------------------------------------------------------- matching

    def search(self, photo: bytes | None, title: str) -> list[Match]:
        """Best catalogue matches of one query (a photo, a title or both)."""
        title = (title or "").strip()
        if not photo and not title:
            raise UserError("upload a photo or type a title")
        if photo:
            _check_photo(photo)
        postings = Postings(posting_ids=["query"], titles=[title],
                            image_bytes=[photo] if photo else None)
        with self.lock:
            result = self.matcher.match(postings)
        return self._ranked(result, 0, exclude=None)

    def posting_matches(self, row: int) -> list[Match]:
        """Catalogue matches of catalogue posting ``row`` (itself left out), from its stored
        embeddings: no model is called."""
        with self.lock:
            result = self.matcher.match_rows([row])
        return self._ranked(result, 0, exclude=row)

    def _ranked(self, result, query: int, *, exclude: int | None) -> list[Match]:
        """The combined matches in their order, then the nearest candidates below every
        threshold, up to ``top``; scores and matching sources per row."""
        scores: dict[int, dict] = {}
        for name, found in result.neighbours.items():
            for row, score in zip(found.indices[query], found.scores[query]):
                if row >= 0:
                    scores.setdefault(int(row), {}).setdefault(name, float(score))
        matched_by: dict[int, list] = {}
        for name, lists in result.matches.items():
            if name == "combined":
                continue
            for row in lists[query]:
                matched_by.setdefault(int(row), []).append(name)
        order = [int(row) for row in result.matches["combined"][query]]
        nearest = sorted(scores, key=lambda row: -max(scores[row].values()))
        shown, seen = [], set()
        for row in order + nearest:
            if row in seen or row == exclude:
                continue
            seen.add(row)
            shown.append(Match(row, scores.get(row, {}), matched_by.get(row, []),
                               below_threshold=row not in order))
            if len(shown) >= self.top:
                break
        return shown

    # ----------------------------------------------------------------------------- pages

    def page(self, title: str, body: str) -> bytes:
        """A whole HTML page."""
        rows = len(self.index)
        text = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            "<header><a href='/'><b>tf_shopee catalogue</b></a><a href='/browse'>browse</a>"
            f"<span>{rows:,} postings · sources: {html.escape(', '.join(self.matcher.sources))}"
            "</span></header>"
            f"<main>{body}</main></body></html>"
        )
        return text.encode("utf-8")

    def home(self, *, error: str = "", title: str = "") -> bytes:
        """The search form."""
        message = f"<p class='error' id='error'>{html.escape(error)}</p>" if error else ""
        return self.page("search the catalogue", self._form(title) + message)

    def _form(self, title: str = "") -> str:
        return (
            "<form class='search' method='post' action='/search' enctype='multipart/form-data'>"
            "<label>photo<input type='file' name='photo' id='photo' accept='image/*'></label>"
            "<label>title<input type='text' name='title' id='title' "
            f"value='{html.escape(title, quote=True)}' placeholder='e.g. Kopi sachet 10 pcs'>"
            "</label><button type='submit' id='submit'>find matches</button></form>"
        )

    def results(self, photo: bytes | None, title: str, matches: list[Match],
                seconds: float) -> bytes:
        """The results page of an uploaded query."""
        query = "<div class='query'>"
        if photo:
            encoded = base64.b64encode(_thumbnail_bytes(photo)).decode("ascii")
            query += f"<img alt='your photo' src='data:image/jpeg;base64,{encoded}'>"
        query += (f"<div><b>your query</b><br>{html.escape(title) or '<i>no title</i>'}"
                  f"<br><small>{len(matches)} shown, {seconds:.2f} s</small></div></div>")
        return self.page("matches", self._form(title) + query + self._grid(matches))

    def posting(self, row: int, matches: list[Match]) -> bytes:
        """A catalogue posting and its matches."""
        head = (f"<div class='query'><img alt='' src='/thumb/{row}.jpg'><div>"
                f"<b>{html.escape(self.index.posting_ids[row])}</b><br>"
                f"{html.escape(self.index.titles[row])}{self._label(row)}</div></div>"
                "<h3>its matches in the catalogue</h3>")
        return self.page(self.index.posting_ids[row], head + self._grid(matches))

    def browse(self, page: int) -> bytes:
        """A page of the catalogue, ``PAGE_SIZE`` postings."""
        pages = max(1, -(-len(self.index) // PAGE_SIZE))
        page = min(max(page, 0), pages - 1)
        rows = range(page * PAGE_SIZE, min((page + 1) * PAGE_SIZE, len(self.index)))
        cards = "".join(self._card(row) for row in rows)
        navigation = "<p class='nav'>" + (f"<a href='/browse?page={page - 1}'>previous</a>"
                                          if page else "")
        navigation += f"page {page + 1} of {pages} " + (
            f"<a href='/browse?page={page + 1}'>next</a>" if page + 1 < pages else "") + "</p>"
        return self.page("browse", navigation + f"<div class='grid'>{cards}</div>" + navigation)

    def _label(self, row: int) -> str:
        if self.index.label_groups is None:
            return ""
        return f"<br><small>label_group {int(self.index.label_groups[row])}</small>"

    def _card(self, row: int, match: Match | None = None, rank: int | None = None) -> str:
        posting_id = self.index.posting_ids[row]
        parts = [f"<div class='card{' below' if match and match.below_threshold else ''}' "
                 f"data-posting-id='{html.escape(posting_id, quote=True)}'>"]
        parts.append(f"<a href='/posting/{row}'><img alt='' loading='lazy' "
                     f"src='/thumb/{row}.jpg'></a>")
        if rank is not None:
            parts.append(f"<div><span class='rank'>#{rank}</span> "
                         f"<a class='posting-id' href='/posting/{row}'>"
                         f"{html.escape(posting_id)}</a></div>")
        else:
            parts.append(f"<div><a class='posting-id' href='/posting/{row}'>"
                         f"{html.escape(posting_id)}</a></div>")
        parts.append(f"<div class='title'>{html.escape(self.index.titles[row])}</div>")
        if match is not None:
            chips = []
            for name, score in sorted(match.scores.items(), key=lambda item: -item[1]):
                hit = " class='hit'" if name in match.matched_by else ""
                chips.append(f"<span{hit}>{html.escape(name)} {score:.3f}</span>")
            verdict = ("matched by " + ", ".join(match.matched_by) if match.matched_by
                       else "nearest, below every threshold" if match.below_threshold
                       else "matched (nearest neighbour: min2)")
            parts.append(f"<div class='sources'>{''.join(chips)}</div>"
                         f"<div class='verdict'>{html.escape(verdict)}</div>")
        parts.append(self._label(row) + "</div>")
        return "".join(parts)

    def _grid(self, matches: list[Match]) -> str:
        if not matches:
            return "<p>no catalogue posting found by any source</p>"
        cards = "".join(self._card(match.row, match, rank)
                        for rank, match in enumerate(matches, start=1))
        return f"<div class='grid' id='matches'>{cards}</div>"


def _check_photo(photo: bytes) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(__import__("io").BytesIO(photo)) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, ValueError):
        raise UserError("the uploaded file is not a photo this app can read (JPEG or PNG)"
                        ) from None


def _thumbnail_bytes(photo: bytes) -> bytes:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(photo)) as image:
        image = image.convert("RGB")
        image.thumbnail((174, 174))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()


def _parse_form(content_type: str, body: bytes) -> dict:
    """Fields of a ``multipart/form-data`` or urlencoded body: name → bytes (files) or str."""
    if content_type.startswith("application/x-www-form-urlencoded"):
        return {key: values[-1] for key, values in
                urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
    if not content_type.startswith("multipart/form-data"):
        raise UserError(f"unexpected form encoding {content_type!r}")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body)
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        fields[name] = payload if part.get_filename() is not None else payload.decode(
            part.get_content_charset() or "utf-8", "replace")
    return fields


def make_handler(app: CatalogApp):
    """The request handler class bound to ``app``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "tf_shopee-catalog"

        def log_message(self, format, *args):  # noqa: A002 - the base class's signature
            logger.info("%s %s", self.address_string(), format % args)

        def _send(self, body: bytes, *, status=HTTPStatus.OK, content_type="text/html"):
            self.send_response(status)
            self.send_header("Content-Type", f"{content_type}; charset=utf-8"
                             if content_type.startswith("text") else content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - http.server's naming
            url = urllib.parse.urlparse(self.path)
            parts = [part for part in url.path.split("/") if part]
            try:
                if not parts:
                    return self._send(app.home())
                if parts[0] == "browse":
                    page = urllib.parse.parse_qs(url.query).get("page", ["0"])[0]
                    return self._send(app.browse(int(page) if page.isdigit() else 0))
                if parts[0] == "posting" and len(parts) == 2 and parts[1].isdigit():
                    row = int(parts[1])
                    if row < len(app.index):
                        return self._send(app.posting(row, app.posting_matches(row)))
                if parts[0] == "thumb" and len(parts) == 2:
                    stem = parts[1].removesuffix(".jpg")
                    payload = app.index.thumbnail(int(stem)) if stem.isdigit() else None
                    if payload:
                        return self._send(payload, content_type="image/jpeg")
                    return self._send(_PLACEHOLDER, content_type="image/svg+xml")
            except UserError as error:
                return self._send(app.home(error=str(error)), status=HTTPStatus.BAD_REQUEST)
            self._send(app.page("not found", "<p>no such page</p>"),
                       status=HTTPStatus.NOT_FOUND)

        def do_POST(self):  # noqa: N802 - http.server's naming
            if urllib.parse.urlparse(self.path).path != "/search":
                return self._send(app.page("not found", "<p>no such page</p>"),
                                  status=HTTPStatus.NOT_FOUND)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_UPLOAD_BYTES:
                return self._send(app.home(error="the upload is larger than 20 MB"),
                                  status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            body = self.rfile.read(length)
            title = ""
            try:
                fields = _parse_form(self.headers.get("Content-Type", ""), body)
                title = fields.get("title", "") if isinstance(fields.get("title"), str) else ""
                photo = fields.get("photo") if isinstance(fields.get("photo"), bytes) else None
                started = time.perf_counter()
                matches = app.search(photo or None, title)
                self._send(app.results(photo or None, title, matches,
                                       time.perf_counter() - started))
            except UserError as error:
                self._send(app.home(error=str(error), title=title),
                           status=HTTPStatus.BAD_REQUEST)

    return Handler


_PLACEHOLDER = (b"<svg xmlns='http://www.w3.org/2000/svg' width='174' height='174'>"
                b"<rect width='100%' height='100%' fill='#ddd'/><text x='50%' y='50%' "
                b"text-anchor='middle' fill='#777' font-family='sans-serif'>no photo</text></svg>")


def serve(app: CatalogApp, host: str, port: int) -> ThreadingHTTPServer:
    """A started-on-demand server for ``app`` (call ``serve_forever``); port 0 picks a free one."""
    server = ThreadingHTTPServer((host, port), make_handler(app))
    server.daemon_threads = True
    return server


def load_app(index_dir: str, models: list[str], *, search: str = "auto",
             top: int = DEFAULT_TOP, thresholds: dict | None = None) -> CatalogApp:
    """Load an index and its models into a :class:`CatalogApp`."""
    index = load_index(index_dir)
    loaded = resolve_models(index.manifest, models)
    options = MatchOptions(progress=False, threshold_overrides=dict(thresholds or {}))
    return CatalogApp(CatalogMatcher(index, loaded, options, search=search), top=top)


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
        description="Web app over a catalogue index: upload a photo and/or type a title to see "
        "the catalogue's best matches; browse any posting's matches.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--index", default="", metavar="INDEX",
                       help="catalogue index (python -m tf_shopee.catalog build)")
    where.add_argument("--demo", default="demo_run", metavar="DEMO_DIR",
                       help="without --index: the demo's catalogue DEMO_DIR/catalog, built from "
                       "the demo's models when missing (run make demo first; default demo_run)")
    parser.add_argument("--model", action="append", default=[], dest="models", metavar="DIR",
                        help="the index's models, when they moved (default: the stored paths)")
    parser.add_argument("--threshold", action="append", default=[], metavar="SOURCE=VALUE",
                        help="override a source's threshold (repeatable)")
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
    from tf_shopee import import_tensorflow

    import_tensorflow()  # without its start-up chatter (TF_SHOPEE_VERBOSE=1 keeps it)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if arguments.top < 1:
        raise UserError(f"--top must be at least 1, got {arguments.top}")
    index_dir = arguments.index or str(demo_index(arguments.demo))
    app = load_app(index_dir, arguments.models, search=arguments.search, top=arguments.top,
                   thresholds=parse_threshold_overrides(arguments.threshold))
    try:
        server = serve(app, arguments.host, arguments.port)
    except OSError as error:
        raise UserError(f"cannot listen on {arguments.host}:{arguments.port}: {error}") from None
    host, port = server.server_address[:2]
    print(f"serving {index_dir} ({len(app.index):,} postings) on http://{host}:{port}/ "
          "(Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
