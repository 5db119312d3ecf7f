"""Gallery index: embed a folder of images once, store every gallery token, load it verified.

Layout of an index folder (always passed in)::

    INDEX/manifest.json     written last, atomically: its presence means the index is complete
    INDEX/ids.json          image ids in row order (paths relative to the images folder, '/')
    INDEX/embeddings.npy    [count, Nt, D] gallery tokens (float16 by default), memory-mappable
    INDEX/build/            only while building: progress.json + chunk-NNNNNN.npy

Building walks the images folder (jpg, jpeg, png, webp; recursive; sorted), splits the list into
chunks of ``chunk_size`` images and writes each finished chunk atomically together with a
progress record. A rerun after an interruption reuses every finished chunk whose key (checkpoint
sha256, storage dtype, the chunk's ids) is unchanged, so only the unfinished work is redone; a
changed folder recomputes the chunks whose ids moved. Unreadable images never stop the build:
they are collected (id, path, error) into the manifest and the build report.

Loading (:func:`load_index`) checks the manifest (format, version, shapes, dtype, count), the
size and sha256 of every data file, and, when a checkpoint is given, that it is the one the
index was built with; any mismatch is a :class:`~dqecir.errors.CheckpointError`.

Under ``torchrun`` (:func:`build_index` with an active :class:`~dqecir.distributed.DistEnv`)
every process embeds a contiguous share of the sorted listing into its own shard,
``INDEX/shards/rank-RRRRR-of-WWWWW/`` (a complete index of its share, resumable like any
build), then rank 0 merges the shards in rank order into the layout above, whose manifest
lists them under ``shards``: rows, ids and files are those a single process would write. The
shard folders are removed after the merge unless ``keep_shards``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dqecir.checkpoint import atomic_write
from dqecir.data.formats.common import json_problem
from dqecir.data.images import load_tensor
from dqecir.distributed import DistEnv
from dqecir.errors import CheckpointError, DataError, DqecirError

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
def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


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


def _write_json(path: Path, obj: Any) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
        tmp.chmod(0o644)  # the temp file is private; an index is meant to be shared

    atomic_write(path, write)


def _write_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr)
        tmp.chmod(0o644)

    atomic_write(path, write)


def _key(*parts: Any) -> str:
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


# ---- building -------------------------------------------------------------------------
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


@dataclass
class _Plan:
    """Everything fixed for one build: the model, its identity and the image list."""

    model: Any
    checkpoint: Path
    checkpoint_sha256: str
    images: Path
    ids: list[str]
    dtype: str
    chunk_size: int

    def chunks(self) -> Iterator[tuple[int, list[str]]]:
        for c, start in enumerate(range(0, len(self.ids), self.chunk_size)):
            yield c, self.ids[start : start + self.chunk_size]

    def chunk_key(self, ids: list[str]) -> str:
        return _key(FORMAT, VERSION, self.checkpoint_sha256, self.dtype, ids)


def build_index(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    batch_size: int = 64,
    dtype: str = "float16",
    device: str | torch.device = "cpu",
    chunk_size: int = 1024,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    ids: Sequence[str] | None = None,
    dist: DistEnv | None = None,
    keep_shards: bool = False,
) -> BuildReport:
    """Embed every image under ``images`` with the checkpoint's gallery side into ``out``.

    Resumes an interrupted build in ``out``. An ``out`` that already holds a complete index is
    left alone when it was built from the same checkpoint, folder listing and dtype (the report
    then says 0 computed); otherwise it is an error unless ``overwrite``.

    Args:
        workers: threads decoding images (0: decode in this thread).
        ids: the image ids to index (default: every image under ``images``, sorted).
        dist: under torchrun, this process's place: each process embeds its shard, rank 0
            merges (see the module docstring); every process returns the merged report.
        keep_shards: keep the shard folders after a sharded build's merge.
    """
    if dist is not None and dist.active:
        return _build_sharded(
            checkpoint, images, out, dist, keep_shards=keep_shards, batch_size=batch_size,
            dtype=dtype, device=device, chunk_size=chunk_size, workers=workers,
            overwrite=overwrite, progress=progress, ids=ids,
        )  # fmt: skip
    from dqecir.models.cir import load_model

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be >= 1")
    start = time.perf_counter()
    out, images = Path(out), Path(images).resolve()
    ck = resolve_checkpoint(checkpoint)
    ck_sha = file_sha256(ck)
    ids = list(ids) if ids is not None else list_images(images)
    if not ids:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found", file=images)
    done = _existing_index(out, ck_sha, images, ids, dtype, overwrite)
    if done is not None:
        return done
    model, _ = load_model(ck, device)
    plan = _Plan(model, ck, ck_sha, images, ids, dtype, chunk_size)
    embed_start = time.perf_counter()
    computed, reused = _build_chunks(plan, out / BUILD, batch_size, workers, progress)
    embed_seconds = time.perf_counter() - embed_start
    manifest = _finalize(plan, out)
    shutil.rmtree(out / BUILD, ignore_errors=True)
    return BuildReport(
        index_dir=out,
        count=int(manifest["count"]),
        unreadable=manifest["unreadable"],
        computed=computed,
        reused=reused,
        seconds=time.perf_counter() - start,
        bytes_on_disk=_bytes_on_disk(out),
        embed_seconds=embed_seconds,
    )


def _bytes_on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _existing_index(
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
            and m["listing_sha256"] == _key(ids)
        )
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if same:
        index = load_index(out)
        log.info("index %s is up to date (%d images); nothing to do", out, len(index))
        return BuildReport(
            out, len(index), index.unreadable, 0, len(index), 0.0, _bytes_on_disk(out)
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


def _load_progress(build: Path) -> dict[str, Any]:
    try:
        progress = json.loads((build / PROGRESS).read_text(encoding="utf-8"))
        if isinstance(progress, dict) and isinstance(progress.get("chunks"), dict):
            return progress
    except FileNotFoundError:
        return {"chunks": {}}
    except (OSError, ValueError) as e:
        log.warning("index build %s: progress record unreadable (%s); starting over", build, e)
    return {"chunks": {}}


def _chunk_file(c: int) -> str:
    return f"chunk-{c:06d}.npy"


def _reusable(build: Path, entry: dict[str, Any] | None, key: str) -> bool:
    if not entry or entry.get("key") != key:
        return False
    path = build / entry["file"]
    return path.is_file() and file_sha256(path) == entry["sha256"]


def _build_chunks(
    plan: _Plan, build: Path, batch_size: int, workers: int, progress: bool
) -> tuple[int, int]:
    """Embed every chunk not already finished; returns (computed, reused) image counts."""
    build.mkdir(parents=True, exist_ok=True)
    record = _load_progress(build)
    old = record["chunks"]
    record = {"format": FORMAT, "version": VERSION, "chunks": {}}
    todo, reused = [], 0
    for c, ids in plan.chunks():
        key = plan.chunk_key(ids)
        if _reusable(build, old.get(str(c)), key):
            record["chunks"][str(c)] = old[str(c)]
            reused += len(ids)
        else:
            todo.append((c, ids, key))
    _write_json(build / PROGRESS, record)
    _drop_stray_chunks(build, record)
    if reused:
        log.info("index build %s: resuming, %d images already embedded", build, reused)
    pool = ThreadPoolExecutor(max_workers=workers) if workers > 0 else None
    try:
        with tqdm(
            total=len(plan.ids), initial=reused, desc="index", unit="img", disable=not progress
        ) as bar:
            for c, ids, key in todo:
                record["chunks"][str(c)] = _embed_chunk(
                    plan, build, c, ids, key, batch_size, pool, bar
                )
                _write_json(build / PROGRESS, record)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return sum(len(ids) for _, ids, _ in todo), reused


def _drop_stray_chunks(build: Path, record: dict[str, Any]) -> None:
    keep = {e["file"] for e in record["chunks"].values()}
    for p in build.glob("chunk-*.npy"):
        if p.name not in keep:
            p.unlink(missing_ok=True)


def _load_one(path: Path, preprocess: Any) -> torch.Tensor | DataError:
    try:
        return load_tensor(path, preprocess)
    except DataError as e:
        return e


def _embed_chunk(
    plan: _Plan,
    build: Path,
    c: int,
    ids: list[str],
    key: str,
    batch_size: int,
    pool: ThreadPoolExecutor | None,
    bar: tqdm,
) -> dict[str, Any]:
    """Embed one chunk, write it atomically; returns its progress entry."""
    model = plan.model
    pre = model.backbone.preprocess
    load: Callable = pool.map if pool is not None else map
    rows, kept, bad = [], [], []
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        loaded = list(load(lambda i: _load_one(plan.images / i, pre), batch))
        good = [(i, t) for i, t in zip(batch, loaded, strict=True) if isinstance(t, torch.Tensor)]
        for i, t in zip(batch, loaded, strict=True):
            if isinstance(t, DataError):
                bad.append({"id": i, "path": str(plan.images / i), "error": str(t)})
        if good:
            rows.append(_embed_batch(model, torch.stack([t for _, t in good])))
            kept.extend(i for i, _ in good)
        bar.update(len(batch))
    arr = _storable(rows, model, plan.dtype, build, c)
    name = _chunk_file(c)
    _write_npy(build / name, arr)
    return {
        "key": key,
        "file": name,
        "sha256": file_sha256(build / name),
        "ids": kept,
        "unreadable": bad,
    }


@torch.inference_mode()
def _embed_batch(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Gallery tokens ``[B, Nt, D]`` (float32, on the CPU) of a batch of pixels."""
    device = next(model.parameters()).device
    feats = model.backbone.image_features(pixels.to(device))
    return model.gallery(feats).float().cpu()


