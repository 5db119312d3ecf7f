"""What both embedded benchmarks share: size presets, held-out combinations, query generation
and the writers of the CIRR and CIRCO layouts (captions come from
:mod:`dqecir.data.synthetic.phrasing`: train phrasing for train, and each val / test split written
once per phrasing variant, ``val`` / ``val-unseen`` / ``val-newforms`` / ``val-newwords``).

A benchmark definition (``shapes.ShapesBenchmark``, ``fmnist.FmnistBenchmark``) only plans its
images (split, instance, attributes, render parameters) and renders one image; everything
else happens here, the same way for both, so that their files follow one contract.

Query kinds and their valid targets (``gt``), within one split's gallery:

- ``color``: the same instance with only the color changed (a unique target);
- ``size`` (shapes only): the same instance with only the size changed (a unique target);
- ``shape``: every image whose (color, shape) pair is (reference color, new shape);
- ``both``: every image whose (color, shape) pair is (new color, new shape).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import yaml
from PIL import Image
from tqdm import tqdm

from dqecir.data.synthetic.phrasing import VARIANTS, Caption, Phrasing
from dqecir.errors import DataError

SPLITS = ("train", "val", "test")
CIRR_SPLIT = {"train": "train", "val": "val", "test": "test1"}
CIRR_DIR = {"train": "train", "val": "dev", "test": "test1"}
CIRCO_SPLIT = {"train": "train", "val": "val", "test": "test"}
IMAGE_SIZE = 64
GENERATOR = "dqecir make-benchmark"
PNG_COMPRESS_LEVEL = 1
OWN_ENTRIES = {"cirr", "circo", "meta.json"}


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


@dataclass
class QuerySpec:
    pairid: int
    split: str
    kind: str
    reference: ImageSpec
    target: ImageSpec
    gt: list[ImageSpec]
    members: list[ImageSpec]
    captions: dict[str, list[Caption]]
    """Phrasing variant -> captions: train queries have ``seen`` only, as a pool of fresh
    phrasings (the first is the annotation's ``caption``); val / test queries one caption per
    variant of :data:`dqecir.data.synthetic.phrasing.VARIANTS`."""
    shared_concept: str
    heldout: bool

    @property
    def caption(self) -> Caption:
        return self.captions["seen"][0]


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


# ---- query generation ----------------------------------------------------------------------


class _SplitIndex:
    """Look-ups over one split's gallery."""

    def __init__(self, images: Sequence[ImageSpec]) -> None:
        self.images = list(images)
        self.by_instance: dict[int, list[ImageSpec]] = defaultdict(list)
        self.by_pair: dict[tuple[str, str], list[ImageSpec]] = defaultdict(list)
        self.by_color: dict[str, list[ImageSpec]] = defaultdict(list)
        self.by_shape: dict[str, list[ImageSpec]] = defaultdict(list)
        for im in self.images:
            self.by_instance[im.instance].append(im)
            self.by_pair[im.pair].append(im)
            self.by_color[im.attrs["color"]].append(im)
            self.by_shape[im.attrs["shape"]].append(im)


def _differs_only_in(a: dict[str, str], b: dict[str, str], attr: str) -> bool:
    return a[attr] != b[attr] and all(a[k] == b[k] for k in a if k != attr)


def _units(kind: str, idx: _SplitIndex, vocab: dict[str, tuple[str, ...]]) -> list[tuple]:
    """Every distinct (reference, change) a query of ``kind`` can be made of in this split."""
    units: list[tuple] = []
    for r in idx.images:
        if kind in ("color", "size"):
            units += [
                (r, t.id)
                for t in idx.by_instance[r.instance]
                if _differs_only_in(r.attrs, t.attrs, kind)
            ]
        elif kind == "shape":
            c = r.attrs["color"]
            units += [
                (r, (c, s)) for s in vocab["shape"] if s != r.attrs["shape"] and idx.by_pair[(c, s)]
            ]
        elif kind == "both":
            units += [
                (r, (c, s))
                for c in vocab["color"]
                for s in vocab["shape"]
                if c != r.attrs["color"] and s != r.attrs["shape"] and idx.by_pair[(c, s)]
            ]
        else:
            raise ValueError(f"unknown query kind {kind!r}")
    return units


def _resolve(
    unit: tuple, idx: _SplitIndex, by_id: dict[int, ImageSpec], rng: np.random.Generator
) -> tuple[ImageSpec, list[ImageSpec]]:
    """Hard target and every valid target of one unit. A pair change prefers the reference's
    own instance as hard target where it holds one (the same scene with the new shape)."""
    r, change = unit
    if isinstance(change, int):
        t = by_id[change]
        return t, [t]
    gt = sorted(idx.by_pair[change], key=lambda im: im.id)
    own = [im for im in gt if im.instance == r.instance]
    pool = own or gt
    return pool[int(rng.integers(len(pool)))], gt


def _pick_distractors(
    pool: Sequence[ImageSpec], ok: Callable[[ImageSpec], bool], n: int, rng: np.random.Generator
) -> list[ImageSpec] | None:
    """``n`` distinct images of ``pool`` passing ``ok`` (random tries first, then a full scan),
    or None where the pool holds fewer."""
    chosen: list[ImageSpec] = []
    for _ in range(20 * n):
        im = pool[int(rng.integers(len(pool)))]
        if ok(im) and im not in chosen:
            chosen.append(im)
            if len(chosen) == n:
                return chosen
    rest = [im for im in pool if ok(im) and im not in chosen]
    if len(rest) < n - len(chosen):
        return None
    picks = rng.choice(len(rest), size=n - len(chosen), replace=False)
    return chosen + [rest[int(i)] for i in picks]


def _members(
    r: ImageSpec, t: ImageSpec, idx: _SplitIndex, rng: np.random.Generator
) -> list[ImageSpec] | None:
    """Reference, target, 2 images with the target's shape in another color and 2 with the
    target's color in another shape, in a shuffled order; None where the split lacks them."""
    tc, ts = t.pair
    same_shape = _pick_distractors(
        idx.by_shape[ts], lambda im: im.attrs["color"] != tc and im.id not in (r.id, t.id), 2, rng
    )
    same_color = _pick_distractors(
        idx.by_color[tc], lambda im: im.attrs["shape"] != ts and im.id not in (r.id, t.id), 2, rng
    )
    if same_shape is None or same_color is None:
        return None
    members = [r, t, *same_shape, *same_color]
    return [members[int(i)] for i in rng.permutation(len(members))]


@dataclass
class _Draft:
    kind: str
    reference: ImageSpec
    target: ImageSpec
    gt: list[ImageSpec]
    members: list[ImageSpec]


def _drafts_of_kind(
    kind: str,
    count: int,
    split: str,
    idx: _SplitIndex,
    by_id: dict[int, ImageSpec],
    vocab: dict[str, tuple[str, ...]],
    rng: np.random.Generator,
) -> list[_Draft]:
    """``count`` distinct queries of ``kind``: units in a random order, each kept where the
    split holds the distractors its 6 members need (tiny splits lack them now and then)."""
    units = _units(kind, idx, vocab)
    drafts: list[_Draft] = []
    for i in rng.permutation(len(units)):
        if len(drafts) == count:
            break
        r = units[int(i)][0]
        target, gt = _resolve(units[int(i)], idx, by_id, rng)
        members = _members(r, target, idx, rng)
        if members is not None:
            drafts.append(_Draft(kind, r, target, gt, members))
    if len(drafts) < count:
        raise DataError(
            f"split {split}: only {len(drafts)} distinct {kind} queries possible "
            f"({len(units)} before the 6-member rule), {count} asked; use a larger size"
        )
    return drafts


def make_queries(
    split: str,
    images: Sequence[ImageSpec],
    n: int,
    definition: BenchmarkDefinition,
    heldout: frozenset[tuple[str, str]],
    rng: np.random.Generator,
    phrasing: Phrasing,
    caption_rng: np.random.Generator,
    train_variants: int = 1,
) -> list[QuerySpec]:
    """``n`` distinct queries over one split's gallery, kinds mixed as the definition says,
    in a shuffled order; ``pairid`` is the position in that order.

    Captions come from ``phrasing`` with their own generator (``caption_rng``), so the queries
    themselves do not depend on how many captions are written: ``train_variants`` fresh train
    phrasings per train query, one caption per phrasing variant for val and test."""
    idx = _SplitIndex(images)
    by_id = {im.id: im for im in images}
    drafts: list[_Draft] = []
    for kind, count in kind_counts(n, definition.kind_mix).items():
        drafts += _drafts_of_kind(kind, count, split, idx, by_id, definition.vocab, rng)
    queries = []
    for pairid, i in enumerate(rng.permutation(len(drafts))):
        d = drafts[int(i)]
        new = dict(d.reference.attrs)
        new["color"], new["shape"] = d.target.pair
        if d.kind == "size":
            new["size"] = d.target.attrs["size"]
        ref = d.reference.attrs

        def write(variant: str, ref: dict = ref, new: dict = new, kind: str = d.kind) -> Caption:
            return phrasing.caption(kind, ref, new, caption_rng, variant)

        if split == "train":
            captions = {"seen": [write("seen") for _ in range(max(1, train_variants))]}
        else:
            captions = {v: [write(v)] for v in VARIANTS}
        queries.append(
            QuerySpec(
                pairid=pairid,
                split=split,
                kind=d.kind,
                reference=d.reference,
                target=d.target,
                gt=d.gt,
                members=d.members,
                captions=captions,
                shared_concept=shared_concept(d.kind, d.reference.attrs, definition),
                heldout=d.target.pair in heldout,
            )
        )
    return queries


def shared_concept(kind: str, ref: dict[str, str], definition: BenchmarkDefinition) -> str:
    """CIRCO's ``shared_concept``: what reference and target have in common."""
    thing = definition.thing
    if kind == "color":
        return ref["shape"]
    if kind == "shape":
        return ref["color"]
    if kind == "size":
        return f"{ref['color']} {ref['shape']}"
    return thing


# ---- writing -------------------------------------------------------------------------------


def _json_lines(obj: object, expand: Collection[str] = ()) -> str:
    """One list item or one top-level key per line (keys in ``expand`` hold dicts written one
    entry per line too): readable and diffable, and each line goes through json's C encoder
    (``indent`` would switch json to its slow pure-Python encoder)."""
    dump = json.dumps
    if isinstance(obj, list):
        lines = [dump(v, ensure_ascii=False) for v in obj]
        return "[\n" + ",\n".join(lines) + "\n]" if lines else "[]"
    if isinstance(obj, dict):
        lines = [
            f"{dump(k)}: {_json_lines(v) if k in expand else dump(v, ensure_ascii=False)}"
            for k, v in obj.items()
        ]
        return "{\n" + ",\n".join(lines) + "\n}" if lines else "{}"
    return dump(obj, ensure_ascii=False)


def write_json(path: Path, obj: object, expand: Collection[str] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_json_lines(obj, expand) + "\n", encoding="utf-8")


def circo_file_name(image_id: int) -> str:
    return f"{image_id:012d}.png"


def variant_split(layout: dict[str, str], split: str, variant: str) -> str:
    """File name of a split in one phrasing variant: ``test1`` (seen) or ``test1-unseen``."""
    return layout[split] if variant == "seen" else f"{layout[split]}-{variant}"


def _caption_fields(q: QuerySpec, variant: str) -> tuple[str, dict]:
    caps = q.captions[variant]
    extra: dict = {"mentions": list(caps[0].mentions)}
    if len(caps) > 1:
        extra["caption_variants"] = [c.text for c in caps]
        extra["variant_mentions"] = [list(c.mentions) for c in caps]
    return caps[0].text, extra


def cirr_record(q: QuerySpec, hard_only: bool, variant: str = "seen") -> dict:
    gt = [q.target] if hard_only else q.gt
    caption, extra = _caption_fields(q, variant)
    return {
        "pairid": q.pairid,
        "reference": q.reference.name,
        "target_hard": q.target.name,
        "target_soft": {im.name: 1.0 for im in gt},
        "caption": caption,
        "img_set": {
            "id": q.pairid,
            "members": [im.name for im in q.members],
            "reference_rank": q.members.index(q.reference),
            "target_rank": q.members.index(q.target),
        },
        "kind": q.kind,
        "heldout": q.heldout,
        "phrasing": variant,
        **extra,
    }


def circo_record(q: QuerySpec, hard_only: bool, variant: str = "seen") -> dict:
    gt = [q.target] if hard_only else q.gt
    caption, extra = _caption_fields(q, variant)
    return {
        "id": q.pairid,
        "reference_img_id": q.reference.id,
        "target_img_id": q.target.id,
        "relative_caption": caption,
        "shared_concept": q.shared_concept,
        "gt_img_ids": [im.id for im in gt],
        "kind": q.kind,
        "heldout": q.heldout,
        "phrasing": variant,
        **extra,
    }


def write_annotations(
    root: Path,
    images: Sequence[ImageSpec],
    queries: dict[str, list[QuerySpec]],
    hard_only_train: bool,
    lexicon: dict | None = None,
) -> None:
    """Every JSON file of both layouts (the images are written by :func:`write_images`): each
    val / test split once per phrasing variant (``val``, ``val-unseen``, ...), and the train
    phrasing's attribute lexicon as ``lexicon.yaml`` in each layout."""
    cirr, circo = root / "cirr", root / "circo"
    for split in SPLITS:
        hard_only = hard_only_train and split == "train"
        split_images = [im for im in images if im.split == split]
        variants = ["seen"] if split == "train" else list(VARIANTS)
        for v in variants:
            cs = variant_split(CIRR_SPLIT, split, v)
            write_json(
                cirr / "image_splits" / f"split.rc2.{cs}.json",
                {im.name: f"./{CIRR_DIR[split]}/{im.name}.png" for im in split_images},
            )
            write_json(
                cirr / "captions" / f"cap.rc2.{cs}.json",
                [cirr_record(q, hard_only, v) for q in queries[split]],
            )
            ann, co = circo / "annotations", variant_split(CIRCO_SPLIT, split, v)
            write_json(ann / f"{co}.json", [circo_record(q, hard_only, v) for q in queries[split]])
            write_json(ann / f"gallery.{co}.json", [im.id for im in split_images])
    info = [
        {
            "id": im.id,
            "file_name": circo_file_name(im.id),
            "width": IMAGE_SIZE,
            "height": IMAGE_SIZE,
        }
        for im in images
    ]
    write_json(
        circo / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json",
        {"images": info},
    )
    if lexicon is not None:
        text = LEXICON_HEADER + yaml.safe_dump(lexicon, sort_keys=False, allow_unicode=True)
        for layout in (cirr, circo):
            (layout / "lexicon.yaml").write_text(text, encoding="utf-8")


LEXICON_HEADER = (
    "# Attribute lexicon of this benchmark's TRAIN phrasing (attribute -> value -> words), written\n"
    "# by dqecir make-benchmark. It holds no held-out word: the L_attr labels of a model trained\n"
    "# here come from it (config data.lexicon: benchmark).\n"
)


def _link(src: Path, dst: Path, hard: bool) -> bool:
    """Hard-link ``dst`` to ``src`` (or a relative symlink); returns whether it is hard."""
    if hard:
        try:
            os.link(src, dst)
            return True
        except OSError:
            pass
    os.symlink(os.path.relpath(src, dst.parent), dst)
    return False


def write_images(
    root: Path,
    images: Sequence[ImageSpec],
    render: Callable[[ImageSpec], Image.Image],
    *,
    desc: str,
    progress: bool = True,
) -> str:
    """Render every image once into the CIRR folders and link it into the CIRCO folder.
    Returns the link mode used ("hardlink" or "symlink")."""
    for d in CIRR_DIR.values():
        (root / "cirr" / d).mkdir(parents=True, exist_ok=True)
    coco = root / "circo" / "COCO2017_unlabeled" / "unlabeled2017"
    coco.mkdir(parents=True, exist_ok=True)
    hard = True
    for im in tqdm(images, desc=desc, unit="img", disable=not progress):
        path = root / "cirr" / CIRR_DIR[im.split] / f"{im.name}.png"
        img = render(im)
        if img.size != (IMAGE_SIZE, IMAGE_SIZE) or img.mode != "RGB":
            raise DataError(f"renderer gave {img.mode} {img.size}", record=im.name)
        img.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        hard = _link(path, coco / circo_file_name(im.id), hard)
    return "hardlink" if hard else "symlink"


def meta_document(
    definition: BenchmarkDefinition,
    images: Sequence[ImageSpec],
    heldout: frozenset[tuple[str, str]],
    *,
    seed: int,
    size: str,
    hard_only_train: bool,
    phrasing: Phrasing,
    train_variants: int,
) -> dict:
    return {
        "generator": GENERATOR,
        "benchmark": definition.name,
        "seed": seed,
        "size": size,
        "hard_only_train": hard_only_train,
        "image_size": [IMAGE_SIZE, IMAGE_SIZE],
        "splits": {
            s: {"cirr": CIRR_SPLIT[s], "cirr_dir": CIRR_DIR[s], "circo": CIRCO_SPLIT[s]}
            for s in SPLITS
        },
        "vocab": {k: list(v) for k, v in definition.vocab.items()},
        "phrasing": phrasing_document(phrasing, train_variants),
        "kind_mix": definition.kind_mix,
        "heldout_combinations": sorted([c, s] for c, s in heldout),
        "settings": definition.settings(),
        "images": {
            im.name: {
                "id": im.id,
                "split": im.split,
                **im.attrs,
                "instance": im.instance,
                **im.extra,
            }
            for im in images
        },
    }


def phrasing_document(phrasing: Phrasing, train_variants: int) -> dict:
    """What meta.json says of the phrasing: the variants, the counts and both sides' words and
    forms (so a check can confirm that no held-out word or form reaches a train caption)."""
    sides = {}
    for name, side in phrasing.sides.items():
        sides[name] = {
            "words": {a: {v: list(w) for v, w in vals.items()} for a, vals in side.words.items()},
            "forms": {k: [f.text for f in v] for k, v in side.forms.items()},
            "prefix": list(side.prefix) + list(side.polite_prefix),
            "suffix": list(side.suffix),
            "join": list(side.join),
            "things": list(side.things),
            "comparatives": {d: list(w) for d, w in side.comparatives.items()},
            "resize": {d: list(w) for d, w in side.resize.items()},
        }
    return {
        "variants": {v: {"forms": f, "words": w} for v, (f, w) in VARIANTS.items()},
        "train_variants": train_variants,
        "params": dataclasses.asdict(phrasing.params),
        "summary": phrasing.summary(),
        "sides": sides,
    }


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


# ---- chance levels -------------------------------------------------------------------------


def random_ap_at_k(num_candidates: int, num_gt: int, k: int) -> float:
    """Expected CIRCO AP@K (a fraction) of a uniformly random ranking of ``num_candidates``
    images of which ``num_gt`` are ground truths.

    ``AP@K = sum_{i<=K} P@i rel(i) / min(K, G)`` and, for a random order of N images,
    ``E[P@i rel(i)] = (G/N + (i-1) G(G-1) / (N(N-1))) / i`` (rel(i) and each earlier rel(j)
    are relevant together with probability G(G-1) / (N(N-1))).
    """
    n, g = num_candidates, num_gt
    if g == 0 or n == 0:
        return 0.0
    pair = g * (g - 1) / (n * (n - 1)) if n > 1 else 0.0
    total = sum((g / n + (i - 1) * pair) / i for i in range(1, min(k, n) + 1))
    return total / min(k, g)


def chance_levels(root: Path, split: str = "test", ks: Sequence[int] = (1, 5, 10, 25, 50)) -> dict:
    """Metrics of a random ranking on one split of a generated benchmark (CIRCO layout under
    ``root/circo``), overall, per query kind and on held-out queries, in percent.

    The reference is removed from the ranking (N = gallery - 1 candidates): Recall@K on the
    hard target is K / N, Recall_subset@K is K / 5, mAP@K is :func:`random_ap_at_k` averaged
    over the queries' actual ground-truth counts.
    """
    ann = Path(root) / "circo" / "annotations"
    records = json.loads((ann / f"{split}.json").read_text(encoding="utf-8"))
    gallery = json.loads((ann / f"gallery.{split}.json").read_text(encoding="utf-8"))
    n = len(gallery) - 1

    def levels(recs: list[dict]) -> dict:
        out: dict = {"queries": len(recs)}
        if not recs:
            return out
        out["mean_gt"] = round(float(np.mean([len(r["gt_img_ids"]) for r in recs])), 2)
        for k in ks:
            out[f"R@{k}"] = round(100 * min(k, n) / n, 3)
        for k in (1, 2, 3):
            out[f"Rsubset@{k}"] = round(100 * k / 5, 3)
        for k in ks:
            aps = [random_ap_at_k(n, len(r["gt_img_ids"]), k) for r in recs]
            out[f"mAP@{k}"] = round(100 * float(np.mean(aps)), 3)
        return out

    kinds = sorted({r["kind"] for r in records})
    return {
        "split": split,
        "gallery": len(gallery),
        "all": levels(records),
        "by_kind": {k: levels([r for r in records if r["kind"] == k]) for k in kinds},
        "heldout": levels([r for r in records if r["heldout"]]),
    }


# ---- orchestration -------------------------------------------------------------------------


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
