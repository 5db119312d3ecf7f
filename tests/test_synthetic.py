"""The embedded benchmarks (shapes, fmnist) at size tiny: layouts, ground truths, splits,
held-out combinations, members, kinds, determinism and the hard-only variant."""

from __future__ import annotations

import filecmp
import gzip
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from dqecir.data.formats import load_benchmark, load_circo, load_cirr
from dqecir.data.synthetic import make_benchmark
from dqecir.data.synthetic.idx import read_idx, resolve_fmnist_dir
from dqecir.data.synthetic.plan import Deck, kind_counts
from dqecir.errors import DataError
from dqecir.registry import EMBEDDED

KINDS = tuple(EMBEDDED.names())  # every registered benchmark kind
SPLITS = {"train": ("train", "train"), "val": ("val", "val"), "test": ("test1", "test")}
"""our split -> (CIRR split, CIRCO split)"""

# fmnist needs the Debian Fashion-MNIST files (make system-deps): missing files fail with the
# generator's own error, never a skip
PARAMS = ["shapes", "fmnist"]


def _make(kind: str, out: Path, **kw) -> dict:
    return make_benchmark(kind, out, size="tiny", progress=False, **kw)


@pytest.fixture(scope="module", params=PARAMS)
def bench(request, tmp_path_factory) -> tuple[str, Path, dict, dict]:
    """(kind, root, summary, meta) of one tiny benchmark, seed 0."""
    kind = request.param
    root = tmp_path_factory.mktemp(kind) / "bench"
    summary = _make(kind, root, seed=0)
    meta = json.loads((root / "meta.json").read_text())
    return kind, root, summary, meta


def _load(root: Path, split: str):
    cirr_split, circo_split = SPLITS[split]
    return load_cirr(root / "cirr", cirr_split), load_circo(root / "circo", circo_split)


def _cirr_id(name: str) -> str:
    return str(int(name.rsplit("-", 1)[1]))


def _pair(meta: dict, name: str) -> tuple[str, str]:
    im = meta["images"][name]
    return im["color"], im["shape"]


def _json_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*.json"))


# ---- layouts --------------------------------------------------------------------------------


def test_both_layouts_load_and_agree(bench):
    kind, root, summary, meta = bench
    for split in SPLITS:
        cirr, circo = _load(root, split)
        names = [n for n, im in meta["images"].items() if im["split"] == split]
        assert sorted(cirr.gallery) == sorted(names)
        assert sorted(circo.gallery) == sorted(_cirr_id(n) for n in names)
        assert len(cirr.gallery) >= 60
        assert len(cirr.queries) == len(circo.queries) == summary["splits"][split]["queries"]
        for a, b in zip(cirr.queries, circo.queries, strict=True):
            assert a.qid == b.qid and a.texts == b.texts and a.kind == b.kind
            assert _cirr_id(a.reference) == b.reference and _cirr_id(a.target) == b.target
            assert sorted(map(_cirr_id, a.gt)) == sorted(b.gt)
            assert a.heldout == b.heldout
        assert set(cirr.image_paths) >= set(cirr.gallery)
    raw = json.loads((root / "cirr" / "captions" / "cap.rc2.val.json").read_text())[0]
    assert set(raw) == {
        "pairid", "reference", "target_hard", "target_soft", "caption", "img_set", "kind", "heldout",
        "phrasing", "mentions",
    }  # fmt: skip
    assert set(raw["img_set"]) == {"id", "members", "reference_rank", "target_rank"}
    assert set(raw["target_soft"].values()) == {1.0}
    rec = json.loads((root / "circo" / "annotations" / "test.json").read_text())[0]
    assert set(rec) == {
        "id", "reference_img_id", "target_img_id", "relative_caption", "shared_concept",
        "gt_img_ids", "kind", "heldout", "phrasing", "mentions",
    }  # fmt: skip
    split_map = json.loads((root / "cirr" / "image_splits" / "split.rc2.val.json").read_text())
    name, rel = next(iter(split_map.items()))
    assert name.startswith("dev-") and len(name) == len("dev-000000")
    assert rel == f"./dev/{name}.png"


