"""The gallery index on disk: its layout, its manifest, and loading it verified.

Layout of an index folder (always passed in)::

    INDEX/manifest.json     written last, atomically: its presence means the index is complete
    INDEX/ids.json          image ids in row order (paths relative to the images folder, '/')
    INDEX/embeddings.npy    [count, Nt, D] gallery tokens (float16 by default), memory-mappable
    INDEX/build/            only while building: progress.json + chunk-NNNNNN.npy
    INDEX/shards/           only while a torchrun build merges (:mod:`dqecir.search.shards`)

Loading (:func:`load_index`) checks the manifest (format, version, shapes, dtype, count), the
size and sha256 of every data file, and, when a checkpoint is given, that it is the one the
index was built with; any mismatch is a :class:`~dqecir.errors.CheckpointError`. Building:
:mod:`dqecir.search.build`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dqecir.data.formats.common import json_problem
from dqecir.errors import CheckpointError, DataError
from dqecir.files import atomic_write, file_sha256, write_json_atomic

log = logging.getLogger(__name__)

FORMAT = "dqecir-index"
VERSION = 1
MANIFEST = "manifest.json"
IDS = "ids.json"
EMBEDDINGS = "embeddings.npy"
BUILD = "build"
SHARDS = "shards"
PROGRESS = "progress.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
DTYPES = ("float16", "float32")


# ---- small helpers --------------------------------------------------------------------
def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder meaning its ``best.safetensors`` (as
    :func:`dqecir.checkpoint.load_checkpoint` reads it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "best.safetensors"
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    return p.resolve()


def list_images(root: str | Path) -> list[str]:
    """Image ids under ``root``: paths relative to it, '/'-separated, sorted; recursive,
    symlinked folders not followed, extension matched case-insensitively."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("images folder does not exist or is not a folder", file=root)
    ids = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                ids.append((rel / name).as_posix())
    return sorted(ids)


def write_json(path: Path, obj: Any) -> None:
    """An index file (ids, manifest, progress record), atomically."""
    write_json_atomic(path, obj, indent=1)


def write_rows(
    out: Path, parts: Iterable[np.ndarray], ids: Sequence[str], shape: tuple, dtype: str
) -> dict[str, Any]:
    """Write ``embeddings.npy`` (the rows of ``parts`` in order, ``shape`` ``[count, Nt, D]``,
    copied in bounded blocks whatever a part's size) and ``ids.json`` into ``out``, each
    atomically; returns the manifest's ``files`` entry (bytes and sha256 of both). Temporary
    files a killed write left of them are removed first."""
    for name in (EMBEDDINGS, IDS):
        for stale in out.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)

    def write(tmp: Path) -> None:
        emb = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        pos = 0
        for part in parts:
            for a in range(0, len(part), 65536):
                rows = part[a : a + 65536]
                emb[pos : pos + len(rows)] = rows
                pos += len(rows)
        emb.flush()
        del emb

    atomic_write(out / EMBEDDINGS, write)
    write_json(out / IDS, list(ids))
    return {
        name: {"bytes": (out / name).stat().st_size, "sha256": file_sha256(out / name)}
        for name in (EMBEDDINGS, IDS)
    }


def content_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()


