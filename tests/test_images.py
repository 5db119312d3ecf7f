from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_images import runtime_error_avif, strip_png
from hypothesis import given, settings
from hypothesis import strategies as st
from peak_memory import peak_rss
from PIL import Image

from dqecir.data.images import (
    DEFAULT_MAX_ASPECT,
    FORMATS,
    Preprocess,
    fit_square,
    load_image,
    load_tensor,
    to_tensor,
)
from dqecir.errors import DataError

PRE = Preprocess(image_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), target_pad=1.25)


def _save(img: Image.Image, path: Path, fmt: str | None = None, **kw: object) -> Path:
    img.save(path, format=fmt, **kw)
    return path


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


# ---- the naive transform the bounded one must reproduce ----------------------------------
def _naive_target_pad(img: Image.Image, ratio: float) -> Image.Image:
    """SPRC's targetpad, building the padded canvas (what dqecir did before)."""
    w, h = img.size
    if ratio <= 1 or max(w, h) / min(w, h) <= ratio:
        return img
    side = max(w, h) / ratio
    pad_w, pad_h = max(int((side - w) / 2), 0), max(int((side - h) / 2), 0)
    out = Image.new(img.mode, (w + 2 * pad_w, h + 2 * pad_h))
    out.paste(img, (pad_w, pad_h))
    return out


def _naive_resized(w: int, h: int, size: int) -> tuple[int, int]:
    if w <= h:
        return size, max(size, int(size * h / w))
    return max(size, int(size * w / h)), size


def _naive_fit(img: Image.Image, size: int, ratio: float) -> Image.Image:
    img = _naive_target_pad(img, ratio)
    new_w, new_h = _naive_resized(*img.size, size)
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


@settings(max_examples=60, deadline=None)
@given(
    w=st.integers(1, 300),
    h=st.integers(1, 300),
    size=st.sampled_from([12, 16, 112]),
    ratio=st.sampled_from([0.0, 1.25, 2.0]),
)
def test_fit_square_matches_pad_then_resize(w: int, h: int, size: int, ratio: float) -> None:
    """Same output as building the padded canvas, resizing it and cropping: equal up to
    resampling round-off, except along each padded edge of the image, where the naive canvas
    blends the image with the black band (over the bicubic support: 2 canvas pixels)."""
    img = _noise(w, h, seed=w * 1000 + h)
    canvas = _naive_target_pad(img, ratio)
    ref = np.asarray(_naive_fit(img, size, ratio), dtype=np.int16)
    out = np.asarray(fit_square(img, size, ratio), dtype=np.int16)
    assert out.shape == ref.shape == (size, size, 3)
    diff = np.abs(out - ref).max(axis=2)
    if canvas is not img:  # leave out the output pixels near an image / band edge
        (cw, ch), (new_w, new_h) = canvas.size, _naive_resized(*canvas.size, size)
        reach = 2 + 2 * max(1.0, size / min(cw, ch))  # bicubic support in output pixels
        keep = []
        for n, c, new in ((w, cw, new_w), (h, ch, new_h)):
            f, off, pad = new / c, round((new - size) / 2), (c - n) // 2
            edges = [pad * f - off, (pad + n) * f - off] if n != c else []
            keep.append([i for i in range(size) if all(abs(i + 0.5 - e) > reach for e in edges)])
        if min(len(k) for k in keep) < size // 4:
            return  # a sliver: nothing but edges
        diff = diff[np.ix_(keep[1], keep[0])]
    # round-off of the two resampling passes on pure noise (the worst case)
    assert diff.mean() < 1.5


def test_fit_square_pads_long_images_with_black() -> None:
    wide = Image.new("RGB", (100, 20), (255, 255, 255))
    out = fit_square(wide, 16, 1.25)
    assert out.size == (16, 16)
    assert out.getpixel((8, 0)) == (0, 0, 0) and out.getpixel((8, 8)) == (255, 255, 255)
    near_square = Image.new("RGB", (100, 90), (10, 20, 30))
    assert fit_square(near_square, 16, 1.25).getpixel((0, 0)) == (10, 20, 30)  # not padded
    x = to_tensor(wide, PRE)  # black bands at top and bottom, white middle
    black = (0.0 - 0.5) / 0.25
    assert torch.allclose(x[:, 0, 8], torch.full((3,), black))
    assert x[0, 8, 8] > 1.9