def test_circo_images_are_hard_links_of_cirr(bench):
    kind, root, summary, meta = bench
    assert summary["link_mode"] == "hardlink"
    info = json.loads(
        (root / "circo/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json").read_text()
    )["images"]
    assert len(info) == len(meta["images"])
    by_id = {e["id"]: e for e in info}
    for name, im in meta["images"].items():
        assert im["id"] == int(_cirr_id(name))
        entry = by_id[im["id"]]
        assert entry["file_name"] == f"{im['id']:012d}.png"
        assert (entry["width"], entry["height"]) == (64, 64)
        cirr_path = root / "cirr" / meta["splits"][im["split"]]["cirr_dir"] / f"{name}.png"
        coco_path = root / "circo/COCO2017_unlabeled/unlabeled2017" / entry["file_name"]
        assert os.stat(cirr_path).st_ino == os.stat(coco_path).st_ino
    with Image.open(cirr_path) as img:
        assert img.size == (64, 64) and img.mode == "RGB"


def test_meta_vocabularies(bench):
    kind, root, summary, meta = bench
    assert meta["benchmark"] == kind and meta["seed"] == 0 and meta["size"] == "tiny"
    assert len(meta["vocab"]["color"]) >= 8
    assert len(meta["vocab"]["shape"]) >= 6
    assert ("size" in meta["vocab"]) == (kind == "shapes")
    for side in ("train", "heldout"):
        for kind_name, n in meta["phrasing"]["summary"][side]["surface_forms"].items():
            assert n >= 100, (side, kind_name, n)
    for im in meta["images"].values():
        for attr, values in meta["vocab"].items():
            assert im[attr] in values


# ---- splits and held-out combinations -------------------------------------------------------


def test_no_instance_shared_across_splits(bench):
    kind, root, summary, meta = bench
    splits_of: dict[object, set[str]] = {}
    for im in meta["images"].values():
        splits_of.setdefault(im["instance"], set()).add(im["split"])
        if kind == "fmnist":
            source = (im["fmnist_part"], im["fmnist_index"])
            splits_of.setdefault(source, set()).add(im["split"])
    assert all(len(s) == 1 for s in splits_of.values())


def test_heldout_combinations(bench):
    kind, root, summary, meta = bench
    heldout = {tuple(p) for p in meta["heldout_combinations"]}
    assert heldout
    train_pairs = {_pair(meta, n) for n, im in meta["images"].items() if im["split"] == "train"}
    assert not heldout & train_pairs
    # every single value still occurs in train: only the combination is new
    assert {c for c, _ in heldout} <= {c for c, _ in train_pairs}
    assert {s for _, s in heldout} <= {s for _, s in train_pairs}
    counts = {}
    for split in SPLITS:
        cirr, _ = _load(root, split)
        for q in cirr.queries:
            assert q.heldout == (_pair(meta, q.target) in heldout)
        counts[split] = sum(q.heldout for q in cirr.queries)
    assert counts["train"] == 0 and counts["test"] > 0


# ---- queries --------------------------------------------------------------------------------


def _expected_gt(meta: dict, gallery: list[str], kind: str, ref: str, target: str) -> set[str]:
    """Every gallery image with the resulting attributes, from meta.json alone."""
    images, r, t = meta["images"], meta["images"][ref], meta["images"][target]
    if kind in ("color", "size"):
        attrs = [a for a in meta["vocab"] if a != kind]
        assert r["instance"] == t["instance"] and r[kind] != t[kind]
        assert all(r[a] == t[a] for a in attrs)
        return {
            n
            for n in gallery
            if images[n]["instance"] == r["instance"]
            and all(images[n][a] == t[a] for a in meta["vocab"])
        }
    assert r["shape"] != t["shape"]
    assert (r["color"] == t["color"]) == (kind == "shape")
    return {n for n in gallery if _pair(meta, n) == _pair(meta, target)}


def test_ground_truths_are_exactly_the_matching_images(bench):
    kind, root, summary, meta = bench
    for split in SPLITS:
        cirr, circo = _load(root, split)
        for q, c in zip(cirr.queries, circo.queries, strict=True):
            assert q.target in q.gt and c.target in c.gt
            assert q.reference not in q.gt
            expected = _expected_gt(meta, cirr.gallery, q.kind, q.reference, q.target)
            assert set(q.gt) == expected, (split, q.qid)
            assert set(c.gt) == {_cirr_id(n) for n in expected}
            assert len(q.gt) == len(set(q.gt))


