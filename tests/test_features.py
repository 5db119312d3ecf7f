from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dqecir.data.features import FeatureCache, store_dir, text_id
from dqecir.data.images import LOADER_VERSION, load_tensor
from dqecir.errors import DataError
from dqecir.registry import create_backbone


class Counting:
    """Wraps a backbone's frozen stage and counts the rows it computes."""

    def __init__(self, backbone) -> None:
        self.bb, self.image_rows, self.text_rows = backbone, 0, 0
        inner_img, inner_txt = backbone.image_features, backbone.text_features

        def image_features(pixels):
            self.image_rows += pixels.shape[0]
            return inner_img(pixels)

        def text_features(texts):
            self.text_rows += len(texts)
            return inner_txt(texts)

        backbone.image_features = image_features
        backbone.text_features = text_features


@pytest.fixture()
def images(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    out = {}
    for i in range(7):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(p)
        out[f"im{i}"] = p
    return out


def _tiny(seed: int = 0) -> Counting:
    return Counting(create_backbone("tiny", seed=seed))


def test_images_computed_once_and_reused(tmp_path: Path, images: dict[str, Path]) -> None:
    c = _tiny()
    cache = FeatureCache(tmp_path / "cache")
    first = ["im0", "im1", "im2", "im0"]
    t = cache.image_features(c.bb, first, images, batch_size=2, progress=False)
    assert c.image_rows == 3 and len(t) == 3
    t2 = cache.image_features(c.bb, first, images, progress=False)
    assert c.image_rows == 3
    assert torch.equal(t.tensor(first), t2.tensor(first))
    t3 = cache.image_features(c.bb, list(images), images, batch_size=3, workers=2, progress=False)
    assert c.image_rows == 7 and len(t3) == 7  # only the 4 new ones computed
    assert torch.equal(t3.tensor(first), t.tensor(first))

    ids = ["im5", "im1"]
    direct = c.bb.image_features(
        torch.stack([load_tensor(images[i], c.bb.preprocess) for i in ids])
    )
    got = t3.tensor(ids)
    assert got.dtype == torch.float32 and got.shape == direct.shape
    assert torch.allclose(got, direct, atol=2e-3, rtol=1e-2)  # stored as float16
    stored = next(iter(t3.arrays.values()))
    assert stored.dtype == np.float16 and isinstance(stored, np.memmap)


def test_new_cache_object_reuses_disk(tmp_path: Path, images: dict[str, Path]) -> None:
    c = _tiny()
    FeatureCache(tmp_path / "c").image_features(c.bb, ["im0", "im1"], images, progress=False)
    FeatureCache(tmp_path / "c").image_features(c.bb, ["im1", "im0"], images, progress=False)
    assert c.image_rows == 2


def test_key_change_invalidates(tmp_path: Path, images: dict[str, Path], caplog) -> None:
    cache = FeatureCache(tmp_path / "c")
    a, b = _tiny(seed=0), _tiny(seed=1)
    assert a.bb.image_cache_key() != b.bb.image_cache_key()
    ta = cache.image_features(a.bb, ["im0", "im1"], images, progress=False)
    with caplog.at_level(logging.WARNING, logger="dqecir.data.features"):
        tb = cache.image_features(b.bb, ["im0"], images, progress=False)
    assert b.image_rows == 1 and len(tb) == 1
    assert not torch.equal(ta.tensor(["im0"]), tb.tensor(["im0"]))
    # both keys' stores stay: switching back costs nothing
    again = cache.image_features(a.bb, ["im0", "im1"], images, progress=False)
    assert a.image_rows == 2 and torch.equal(again.tensor(["im0"]), ta.tensor(["im0"]))
    assert len(list((tmp_path / "c" / "images").glob("k-*/g-*"))) == 2
    # a store whose manifest names another key is rebuilt, with a log line
    folder = store_dir(
        tmp_path / "c", "images", f"{a.bb.image_cache_key()}|loader-{LOADER_VERSION}"
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["key"] = "something else"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="dqecir.data.features"):
        cache.image_features(a.bb, ["im0"], images, progress=False)
    assert "another key" in caplog.text and a.image_rows == 3


@pytest.mark.parametrize(
    "damage, message",
    [
        ("garbage_manifest", "corrupt manifest"),
        ("wrong_count", "does not match"),
        ("truncated_array", "does not match"),
        ("missing_manifest", "no manifest"),
        ("ids_edited", "does not match"),
        ("deep_manifest", "corrupt manifest"),  # RecursionError: was a traceback
        ("deep_ids", "does not match"),
    ],
)
def test_corrupt_store_is_rebuilt(
    tmp_path: Path, images: dict[str, Path], caplog, damage: str, message: str
) -> None:
    c = _tiny()
    cache = FeatureCache(tmp_path / "c")
    ids = ["im0", "im1", "im2"]
    good = cache.image_features(c.bb, ids, images, progress=False).tensor(ids)
    (store,) = (tmp_path / "c" / "images").glob("k-*")
    manifest = json.loads((store / "manifest.json").read_text())
    gen = store / manifest["generation"]
    if damage == "garbage_manifest":
        (store / "manifest.json").write_text("{not json")
    elif damage == "wrong_count":
        manifest["count"] = 5
        (store / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "truncated_array":
        f = gen / "image.npy"
        f.write_bytes(f.read_bytes()[:-10])
    elif damage == "missing_manifest":
        (store / "manifest.json").unlink()
    elif damage == "ids_edited":
        (gen / "ids.json").write_text(json.dumps(["im0", "im2", "im1"]))
    elif damage == "deep_manifest":
        (store / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "deep_ids":
        (gen / "ids.json").write_text("[" * 100_000 + "]" * 100_000)
    with caplog.at_level(logging.WARNING, logger="dqecir.data.features"):
        again = cache.image_features(c.bb, ids, images, progress=False)
    assert message in caplog.text
    assert c.image_rows == 6  # recomputed rather than used
    assert torch.equal(again.tensor(ids), good)


def test_interrupted_write_keeps_previous_generation(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    c = _tiny()
    cache = FeatureCache(tmp_path / "c")
    before = cache.image_features(c.bb, ["im0"], images, progress=False).tensor(["im0"])
    bad = dict(images)
    bad["im9"] = tmp_path / "missing.png"
    with pytest.raises(DataError, match="missing.png"):
        cache.image_features(c.bb, ["im1", "im9"], bad, batch_size=1, progress=False)
    assert len(list((tmp_path / "c" / "images").glob("k-*/g-*"))) == 1  # the failed one removed
    rows = c.image_rows
    after = cache.image_features(c.bb, ["im0"], images, progress=False).tensor(["im0"])
    assert c.image_rows == rows and torch.equal(before, after)


def test_missing_path_for_id(tmp_path: Path, images: dict[str, Path]) -> None:
    with pytest.raises(DataError, match="no image path") as e:
        FeatureCache(tmp_path).image_features(_tiny().bb, ["zzz"], images, progress=False)
    assert "zzz" in str(e.value)


def test_paths_as_sequence(tmp_path: Path, images: dict[str, Path]) -> None:
    ids = ["im3", "im4"]
    t = FeatureCache(tmp_path).image_features(
        _tiny().bb, ids, [images[i] for i in ids], progress=False
    )
    assert t.tensor(ids).shape[0] == 2


def test_text_cache_fills_in_order_of_length_and_returns_every_text_as_asked(tmp_path) -> None:
    c = _tiny()
    seen: list[list[str]] = []
    inner = c.bb.text_features
    c.bb.text_features = lambda texts: seen.append(list(texts)) or inner(texts)
    texts = ["a much longer caption with many words in it", "red", "make it blue", "a b", "x"]
    t = FeatureCache(tmp_path / "c").text_features(c.bb, texts, batch_size=2, progress=False)
    assert [len(x) for batch in seen for x in batch] == sorted(len(x) for x in texts)
    got, direct = t.get(texts), inner(texts)  # the caller's order, whatever the fill order
    assert torch.equal(got["mask"], direct["mask"])
    assert torch.allclose(got["tokens"], direct["tokens"], atol=1e-2)


def test_text_features_unique_and_reused(tmp_path: Path) -> None:
    c = _tiny()
    cache = FeatureCache(tmp_path / "c")
    texts = ["make it red", "a round collar", "make it red", ""]
    t = cache.text_features(c.bb, texts, batch_size=2, progress=False)
    assert c.text_rows == 3 and len(t) == 3
    got = t.get(texts)
    direct = c.bb.text_features(texts)
    assert set(got) == set(direct)
    assert got["mask"].dtype == torch.bool and torch.equal(got["mask"], direct["mask"])
    assert torch.allclose(got["tokens"], direct["tokens"], atol=1e-2)
    assert "a round collar" in t and "unseen" not in t
    rows = c.text_rows
    cache.text_features(c.bb, ["a round collar", "new text"], progress=False)
    assert c.text_rows == rows + 1
    assert text_id("x") == text_id("x") and text_id("x") != text_id("x ")
    with pytest.raises(KeyError, match="not in the feature cache"):
        t.get(["unseen"])


def test_text_key_change_keeps_images(tmp_path: Path, images: dict[str, Path]) -> None:
    cache = FeatureCache(tmp_path / "c")
    a, b = _tiny(), Counting(create_backbone("tiny", max_text_len=6))
    assert a.bb.image_cache_key() == b.bb.image_cache_key()
    cache.image_features(a.bb, ["im0"], images, progress=False)
    cache.text_features(a.bb, ["red"], progress=False)
    cache.image_features(b.bb, ["im0"], images, progress=False)
    t = cache.text_features(b.bb, ["red"], progress=False)
    assert b.image_rows == 0 and b.text_rows == 1
    assert t.get(["red"])["tokens"].shape == (1, 6, 8)


class _Overflowing:
    """A fake backbone whose features do not fit in float16."""

    preprocess = create_backbone("tiny").preprocess

    def image_cache_key(self) -> str:
        return "overflow"

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.full((pixels.shape[0], 2), 1e6)


def test_overflow_is_an_error_and_float32_option(tmp_path: Path, images: dict[str, Path]) -> None:
    with pytest.raises(DataError, match="float32"):
        FeatureCache(tmp_path / "a").image_features(_Overflowing(), ["im0"], images, progress=False)
    t = FeatureCache(tmp_path / "b", dtype=np.float32).image_features(
        _Overflowing(), ["im0"], images, progress=False
    )
    assert t.tensor(["im0"])[0, 0] == 1e6


def test_two_writers_filling_one_store_side_by_side_both_succeed_and_compute_once(
    tmp_path: Path,
) -> None:
    """Two runs that find the same texts missing at the same time (two trainings side by side
    on one benchmark): the second waits for the first's lock and then finds the rows there,
    instead of removing the generation the first is writing."""
    import threading
    import time

    c = _tiny()
    inner = c.bb.text_features
    started = threading.Event()

    def slow(texts):  # keep the first writer inside its fill while the second arrives
        started.set()
        time.sleep(0.05)
        return inner(texts)

    c.bb.text_features = slow
    texts = [f"make it colour {i}" for i in range(12)]
    results, errors = {}, []

    def fill(name: str) -> None:
        try:
            results[name] = FeatureCache(tmp_path / "c").text_features(
                c.bb, texts, batch_size=2, progress=False
            )
        except Exception as e:  # pragma: no cover - what the test fails on
            errors.append(e)

    first = threading.Thread(target=fill, args=("a",))
    first.start()
    started.wait(5)
    second = threading.Thread(target=fill, args=("b",))
    second.start()
    first.join(30)
    second.join(30)
    assert not errors
    assert c.text_rows == len(texts)  # the second computed nothing
    for t in results.values():
        assert len(t) == len(texts) and torch.equal(t.get(texts)["mask"], inner(texts)["mask"])
    lock = store_dir(tmp_path / "c", "texts", c.bb.text_cache_key())
    assert (lock.parent / f".{lock.name}.lock").is_file()
