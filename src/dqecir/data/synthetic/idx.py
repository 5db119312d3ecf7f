"""Read the Fashion-MNIST idx files (the ``dataset-fashion-mnist`` Debian package).

The idx format: a 4-byte magic ``0x00 0x00 <dtype> <ndim>``, then ``ndim`` big-endian uint32
dimensions, then the data. Fashion-MNIST uses dtype ``0x08`` (uint8) only.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dqecir.errors import DataError

DEFAULT_FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_DIR_ENV = "DQECIR_FMNIST_DIR"
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_INSTALL_HINT = (
    "install the Debian package `dataset-fashion-mnist` (apt-get install dataset-fashion-mnist) "
    f"or set {FMNIST_DIR_ENV} to a folder holding the four *-ubyte.gz files"
)


def resolve_fmnist_dir(
    directory: Path | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """The Fashion-MNIST folder: ``directory`` if given, else ``$DQECIR_FMNIST_DIR``, else the
    Debian package's folder. Raises :class:`DataError` when it lacks a needed file."""
    env = os.environ if environ is None else environ
    if directory is None:
        directory = Path(env[FMNIST_DIR_ENV]) if env.get(FMNIST_DIR_ENV) else DEFAULT_FMNIST_DIR
    for files in FMNIST_FILES.values():
        for name in files:
            if not (directory / name).is_file():
                raise DataError(
                    f"Fashion-MNIST file missing; {_INSTALL_HINT}", file=directory / name
                )
    return directory


def read_idx(path: Path) -> np.ndarray:
    """The array stored in one (gzip-compressed) idx file, uint8."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read idx file ({e})", file=path) from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError("not an idx file (bad magic number)", file=path)
    if raw[2] != 0x08:
        raise DataError(f"unsupported idx dtype 0x{raw[2]:02x} (expected uint8)", file=path)
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"idx size {len(raw)} bytes, header says {expected}", file=path)
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(directory: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 28, 28]`` and labels ``[N]`` (uint8) of ``part`` ("train" or "t10k")."""
    if part not in FMNIST_FILES:
        raise ValueError(f"unknown Fashion-MNIST part {part!r} (train or t10k)")
    image_file, label_file = (directory / n for n in FMNIST_FILES[part])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"images {images.shape} and labels {labels.shape} do not match", file=image_file
        )
    if labels.max(initial=0) > 9:
        raise DataError(f"label {labels.max()} out of range 0..9", file=label_file)
    return images, labels