def test_members_follow_the_six_member_rule(bench):
    kind, root, summary, meta = bench
    for split, (cirr_split, _) in SPLITS.items():
        cirr, _ = _load(root, split)
        raw = json.loads((root / "cirr/captions" / f"cap.rc2.{cirr_split}.json").read_text())
        for q, rec in zip(cirr.queries, raw, strict=True):
            members = rec["img_set"]["members"]
            assert len(members) == len(set(members)) == 6
            assert members[rec["img_set"]["reference_rank"]] == q.reference
            assert members[rec["img_set"]["target_rank"]] == q.target
            tc, ts = _pair(meta, q.target)
            others = [_pair(meta, m) for m in members if m not in (q.reference, q.target)]
            assert sum(s == ts and c != tc for c, s in others) == 2
            assert sum(c == tc and s != ts for c, s in others) == 2
            assert not set(members) & (set(q.gt) - {q.target})


def test_kind_mix(bench):
    kind, root, summary, meta = bench
    mix = meta["kind_mix"]
    if kind == "shapes":
        assert mix == {"color": 0.4, "shape": 0.4, "both": 0.1, "size": 0.1}
    else:
        assert mix == {"color": 0.4, "shape": 0.4, "both": 0.2}
    for split in SPLITS:
        cirr, _ = _load(root, split)
        counts = Counter(q.kind for q in cirr.queries)
        n = len(cirr.queries)
        for k, frac in mix.items():
            assert abs(counts[k] / n - frac) <= 0.02, (split, k, counts)
        assert len({(q.reference, q.gt, q.texts) for q in cirr.queries}) == n


def _words(meta: dict, attr: str, value: str, side: str = "train") -> list[str]:
    return meta["phrasing"]["sides"][side]["words"][attr][value]


def test_captions_name_the_new_value(bench):
    """Every caption names the new value with a word of its side (a typo breaks about one
    caption in ten: at least 80 % must name it verbatim)."""
    kind, root, summary, meta = bench
    for split, variant, side in [("train", "seen", "train"), ("val", "seen", "train"),
                                 ("val", "unseen", "heldout"), ("test", "newwords", "heldout")]:  # fmt: skip
        cirr = load_benchmark("cirr", root / "cirr", _variant(split, variant))[0]
        named = total = 0
        for q in cirr.queries:
            text, t = q.texts[0].lower(), meta["images"][q.target]
            checks = []
            if q.kind in ("color", "both"):
                checks.append(any(w in text for w in _words(meta, "color", t["color"], side)))
            if q.kind in ("shape", "both"):
                words = _words(meta, "shape", t["shape"], side)
                checks.append(any(w.rstrip("s") in text for w in words))
            if q.kind == "size":
                side_doc = meta["phrasing"]["sides"][side]
                rel = [w for ws in side_doc["comparatives"].values() for w in ws]
                rel += [w for ws in side_doc["resize"].values() for w in ws]
                checks.append(
                    any(w in text for w in [*rel, *_words(meta, "size", t["size"], side)])
                )
            named += all(checks)
            total += 1
        assert named >= 0.8 * total, (split, variant, named, total)


def _variant(split: str, variant: str) -> str:
    name = {"train": "train", "val": "val", "test": "test1"}[split]
    return name if variant == "seen" else f"{name}-{variant}"


# ---- determinism and variants ---------------------------------------------------------------


def test_deterministic_from_the_seed(bench, tmp_path):
    kind, root, summary, meta = bench
    again = tmp_path / "again"
    _make(kind, again, seed=0)
    files = _json_files(root)
    assert files == _json_files(again) and len(files) == 38  # 4 phrasings of val and test
    for rel in files:
        assert (root / rel).read_bytes() == (again / rel).read_bytes(), rel
    pngs = sorted(p.relative_to(root) for p in (root / "cirr").rglob("*.png"))
    _, mismatch, errors = filecmp.cmpfiles(root, again, pngs, shallow=False)
    assert not mismatch and not errors
    other = tmp_path / "other"
    _make(kind, other, seed=1)
    rel = Path("cirr/captions/cap.rc2.train.json")
    assert (root / rel).read_bytes() != (other / rel).read_bytes()
    # writing again into an earlier benchmark folder replaces it
    _make(kind, other, seed=0)
    assert (root / rel).read_bytes() == (other / rel).read_bytes()


