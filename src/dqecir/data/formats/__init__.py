"""Loaders for the official file layouts of FashionIQ, CIRR and CIRCO (docs/formats.md).

Every loader takes the dataset root as an argument and returns :class:`dqecir.data.types.CIRSplit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dqecir.data.formats.circo import load_circo
from dqecir.data.formats.cirr import load_cirr
from dqecir.data.formats.fashioniq import CATEGORIES, fashioniq_categories, load_fashioniq
from dqecir.data.types import CIRSplit
from dqecir.errors import DataError

BENCHMARKS = ("fashioniq", "cirr", "circo")

__all__ = [
    "BENCHMARKS",
    "CATEGORIES",
    "fashioniq_categories",
    "load_benchmark",
    "load_circo",
    "load_cirr",
    "load_fashioniq",
]


def load_benchmark(
    benchmark: str,
    root: str | Path,
    split: str,
    *,
    categories: Sequence[str] | None = None,
    resolve_images: bool = True,
    skip_missing: bool = False,
) -> list[CIRSplit]:
    """Load a benchmark split as a list of :class:`CIRSplit`.

    FashionIQ gives one split per category (``categories``, default: every category whose
    caption file for ``split`` exists under ``root``); CIRR and CIRCO give a one-element list
    (``categories`` must then be ``None``).
    """
    kw = {"resolve_images": resolve_images, "skip_missing": skip_missing}
    if benchmark == "fashioniq":
        cats = list(categories) if categories is not None else fashioniq_categories(root, split)
        if not cats:
            raise DataError(
                f"no FashionIQ caption files cap.<category>.{split}.json",
                file=Path(root) / "captions",
            )
        return [load_fashioniq(root, split, c, **kw) for c in cats]
    if categories is not None:
        raise ValueError(f"categories apply to fashioniq only, not {benchmark!r}")
    if benchmark == "cirr":
        return [load_cirr(root, split, **kw)]
    if benchmark == "circo":
        return [load_circo(root, split, **kw)]
    raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
