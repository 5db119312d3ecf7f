"""Screenshot of the search page after a refinement chain, word effects shown
(docs/screenshot-refine.png).

    python scripts/screenshot_refine.py --checkpoint CK --images DIR --upload IMG \
        --step "make it red" --step "now a dress" [--pick 1] --out docs/screenshot-refine.png

Builds (or reuses, with --index) an index of DIR, serves it on 127.0.0.1, uploads IMG in
headless Chromium and searches with the first --step text; for every further --step it
clicks the result of rank --pick (default 1; one --pick per further step, or one for all),
which becomes the reference, and searches with that text. Saves the page once the last
step's results have loaded, and prints each step's reference and top results.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from dqecir.search import build_index
from dqecir.serve.app import BackgroundServer, create_app
from dqecir.serve.browser import chromium_driver, open_page, refine_on_page, search_on_page


def _top(driver: object, n: int = 5) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .id")][:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--upload", type=Path, required=True, help="reference of step 1")
    ap.add_argument("--step", action="append", required=True, help="text of each step")
    ap.add_argument("--pick", type=int, action="append", help="rank refined from, per step")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--index", type=Path, help="index folder (built when missing)")
    ap.add_argument("--window", type=int, nargs=2, default=(1280, 1500), metavar=("W", "H"))
    a = ap.parse_args()
    picks = a.pick or [1]
    if len(picks) == 1:
        picks = picks * max(1, len(a.step) - 1)
    if len(picks) != len(a.step) - 1 and len(a.step) > 1:
        ap.error(f"give one --pick, or one per step after the first ({len(a.step) - 1})")
    index = a.index or Path(tempfile.mkdtemp(prefix="dqecir-shot-")) / "index"
    if not (index / "manifest.json").exists():
        build_index(a.checkpoint, a.images, index)
    driver = chromium_driver(window=tuple(a.window))
    try:
        with BackgroundServer(create_app(index)) as url:
            open_page(driver, url)
            search_on_page(driver, a.upload.resolve(), a.step[0])
            print(f"step 1: {a.upload.name} + {a.step[0]!r} -> {_top(driver)}")
            for i, (text, rank) in enumerate(zip(a.step[1:], picks, strict=True), start=2):
                ref = refine_on_page(driver, rank, text)
                print(f"step {i}: result #{rank} {ref} + {text!r} -> {_top(driver)}")
            driver.save_screenshot(str(a.out))
    finally:
        driver.quit()
    print(f"{a.out}: page after {len(a.step)} steps")


if __name__ == "__main__":
    main()
