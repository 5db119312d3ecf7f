"""Drive the search page in headless Chromium (Debian ``chromium`` + ``chromium-driver``).

Used by the browser test and by ``scripts/screenshot_search.py``, which makes the screenshot in
the docs from a real index. Needs the ``dev`` extra (selenium).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from dqecir.errors import DqecirError

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def chromium_driver(window: tuple[int, int] = (1280, 1200)) -> Any:
    """A headless Chromium WebDriver (closed network: no background networking)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        raise DqecirError(
            "Debian chromium + chromium-driver are not installed: run `make system-deps` "
            "(or apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
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
        f"--window-size={window[0]},{window[1]}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    return driver


def wait(driver: Any, condition: Any, timeout: float = 20) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def results_loaded(driver: Any) -> int:
    """Number of result images once every one of them has loaded, else 0."""
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll('#results .result img')];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"
        " ? imgs.length : 0;"
    )


def open_page(driver: Any, url: str) -> None:
    """Load the page and wait for its example images."""
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#examples img")) > 0)


def searches_done(driver: Any) -> int:
    """Searches the page has answered and shown (the results' ``data-searches``)."""
    return int(
        driver.execute_script("return document.getElementById('results').dataset.searches || 0;")
    )


def _type_and_search(driver: Any, text: str) -> int:
    from selenium.webdriver.common.by import By

    done = searches_done(driver)
    box = driver.find_element(By.ID, "text-input")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "search-button").click()
    error = driver.find_element(By.ID, "error")
    wait(driver, lambda d: searches_done(d) > done or error.text)
    if searches_done(driver) == done:
        raise DqecirError(f"the page refused the search: {error.text}")
    return wait(driver, results_loaded)


def search_on_page(driver: Any, upload: Path, text: str) -> int:
    """On the open page: upload ``upload`` as the reference, type ``text``, search; returns the
    number of results shown."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "file-input").send_keys(str(upload))
    wait(driver, lambda d: d.find_element(By.ID, "reference-name").text == upload.name)
    return _type_and_search(driver, text)


def refine_on_page(driver: Any, rank: int, text: str) -> str:
    """Click the result of rank ``rank`` (it becomes the reference), type ``text``, search;
    returns the id of the new reference once the next step's results have loaded."""
    from selenium.webdriver.common.by import By

    card = driver.find_elements(By.CSS_SELECTOR, "#results .result")[rank - 1]
    image_id = card.find_element(By.CSS_SELECTOR, ".id").text
    card.click()
    wait(driver, lambda d: d.find_element(By.ID, "reference-name").text == image_id)
    _type_and_search(driver, text)
    return image_id
