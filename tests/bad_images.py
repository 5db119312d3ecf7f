"""Image files that broke the loader once, made on the fly (shared by the image, index and
serve tests)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def runtime_error_avif() -> bytes:
    """A mutated AVIF on which Pillow's AVIF decoder raises RuntimeError (not OSError)."""
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="AVIF")
    for _ in range(2000):
        data = bytearray(buf.getvalue())
        for _ in range(rng.integers(1, 6)):
            data[rng.integers(0, len(data))] = rng.integers(0, 256)
        try:
            with Image.open(io.BytesIO(bytes(data))) as im:
                im.load()
        except RuntimeError:
            return bytes(data)
        except Exception:  # noqa: BLE001 - looking for a RuntimeError only
            continue
    raise AssertionError("no mutated AVIF raised RuntimeError in Pillow: try another seed")


def strip_png(length: int = 20_000) -> bytes:
    """A 1 x ``length`` PNG of a few hundred bytes (padding it to the aspect ratio used to
    build a canvas of gigabytes)."""
    buf = io.BytesIO()
    Image.new("L", (1, length), 200).save(buf, format="PNG")
    return buf.getvalue()