def _storable(rows: list[torch.Tensor], model: Any, dtype: str, build: Path, c: int) -> np.ndarray:
    shape = (model.backbone.num_tokens, model.embed_dim)
    if not rows:
        return np.zeros((0, *shape), dtype=dtype)
    arr = torch.cat(rows).numpy()
    if tuple(arr.shape[1:]) != shape:
        raise DataError(
            f"gallery tokens have shape {tuple(arr.shape[1:])}, the model declares {shape}",
            file=build / _chunk_file(c),
        )
    with np.errstate(over="ignore"):
        out = arr.astype(dtype)
    if not np.isfinite(out).all():
        raise DataError(
            f"non-finite gallery embeddings once stored as {dtype}", file=build / _chunk_file(c)
        )
    return out


def _finalize(plan: _Plan, out: Path) -> dict[str, Any]:
    """Concatenate the chunks into ``embeddings.npy`` + ``ids.json``, then write the manifest
    (last: until it exists the index is incomplete and the chunks are kept)."""
    build = out / BUILD
    record = _load_progress(build)["chunks"]
    entries = [record[str(c)] for c, _ in plan.chunks()]
    ids = [i for e in entries for i in e["ids"]]
    unreadable = [u for e in entries for u in e["unreadable"]]
    model = plan.model
    shape = (len(ids), model.backbone.num_tokens, model.embed_dim)
    tmp = build / f".{EMBEDDINGS}.tmp"
    emb = np.lib.format.open_memmap(tmp, mode="w+", dtype=plan.dtype, shape=shape)
    pos = 0
    for e in entries:
        part = np.load(build / e["file"], mmap_mode="r")
        emb[pos : pos + len(part)] = part
        pos += len(part)
    emb.flush()
    del emb
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out / EMBEDDINGS)
    _write_json(out / IDS, ids)
    manifest = _manifest(plan, out, ids, unreadable)
    _write_json(out / MANIFEST, manifest)
    return manifest


