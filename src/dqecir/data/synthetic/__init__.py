"""The embedded benchmarks ``shapes`` and ``fmnist``, written in the CIRR and CIRCO layouts.

See docs/benchmarks.md for how they are built.
"""

from __future__ import annotations

from pathlib import Path

from dqecir.data.synthetic.common import SIZES, TRAIN_VARIANTS, build_benchmark, chance_levels

KINDS = ("shapes", "fmnist")


def make_benchmark(
    kind: str,
    out: Path,
    *,
    seed: int = 0,
    size: str = "default",
    hard_only_train: bool = False,
    train_variants: int = TRAIN_VARIANTS,
    fmnist_dir: Path | None = None,
    progress: bool = True,
) -> dict:
    """Write benchmark ``kind`` ("shapes" or "fmnist") of ``size`` ("tiny", "small",
    "default") into ``out`` in both layouts, deterministically from ``seed``.

    ``hard_only_train`` writes the variant whose train split lists only the hard target.
    ``train_variants``: fresh phrasings per train query (the ``caption_variants`` pool).
    ``fmnist_dir``: folder of the Fashion-MNIST idx files (default ``$DQECIR_FMNIST_DIR``,
    else /usr/share/datasets/fashion-mnist). Returns a JSON-able summary (per split image and
    query counts, seconds taken, bytes on disk).
    """
    if kind == "shapes":
        from dqecir.data.synthetic.shapes import ShapesBenchmark

        definition = ShapesBenchmark()
    elif kind == "fmnist":
        from dqecir.data.synthetic.fmnist import FmnistBenchmark

        definition = FmnistBenchmark(fmnist_dir)
    else:
        raise ValueError(f"unknown benchmark {kind!r} (choose one of {KINDS})")
    return build_benchmark(
        definition,
        Path(out),
        seed=seed,
        size=size,
        hard_only_train=hard_only_train,
        train_variants=train_variants,
        progress=progress,
    )


__all__ = ["KINDS", "SIZES", "chance_levels", "make_benchmark"]
