"""Safe image loading and the one image transform (Pillow + numpy, no torchvision).

The transform is SPRC's ``targetpad_transform``: pad the shorter side so that the aspect ratio
is at most ``target_pad``, resize the shorter side to ``image_size`` (bicubic), centre-crop a
square, scale to [0, 1] and normalise with the backbone's mean / std. Every backbone and every
stage (training, evaluation, indexing, serving) goes through :func:`to_tensor`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dqecir.errors import DataError
from dqecir.models.backbones.base import Preprocess

DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's own default limit (about 0.25 GiB of RGBA), enforced here as an error."""


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an image file fully into memory as RGB.

    Transparent images are composited on white (product photos are cut out on white).

    Raises:
        DataError: naming the path, when the file is missing, unreadable, truncated, or has
            more than ``max_pixels`` pixels (a decompression bomb).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("image file not found", file=path)
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit; ours below is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_size(im, path, max_pixels)
                im.load()
                return _to_rgb(im)
    except Image.DecompressionBombError as e:
        raise DataError(f"image too large to decode safely ({e})", file=path) from e
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise DataError(
            f"unreadable or truncated image ({type(e).__name__}: {e})", file=path
        ) from e


def _check_size(im: Image.Image, path: Path, max_pixels: int) -> None:
    w, h = im.size
    if w <= 0 or h <= 0:
        raise DataError(f"image has an empty size {w}x{h}", file=path)
    if w * h > max_pixels:
        raise DataError(
            f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} "
            "(possible decompression bomb; raise max_pixels if the file is trusted)",
            file=path,
        )


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # a copy, detached from the file


def target_pad(img: Image.Image, ratio: float) -> Image.Image:
    """Pad (black, centred) the shorter side so that ``long / short <= ratio``; ``ratio <= 1``
    disables padding. Images already within the ratio are returned unchanged."""
    w, h = img.size
    if ratio <= 1 or max(w, h) / min(w, h) <= ratio:
        return img
    side = max(w, h) / ratio
    pad_w = max(int((side - w) / 2), 0)
    pad_h = max(int((side - h) / 2), 0)
    out = Image.new(img.mode, (w + 2 * pad_w, h + 2 * pad_h))
    out.paste(img, (pad_w, pad_h))
    return out


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic), then crop the centred square."""
    w, h = img.size
    if w <= h:
        new_w, new_h = size, max(size, int(size * h / w))
    else:
        new_w, new_h = max(size, int(size * w / h)), size
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image, preprocess: Preprocess) -> torch.Tensor:
    """The backbone input ``[3, S, S]`` float32 for one RGB image (see the module docstring)."""
    if img.mode != "RGB":
        img = _to_rgb(img)
    img = resize_center_crop(target_pad(img, preprocess.target_pad), preprocess.image_size)
    arr = np.asarray(img, dtype=np.float32) / 255.0  # [S, S, 3]
    mean = np.asarray(preprocess.mean, dtype=np.float32)
    std = np.asarray(preprocess.std, dtype=np.float32)
    arr = (arr - mean) / std
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def load_tensor(path: str | Path, preprocess: Preprocess) -> torch.Tensor:
    """:func:`load_image` then :func:`to_tensor`."""
    return to_tensor(load_image(path), preprocess)
