"""The search page in headless Chromium on a real uvicorn: pick, upload, type, see results.

Saves a screenshot of the page with results into the test's tmp folder, and also to the path
in the environment variable ``DQECIR_SCREENSHOT`` when it is set (how
docs/screenshot-search.png is made: ``DQECIR_SCREENSHOT=docs/screenshot-search.png
.venv/bin/python -m pytest -q tests/test_browser.py``).
"""

import os
import shutil

import pytest

from dqecir.index import build_index
from dqecir.serve.app import BackgroundServer, create_app
from dqecir.serve.browser import chromium_driver, open_page, search_on_page, wait


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
    driver = chromium_driver()
    yield driver
    driver.quit()


def test_upload_type_and_see_results(site, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, images = site
    open_page(browser, url)
    # pick an index image first: the upload below must replace it (both paths of the page)
    browser.find_elements(By.CSS_SELECTOR, "#examples img")[2].click()
    upload = sorted(images.glob("*.png"))[5]
    count = search_on_page(browser, upload, "make it red and round")
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
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#examples img")) > 0)
    browser.find_element(By.ID, "search-button").click()  # no reference, no text
    err = browser.find_element(By.ID, "error")
    wait(browser, lambda d: "reference" in err.text)
    bad = tmp_path / "not-an-image.png"
    bad.write_text("not an image")
    browser.find_element(By.ID, "file-input").send_keys(str(bad))
    browser.find_element(By.ID, "text-input").send_keys("make it blue")
    browser.find_element(By.ID, "search-button").click()
    wait(browser, lambda d: "not a usable image" in err.text)
