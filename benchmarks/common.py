"""What several benchmarks share: a median timing and the train captions they fill caches with."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_captions(root: Path, n: int) -> list[str]:
    """The first ``n`` distinct train texts of a CIRR-layout benchmark at ``root``, every
    phrasing of each query (its caption variants) in file order."""
    from dqecir.data.formats.cirr import load_cirr

    split = load_cirr(root, "train", resolve_images=False)
    texts = dict.fromkeys(t for q in split.queries for t in (q.variants or q.texts))
    return list(texts)[:n]
