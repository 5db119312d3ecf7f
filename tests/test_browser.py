"""The search page in headless Chromium on a real uvicorn: pick, upload, type, see results.

Saves a screenshot of the page with results into the test's tmp folder, and also to the path
in the environment variable ``DQECIR_SCREENSHOT`` when it is set (how
docs/screenshot-search.png is made: ``DQECIR_SCREENSHOT=docs/screenshot-search.png
.venv/bin/python -m pytest -q tests/test_browser.py``).
"""

import os
import shutil

import pytest

from dqecir.search import build_index
from dqecir.serve.app import BackgroundServer, create_app
from dqecir.serve.browser import (
    chromium_driver,
    open_page,
    refine_on_page,
    search_on_page,
    wait,
)


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


def test_two_step_refinement_and_going_back(site, browser):
    """Search, click a result (it becomes the reference), search again: the chain shows both
    steps (thumbnail + text), step 2's results are the API's for that image id and text, the
    words are shaded by their effects, and clicking step 1 brings its query and results back."""
    import httpx
    from selenium.webdriver.common.by import By

    url, images = site
    open_page(browser, url)
    upload = sorted(images.glob("*.png"))[3]
    search_on_page(browser, upload, "make it red")

    def shown() -> list[str]:
        return [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .id")]

    first = shown()
    picked = refine_on_page(browser, 2, "now make it a circle")
    assert picked == first[1]
    second = shown()
    api = httpx.post(url + "/api/search", data={"text": "now make it a circle", "k": "10",
                                                "image_id": picked}).json()  # fmt: skip
    assert second == [r["id"] for r in api["results"]] and picked not in second
    steps = browser.find_elements(By.CSS_SELECTOR, "#chain .step")
    assert [s.find_element(By.CSS_SELECTOR, ".step-text").text for s in steps] == [
        "make it red", "now make it a circle"]  # fmt: skip
    thumbs = [s.find_element(By.TAG_NAME, "img").get_attribute("src") for s in steps]
    assert thumbs[0].startswith("blob:") and thumbs[1].endswith("/api/images/" + picked)
    assert "current" in steps[1].get_attribute("class")
    words = browser.find_elements(By.CSS_SELECTOR, "#words .word")
    assert [w.text for w in words] == ["now", "make", "it", "a", "circle"]
    effects = [float(w.get_attribute("data-effect")) for w in words]
    assert effects == pytest.approx([w["effect"] for w in api["word_effects"]], abs=1e-5)
    assert browser.find_element(By.ID, "words").text == "now make it a circle"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#relevance .bar")) == 3  # next to them
    steps[0].click()  # back to step 1: its reference, text and results
    wait(browser, lambda d: shown() == first)
    assert browser.find_element(By.ID, "text-input").get_attribute("value") == "make it red"
    assert browser.find_element(By.ID, "reference-name").text == upload.name
    assert "current" in browser.find_elements(By.CSS_SELECTOR, "#chain .step")[0].get_attribute(
        "class"
    )
    refine_on_page(browser, 1, "make it blue")  # a new branch from step 1 replaces step 2
    texts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#chain .step-text")]
    assert texts == ["make it red", "make it blue"]
