"""The catalogue web app: its pages and JSON API over HTTP, what it answers to bad and hostile
requests, and a real headless Chromium that uploads a real grocery photo and checks the right
product is listed first."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
GROCERY = REPOSITORY.parent / "shared" / "data" / "grocery"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# The product whose photo is uploaded (a packaged product: its catalogue photo is distinctive).
PRODUCT = "gs_iconic_Oatly-Oat-Milk"


@pytest.fixture(scope="module")
def grocery_app(tmp_path_factory):
    """The app over an index of the 81 grocery catalogue photos (model-free: phash computed from
    the photos, TF-IDF over names and descriptions), served by uvicorn on a free port."""
    if not (GROCERY / "catalog.csv").is_file():
        pytest.skip(f"the grocery photos are not at {GROCERY}")
    from tf_shopee.catalog.app import ServerThread
    from tf_shopee.catalog.index import BuildOptions, build_index
    from tf_shopee.catalog.live import LiveCatalog

    out = tmp_path_factory.mktemp("grocery") / "index"
    build_index(BuildOptions(csv=str(GROCERY / "catalog.csv"), images=str(GROCERY),
                             out=str(out), progress=False))
    live = LiveCatalog(out, [])
    server = ServerThread(live)
    yield live, server.url
    server.stop()


def _query_photo(tmp_path: Path) -> Path:
    """The product's catalogue photo as a user would have it: resized and re-compressed."""
    import pandas as pd
    from PIL import Image

    catalogue = pd.read_csv(GROCERY / "catalog.csv")
    image_name = catalogue.loc[catalogue["posting_id"] == PRODUCT, "image"].item()
    with Image.open(GROCERY / image_name) as image:
        image = image.convert("RGB")
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4))
        path = tmp_path / "my_photo.jpg"
        image.save(path, format="JPEG", quality=70)
    return path


