"""Sharded index build: one shard per torchrun process, merged by rank 0; the merged index is
the single-process index of the same images (same ids, same bytes, same search results)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrun_helper import torchrun

from dqecir.data.images import load_tensor
from dqecir.errors import CheckpointError
from dqecir.search import (
    ExactEngine,
    Searcher,
    build_index,
    list_images,
    load_index,
    merge_shards,
    shard_dir,
)


@pytest.fixture(scope="module")
def trained(tiny_trained):
    return tiny_trained


def test_torchrun_shards_merge_into_the_single_process_index(trained, tmp_path):
    ck, images = trained
    single = tmp_path / "single"
    build_index(ck, images, single, progress=False, workers=0)
    merged = tmp_path / "merged"
    res = torchrun(["index", "--checkpoint", str(ck), "--images", str(images),
                    "--out", str(merged), "--workers", "0"])  # fmt: skip
    report = json.loads(res.stdout.strip().splitlines()[-1])  # rank 0 alone prints
    a, b = load_index(single, checkpoint=ck), load_index(merged, checkpoint=ck)
    assert report["count"] == len(a) == len(b) and report["computed"] == len(a)
    assert b.ids == a.ids == list_images(images)
    assert np.array_equal(np.asarray(b.embeddings), np.asarray(a.embeddings))
    shards = b.manifest["shards"]
    assert [s["dir"] for s in shards] == [
        "shards/rank-00000-of-00002",
        "shards/rank-00001-of-00002",
    ]
    assert sum(s["count"] for s in shards) == len(a) and not (merged / "shards").exists()
    # search over the merged index equals search over the single one
    q = torch.nn.functional.normalize(
        torch.randn(8, a.dim, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    sa, ia = ExactEngine(a.embeddings).search(q, 10)
    sb, ib = ExactEngine(b.embeddings).search(q, 10)
    assert torch.equal(ia, ib) and torch.equal(sa, sb)
    one, two = Searcher.open(single), Searcher.open(merged)
    pixels = load_tensor(images / a.ids[3], one.model.backbone.preprocess)
    ra = one.search(pixels, "make it red", k=10, exclude=(a.ids[3],))
    rb = two.search(pixels, "make it red", k=10, exclude=(a.ids[3],))
    assert [(h.id, h.score) for h in ra.hits] == [(h.id, h.score) for h in rb.hits]
    # a merged index is an ordinary index: a one-process rerun finds it up to date
    again = build_index(ck, images, merged, progress=False, workers=0)
    assert again.computed == 0 and again.count == len(a)


def test_merge_keeps_order_and_reports_unreadable_images(trained, tmp_path):
    ck, images = trained
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in list_images(images)[:9]:
        shutil.copy(images / name, folder / Path(name).name)
    (folder / "broken.png").write_bytes(b"not an image")
    ids = list_images(folder)
    parts = [ids[:5], ids[5:]]
    out = tmp_path / "out"
    shards = [shard_dir(out, r, 2) for r in range(2)]
    for part, d in zip(parts, shards, strict=True):
        build_index(ck, folder, d, ids=part, progress=False, workers=0)
    with pytest.raises(CheckpointError, match="in order"):
        merge_shards(out, shards[::-1], ids)
    manifest = merge_shards(out, shards, ids)
    merged = load_index(out)
    single = build_index(ck, folder, tmp_path / "single", progress=False, workers=0)
    assert manifest["count"] == single.count == 9 == len(merged)
    assert [u["id"] for u in manifest["unreadable"]] == ["broken.png"]
    assert np.array_equal(
        np.asarray(merged.embeddings), np.asarray(load_index(tmp_path / "single").embeddings)
    )
