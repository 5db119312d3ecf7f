from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dqecir.data.images import load_image, load_tensor, target_pad, to_tensor
from dqecir.errors import DataError
from dqecir.models.backbones.base import Preprocess

PRE = Preprocess(image_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), target_pad=1.25)


def _save(img: Image.Image, path: Path, fmt: str | None = None) -> Path:
    img.save(path, format=fmt)
    return path


def test_load_rgb_and_modes(tmp_path: Path) -> None:
    gray = _save(Image.new("L", (5, 4), 128), tmp_path / "g.png")
    img = load_image(gray)
    assert img.mode == "RGB" and img.size == (5, 4)
    assert img.getpixel((0, 0)) == (128, 128, 128)


def test_transparent_is_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    img = load_image(_save(rgba, tmp_path / "t.png"))
    assert img.getpixel((1, 1)) == (255, 255, 255)
    assert img.getpixel((0, 0)) == (0, 0, 255)


def test_missing_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as e:
        load_image(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(e.value)


def test_garbage_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.jpg"
    p.write_bytes(b"this is not an image")
    with pytest.raises(DataError, match="unreadable") as e:
        load_image(p)
    assert "bad.jpg" in str(e.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    p = _save(img, tmp_path / f"x.{fmt.lower()}", fmt)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated") as e:
        load_image(p)
    assert p.name in str(e.value)


def test_decompression_bomb_guard(tmp_path: Path) -> None:
    p = _save(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    with pytest.raises(DataError, match="decompression bomb"):
        load_image(p, max_pixels=100 * 99)
    assert load_image(p, max_pixels=100 * 100).size == (100, 100)


def test_to_tensor_normalises() -> None:
    img = Image.new("RGB", (40, 40), (255, 0, 128))
    x = to_tensor(img, PRE)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    expected = (torch.tensor([255, 0, 128]) / 255.0 - 0.5) / 0.25
    assert torch.allclose(x[:, 8, 8], expected, atol=1e-5)


def test_target_pad_pads_long_images_only() -> None:
    wide = Image.new("RGB", (100, 20), (255, 255, 255))
    padded = target_pad(wide, 1.25)
    assert padded.size == (100, 80)
    assert padded.getpixel((50, 0)) == (0, 0, 0) and padded.getpixel((50, 40)) == (255, 255, 255)
    assert target_pad(wide, 1.0) is wide
    near_square = Image.new("RGB", (100, 90))
    assert target_pad(near_square, 1.25) is near_square
    x = to_tensor(wide, PRE)  # black bands at top and bottom, white middle
    black = (0.0 - 0.5) / 0.25
    assert torch.allclose(x[:, 0, 8], torch.full((3,), black))
    assert x[0, 8, 8] > 1.9


@settings(max_examples=25, deadline=None)
@given(w=st.integers(1, 300), h=st.integers(1, 300), pad=st.sampled_from([0.0, 1.25, 2.0]))
def test_any_size_gives_square_finite_tensor(w: int, h: int, pad: float) -> None:
    pre = Preprocess(image_size=12, target_pad=pad)
    x = to_tensor(Image.new("RGB", (w, h), (10, 200, 30)), pre)
    assert x.shape == (3, 12, 12) and torch.isfinite(x).all()


def test_load_tensor(tmp_path: Path) -> None:
    p = _save(Image.new("RGB", (30, 20), (0, 0, 0)), tmp_path / "a.png")
    assert load_tensor(p, PRE).shape == (3, 16, 16)
