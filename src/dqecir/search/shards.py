"""A sharded index build under ``torchrun``: every process embeds a contiguous share of the
sorted listing into its own shard, ``INDEX/shards/rank-RRRRR-of-WWWWW/`` (a complete index of
its share, resumable like any build), then rank 0 merges the shards in rank order into the
index layout (:mod:`dqecir.search.index`), whose manifest lists them under ``shards``: rows, ids
and files are those a single process would write. The shard folders are removed after the
merge unless ``keep_shards``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dqecir.distributed import DistEnv
from dqecir.errors import CheckpointError, DataError, DqecirError
from dqecir.files import file_sha256
from dqecir.search.index import (
    EMBEDDINGS,
    MANIFEST,
    SHARDS,
    BuildReport,
    bytes_on_disk,
    content_key,
    existing_index,
    list_images,
    load_index,
    resolve_checkpoint,
    write_json,
    write_rows,
)


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


def build_sharded(
    build_one: Callable[..., BuildReport],
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
    """One shard per process (``build_one``, the single-process build, into
    ``INDEX/shards/rank-RRRRR-of-WWWWW``), then rank 0 merges them into ``out``; every process
    returns the merged report. A failure on any process is the same error on all of them."""
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
    keys = dist.all_gather_objects(content_key(listing))
    if len(set(keys)) != 1:
        raise DataError("the processes see different image listings (not a shared folder?)",
                        file=images)  # fmt: skip

    def up_to_date() -> BuildReport | None:  # rank 0 alone looks at (and clears) ``out``
        return existing_index(out, ck_sha, images, listing, dtype, overwrite)

    done = _everyone(dist, "checking the output folder", up_to_date if dist.is_main else _none)
    done = dist.broadcast_object(done)
    if done is not None:
        return done
    mine = listing[dist.share(len(listing))]
    shard = shard_dir(out, dist.rank, dist.world)

    def embed() -> BuildReport:
        return build_one(checkpoint, images, shard, ids=mine, dtype=dtype, overwrite=True,
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
        bytes_on_disk=bytes_on_disk(out),
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
    shape = (len(ids), int(first["tokens"]), int(first["dim"]))
    files = write_rows(out, (part.embeddings for part in parts), ids, shape, first["dtype"])
    shard_list = [
        {"dir": part.root.relative_to(out).as_posix(), "count": len(part),
         "embeddings_sha256": part.manifest["files"][EMBEDDINGS]["sha256"]}
        for part in parts
    ]  # fmt: skip
    manifest = {
        **{k: first[k] for k in ("format", "version", *same)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "listing_sha256": content_key(list(listing)),
        "count": len(ids),
        "files": files,
        "unreadable": unreadable,
        "shards": shard_list,
    }
    write_json(out / MANIFEST, manifest)
    return manifest
