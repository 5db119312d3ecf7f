"""Screenshot of the search page with results from a real trained model (docs/screenshot-search.png).

    python scripts/screenshot_search.py --checkpoint CK --images DIR --upload IMG \
        --text "make it red" --out docs/screenshot-search.png [--index DIR]

Builds (or reuses) an index of DIR, serves it on 127.0.0.1, uploads IMG in headless Chromium,
types the text, and saves the page once the results have loaded.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from dqecir.search import build_index
from dqecir.serve.app import BackgroundServer, create_app
from dqecir.serve.browser import chromium_driver, open_page, search_on_page


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--upload", type=Path, required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--index", type=Path, help="index folder (built when missing)")
    a = ap.parse_args()
    index = a.index or Path(tempfile.mkdtemp(prefix="dqecir-shot-")) / "index"
    if not (index / "manifest.json").exists():
        build_index(a.checkpoint, a.images, index)
    driver = chromium_driver()
    try:
        with BackgroundServer(create_app(index)) as url:
            open_page(driver, url)
            n = search_on_page(driver, a.upload.resolve(), a.text)
            driver.save_screenshot(str(a.out))
    finally:
        driver.quit()
    print(f"{a.out}: page with {n} results")


if __name__ == "__main__":
    main()
