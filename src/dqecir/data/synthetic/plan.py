"""What an embedded benchmark is before anything is written: its splits and their names in
both layouts, the size presets, planned images, the definition a benchmark kind provides
(:class:`BenchmarkDefinition`: ``shapes.ShapesBenchmark``, ``fmnist.FmnistBenchmark``) and the
planning helpers both kinds use.

A definition only plans its images (split, instance, attributes, render parameters) and renders
one image; queries (:mod:`.queries`), files (:mod:`.writers`) and the build (:mod:`.build`) are
the same for every kind, so that their files follow one contract.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")
CIRR_SPLIT = {"train": "train", "val": "val", "test": "test1"}
CIRR_DIR = {"train": "train", "val": "dev", "test": "test1"}
CIRCO_SPLIT = {"train": "train", "val": "val", "test": "test"}
IMAGE_SIZE = 64


@dataclass(frozen=True)
class SizePreset:
    """Approximate image counts (rounded to whole instances) and exact query counts per split."""

    images: dict[str, int]
    queries: dict[str, int]


SIZES = {
    "tiny": SizePreset(
        {"train": 150, "val": 80, "test": 80}, {"train": 300, "val": 60, "test": 60}
    ),
    "small": SizePreset(
        {"train": 800, "val": 400, "test": 800}, {"train": 2500, "val": 300, "test": 600}
    ),
    "default": SizePreset(
        {"train": 3000, "val": 1600, "test": 3200}, {"train": 10000, "val": 1000, "test": 2000}
    ),
}
MIN_GALLERY = 60
TRAIN_VARIANTS = 8
"""Fresh phrasings per train query (a pool the trainer draws a new one from every epoch)."""


@dataclass
class ImageDraft:
    """An image as a benchmark plans it, before ids are given out."""

    split: str
    instance: int
    attrs: dict[str, str]
    render: dict = field(default_factory=dict)
    """Parameters the benchmark's renderer reads (seed, jitter, source index...)."""
    extra: dict = field(default_factory=dict)
    """JSON-able facts written to meta.json next to the attributes (e.g. source index)."""


@dataclass
class ImageSpec:
    """A planned image with its id. Its CIRR name is ``<cirr dir>-<6-digit id>``."""

    id: int
    split: str
    instance: int
    attrs: dict[str, str]
    render: dict
    extra: dict

    @property
    def name(self) -> str:
        return f"{CIRR_DIR[self.split]}-{self.id:06d}"

    @property
    def pair(self) -> tuple[str, str]:
        return (self.attrs["color"], self.attrs["shape"])


class BenchmarkDefinition(Protocol):
    """What ``shapes`` and ``fmnist`` provide to :func:`build_benchmark`."""

    name: str
    vocab: dict[str, tuple[str, ...]]
    kind_mix: dict[str, float]
    num_heldout: int
    thing: str
    """The generic noun of CIRCO's ``shared_concept`` for a ``both`` query."""

    def plan_images(
        self, rng: np.random.Generator, preset: SizePreset, heldout: frozenset[tuple[str, str]]
    ) -> list[ImageDraft]: ...

    def renderer(self, images: Sequence[ImageSpec]) -> Callable[[ImageSpec], Image.Image]: ...

    def settings(self) -> dict: ...


# ---- planning helpers ----------------------------------------------------------------------


def choose_heldout(
    rng: np.random.Generator, colors: Sequence[str], shapes: Sequence[str], k: int
) -> frozenset[tuple[str, str]]:
    """``k`` (color, shape) pairs kept out of train, with distinct colors and distinct shapes,
    so every single color and shape still occurs in train; only the combination is new."""
    if k > min(len(colors), len(shapes)):
        raise ValueError(f"cannot hold out {k} pairs with distinct colors and shapes")
    cs = [colors[i] for i in rng.permutation(len(colors))[:k]]
    ss = [shapes[i] for i in rng.permutation(len(shapes))[:k]]
    return frozenset(zip(cs, ss, strict=True))


def instances_for(preset: SizePreset, split: str, per_instance: int) -> int:
    return max(1, round(preset.images[split] / per_instance))


class Deck:
    """Draws values in reshuffled rounds, so each value comes up about equally often even in a
    tiny split (independent draws can leave a color with a single shape, and then the
    6-member rule of a query cannot be met)."""

    def __init__(self, rng: np.random.Generator, values: Sequence[str]) -> None:
        self.rng, self.values, self.queue = rng, tuple(values), []

    def draw(self, k: int = 1, allowed: Callable[[str], bool] = lambda v: True) -> list[str]:
        """``k`` distinct values passing ``allowed``, taken from the front of the deck."""
        if sum(map(allowed, self.values)) < k:
            raise ValueError(f"fewer than {k} allowed values in {self.values}")
        picked: list[str] = []
        while len(picked) < k:
            if not any(allowed(v) and v not in picked for v in self.queue):
                self.queue += [self.values[int(i)] for i in self.rng.permutation(len(self.values))]
            i = next(i for i, v in enumerate(self.queue) if allowed(v) and v not in picked)
            picked.append(self.queue.pop(i))
        return picked


def assign_ids(drafts: Sequence[ImageDraft], rng: np.random.Generator) -> list[ImageSpec]:
    """Give out ids split by split (train first), in a shuffled order within each split so that
    consecutive ids do not reveal an instance."""
    specs: list[ImageSpec] = []
    for split in SPLITS:
        part = [d for d in drafts if d.split == split]
        for i in rng.permutation(len(part)):
            d = part[int(i)]
            specs.append(ImageSpec(len(specs), d.split, d.instance, d.attrs, d.render, d.extra))
    return specs


def kind_counts(n: int, mix: dict[str, float]) -> dict[str, int]:
    """Split ``n`` by the fractions in ``mix`` (largest remainders get the rest)."""
    total = sum(mix.values())
    raw = {k: n * v / total for k, v in mix.items()}
    counts = {k: int(np.floor(v)) for k, v in raw.items()}
    rest = n - sum(counts.values())
    for k in sorted(raw, key=lambda k: counts[k] - raw[k])[:rest]:
        counts[k] += 1
    return counts