def _manifest(
    plan: _Plan, out: Path, ids: Sequence[str], unreadable: list[dict[str, str]]
) -> dict[str, Any]:
    model = plan.model
    files = {
        name: {"bytes": (out / name).stat().st_size, "sha256": file_sha256(out / name)}
        for name in (EMBEDDINGS, IDS)
    }
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(plan.checkpoint), "sha256": plan.checkpoint_sha256},
        "model": {
            "backbone": model.backbone.name,
            "backbone_config": model.backbone.config(),
            "image_cache_key": model.backbone.image_cache_key(),
            "attributes": model.attributes,
        },
        "preprocess": model.backbone.preprocess.to_dict(),
        "images_root": str(plan.images),
        "listing_sha256": _key(plan.ids),
        "dim": model.embed_dim,
        "tokens": model.backbone.num_tokens,
        "count": len(ids),
        "dtype": plan.dtype,
        "files": files,
        "unreadable": unreadable,
    }


# ---- sharded build (torchrun) ---------------------------------------------------------
def shard_dir(out: Path, rank: int, world: int) -> Path:
    return Path(out) / SHARDS / f"rank-{rank:05d}-of-{world:05d}"


def _everyone(dist: DistEnv, what: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` here and tell every process whether it failed anywhere: a failure on one
    process becomes the same error on all of them (instead of the others waiting forever)."""
    try:
        result, error = fn(), None
    except (DqecirError, OSError, ValueError) as e:
        result, error = None, f"{type(e).__name__}: {e}"
    errors = [e for e in dist.all_gather_objects(error) if e is not None]
    if errors:
        if error is not None:
            raise CheckpointError(f"sharded index build, {what}: {error}")
        raise CheckpointError(f"sharded index build, {what}, on another process: {errors[0]}")
    return result


def _build_sharded(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    dist: DistEnv,
    *,
    keep_shards: bool,
    ids: Sequence[str] | None,
    overwrite: bool,
    dtype: str,
    **build: Any,
) -> BuildReport:
    start = time.perf_counter()
    out, images = Path(out), Path(images).resolve()

    def plan() -> tuple[list[str], str]:
        listing = list(ids) if ids is not None else list_images(images)
        if len(listing) < dist.world:
            raise DataError(
                f"{len(listing)} image(s) cannot be shared by {dist.world} processes", file=images
            )
        return listing, file_sha256(resolve_checkpoint(checkpoint))

    listing, ck_sha = _everyone(dist, "listing the images", plan)
    keys = dist.all_gather_objects(_key(listing))
    if len(set(keys)) != 1:
        raise DataError("the processes see different image listings (not a shared folder?)",
                        file=images)  # fmt: skip

    def up_to_date() -> BuildReport | None:  # rank 0 alone looks at (and clears) ``out``
        return _existing_index(out, ck_sha, images, listing, dtype, overwrite)

    done = _everyone(dist, "checking the output folder", up_to_date if dist.is_main else _none)
    done = dist.broadcast_object(done)
    if done is not None:
        return done
    mine = listing[dist.share(len(listing))]
    shard = shard_dir(out, dist.rank, dist.world)

    def embed() -> BuildReport:
        return build_index(checkpoint, images, shard, ids=mine, dtype=dtype, overwrite=True,
                           **{**build, "progress": build["progress"] and dist.is_main})  # fmt: skip

    reports = dist.all_gather_objects(_everyone(dist, "embedding", embed))
    shards = [shard_dir(out, r, dist.world) for r in range(dist.world)]

    def merge() -> dict[str, Any]:
        manifest = merge_shards(out, shards, listing)
        if not keep_shards:
            shutil.rmtree(out / SHARDS, ignore_errors=True)
        return manifest

    manifest = _everyone(dist, "merging", merge if dist.is_main else _none)
    manifest = dist.broadcast_object(manifest)
    return BuildReport(
        index_dir=out,
        count=int(manifest["count"]),
        unreadable=manifest["unreadable"],
        computed=sum(r.computed for r in reports),
        reused=sum(r.reused for r in reports),
        seconds=time.perf_counter() - start,
        bytes_on_disk=_bytes_on_disk(out),
        embed_seconds=max(r.embed_seconds for r in reports),
    )


def _none() -> None:
    return None


def merge_shards(out: str | Path, shards: Sequence[Path], listing: Sequence[str]) -> dict[str, Any]:
    """Concatenate complete shard indexes (in order) into the index ``out``; returns its
    manifest, which lists the shards. The shards must come from one checkpoint, dtype and
    images folder and hold, in order, the images of ``listing`` (unreadable ones reported)."""
    out = Path(out)
    parts = [load_index(s) for s in shards]
    first = parts[0].manifest
    same = ("checkpoint", "images_root", "dtype", "dim", "tokens", "model", "preprocess")
    for part in parts[1:]:
        for key in same:
            if part.manifest[key] != first[key]:
                raise CheckpointError(
                    f"shard {part.root}: its {key} differs from shard {parts[0].root}'s"
                )
    ids = [i for part in parts for i in part.ids]
    unreadable = [u for part in parts for u in part.unreadable]
    expected = set(listing) - {u["id"] for u in unreadable}
    if ids != [i for i in listing if i in expected]:
        raise CheckpointError(f"index {out}: the shards do not hold the listing in order")
    tmp = out / f".{EMBEDDINGS}.tmp"
    shape = (len(ids), int(first["tokens"]), int(first["dim"]))
    emb = np.lib.format.open_memmap(tmp, mode="w+", dtype=first["dtype"], shape=shape)
    pos = 0
    for part in parts:
        for a in range(0, len(part), 65536):  # bounded memory whatever the shard size
            rows = part.embeddings[a : a + 65536]
            emb[pos : pos + len(rows)] = rows
            pos += len(rows)
    emb.flush()
    del emb
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.chmod(0o644)
    os.replace(tmp, out / EMBEDDINGS)
    _write_json(out / IDS, ids)
    files = {
        name: {"bytes": (out / name).stat().st_size, "sha256": file_sha256(out / name)}
        for name in (EMBEDDINGS, IDS)
    }
    shard_list = [
        {"dir": part.root.relative_to(out).as_posix(), "count": len(part),
         "embeddings_sha256": part.manifest["files"][EMBEDDINGS]["sha256"]}
        for part in parts
    ]  # fmt: skip
    manifest = {
        **{k: first[k] for k in ("format", "version", *same)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "listing_sha256": _key(list(listing)),
        "count": len(ids),
        "files": files,
        "unreadable": unreadable,
        "shards": shard_list,
    }
    _write_json(out / MANIFEST, manifest)
    return manifest