def multipart(fields: dict, *, charset: str | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body: bytes values as files, str values as fields."""
    boundary = "----tfshopeetest"
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(f"--{boundary}\r\n".encode())
        if isinstance(value, bytes):
            body.write(f'Content-Disposition: form-data; name="{name}"; filename="x.jpg"\r\n'
                       "Content-Type: image/jpeg\r\n\r\n".encode())
            body.write(value)
        else:
            kind = f"Content-Type: text/plain; charset={charset}\r\n" if charset else ""
            body.write(f'Content-Disposition: form-data; name="{name}"\r\n{kind}\r\n'
                       f"{value}".encode())
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def request(url: str, path: str, fields: dict | None = None, *,
            timeout: float = 60) -> tuple[int, str]:
    """GET ``path`` (or POST ``fields`` as multipart): (status, body text)."""
    data = content_type = None
    if fields is not None:
        data, content_type = multipart(fields)
    message = urllib.request.Request(url + path, data=data,
                                     headers={"Content-Type": content_type} if data else {})
    try:
        with urllib.request.urlopen(message, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


def raw_request(url: str, payload: bytes, *, read_timeout: float = 30) -> bytes:
    """Send raw bytes on a new connection while reading; everything the server answers until it
    closes. The sending stops where the server stops reading (a refused body), as a client's
    would; the answer was read as it came."""
    import threading

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as connection:
        def send():
            try:
                for start in range(0, len(payload), 65536):
                    connection.sendall(payload[start:start + 65536])
            except OSError:
                pass  # the server closed: it answered already

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        chunks = []
        try:
            while chunk := connection.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        sender.join(timeout=read_timeout)
    return b"".join(chunks)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` × ``height`` pixels (its pixel data a stub): what a
    decompression bomb looks like before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


def test_pages_over_http(grocery_app, tmp_path):
    live, url = grocery_app
    status, page = request(url, "/search", {"photo": _query_photo(tmp_path).read_bytes(),
                                            "title": ""})
    assert status == 200
    first = page.index("data-posting-id='")
    assert page.startswith(f"data-posting-id='{PRODUCT}'", first)
    # phash is shown in bits, the unit of its rule, not as a similarity.
    assert "phash 0 bits" in page or "phash 1 bits" in page or "phash 2 bits" in page
    status, page = request(url, "/search", {"title": "Oatly oat milk"})
    assert status == 200 and page.find("data-posting-id='") == page.find(
        f"data-posting-id='{PRODUCT}'")
    for fields, message in [({"title": "  "}, "upload a photo or type a title"),
                            ({"photo": b"not a jpeg"}, "not a photo that can be read")]:
        status, page = request(url, "/search", fields)
        assert status == 400 and message in page
    status, page = request(url, f"/postings/{PRODUCT}")
    assert status == 200
    assert f"data-posting-id='{PRODUCT}'" not in page.split("its matches")[1]  # not itself
    with urllib.request.urlopen(f"{url}/thumbs/{PRODUCT}.jpg", timeout=60) as response:
        assert response.headers["Content-Type"] == "image/jpeg"
        assert response.read(3) == b"\xff\xd8\xff"
    status, page = request(url, "/browse?page=1")
    assert status == 200 and "page 2 of 2" in page
    # The home page says what to do and what every source compares.
    status, page = request(url, "/")
    assert "Find a product in the catalogue" in page
    for name in live.state.matcher.sources:
        assert f"<b>{name}</b>" in page
    assert "bits of 64" in page


def test_the_json_api_and_its_schema(grocery_app, tmp_path):
    live, url = grocery_app
    status, text = request(url, "/api/match", {"photo": _query_photo(tmp_path).read_bytes(),
                                               "title": "oat milk", "top": "5"})
    assert status == 200, text
    answer = json.loads(text)
    assert answer["matches"][0]["posting_id"] == PRODUCT
    assert answer["matches"][0]["matched"] and answer["matches"][0]["matched_by"]
    assert len(answer["matches"]) == 5 and answer["decision"]["set"]
    assert answer["photo"]["width"] > 0 and len(answer["photo"]["phash"]) == 16
    phash = answer["matches"][0]["scores"]["phash"]
    assert phash == int(phash) and 0 <= phash <= 64  # a distance in bits
    status, text = request(url, f"/api/postings/{PRODUCT}")
    posting = json.loads(text)
    assert status == 200 and posting["posting_id"] == PRODUCT
    assert PRODUCT not in [match["posting_id"] for match in posting["matches"]]
    status, text = request(url, "/api/postings/no-such-id")
    assert status == 404 and "no posting" in json.loads(text)["detail"]
    health = json.loads(request(url, "/api/health")[1])
    assert health["postings"] == 81 and health["index_version"] == live.state.index.version
    schema = json.loads(request(url, "/openapi.json")[1])
    assert {"/api/match", "/api/postings/{posting_id}", "/api/health"} <= set(schema["paths"])
    # /docs is served without a CDN: its script comes from this server.
    status, page = request(url, "/docs")
    assert status == 200 and "/static-offline-docs/swagger-ui-bundle.js" in page
    with urllib.request.urlopen(f"{url}/static-offline-docs/swagger-ui-bundle.js") as response:
        assert len(response.read()) > 100_000


def test_bad_and_hostile_requests_get_a_4xx_with_a_message(grocery_app, tmp_path):
    """Each case of issue 21's list: the old server gave an empty reply or hung on them."""
    live, url = grocery_app
    photo = _query_photo(tmp_path).read_bytes()
    status, text = request(url, "/api/match", {"photo": photo[: len(photo) // 2]})
    assert status == 400 and "not a photo that can be read" in text  # truncated JPEG
    status, text = request(url, "/api/match", {"photo": png_header(20000, 20000)})
    assert status == 400 and "megapixels" in text  # refused before decoding
    status, text = request(url, "/api/match", {"photo": png_header(10000, 10000)})
    assert status == 400 and "100 megapixels" in text
    status, text = request(url, "/search", {"photo": png_header(20000, 20000)})
    assert status == 400 and "megapixels" in text
    body, content_type = multipart({"title": "oat milk"}, charset="no-such-charset")
    answer = raw_request(url, (f"POST /api/match HTTP/1.1\r\nHost: x\r\nContent-Type: "
                               f"{content_type}\r\nContent-Length: {len(body)}\r\n"
                               "Connection: close\r\n\r\n").encode() + body)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]  # decoded as latin-1, answered
    for length in ("-1", "abc"):
        answer = raw_request(url, (f"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                   f"{length}\r\nConnection: close\r\n\r\n").encode()
                             + b"x" * 1000)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    started = time.perf_counter()
    answer = raw_request(url, b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/"
                              b"form-data; boundary=b\r\nContent-Length: 60000000\r\n\r\n"
                              + b"x" * 65536)
    assert answer.startswith(b"HTTP/1.1 413") and b"larger than 20 MB" in answer
    assert time.perf_counter() - started < 10  # refused before the body, not after it
    # A chunked upload (no Content-Length) that passes the limit is cut off there.
    body, content_type = multipart({"photo": b"x" * (22 * 2**20)})
    chunked = b"".join(b"%x\r\n" % len(body[start:start + 2**20]) + body[start:start + 2**20]
                       + b"\r\n" for start in range(0, len(body), 2**20)) + b"0\r\n\r\n"
    answer = raw_request(url, (f"POST /api/match HTTP/1.1\r\nHost: x\r\nContent-Type: "
                               f"{content_type}\r\nTransfer-Encoding: chunked\r\n"
                               "Connection: close\r\n\r\n").encode() + chunked)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    for path in ("/browse?page=%C2%B2", "/browse?page=" + "9" * 5000, "/browse?page=-1"):
        status, text = request(url, path)
        assert status == 400 and "whole number" in text
    for path in ("/postings/" + "9" * 5000, "/postings/%C2%B2", "/thumbs/%C2%B2.jpg",
                 "/thumbs/" + "9" * 5000 + ".jpg"):
        assert request(url, path)[0] == 404
    status, text = request(url, "/api/match", {"title": "x" * 5000})
    assert status == 422 and "1000" in text
    status, text = request(url, "/api/match", {})
    assert status == 400 and "upload a photo or type a title" in text


def test_unfinished_requests_are_closed(grocery_app, monkeypatch):
    """Unfinished headers or bodies no longer hold the server: short deadlines here."""
    from tf_shopee.catalog import app as app_module

    live, _ = grocery_app
    monkeypatch.setattr(app_module, "HEADER_TIMEOUT", 1.0)
    monkeypatch.setattr(app_module, "BODY_TIMEOUT", 1.0)
    server = app_module.ServerThread(live)
    try:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            started = time.perf_counter()
            assert connection.recv(1024) == b""  # closed by the server
            assert time.perf_counter() - started < 8
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/"
                               b"form-data; boundary=b\r\nContent-Length: 1000\r\n\r\n--b\r\n")
            answer = b""
            while b"stopped arriving" not in answer and (chunk := connection.recv(65536)):
                answer += chunk  # the head and the page may come in two segments
            assert answer.startswith(b"HTTP/1.1 408") and b"stopped arriving" in answer
        assert request(server.url, "/api/health")[0] == 200  # and it still serves
    finally:
        server.stop()


def test_a_rebuilt_index_is_reloaded_and_thumbnails_stay_whole(grocery_app, tmp_path):
    """Issue 21: a build under a running app made /thumb/N serve undecodable bytes (old offsets
    against the new thumbnails.bin). Now the old version stays whole until the new one is
    loaded, then the app answers from the new one."""
    import pandas as pd
    from PIL import Image

    from tf_shopee.catalog.app import ServerThread
    from tf_shopee.catalog.index import BuildOptions, build_index
    from tf_shopee.catalog.live import LiveCatalog

    catalogue = pd.read_csv(GROCERY / "catalog.csv", dtype=str)
    catalogue.iloc[:40].to_csv(tmp_path / "first.csv", index=False)
    catalogue.iloc[::-1].to_csv(tmp_path / "reversed.csv", index=False)  # other offsets
    out = tmp_path / "index"
    build_index(BuildOptions(csv=str(tmp_path / "first.csv"), images=str(GROCERY), out=str(out),
                             progress=False))
    live = LiveCatalog(out, [], check_seconds=3600)  # no reload until asked
    server = ServerThread(live)
    try:
        before = live.state.index.version
        build_index(BuildOptions(csv=str(tmp_path / "reversed.csv"), images=str(GROCERY),
                                 out=str(out), overwrite=True, progress=False))
        for posting_id in catalogue["posting_id"].iloc[:40]:  # the old version, still served
            with urllib.request.urlopen(f"{server.url}/thumbs/{posting_id}.jpg") as response:
                Image.open(io.BytesIO(response.read())).load()  # decodes
        live.check_seconds = 0
        after = live.wait_for_version()
        assert after != before
        health = json.loads(request(server.url, "/api/health")[1])
        assert health["postings"] == 81 and health["index_version"] == after
        for posting_id in catalogue["posting_id"]:
            with urllib.request.urlopen(f"{server.url}/thumbs/{posting_id}.jpg") as response:
                Image.open(io.BytesIO(response.read())).load()
    finally:
        server.stop()


def test_the_app_cli_names_app_port_when_the_port_is_taken(capsys):
    from catalog_helpers import run_main

    from tf_shopee.catalog.app import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, _, stderr = run_main(main, ["--index", "nowhere", "--port", port], capsys)
    assert status == 2
    assert f"port {port} on 127.0.0.1 is already in use" in stderr
    assert f"APP_PORT={port + 1}" in stderr and "Traceback" not in stderr


def _chromium_driver():
    """A headless Chromium driven through the system chromedriver, or a skip with the reason."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("no Chromium: apt-get install -y chromium chromium-driver (.ci/run does)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (requirements-dev.txt)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic", "--window-size=1280,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def test_a_real_browser_uploads_a_photo_and_sees_the_product_first(grocery_app, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    live, url = grocery_app
    driver = _chromium_driver()
    try:
        driver.get(url)
        assert "Find a product in the catalogue" in driver.find_element(By.ID, "help").text
        # The upload goes through the page's own form (a file input and the submit button).
        driver.find_element(By.ID, "photo").send_keys(str(_query_photo(tmp_path)))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 60).until(
            expected_conditions.presence_of_element_located((By.ID, "matches")))
        cards = driver.find_elements(By.CSS_SELECTOR, "#matches .card")
        assert cards[0].get_attribute("data-posting-id") == PRODUCT
        assert "phash" in cards[0].find_element(By.CLASS_NAME, "sources").text
        assert "bits" in cards[0].find_element(By.CLASS_NAME, "sources").text
        # The photos load (thumbnails served by the app) and the query photo is shown.
        assert driver.execute_script(
            "return [...document.querySelectorAll('#matches img, .query img')]"
            ".every(i => i.naturalWidth > 0)")
        if os.environ.get("TF_SHOPEE_SCREENSHOT"):  # docs/catalogue.md's picture: photo and title
            driver.find_element(By.ID, "photo").send_keys(str(_query_photo(tmp_path)))
            driver.find_element(By.ID, "title").send_keys("oat milk")
            driver.find_element(By.ID, "submit").click()
            WebDriverWait(driver, 60).until(
                expected_conditions.presence_of_element_located((By.ID, "matches")))
            driver.save_screenshot(os.environ["TF_SHOPEE_SCREENSHOT"])
        # Browse that product's own matches, with photos.
        cards = driver.find_elements(By.CSS_SELECTOR, "#matches .card")
        cards[0].find_element(By.CLASS_NAME, "posting-id").click()
        WebDriverWait(driver, 60).until(
            expected_conditions.presence_of_element_located((By.ID, "matches")))
        assert PRODUCT in driver.find_element(By.CLASS_NAME, "query").text
        assert driver.find_elements(By.CSS_SELECTOR, "#matches .card img")
        # A bad upload through the page is a message on the page.
        bad = tmp_path / "not_a_photo.jpg"
        bad.write_bytes(b"this is text")
        driver.get(url)
        driver.find_element(By.ID, "photo").send_keys(str(bad))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 60).until(
            expected_conditions.presence_of_element_located((By.ID, "error")))
        assert "not a photo that can be read" in driver.find_element(By.ID, "error").text
        # The API's documentation renders offline (Swagger UI from this server).
        driver.get(url + "/docs")
        WebDriverWait(driver, 60).until(expected_conditions.presence_of_element_located(
            (By.CSS_SELECTOR, ".opblock-summary-path")))
        paths = {element.text for element in
                 driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert "/api/match" in {path.replace("\u200b", "") for path in paths}
    finally:
        driver.quit()
