"""Query generation over one split's gallery, the same for every benchmark kind.

Query kinds and their valid targets (``gt``), within one split's gallery:

- ``color``: the same instance with only the color changed (a unique target);
- ``size`` (shapes only): the same instance with only the size changed (a unique target);
- ``shape``: every image whose (color, shape) pair is (reference color, new shape);
- ``both``: every image whose (color, shape) pair is (new color, new shape).

Captions come from :mod:`dqecir.data.synthetic.phrasing`: train phrasing for train, and each
val / test query once per phrasing variant.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dqecir.data.synthetic.phrasing import VARIANTS, Caption, Phrasing
from dqecir.data.synthetic.plan import BenchmarkDefinition, ImageSpec, kind_counts
from dqecir.errors import DataError


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
