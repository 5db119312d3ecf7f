"""The search page in headless Chromium on a real uvicorn: pick, upload, type, see results.

Saves a screenshot of the page with results into the test's tmp folder, and also to the path
in the environment variable ``DQECIR_SCREENSHOT`` when it is set (how
docs/screenshot-search.png is made: ``DQECIR_SCREENSHOT=docs/screenshot-search.png
.venv/bin/python -m pytest -q tests/test_browser.py``).
"""

import os
import shutil
from pathlib import Path

import pytest

from dqecir.index import build_index
from dqecir.serve.app import BackgroundServer, create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

from selenium import webdriver  # noqa: E402  (dev dependency)


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_trained):
    root = tmp_path_factory.mktemp("browser")
    ck, bench = tiny_trained
    images = bench / "test1"
    build_index(ck, images, root / "index", progress=False)
    with BackgroundServer(create_app(root / "index")) as url:
        yield url, images


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(
            "Debian chromium + chromium-driver are not installed: run `make system-deps` "
            "(or apt-get install chromium chromium-driver)"
        )
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--window-size=1280,1200",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _results_loaded(driver):
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll('#results .result img')];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"
        " ? imgs.length : 0;"
    )


def test_upload_type_and_see_results(site, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, images = site
    browser.get(url + "/")
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#examples img")) > 0)
    # pick an index image, then replace it by an upload: both paths of the page
    browser.find_elements(By.CSS_SELECTOR, "#examples img")[2].click()
    upload = sorted(images.glob("*.png"))[5]
    browser.find_element(By.ID, "file-input").send_keys(str(upload))
    _wait(browser, lambda d: d.find_element(By.ID, "reference-name").text == upload.name)
    browser.find_element(By.ID, "text-input").send_keys("make it red and round")
    browser.find_element(By.ID, "search-button").click()
    count = _wait(browser, _results_loaded)
    assert count == 10
    assert browser.find_element(By.ID, "error").get_attribute("class").count("hidden") == 1
    bars = browser.find_elements(By.CSS_SELECTOR, "#relevance .bar")
    assert [b.text.split("\n")[0] for b in bars] == ["color", "shape", "other"]
    scores = browser.find_elements(By.CSS_SELECTOR, "#results .score")
    assert scores[0].text.startswith("#1 · ")
    shot = tmp_path / "screenshot-search.png"
    assert browser.save_screenshot(str(shot))
    if os.environ.get("DQECIR_SCREENSHOT"):
        shutil.copy(shot, os.environ["DQECIR_SCREENSHOT"])


def test_page_shows_server_errors(site, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, _ = site
    browser.get(url + "/")
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#examples img")) > 0)
    browser.find_element(By.ID, "search-button").click()  # no reference, no text
    err = browser.find_element(By.ID, "error")
    _wait(browser, lambda d: "reference" in err.text)
    bad = tmp_path / "not-an-image.png"
    bad.write_text("not an image")
    browser.find_element(By.ID, "file-input").send_keys(str(bad))
    browser.find_element(By.ID, "text-input").send_keys("make it blue")
    browser.find_element(By.ID, "search-button").click()
    _wait(browser, lambda d: "not a usable image" in err.text)
