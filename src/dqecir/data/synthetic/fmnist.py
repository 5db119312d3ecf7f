"""The ``fmnist`` benchmark: real Fashion-MNIST garments tinted into 8 colors.

An *instance* is one Fashion-MNIST garment (one index of the idx files): our train split draws
from Fashion-MNIST's train part, val and test from disjoint indices of its t10k part, categories
balanced. Each instance is drawn in 4 distinct colors. Drawing: the 28x28 garment is normalised
to its maximum, upsampled to 56x56 (bilinear), used as alpha (x3, clipped) over a light
background, and the garment is the color scaled by (0.6 + 0.4 x intensity) so its texture stays
visible; per image the color (±8 per channel), the background (light, slightly tinted) and the
position (offset 2..6 px inside 64x64) are jittered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dqecir.data.synthetic.idx import load_fashion_mnist, resolve_fmnist_dir
from dqecir.data.synthetic.plan import (
    IMAGE_SIZE,
    Deck,
    ImageDraft,
    ImageSpec,
    SizePreset,
    instances_for,
)
from dqecir.registry import EMBEDDED

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "orange": (240, 125, 20),
    "yellow": (225, 195, 20),
    "green": (40, 145, 50),
    "teal": (20, 140, 140),
    "blue": (35, 70, 200),
    "purple": (125, 45, 170),
    "pink": (235, 105, 170),
}
CATEGORIES = (
    "t-shirt",
    "trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
"""Fashion-MNIST label i is CATEGORIES[i]."""
COLORS_PER_INSTANCE = 4
GARMENT_SIZE = 56


@EMBEDDED.register("fmnist")
@dataclass
class FmnistBenchmark:
    """Definition of ``fmnist``; ``fmnist_dir`` holds the four Fashion-MNIST idx files (None:
    ``$DQECIR_FMNIST_DIR``, else the Debian package's folder)."""

    fmnist_dir: Path | None = None
    name: str = "fmnist"
    vocab: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"color": tuple(COLORS), "shape": CATEGORIES}
    )
    kind_mix: dict[str, float] = field(
        default_factory=lambda: {"color": 0.4, "shape": 0.4, "both": 0.2}
    )
    thing: str = "garment"
    num_heldout: int = 8

    def __post_init__(self) -> None:
        self.fmnist_dir = resolve_fmnist_dir(self.fmnist_dir)
        self._parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _part(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        if part not in self._parts:
            self._parts[part] = load_fashion_mnist(self.fmnist_dir, part)
        return self._parts[part]

    def settings(self) -> dict:
        return {
            "fmnist_dir": str(self.fmnist_dir),
            "instance": "one Fashion-MNIST garment (part, index)",
            "source_parts": {"train": "train", "val": "t10k", "test": "t10k"},
            "colors_per_instance": COLORS_PER_INSTANCE,
            "colors_rgb": {k: list(v) for k, v in COLORS.items()},
            "garment_px": GARMENT_SIZE,
            "jitter": {"color": 8, "offset_px": [2, 6], "background": [228, 250]},
        }

    def plan_images(
        self, rng: np.random.Generator, preset: SizePreset, heldout: frozenset[tuple[str, str]]
    ) -> list[ImageDraft]:
        counts = {s: instances_for(preset, s, COLORS_PER_INSTANCE) for s in preset.images}
        sources = {"train": self._sources(rng, "train", [counts["train"]])[0]}
        sources["val"], sources["test"] = self._sources(
            rng, "t10k", [counts["val"], counts["test"]]
        )
        drafts: list[ImageDraft] = []
        instance = 0
        for split in ("train", "val", "test"):
            banned = heldout if split == "train" else frozenset()
            part = "train" if split == "train" else "t10k"
            deck = Deck(rng, self.vocab["color"])
            for index, label in sources[split]:
                drafts += self._plan_instance(
                    rng, deck, split, instance, (part, index, label), banned
                )
                instance += 1
        return drafts

    def _sources(
        self, rng: np.random.Generator, part: str, counts: list[int]
    ) -> list[list[tuple[int, int]]]:
        """Disjoint garment indices of ``part`` for each count, categories balanced."""
        labels = self._part(part)[1]
        pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in range(len(CATEGORIES))}
        taken = dict.fromkeys(pools, 0)
        out = []
        for n in counts:
            cats = rng.permutation(np.arange(n) % len(CATEGORIES))
            chosen = []
            for c in cats:
                c = int(c)
                chosen.append((int(pools[c][taken[c]]), c))
                taken[c] += 1
            out.append(chosen)
        return out

    def _plan_instance(
        self,
        rng: np.random.Generator,
        deck: Deck,
        split: str,
        instance: int,
        source: tuple[str, int, int],
        banned: frozenset[tuple[str, str]],
    ) -> list[ImageDraft]:
        """One garment (``source`` = part, index, label) in 4 distinct colors."""
        part, index, label = source
        category = CATEGORIES[label]
        colors = deck.draw(COLORS_PER_INSTANCE, lambda c: (c, category) not in banned)
        return [
            ImageDraft(
                split=split,
                instance=instance,
                attrs={"color": color, "shape": category},
                render={"part": part, "index": index, "seed": int(rng.integers(2**32))},
                extra={"fmnist_part": part, "fmnist_index": index},
            )
            for color in colors
        ]

    def renderer(self, images: Sequence[ImageSpec]) -> Callable[[ImageSpec], Image.Image]:
        arrays = {part: self._part(part)[0] for part in {im.render["part"] for im in images}}

        def render(spec: ImageSpec) -> Image.Image:
            garment = arrays[spec.render["part"]][spec.render["index"]]
            return render_garment(garment, COLORS[spec.attrs["color"]], spec.render["seed"])

        return render


def render_garment(garment: np.ndarray, rgb: tuple[int, int, int], seed: int) -> Image.Image:
    """Tint one 28x28 garment ``rgb`` and place it on a light 64x64 background."""
    rng = np.random.default_rng(seed)
    g = garment.astype(np.float32) / max(1.0, float(garment.max()))
    g = Image.fromarray((g * 255).astype(np.uint8)).resize(
        (GARMENT_SIZE, GARMENT_SIZE), Image.Resampling.BILINEAR
    )
    a = np.asarray(g, np.float32)[..., None] / 255.0
    alpha = np.clip(a * 3.0, 0.0, 1.0)
    color = np.clip(np.asarray(rgb, np.float32) + rng.integers(-8, 9, 3), 0, 255)
    garment_rgb = color * (0.6 + 0.4 * a)
    bg = rng.integers(228, 251) + rng.integers(-5, 6, 3)
    canvas = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    canvas[:] = np.clip(bg, 0, 255)
    ox, oy = (int(v) for v in rng.integers(2, 7, 2))
    patch = canvas[oy : oy + GARMENT_SIZE, ox : ox + GARMENT_SIZE]
    canvas[oy : oy + GARMENT_SIZE, ox : ox + GARMENT_SIZE] = (
        patch * (1 - alpha) + garment_rgb * alpha
    )
    return Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), "RGB")
