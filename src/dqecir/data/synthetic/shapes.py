"""The ``shapes`` benchmark: procedural scenes drawn with Pillow.

A scene (the *instance*) fixes a layout: a light background with a gradient and a few faint
lines, the position of one object and its base rotation. Each instance is drawn 7 times:
base color c0 and two other colors c1, c2, each at two sizes z0, z1 (6 images, shape s0), plus
the base color and size with another shape s1 (the same scene with a new shape). Every
image adds its own jitter: position (±2 px), rotation (±8°), radius (±5 %), object color
(±10 per channel) and background brightness (±4). Drawn at 128 px and box-filtered to 64 px
(anti-aliasing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from dqecir.data.synthetic.plan import (
    IMAGE_SIZE,
    SPLITS,
    Deck,
    ImageDraft,
    ImageSpec,
    SizePreset,
    instances_for,
)
from dqecir.registry import EMBEDDED

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 35, 35),
    "orange": (245, 130, 20),
    "yellow": (235, 205, 25),
    "green": (40, 150, 50),
    "teal": (20, 145, 145),
    "blue": (35, 75, 205),
    "purple": (130, 50, 175),
    "pink": (240, 110, 175),
    "brown": (125, 75, 35),
    "gray": (125, 125, 125),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross")
SIZE_RADIUS = {"small": 7.0, "medium": 11.5, "large": 16.0}
IMAGES_PER_INSTANCE = 7
SUPERSAMPLE = 2


@EMBEDDED.register("shapes")
@dataclass
class ShapesBenchmark:
    """Definition of ``shapes`` for :func:`dqecir.data.synthetic.build.build_benchmark`."""

    name: str = "shapes"
    vocab: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "color": tuple(COLORS),
            "shape": SHAPES,
            "size": tuple(SIZE_RADIUS),
        }
    )
    kind_mix: dict[str, float] = field(
        default_factory=lambda: {"color": 0.4, "shape": 0.4, "both": 0.1, "size": 0.1}
    )
    thing: str = "shape"
    num_heldout: int = 7

    def settings(self) -> dict:
        return {
            "images_per_instance": IMAGES_PER_INSTANCE,
            "instance": "scene layout: background, gradient, lines, object position, rotation",
            "colors_rgb": {k: list(v) for k, v in COLORS.items()},
            "size_radius_px": SIZE_RADIUS,
            "supersample": SUPERSAMPLE,
            "jitter": {
                "position_px": 2,
                "rotation_deg": 8,
                "radius_rel": 0.05,
                "color": 10,
                "background": 4,
            },
        }

    def plan_images(
        self, rng: np.random.Generator, preset: SizePreset, heldout: frozenset[tuple[str, str]]
    ) -> list[ImageDraft]:
        drafts: list[ImageDraft] = []
        instance = 0
        for split in SPLITS:
            banned = heldout if split == "train" else frozenset()
            decks = {a: Deck(rng, values) for a, values in self.vocab.items()}
            for _ in range(instances_for(preset, split, IMAGES_PER_INSTANCE)):
                drafts += self._plan_instance(rng, decks, split, instance, banned)
                instance += 1
        return drafts

    def _plan_instance(
        self,
        rng: np.random.Generator,
        decks: dict[str, Deck],
        split: str,
        instance: int,
        banned: frozenset[tuple[str, str]],
    ) -> list[ImageDraft]:
        """7 images of one scene: colors c0..c2 x sizes z0, z1 with shape s0, plus (c0, s1, z0)."""
        (s0,) = decks["shape"].draw()
        c0, c1, c2 = decks["color"].draw(3, lambda c: (c, s0) not in banned)
        (s1,) = decks["shape"].draw(1, lambda s: s != s0 and (c0, s) not in banned)
        z0, z1 = decks["size"].draw(2)
        layout = _layout(rng)
        variants = [(c, s0, z) for c in (c0, c1, c2) for z in (z0, z1)] + [(c0, s1, z0)]
        return [
            ImageDraft(
                split=split,
                instance=instance,
                attrs={"color": c, "shape": s, "size": z},
                render={"layout": layout, "seed": int(rng.integers(2**32))},
            )
            for c, s, z in variants
        ]

    def renderer(self, images: Sequence[ImageSpec]) -> Callable[[ImageSpec], Image.Image]:
        return render_shape


def _layout(rng: np.random.Generator) -> dict:
    """A scene: pale background, gradient, faint lines, object position and rotation."""
    hue = rng.uniform(0, 1, 3)
    bg = (205 + 40 * hue).round().astype(int).tolist()
    lines = [rng.uniform(0, IMAGE_SIZE, 4).round(1).tolist() for _ in range(rng.integers(0, 4))]
    return {
        "bg": bg,
        "gradient": float(rng.uniform(-18, 18)),
        "gradient_axis": int(rng.integers(2)),
        "lines": lines,
        "center": rng.uniform(26, 38, 2).round(2).tolist(),
        "angle": float(rng.uniform(-7, 7)),
    }


def shape_points(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple]:
    """Polygon of ``shape`` centred at (cx, cy), radius ``r``, rotated by ``angle`` degrees."""
    if shape == "circle":
        n, radii, offset = 48, [r], 0.0
    elif shape == "square":
        n, radii, offset = 4, [r * 1.05], 45.0
    elif shape == "triangle":
        n, radii, offset = 3, [r * 1.2], -90.0
    elif shape == "hexagon":
        n, radii, offset = 6, [r], 0.0
    elif shape == "star":
        n, radii, offset = 10, [r * 1.2, r * 0.5], -90.0
    elif shape == "diamond":
        pts = [(0.0, -1.25 * r), (0.7 * r, 0.0), (0.0, 1.25 * r), (-0.7 * r, 0.0)]
        return _place(pts, cx, cy, angle)
    elif shape == "cross":
        a, w = r * 1.1, r * 0.38
        pts = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w)]
        pts += [(w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
        return _place(pts, cx, cy, angle)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    pts = []
    for k in range(n):
        t = math.radians(offset + 360.0 * k / n)
        rad = radii[k % len(radii)]
        pts.append((rad * math.cos(t), rad * math.sin(t)))
    return _place(pts, cx, cy, angle)


def _place(pts: list[tuple[float, float]], cx: float, cy: float, angle: float) -> list[tuple]:
    t = math.radians(angle)
    cos, sin = math.cos(t), math.sin(t)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in pts]


def render_shape(spec: ImageSpec) -> Image.Image:
    """Draw one image of ``spec`` (deterministic from its render seed)."""
    lay, rng = spec.render["layout"], np.random.default_rng(spec.render["seed"])
    s, w = SUPERSAMPLE, IMAGE_SIZE * SUPERSAMPLE
    ramp = np.linspace(-1.0, 1.0, w)
    ramp = ramp[None, :, None] if lay["gradient_axis"] == 0 else ramp[:, None, None]
    bg = np.asarray(lay["bg"], float) + rng.integers(-4, 5)
    pixels = np.broadcast_to(bg + lay["gradient"] * ramp, (w, w, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    line_color = tuple(int(v) for v in np.clip(bg - 22, 0, 255))
    for x0, y0, x1, y1 in lay["lines"]:
        draw.line([(x0 * s, y0 * s), (x1 * s, y1 * s)], fill=line_color, width=2)
    cx, cy = (np.asarray(lay["center"]) + rng.uniform(-2, 2, 2)) * s
    radius = SIZE_RADIUS[spec.attrs["size"]] * (1 + rng.uniform(-0.05, 0.05)) * s
    angle = lay["angle"] + rng.uniform(-8, 8)
    rgb = np.clip(np.asarray(COLORS[spec.attrs["color"]]) + rng.integers(-10, 11, 3), 0, 255)
    fill = tuple(int(v) for v in rgb)
    draw.polygon(shape_points(spec.attrs["shape"], cx, cy, radius, angle), fill=fill)
    return img.reduce(s)
