"""Building an embedded benchmark: plan, render and write it into a folder, atomically (in a
sibling temporary folder moved into place at the end), from a registered benchmark kind.

Kinds register themselves (``registry.EMBEDDED``): :func:`make_benchmark` builds any of them.
How to add one: docs/extending.md, "Benchmark".
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from dqecir.data.synthetic.phrasing import Phrasing
from dqecir.data.synthetic.plan import (
    MIN_GALLERY,
    SIZES,
    SPLITS,
    TRAIN_VARIANTS,
    BenchmarkDefinition,
    ImageSpec,
    assign_ids,
    choose_heldout,
)
from dqecir.data.synthetic.queries import QuerySpec, make_queries
from dqecir.data.synthetic.writers import (
    GENERATOR,
    LAYOUTS,
    meta_document,
    write_annotations,
    write_images,
    write_json,
)
from dqecir.errors import DataError
from dqecir.registry import EMBEDDED

OWN_ENTRIES = {*LAYOUTS, "meta.json"}


def disk_usage(root: Path) -> int:
    """Bytes on disk under ``root``, each inode counted once (hard links share their blocks)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _check_out(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier output of this command."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError("output exists and is not a folder", file=out)
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return
    meta = out / "meta.json"
    try:
        ours = json.loads(meta.read_text(encoding="utf-8")).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours or not entries <= OWN_ENTRIES:
        raise DataError(
            "output folder is not empty and is not an earlier benchmark of this command "
            f"(holds {sorted(entries)[:5]}); choose another --out",
            file=out,
        )


def _replace(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def split_summary(images: Sequence[ImageSpec], queries: Iterable[QuerySpec]) -> dict:
    qs = list(queries)
    kinds: dict[str, int] = defaultdict(int)
    for q in qs:
        kinds[q.kind] += 1
    return {
        "images": len(images),
        "queries": len(qs),
        "queries_by_kind": dict(sorted(kinds.items())),
        "heldout_queries": sum(q.heldout for q in qs),
        "mean_gt": round(float(np.mean([len(q.gt) for q in qs])), 3) if qs else 0.0,
    }


def build_benchmark(
    definition: BenchmarkDefinition,
    out: Path,
    *,
    seed: int,
    size: str,
    hard_only_train: bool,
    train_variants: int = TRAIN_VARIANTS,
    progress: bool = True,
) -> dict:
    """Plan, render and write one benchmark into ``out`` (built in a sibling temporary folder
    and moved into place at the end, so an interrupted run leaves no half benchmark).

    ``train_variants``: fresh phrasings written per train query (``caption_variants``)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r} (choose one of {sorted(SIZES)})")
    start = time.perf_counter()
    out = Path(out)
    _check_out(out)
    preset = SIZES[size]
    rng = np.random.default_rng([seed, 0x5EED])
    heldout = choose_heldout(
        rng, definition.vocab["color"], definition.vocab["shape"], definition.num_heldout
    )
    images = assign_ids(definition.plan_images(rng, preset, heldout), rng)
    per_split = {s: [im for im in images if im.split == s] for s in SPLITS}
    for s, ims in per_split.items():
        if len(ims) < MIN_GALLERY:
            raise DataError(f"split {s} has {len(ims)} images, fewer than {MIN_GALLERY}")
    phrasing = Phrasing(definition.name, seed)
    queries = {
        s: make_queries(
            s,
            per_split[s],
            preset.queries[s],
            definition,
            heldout,
            rng,
            phrasing,
            np.random.default_rng([seed, 0xCA9, i]),
            train_variants,
        )  # fmt: skip
        for i, s in enumerate(SPLITS)
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        write_annotations(tmp, images, queries, hard_only_train, phrasing.lexicon("train"))
        meta = meta_document(
            definition, images, heldout, seed=seed, size=size, hard_only_train=hard_only_train,
            phrasing=phrasing, train_variants=train_variants,
        )  # fmt: skip
        write_json(tmp / "meta.json", meta, expand=("images",))
        render = definition.renderer(images)
        link_mode = write_images(
            tmp, images, render, desc=f"{definition.name} images", progress=progress
        )
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "benchmark": definition.name,
        "out": str(out),
        "seed": seed,
        "size": size,
        "hard_only_train": hard_only_train,
        "train_variants": train_variants,
        "phrasing": phrasing.summary(),
        "splits": {s: split_summary(per_split[s], queries[s]) for s in SPLITS},
        "heldout_combinations": sorted([c, s] for c, s in heldout),
        "link_mode": link_mode,
        "seconds": round(time.perf_counter() - start, 2),
        "bytes_on_disk": disk_usage(out),
    }


def make_benchmark(
    kind: str,
    out: Path,
    *,
    seed: int = 0,
    size: str = "default",
    hard_only_train: bool = False,
    train_variants: int = TRAIN_VARIANTS,
    progress: bool = True,
    **options: object,
) -> dict:
    """Write the registered benchmark kind ``kind`` ("shapes", "fmnist") of ``size`` ("tiny",
    "small", "default") into ``out`` in both layouts, deterministically from ``seed``.

    ``hard_only_train`` writes the variant whose train split lists only the hard target.
    ``train_variants``: fresh phrasings per train query (the ``caption_variants`` pool).
    ``options`` go to the kind's definition (fmnist: ``fmnist_dir``, the folder of the
    Fashion-MNIST idx files; default ``$DQECIR_FMNIST_DIR``, else
    /usr/share/datasets/fashion-mnist). Returns a JSON-able summary (per split image and query
    counts, seconds taken, bytes on disk).
    """
    factory = EMBEDDED.get(kind)
    try:
        definition = factory(**options)
    except TypeError as e:
        raise ValueError(f"benchmark kind {kind!r} does not take {sorted(options)}: {e}") from e
    return build_benchmark(
        definition,
        Path(out),
        seed=seed,
        size=size,
        hard_only_train=hard_only_train,
        train_variants=train_variants,
        progress=progress,
    )
