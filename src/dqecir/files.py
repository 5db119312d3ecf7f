"""Writing files so that a reader never sees half of one, and hashing them.

:func:`atomic_write` is the one way this package replaces a file: checkpoints, index files and
manifests, feature-cache manifests, training logs cut back on resume, submission files. It
writes a temporary file next to the target (``.NAME.<random>.tmp``), fsyncs it, renames it over
the target and fsyncs the folder: after a crash the target holds the old content or the new,
and what is left behind is a ``.tmp`` file a later run may delete.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

FILE_MODE = 0o644
"""Mode of every file written here (``mkstemp`` would leave it private, 0600): checkpoints,
indexes and caches are meant to be read by other users of a machine."""


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's) data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], Any], mode: int = FILE_MODE) -> None:
    """Call ``write(tmp_path)``, fsync, then rename over ``path``: a reader sees the old file or
    the new one, never half of one. The temporary file is removed when ``write`` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, mode)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = None) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent))


def write_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
