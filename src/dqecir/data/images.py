"""Safe image loading and the one image transform (Pillow + numpy, no torchvision).

The transform is SPRC's ``targetpad_transform``: pad the shorter side so that the aspect ratio
is at most ``target_pad``, resize the shorter side to ``image_size`` (bicubic), centre-crop a
square, scale to [0, 1] and normalise with the backbone's mean / std. Every backbone and every
stage (training, evaluation, indexing, serving) goes through :func:`to_tensor`.

The padded canvas is never built: :func:`fit_square` works out where the image lands in the
output square and resamples only that part of it, straight to its output size. Memory and time
after decoding are therefore bounded by the output, whatever the aspect ratio (building the
canvas first made a 164-byte 1 x 20000 PNG cost 1.3 GB).

Loading (:func:`load_image`) reads only the formats in :data:`FORMATS`, refuses images above
``max_pixels`` or ``max_aspect`` from the header (before decoding), turns any decoder failure
into a :class:`~dqecir.errors.DataError` naming the file, applies the EXIF orientation, and
scales 16-bit and floating-point images to 8 bits instead of clipping them.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from dqecir.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's own default limit (about 0.25 GiB of RGBA), enforced here as an error."""
DEFAULT_MAX_ASPECT = 100.0
"""Longest side / shortest side above which an image is refused (a 1 x 20000 strip is no
photo; panoramas and long screenshots stay well below)."""
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "PPM")
"""Formats read (Pillow names; JPEG includes multi-picture MPO files). Others (EPS, which
would run Ghostscript, PDF, PSD...) are refused as unsupported, whatever the file's extension."""
LOADER_VERSION = 2
"""Changes whenever the pixels a file decodes to change (2: EXIF orientation, 16-bit / float
scaling, canvas-free padding); the frozen-feature cache keys on it."""
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing that travels with the model (and its checkpoints / indexes)."""

    image_size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    target_pad: float = 1.25
    """Pad the shorter side so that the aspect ratio is at most this (SPRC's target-pad);
    values <= 1 disable padding."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(
            image_size=int(d["image_size"]),
            mean=tuple(float(x) for x in d["mean"]),
            std=tuple(float(x) for x in d["std"]),
            target_pad=float(d["target_pad"]),
        )


def load_image(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> Image.Image:
    """Read an image file fully into memory as RGB, the right way up.

    Transparent images are composited on white (product photos are cut out on white).

    Raises:
        DataError: naming the path, when the file is missing, not in a supported format,
            unreadable or truncated (whatever the decoder raised), has more than
            ``max_pixels`` pixels (a decompression bomb) or an aspect ratio above
            ``max_aspect``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("image file not found", file=path)
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit; ours below is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as im:
                _check_size(im, path, max_pixels, max_aspect)
                im.load()
                return _to_rgb(_upright(im, path))
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"image too large to decode safely ({e})", file=path) from e
    except Image.UnidentifiedImageError as e:
        raise DataError(
            f"unreadable: not an image in a supported format ({', '.join(FORMATS)})", file=path
        ) from e
    except Exception as e:  # noqa: BLE001 - any decoder failure (OSError, RuntimeError from
        # AVIF, SyntaxError, ValueError, struct.error, MemoryError...) is a bad file, not a crash
        raise DataError(
            f"unreadable or truncated image ({type(e).__name__}: {e})", file=path
        ) from e


def _check_size(im: Image.Image, path: Path, max_pixels: int, max_aspect: float) -> None:
    w, h = im.size
    if w <= 0 or h <= 0:
        raise DataError(f"image has an empty size {w}x{h}", file=path)
    if w * h > max_pixels:
        raise DataError(
            f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} "
            "(possible decompression bomb; raise max_pixels if the file is trusted)",
            file=path,
        )
    if max(w, h) / min(w, h) > max_aspect:
        raise DataError(
            f"image is {w}x{h}, an aspect ratio of {max(w, h) / min(w, h):.0f}:1, above the "
            f"limit of {max_aspect:g}:1 (raise max_aspect if the file is meant so)",
            file=path,
        )


def _upright(im: Image.Image, path: Path) -> Image.Image:
    """The image as people see it: its EXIF orientation applied (phones store pixels
    sideways and say so in the tag). A corrupt EXIF block leaves the pixels as stored."""
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception as e:  # noqa: BLE001 - EXIF parsing is best effort
        log.warning("%s: unreadable EXIF data ignored (%s: %s)", path, type(e).__name__, e)
        return im
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(im)
    return im


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer images (I;16*, I) and float images (F) as 8-bit L, scaled,
    not clipped: 16-bit values by 255 / 65535; floats in [0, 1] by 255; anything else
    (negative or larger values, 32-bit integers beyond 16 bits) stretched from its own
    min..max. Non-finite floats become the darkest value."""
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    else:
        arr = arr.astype(np.float32, copy=False)
        finite = np.isfinite(arr)
        if not finite.all():
            arr = np.where(finite, arr, np.float32(np.min(arr[finite]) if finite.any() else 0))
        lo, hi = float(arr.min()), float(arr.max())
        if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        elif im.mode == "I" and lo >= 0.0 and hi <= 65535.0:
            lo, hi = 0.0, 65535.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = (arr.astype(np.float32, copy=False) - np.float32(lo)) * np.float32(scale) + 0.5
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "L")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit(im)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # a copy, detached from the file


