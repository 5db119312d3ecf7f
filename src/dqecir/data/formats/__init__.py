"""Loaders for the official file layouts of FashionIQ, CIRR and CIRCO (docs/formats.md), each
registered as a :class:`~dqecir.data.formats.protocol.Benchmark` (importing this package
registers them).

Every loader takes the dataset root as an argument and returns :class:`dqecir.data.types.CIRSplit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dqecir.data.formats.circo import load_circo
from dqecir.data.formats.cirr import load_cirr
from dqecir.data.formats.fashioniq import CATEGORIES, fashioniq_categories, load_fashioniq
from dqecir.data.formats.protocol import Benchmark
from dqecir.data.types import CIRSplit
from dqecir.registry import BENCHMARKS

__all__ = [
    "CATEGORIES",
    "Benchmark",
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
    """Load a split of the registered benchmark ``benchmark`` as a list of :class:`CIRSplit`.

    A grouped benchmark (FashionIQ) gives one split per category (``categories``, default: every
    category whose caption file for ``split`` exists under ``root``); the others give a
    one-element list (``categories`` must then be ``None``).
    """
    return BENCHMARKS.get(benchmark).load_splits(
        root, split, groups=categories, resolve_images=resolve_images, skip_missing=skip_missing
    )
