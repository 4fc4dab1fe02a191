"""The catalogue web app: its pages over HTTP, and a real headless Chromium that uploads a real
grocery photo and checks the right product is listed first."""

from __future__ import annotations

import io
import os
import shutil
import threading
import urllib.error
import urllib.request
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
    the photos, TF-IDF over names and descriptions), served on a free port."""
    if not (GROCERY / "catalog.csv").is_file():
        pytest.skip(f"the grocery photos are not at {GROCERY}")
    from tf_shopee.catalog.app import load_app, serve
    from tf_shopee.catalog.index import BuildOptions, build_index

    out = tmp_path_factory.mktemp("grocery") / "index"
    build_index(BuildOptions(csv=str(GROCERY / "catalog.csv"), images=str(GROCERY),
                             out=str(out), progress=False))
    app = load_app(str(out), [])
    server = serve(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


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


def _multipart(fields: dict) -> tuple[bytes, str]:
    boundary = "----tfshopeetest"
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(f"--{boundary}\r\n".encode())
        if isinstance(value, bytes):
            body.write(f'Content-Disposition: form-data; name="{name}"; filename="x.jpg"\r\n'
                       "Content-Type: image/jpeg\r\n\r\n".encode())
            body.write(value)
        else:
            body.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode())
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def _post(url: str, fields: dict) -> tuple[int, str]:
    body, content_type = _multipart(fields)
    request = urllib.request.Request(url + "/search", data=body,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_pages_over_http(grocery_app, tmp_path):
    app, url = grocery_app
    status, page = _post(url, {"photo": _query_photo(tmp_path).read_bytes(), "title": ""})
    assert status == 200
    assert page.index(f"data-posting-id='{PRODUCT}'") < page.index("data-posting-id='", page.index(
        f"data-posting-id='{PRODUCT}'") + 1)
    status, page = _post(url, {"title": "Oatly oat milk"})
    assert status == 200 and page.find("data-posting-id='") == page.find(
        f"data-posting-id='{PRODUCT}'")
    for fields, message in [({"title": "  "}, "upload a photo or type a title"),
                            ({"photo": b"not a jpeg"}, "not a photo")]:
        status, page = _post(url, fields)
        assert status == 400 and message in page
    row = app.index.row_of(PRODUCT)
    with urllib.request.urlopen(f"{url}/posting/{row}", timeout=60) as response:
        page = response.read().decode()
    assert f"data-posting-id='{PRODUCT}'" not in page.split("its matches")[1]  # not itself
    with urllib.request.urlopen(f"{url}/thumb/{row}.jpg", timeout=60) as response:
        assert response.headers["Content-Type"] == "image/jpeg"
        assert response.read(3) == b"\xff\xd8\xff"
    with urllib.request.urlopen(f"{url}/browse?page=1", timeout=60) as response:
        assert "page 2 of 2" in response.read().decode()


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
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def test_a_real_browser_uploads_a_photo_and_sees_the_product_first(grocery_app, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    app, url = grocery_app
    driver = _chromium_driver()
    try:
        driver.get(url)
        driver.find_element(By.ID, "photo").send_keys(str(_query_photo(tmp_path)))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 60).until(
            expected_conditions.presence_of_element_located((By.ID, "matches")))
        cards = driver.find_elements(By.CSS_SELECTOR, "#matches .card")
        assert cards[0].get_attribute("data-posting-id") == PRODUCT
        assert "phash" in cards[0].find_element(By.CLASS_NAME, "sources").text
        # The photos load (thumbnails served by the app).
        assert driver.execute_script(
            "return [...document.querySelectorAll('#matches img')].every(i => i.naturalWidth > 0)")
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
    finally:
        driver.quit()