def _pad(w: int, h: int, ratio: float) -> tuple[int, int]:
    """Black bands (each side) that bring ``long / short`` down to ``ratio`` (SPRC's
    ``targetpad``); none when ``ratio <= 1`` or the image is within it."""
    if ratio <= 1 or max(w, h) / min(w, h) <= ratio:
        return 0, 0
    side = max(w, h) / ratio
    return max(int((side - w) / 2), 0), max(int((side - h) / 2), 0)


def _resized(w: int, h: int, size: int) -> tuple[int, int]:
    """Size after resizing the shorter side of ``w x h`` to ``size``."""
    if w <= h:
        return size, max(size, int(size * h / w))
    return max(size, int(size * w / h)), size


def _span(pad: int, n: int, scale: float, offset: int, size: int) -> tuple[int, int, float, float]:
    """Along one axis: the output pixels ``[j0, j1)`` that lie inside the image and the source
    interval they sample. The image spans ``[pad, pad + n)`` on the canvas, ``[pad, pad + n) *
    scale - offset`` in output pixels; a sliver thinner than a pixel still gets one."""
    a, b = pad * scale - offset, (pad + n) * scale - offset
    j0, j1 = min(max(math.ceil(a - 1e-9), 0), size), min(max(math.floor(b + 1e-9), 0), size)
    if j1 <= j0:
        j0 = min(max(math.floor((a + b) / 2), 0), size - 1)
        return j0, j0 + 1, 0.0, float(n)
    s0 = min(max((j0 + offset) / scale - pad, 0.0), float(n))
    s1 = min(max((j1 + offset) / scale - pad, 0.0), float(n))
    return j0, j1, s0, s1


def fit_square(img: Image.Image, size: int, ratio: float) -> Image.Image:
    """``size x size``: ``img`` padded (black, centred) to an aspect ratio of at most ``ratio``
    (``ratio <= 1``: no padding), its shorter side resized to ``size`` (bicubic), centre-cropped.

    Computed without the padded or resized canvas: the part of ``img`` that lands in the crop is
    resampled directly to the output pixels it covers (Pillow's ``resize(box=...)``, whose
    filter still reads the neighbours just outside the box), so the work is bounded by the
    output. Unpadded images come out as resize-then-crop would make them; padded ones differ
    only along the edge of the image, which is not blended with the black band.
    """
    w, h = img.size
    pad_w, pad_h = _pad(w, h, ratio)
    cw, ch = w + 2 * pad_w, h + 2 * pad_h
    new_w, new_h = _resized(cw, ch, size)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    x0, x1, sx0, sx1 = _span(pad_w, w, new_w / cw, left, size)
    y0, y1, sy0, sy1 = _span(pad_h, h, new_h / ch, top, size)
    part = img.resize((x1 - x0, y1 - y0), Image.Resampling.BICUBIC, box=(sx0, sy0, sx1, sy1))
    if (x0, y0, x1, y1) == (0, 0, size, size):
        return part
    out = Image.new(img.mode, (size, size))
    out.paste(part, (x0, y0))
    return out


def to_tensor(img: Image.Image, preprocess: Preprocess) -> torch.Tensor:
    """The backbone input ``[3, S, S]`` float32 for one RGB image (see the module docstring)."""
    if img.mode != "RGB":
        img = _to_rgb(img)
    img = fit_square(img, preprocess.image_size, preprocess.target_pad)
    arr = np.asarray(img, dtype=np.float32) / 255.0  # [S, S, 3]
    mean = np.asarray(preprocess.mean, dtype=np.float32)
    std = np.asarray(preprocess.std, dtype=np.float32)
    arr = (arr - mean) / std
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def load_tensor(path: str | Path, preprocess: Preprocess) -> torch.Tensor:
    """:func:`load_image` then :func:`to_tensor`."""
    return to_tensor(load_image(path), preprocess)