# ---- the loaded index -----------------------------------------------------------------
@dataclass
class Index:
    """A loaded index: ``embeddings`` ``[count, Nt, D]`` (read-only memmap), ``ids`` in row
    order, and the ``manifest``."""

    root: Path
    manifest: dict[str, Any]
    ids: list[str]
    embeddings: np.ndarray
    _row: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._row = {i: r for r, i in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._row

    @property
    def images_root(self) -> Path:
        return Path(self.manifest["images_root"])

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.manifest["checkpoint"]["path"])

    @property
    def checkpoint_sha256(self) -> str:
        return self.manifest["checkpoint"]["sha256"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def tokens(self) -> int:
        return int(self.manifest["tokens"])

    @property
    def unreadable(self) -> list[dict[str, str]]:
        return list(self.manifest.get("unreadable", []))

    def row(self, image_id: str) -> int:
        try:
            return self._row[image_id]
        except KeyError:
            raise KeyError(f"image id {image_id!r} is not in the index {self.root}") from None

    def path_of(self, image_id: str) -> Path:
        """The image file of an id of this index (only ids of the index: no path traversal)."""
        self.row(image_id)
        return self.images_root / image_id

    def id_of(self, path: str | Path) -> str | None:
        """The id of an image file when it lies under the images folder and is indexed."""
        try:
            rel = Path(path).resolve().relative_to(self.images_root).as_posix()
        except ValueError:
            return None
        return rel if rel in self._row else None

    def check_checkpoint(self, checkpoint: str | Path) -> Path:
        """Resolve ``checkpoint`` and refuse it unless it is the file this index was built
        with (same sha256)."""
        path = resolve_checkpoint(checkpoint)
        sha = file_sha256(path)
        if sha != self.checkpoint_sha256:
            raise CheckpointError(
                f"index {self.root} was built with checkpoint {self.checkpoint_path} "
                f"(sha256 {self.checkpoint_sha256[:16]}...), but {path} has sha256 "
                f"{sha[:16]}...: its embeddings do not fit this model; rebuild the index"
            )
        return path


def load_index(
    root: str | Path, *, checkpoint: str | Path | None = None, verify: bool = True
) -> Index:
    """Open an index, checking its manifest and files.

    Args:
        checkpoint: when given, it must be the checkpoint the index was built with.
        verify: also check the sha256 of every data file (reads them once; sizes, shapes and
            dtypes are always checked).
    Raises:
        CheckpointError: naming the folder / file, for an incomplete, corrupted or
            mismatched index.
    """
    root = Path(root)
    manifest = _read_manifest(root)
    for name, spec in manifest["files"].items():
        _check_file(root, name, spec, verify)
    try:
        ids = json.loads((root / IDS).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"index {root}: {IDS} is unreadable: {json_problem(e)}") from e
    count = manifest["count"]
    if (
        not isinstance(ids, list)
        or not all(isinstance(i, str) for i in ids)
        or len(ids) != count
        or len(set(ids)) != count
    ):
        raise CheckpointError(f"index {root}: {IDS} does not hold {count} distinct string ids")
    emb = _open_embeddings(root, manifest)
    index = Index(root=root, manifest=manifest, ids=ids, embeddings=emb)
    if checkpoint is not None:
        index.check_checkpoint(checkpoint)
    return index


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        hint = (
            " (a build was interrupted: rerun `dqecir index` with the same arguments to resume)"
            if (root / BUILD).is_dir()
            else ""
        )
        raise CheckpointError(f"index {root}: no {MANIFEST}, not a complete index{hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"index {root}: {MANIFEST} is unreadable: {json_problem(e)}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"index {root}: {MANIFEST} is not a {FORMAT} manifest")
    if not _is_int(manifest.get("version"), 1):
        raise CheckpointError(f"index {root}: {MANIFEST} field 'version' must be an integer")
    if manifest["version"] > VERSION:
        raise CheckpointError(
            f"index {root}: format version {manifest.get('version')} is newer than this "
            f"dqecir reads ({VERSION}); upgrade dqecir"
        )
    _check_manifest(root, manifest)
    return manifest


def _is_int(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_sha(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


_MANIFEST_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "checkpoint": ("an object with 'path' and 'sha256'", lambda v: isinstance(v, dict)
                   and isinstance(v.get("path"), str) and _is_sha(v.get("sha256"))),
    "images_root": ("a folder path (string)", lambda v: isinstance(v, str) and bool(v)),
    "dim": ("a positive integer", lambda v: _is_int(v, 1)),
    "tokens": ("a positive integer", lambda v: _is_int(v, 1)),
    "count": ("an integer >= 0", lambda v: _is_int(v, 0)),
    "dtype": (f"one of {DTYPES}", lambda v: v in DTYPES),
    "preprocess": ("an object", lambda v: isinstance(v, dict)),
    "files": (f"an object with the bytes and sha256 of {EMBEDDINGS} and {IDS}, nothing else",
              lambda v: isinstance(v, dict) and set(v) == {EMBEDDINGS, IDS}
              and all(isinstance(f, dict) and _is_int(f.get("bytes"), 0)
                      and _is_sha(f.get("sha256")) for f in v.values())),
    "unreadable": ("a list of {id, path, error} objects", lambda v: isinstance(v, list)
                   and all(isinstance(u, dict) and isinstance(u.get("id"), str) for u in v)),
}  # fmt: skip
"""What a loader relies on in a manifest. ``files`` must name both data files: an empty one
would switch off every size and checksum check."""


def _check_manifest(root: Path, manifest: dict[str, Any]) -> None:
    missing = [k for k in _MANIFEST_FIELDS if k not in manifest and k != "unreadable"]
    if missing:
        raise CheckpointError(f"index {root}: {MANIFEST} lacks {missing}")
    for key, (what, ok) in _MANIFEST_FIELDS.items():
        if key in manifest and not ok(manifest[key]):
            shown = json.dumps(manifest[key])
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise CheckpointError(
                f"index {root}: {MANIFEST} field '{key}' must be {what}, got {shown}"
            )


def _check_file(root: Path, name: str, spec: dict[str, Any], verify: bool) -> None:
    path = root / name
    if not path.is_file():
        raise CheckpointError(f"index {root}: file {name} is missing")
    size = path.stat().st_size
    if size != int(spec["bytes"]):
        raise CheckpointError(
            f"index {root}: file {name} has {size} bytes, the manifest says {spec['bytes']} "
            "(truncated or replaced)"
        )
    if verify and file_sha256(path) != spec["sha256"]:
        raise CheckpointError(
            f"index {root}: file {name} is corrupted (sha256 differs from the manifest)"
        )


def _open_embeddings(root: Path, manifest: dict[str, Any]) -> np.ndarray:
    try:
        emb = np.load(root / EMBEDDINGS, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"index {root}: {EMBEDDINGS} is unreadable: {e}") from e
    want = (int(manifest["count"]), int(manifest["tokens"]), int(manifest["dim"]))
    if tuple(emb.shape) != want or str(emb.dtype) != manifest["dtype"]:
        raise CheckpointError(
            f"index {root}: {EMBEDDINGS} is {tuple(emb.shape)} {emb.dtype}, the manifest "
            f"says {want} {manifest['dtype']}"
        )
    return emb


# ---- an index already in place ----------------------------------------------------------
@dataclass
class BuildReport:
    """What :func:`build_index` did."""

    index_dir: Path
    count: int
    """Images embedded (rows of the index)."""
    unreadable: list[dict[str, str]]
    """``{"id", "path", "error"}`` of every image that could not be read (not in the index)."""
    computed: int
    """Images embedded by this run (the rest came from chunks of an interrupted run)."""
    reused: int
    seconds: float
    """Wall time of the whole build (listing, checkpoint hash, model load, embedding, write)."""
    bytes_on_disk: int
    embed_seconds: float = 0.0
    """Time spent decoding and embedding the ``computed`` images."""

    @property
    def images_per_second(self) -> float:
        """Embedding throughput (decode + preprocess + gallery side), model load excluded."""
        return self.computed / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": str(self.index_dir),
            "count": self.count,
            "unreadable": len(self.unreadable),
            "computed": self.computed,
            "reused": self.reused,
            "seconds": round(self.seconds, 3),
            "embed_seconds": round(self.embed_seconds, 3),
            "images_per_s": round(self.images_per_second, 1),
            "bytes_on_disk": self.bytes_on_disk,
        }


def bytes_on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def existing_index(
    out: Path, ck_sha: str, images: Path, ids: list[str], dtype: str, overwrite: bool
) -> BuildReport | None:
    """The report of an up-to-date complete index in ``out``, None when a build must run."""
    if not (out / MANIFEST).exists():
        return None
    try:
        m = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        same = (
            m["checkpoint"]["sha256"] == ck_sha
            and m["images_root"] == str(images)
            and m["dtype"] == dtype
            and m["listing_sha256"] == content_key(ids)
        )
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if same:
        index = load_index(out)
        log.info("index %s is up to date (%d images); nothing to do", out, len(index))
        return BuildReport(
            out, len(index), index.unreadable, 0, len(index), 0.0, bytes_on_disk(out)
        )
    if not overwrite:
        raise CheckpointError(
            f"index {out} already exists and was built from another checkpoint, folder "
            "listing or dtype; pass overwrite=True (--overwrite) or choose another folder"
        )
    (out / MANIFEST).unlink()
    for name in (IDS, EMBEDDINGS):
        (out / name).unlink(missing_ok=True)
    return None