@pytest.mark.parametrize("size", [(1, 100_000), (100_000, 1), (64, 32_832), (3, 1)])
@pytest.mark.parametrize("ratio", [0.0, 1.25])
def test_extreme_aspect_ratio_costs_no_more_than_the_output(size, ratio) -> None:
    """The padded (or resized) canvas of a 1 x 100000 image would be tens of GB; the work is
    bounded by the output square instead, and a sliver thinner than a pixel still shows."""
    img = Image.new("RGB", size, (250, 10, 10))
    with peak_rss() as peak:
        out = fit_square(img, 224, ratio)
    assert out.size == (224, 224)
    assert peak.mib < 32, f"{peak.mib:.0f} MiB for a {size} image"
    red = np.asarray(out)[..., 0] > 100
    assert red.any()


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


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """A phone JPEG stored sideways with Orientation 6 ("rotate 90 CW to view"): what loads is
    what people see, for every reader (the tensor differs from the stored pixels')."""
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(stored, tmp_path / "phone.jpg", "JPEG", exif=exif, quality=95)
    img = load_image(path)
    assert img.size == (20, 40)  # portrait, as shown
    r, _, b = img.getpixel((10, 5))
    assert r > 200 and b < 60  # the stored left half is now on top
    r, _, b = img.getpixel((10, 35))
    assert b > 200 and r < 60
    plain = _save(stored, tmp_path / "plain.jpg", "JPEG", quality=95)
    assert load_image(plain).size == (40, 20)
    assert not torch.allclose(load_tensor(path, PRE), load_tensor(plain, PRE), atol=0.1)


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    ramp16 = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (8, 1))
    png16 = _save(Image.fromarray(ramp16), tmp_path / "g16.png")  # opens as I;16
    pgm16 = _save(Image.fromarray(ramp16), tmp_path / "g16.pgm", "PPM")  # opens as I
    for path in (png16, pgm16):
        row = np.asarray(load_image(path))[0, :, 0].astype(int)
        assert row[0] == 0 and row[-1] == 255 and 120 <= row[16] <= 135, (path.name, row)
        assert (np.diff(row) >= 0).all() and len(set(row)) > 20  # a ramp, not all white
    ramp01 = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (8, 1))
    tif = _save(Image.fromarray(ramp01), tmp_path / "f.tif", "TIFF")
    row = np.asarray(load_image(tif))[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and 120 <= row[16] <= 135, row
    wide = _save(Image.fromarray(ramp01 * 1000 - 500), tmp_path / "f2.tif", "TIFF")
    row = np.asarray(load_image(wide))[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255  # stretched from its own range
    nan = ramp01.copy()
    nan[0, 3] = np.nan
    row = np.asarray(load_image(_save(Image.fromarray(nan), tmp_path / "n.tif", "TIFF")))[0]
    assert row[3, 0] == 0 and row[-1, 0] == 255


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


def test_unsupported_format_is_refused(tmp_path: Path) -> None:
    """EPS would be rendered by Ghostscript: refused whatever the extension says."""
    p = _save(Image.new("RGB", (8, 8)), tmp_path / "looks.png", "EPS")
    with pytest.raises(DataError, match="supported format") as e:
        load_image(p)
    assert "looks.png" in str(e.value) and "JPEG" in str(e.value)


def test_decoder_runtime_error_becomes_a_data_error(tmp_path: Path) -> None:
    """libavif raises RuntimeError on some corrupt files (Pillow lets it through): the loader
    turns it into its own error, with the path and the reason."""
    data = runtime_error_avif()
    with pytest.raises(RuntimeError), Image.open(io.BytesIO(data)) as im:
        im.load()  # what Pillow raises
    p = tmp_path / "photo.png"  # an AVIF renamed .png, as found
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match="RuntimeError") as e:
        load_image(p)
    assert "photo.png" in str(e.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    p = _save(_noise(64, 64), tmp_path / f"x.{fmt.lower()}", fmt)
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


def test_absurd_aspect_ratio_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "strip.png"
    p.write_bytes(strip_png())
    assert p.stat().st_size < 500
    with pytest.raises(DataError, match="aspect ratio of 20000:1") as e:
        load_image(p)
    assert "strip.png" in str(e.value)
    assert load_image(p, max_aspect=float("inf")).size == (1, 20_000)
    ok = _save(Image.new("L", (int(DEFAULT_MAX_ASPECT), 1)), tmp_path / "ok.png")
    assert load_image(ok).size == (100, 1)


def test_to_tensor_normalises() -> None:
    img = Image.new("RGB", (40, 40), (255, 0, 128))
    x = to_tensor(img, PRE)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    expected = (torch.tensor([255, 0, 128]) / 255.0 - 0.5) / 0.25
    assert torch.allclose(x[:, 8, 8], expected, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(w=st.integers(1, 300), h=st.integers(1, 300), pad=st.sampled_from([0.0, 1.25, 2.0]))
def test_any_size_gives_square_finite_tensor(w: int, h: int, pad: float) -> None:
    pre = Preprocess(image_size=12, target_pad=pad)
    x = to_tensor(Image.new("RGB", (w, h), (10, 200, 30)), pre)
    assert x.shape == (3, 12, 12) and torch.isfinite(x).all()


def test_load_tensor(tmp_path: Path) -> None:
    p = _save(Image.new("RGB", (30, 20), (0, 0, 0)), tmp_path / "a.png")
    assert load_tensor(p, PRE).shape == (3, 16, 16)


# ---- fuzz ------------------------------------------------------------------------------
def _seed_files() -> dict[str, bytes]:
    """One small file per format Pillow writes here (the first mode it accepts), plus the
    unusual modes of the readable formats (16-bit, float, palette with transparency, CMYK)."""
    Image.init()
    base = _noise(24, 16)
    files: dict[str, bytes] = {}
    for fmt in sorted(Image.SAVE):
        for mode in ("RGB", "L", "1", "P"):
            buf = io.BytesIO()
            try:
                base.convert(mode).save(buf, format=fmt)
            except Exception:  # noqa: BLE001 - formats Pillow cannot write without plugins
                continue
            files[fmt] = buf.getvalue()
            break
    extra = {
        "PNG-I16": (Image.fromarray(np.arange(384, dtype=np.uint16).reshape(16, 24) * 170), "PNG"),
        "PNG-LA": (base.convert("LA"), "PNG"),
        "GIF-P": (base.convert("P"), "GIF"),
        "TIFF-F": (Image.fromarray(np.random.default_rng(1).random((16, 24), np.float32)), "TIFF"),
        "JPEG-CMYK": (base.convert("CMYK"), "JPEG"),
        "WEBP-RGBA": (base.convert("RGBA"), "WEBP"),
    }
    for name, (img, fmt) in extra.items():
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        files[name] = buf.getvalue()
    return files


def _mutants(data: bytes, rng: np.random.Generator, n: int) -> list[bytes]:
    out = [data, *(data[: len(data) * k // 5] for k in (1, 2, 4))]  # itself, truncations
    while len(out) < n:
        d = bytearray(data)
        head = rng.random() < 0.5  # the header (sizes, modes, offsets) or anywhere
        for _ in range(int(rng.integers(1, 8))):
            i = int(rng.integers(0, min(len(d), 64) if head else len(d)))
            d[i] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            i = int(rng.integers(0, len(d)))
            d[i:i] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        out.append(bytes(d))
    return out


def test_fuzz_loader_clear_error_or_bounded_success(tmp_path: Path) -> None:
    """Mutated files of every format Pillow writes: each either loads (an RGB image, then a
    finite tensor) within a bounded memory rise, or raises DataError naming the file. Any
    other exception (RuntimeError, MemoryError, struct.error...) fails the test."""
    rng = np.random.default_rng(12)
    seeds = _seed_files()
    assert len(seeds) >= 25, sorted(seeds)
    pre = Preprocess(image_size=32, target_pad=1.25)
    outcomes: dict[str, set[str]] = {}
    worst = 0.0
    for name, data in sorted(seeds.items()):
        for i, mutant in enumerate(_mutants(data, rng, 24)):
            path = tmp_path / f"{name}-{i}.png"
            path.write_bytes(mutant)
            with peak_rss() as peak:
                try:
                    x = to_tensor(load_image(path, max_pixels=2_000_000), pre)
                    assert x.shape == (3, 32, 32) and torch.isfinite(x).all()
                    outcome = "loaded"
                except DataError as e:
                    assert path.name in str(e), str(e)
                    outcome = "error"
            worst = max(worst, peak.mib)
            assert peak.mib < 96, f"{path.name}: {peak.mib:.0f} MiB"
            outcomes.setdefault(name, set()).add(outcome)
    # the readable formats really were decoded (at least the unmutated file), the rest refused
    readable = {n for n in seeds if n.split("-")[0] in (*FORMATS, "MPO")}  # MPO is a JPEG
    assert all("loaded" in outcomes[n] for n in readable), {n: outcomes[n] for n in readable}
    assert all(outcomes[n] == {"error"} for n in set(seeds) - readable), outcomes
    assert worst < 96


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "TIFF", "BMP", "JPEG"])
def test_fuzz_extreme_aspect_ratios(tmp_path: Path, fmt: str) -> None:
    """Strips of every length: refused by the aspect limit by default; when allowed, loaded
    at a memory cost bounded by the file's own pixels (no canvas)."""
    pre = Preprocess(image_size=224, target_pad=1.25)
    longest = 65_000 if fmt in ("JPEG", "GIF") else 100_000  # their 16-bit size fields
    for n in (101, 5_000, longest):
        for size in ((1, n), (n, 1)):
            path = _save(Image.new("RGB", size, (200, 30, 30)), tmp_path / f"s{n}.img", fmt)
            with pytest.raises(DataError, match="aspect ratio"):
                load_image(path)
            with peak_rss() as peak:
                x = to_tensor(load_image(path, max_aspect=float("inf")), pre)
            assert x.shape == (3, 224, 224) and torch.isfinite(x).all()
            assert peak.mib < 48, f"{fmt} {size}: {peak.mib:.0f} MiB"
