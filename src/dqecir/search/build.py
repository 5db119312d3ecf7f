"""Building a gallery index: embed a folder of images once with a checkpoint's gallery side.

Building walks the images folder (jpg, jpeg, png, webp; recursive; sorted), splits the list into
chunks of ``chunk_size`` images and writes each finished chunk atomically together with a
progress record. A rerun after an interruption reuses every finished chunk whose key (checkpoint
sha256, storage dtype, the chunk's ids) is unchanged, so only the unfinished work is redone; a
changed folder recomputes the chunks whose ids moved. Unreadable images never stop the build:
they are collected (id, path, error) into the manifest and the build report. Under torchrun
the build is sharded (:mod:`dqecir.search.shards`). The layout: :mod:`dqecir.search.index`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dqecir.data.images import load_tensor
from dqecir.distributed import DistEnv
from dqecir.errors import DataError
from dqecir.files import file_sha256, write_npy_atomic
from dqecir.search.index import (
    BUILD,
    DTYPES,
    FORMAT,
    IMAGE_EXTENSIONS,
    MANIFEST,
    PROGRESS,
    VERSION,
    BuildReport,
    bytes_on_disk,
    content_key,
    existing_index,
    list_images,
    resolve_checkpoint,
    write_json,
    write_rows,
)
from dqecir.search.shards import build_sharded

log = logging.getLogger(__name__)


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
        return content_key(FORMAT, VERSION, self.checkpoint_sha256, self.dtype, ids)


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
        return build_sharded(
            build_index, checkpoint, images, out, dist, keep_shards=keep_shards, batch_size=batch_size,
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
    done = existing_index(out, ck_sha, images, ids, dtype, overwrite)
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
        bytes_on_disk=bytes_on_disk(out),
        embed_seconds=embed_seconds,
    )


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
    write_json(build / PROGRESS, record)
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
                write_json(build / PROGRESS, record)
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
    write_npy_atomic(build / name, arr)
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
    shape = (len(ids), plan.model.backbone.num_tokens, plan.model.embed_dim)
    parts = (np.load(build / e["file"], mmap_mode="r") for e in entries)
    files = write_rows(out, parts, ids, shape, plan.dtype)
    manifest = _manifest(plan, ids, unreadable, files)
    write_json(out / MANIFEST, manifest)
    return manifest


def _manifest(
    plan: _Plan, ids: Sequence[str], unreadable: list[dict[str, str]], files: dict[str, Any]
) -> dict[str, Any]:
    model = plan.model
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
        "listing_sha256": content_key(plan.ids),
        "dim": model.embed_dim,
        "tokens": model.backbone.num_tokens,
        "count": len(ids),
        "dtype": plan.dtype,
        "files": files,
        "unreadable": unreadable,
    }