def test_hard_only_train_variant(bench, tmp_path):
    kind, root, summary, meta = bench
    hard = tmp_path / "hard"
    _make(kind, hard, seed=0, hard_only_train=True)
    assert json.loads((hard / "meta.json").read_text())["hard_only_train"] is True
    for rel in _json_files(root):
        if "train" not in rel.name and rel.name != "meta.json":
            assert (root / rel).read_bytes() == (hard / rel).read_bytes(), rel
    full = json.loads((root / "cirr/captions/cap.rc2.train.json").read_text())
    only = json.loads((hard / "cirr/captions/cap.rc2.train.json").read_text())
    assert any(len(r["target_soft"]) > 1 for r in full)
    for a, b in zip(full, only, strict=True):
        assert b["target_soft"] == {b["target_hard"]: 1.0}
        assert {k: v for k, v in a.items() if k != "target_soft"} == {
            k: v for k, v in b.items() if k != "target_soft"
        }
    for rec in json.loads((hard / "circo/annotations/train.json").read_text()):
        assert rec["gt_img_ids"] == [rec["target_img_id"]]


# ---- helpers and errors ---------------------------------------------------------------------


def test_kind_counts_and_deck():
    assert kind_counts(10, {"a": 0.4, "b": 0.4, "c": 0.2}) == {"a": 4, "b": 4, "c": 2}
    assert sum(kind_counts(7, {"a": 0.4, "b": 0.4, "c": 0.1, "d": 0.1}).values()) == 7
    import numpy as np

    deck = Deck(np.random.default_rng(0), "abcd")
    drawn = [v for _ in range(4) for v in deck.draw(2)]
    assert Counter(drawn) == {"a": 2, "b": 2, "c": 2, "d": 2}
    assert deck.draw(1, lambda v: v == "c") == ["c"]
    with pytest.raises(ValueError):
        deck.draw(2, lambda v: v == "c")


def test_missing_fmnist_names_the_package(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        resolve_fmnist_dir(tmp_path)
    with pytest.raises(DataError, match="DQECIR_FMNIST_DIR"):
        resolve_fmnist_dir(None, {"DQECIR_FMNIST_DIR": str(tmp_path)})
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        make_benchmark("fmnist", tmp_path / "out", size="tiny", fmnist_dir=tmp_path)


def test_read_idx_checks_its_input(tmp_path):
    good = tmp_path / "good.gz"
    good.write_bytes(gzip.compress(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))))
    assert read_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2])))
    with pytest.raises(DataError, match="short.gz"):
        read_idx(short)
    plain = tmp_path / "plain.gz"
    plain.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="plain.gz"):
        read_idx(plain)


def test_refuses_a_foreign_output_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        _make("shapes", tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="unknown benchmark"):
        make_benchmark("mnist", tmp_path / "x")
    with pytest.raises(ValueError, match="unknown size"):
        make_benchmark("shapes", tmp_path / "x", size="huge")


# ---- chance levels --------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "g", "k"), [(6, 2, 3), (6, 1, 5), (5, 4, 2), (6, 3, 10)])
def test_random_ap_matches_exhaustive_enumeration(n, g, k):
    from itertools import permutations

    from dqecir.data.synthetic.chance import random_ap_at_k
    from dqecir.metrics import average_precision_at_k

    items = [str(i) for i in range(n)]
    gts = set(items[:g])
    aps = [average_precision_at_k(list(p), gts, k) for p in permutations(items)]
    assert random_ap_at_k(n, g, k) == pytest.approx(sum(aps) / len(aps), abs=1e-12)


def test_chance_levels_of_a_generated_split(bench):
    from dqecir.data.synthetic import chance_levels

    kind, root, summary, meta = bench
    levels = chance_levels(root, "test")
    n = summary["splits"]["test"]["images"] - 1
    assert levels["gallery"] == n + 1
    assert levels["all"]["R@10"] == pytest.approx(100 * 10 / n, abs=1e-3)
    assert levels["all"]["Rsubset@1"] == 20.0
    assert set(levels["by_kind"]) == set(meta["kind_mix"])
    assert 0 < levels["all"]["mAP@10"] < 100


def test_symlink_fallback_when_hard_links_fail(tmp_path, monkeypatch):
    import dqecir.data.synthetic.writers as writers

    def no_link(src, dst):
        raise OSError("cross-device link")

    monkeypatch.setattr(writers.os, "link", no_link)
    root = tmp_path / "b"
    assert _make("shapes", root, seed=3)["link_mode"] == "symlink"
    coco = root / "circo/COCO2017_unlabeled/unlabeled2017"
    first = sorted(coco.iterdir())[0]
    assert first.is_symlink() and not os.path.isabs(os.readlink(first))
    assert first.resolve().parent.parent == (root / "cirr").resolve()
    split = load_circo(root / "circo", "val")
    assert all(p.is_file() for p in split.image_paths.values())
