"""Frozen-feature cache on disk: each image / unique text goes through a frozen tower once.

Layout of a cache folder (one per dataset and backbone family; the folder is always passed in)::

    DIR/images/k-<key hash>/manifest.json        current generation, its key, count, shapes, dtypes
    DIR/images/k-<key hash>/g-<hex>/ids.json     row order (image ids)
    DIR/images/k-<key hash>/g-<hex>/<field>.npy  one memory-mappable array [count, ...] per field
    DIR/texts/k-<key hash>/...                   the same for texts, rows keyed by sha256 of the text

One store per cache key, side by side: a sweep that switches between backbone settings (a frozen
or a trained top text layer, another image size) reuses each one's features instead of
recomputing them.

Rules:
- a store is keyed by the backbone's ``image_cache_key()`` (with the image loader's
  ``LOADER_VERSION``) / ``text_cache_key()`` (model + preprocessing) and lives in the folder
  named by the key's hash; a store whose manifest names another key (a hash collision or a
  hand-made copy) is rebuilt, with a log line saying why;
- adding rows writes a new generation (old rows copied, new ones computed in batches straight
  into the memmaps) and then replaces the manifest atomically (temp + fsync + rename), so an
  interrupted run leaves the previous generation intact;
- a manifest that does not parse, or whose ids / arrays disagree with it (count, shapes,
  dtypes, file sizes), is detected and the store rebuilt rather than used;
- floating features are stored as ``float16`` by default (``dtype=``); integer / bool fields
  (token ids, masks) keep their dtype. Values that overflow the storage dtype are an error.

Several processes may share a cache (two runs side by side on one benchmark): reading a store
takes a shared lock on ``.k-<key hash>.lock`` beside it, adding rows an exclusive one, and a
writer reads the store again once it holds the lock, so the second of two runs that both found
rows missing waits for the first and computes only what is still missing. (POSIX ``flock``;
where ``fcntl`` is missing, as on Windows, no lock is taken and one writer at a time is the
caller's care.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from dqecir.data.images import LOADER_VERSION, Preprocess, load_tensor
from dqecir.errors import DataError
from dqecir.files import fsync_path, write_json_atomic

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
IDS = "ids.json"
IMAGE_FIELD = "image"
_COPY_ROWS = 4096


class FrozenStage(Protocol):
    """What the cache needs of a backbone: its frozen towers and their identity (every
    :class:`~dqecir.models.backbones.base.Backbone` is one; data/ never imports models/)."""

    preprocess: Preprocess

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def text_features(self, texts: list[str]) -> dict[str, torch.Tensor]: ...

    def image_cache_key(self) -> str: ...

    def text_cache_key(self) -> str: ...

    # and optionally (every Backbone has them) read_queries(texts) and query_cache_key()


def read_queries(backbone: object, texts: Sequence[str]) -> list[str]:
    """``texts`` as ``backbone`` reads a query (its ``read_queries``; as written without)."""
    read = getattr(backbone, "read_queries", None)
    return read(list(texts)) if read is not None else list(texts)


def text_id(text: str) -> str:
    """Stable id of a text (sha256 of its exact UTF-8 bytes, 128 bits in hex)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _sha(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


# ---- reading ------------------------------------------------------------------------
@dataclass
class FeatureTable:
    """Rows of one store, memory-mapped read-only, addressed by id (or by text).

    ``get(keys)`` returns batch-first tensors in the order of ``keys``; floating fields are
    cast to ``float_dtype`` (float32 by default).
    """

    ids: list[str]
    arrays: dict[str, np.ndarray]
    hashed: bool = False
    """Keys are texts, looked up through :func:`text_id`."""
    _row: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._row = {k: i for i, k in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def _id(self, key: str) -> str:
        return text_id(key) if self.hashed else key

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._id(key) in self._row

    @property
    def fields(self) -> list[str]:
        return list(self.arrays)

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        try:
            return np.fromiter(
                (self._row[self._id(k)] for k in keys), dtype=np.int64, count=len(keys)
            )
        except KeyError as e:
            raise KeyError(f"not in the feature cache: {e.args[0]!r}") from None

    def get(
        self, keys: Sequence[str], float_dtype: torch.dtype = torch.float32
    ) -> dict[str, torch.Tensor]:
        idx = self.rows(keys)
        out = {}
        for name, arr in self.arrays.items():
            t = torch.from_numpy(np.ascontiguousarray(arr[idx]))
            out[name] = t.to(float_dtype) if t.is_floating_point() else t
        return out

    def tensor(self, keys: Sequence[str], float_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The single field of an image store as one tensor ``[len(keys), ...]``."""
        if len(self.arrays) != 1:
            raise ValueError(f"tensor() needs a single-field store, this one has {self.fields}")
        return next(iter(self.get(keys, float_dtype).values()))


# ---- one store (images or texts) ------------------------------------------------------
class _Store:
    def __init__(self, root: Path, kind: str, dtype: np.dtype) -> None:
        self.root, self.kind, self.dtype = root, kind, dtype

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def open(self, key: str, hashed: bool) -> FeatureTable | None:
        """The current table, or None when there is none or it cannot be used (then the
        store is wiped, with a log line saying why)."""
        if not self.manifest_path.exists():
            if self.root.exists() and any(self.root.iterdir()):
                self._rebuild("no manifest (an interrupted first build?)")
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            if not isinstance(manifest, dict):
                raise ValueError("manifest is not a JSON object")
        except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested too deep
            self._rebuild(f"corrupt manifest ({e})")
            return None
        if manifest.get("key") != key:
            self._rebuild(
                f"built under another key ({manifest.get('key')!r}), the backbone's is {key!r}"
            )
            return None
        try:
            return self._load(manifest, hashed)
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
            self._rebuild(f"does not match its manifest ({e})")
            return None

    @contextlib.contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        """Hold the store's lock file (beside the store, so that a rebuild, which removes the
        store's folder, keeps it): shared for reading, exclusive for adding rows."""
        if fcntl is None:
            yield
            return
        lock = self.root.parent / f".{self.root.name}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def ensure(
        self,
        key: str,
        hashed: bool,
        ids: Iterable[str],
        fill: Callable[[FeatureTable | None, list[str]], FeatureTable],
    ) -> FeatureTable:
        """The table holding every id of ``ids``: read under the shared lock; when some are
        missing, read again under the exclusive lock (another process may have added them
        meanwhile) and ``fill(table, missing)`` what is still missing."""
        with self.locked(exclusive=False):
            table = self.open(key, hashed)
        if not _missing(table, ids):
            return table  # type: ignore[return-value]
        with self.locked(exclusive=True):
            table = self.open(key, hashed)
            missing = _missing(table, ids)
            if not missing:
                return table  # type: ignore[return-value]
            return fill(table, missing)

    def _load(self, manifest: dict, hashed: bool) -> FeatureTable:
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT}")
        gen = self.root / str(manifest["generation"])
        ids = json.loads((gen / IDS).read_text(encoding="utf-8"))
        count = int(manifest["count"])
        if not isinstance(ids, list) or len(ids) != count or len(set(ids)) != count:
            raise ValueError(f"ids.json does not hold {count} distinct ids")
        if _sha(ids) != manifest["ids_sha256"]:
            raise ValueError("ids.json checksum differs")
        arrays = {}
        for name, spec in manifest["fields"].items():
            arr = np.load(gen / f"{name}.npy", mmap_mode="r")  # checks the file size too
            if list(arr.shape) != list(spec["shape"]) or str(arr.dtype) != spec["dtype"]:
                raise ValueError(
                    f"field {name!r} is {arr.shape} {arr.dtype}, manifest says "
                    f"{tuple(spec['shape'])} {spec['dtype']}"
                )
            if arr.shape[0] != count:
                raise ValueError(f"field {name!r} has {arr.shape[0]} rows, expected {count}")
            arrays[name] = arr
        if not arrays:
            raise ValueError("no feature fields")
        return FeatureTable(ids=ids, arrays=arrays, hashed=hashed)

    def _rebuild(self, why: str) -> None:
        log.warning("feature cache %s: %s; rebuilding it", self.root, why)
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- writing ---------------------------------------------------------------------
    def extend(
        self,
        key: str,
        old: FeatureTable | None,
        new_ids: list[str],
        batches: Iterable[dict[str, torch.Tensor]],
        hashed: bool,
    ) -> FeatureTable:
        """Write a generation holding ``old``'s rows then ``new_ids``' (computed by
        ``batches``, in order), switch the manifest to it, drop the previous one."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._drop_orphans(keep=None)
        gen_name = f"g-{uuid.uuid4().hex[:12]}"
        gen = self.root / gen_name
        gen.mkdir()
        try:
            ids = (old.ids if old else []) + new_ids
            arrays = self._write_rows(gen, len(ids), old, len(new_ids), batches)
            write_json_atomic(gen / IDS, ids)
            for name in arrays:
                fsync_path(gen / f"{name}.npy")
            manifest = {
                "format": FORMAT,
                "kind": self.kind,
                "key": key,
                "generation": gen_name,
                "count": len(ids),
                "ids_sha256": _sha(ids),
                "fields": {
                    n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in arrays.items()
                },
            }
            del arrays
            write_json_atomic(self.manifest_path, manifest)
        except BaseException:
            shutil.rmtree(gen, ignore_errors=True)
            raise
        self._drop_orphans(keep=gen_name)
        return self._load(manifest, hashed)

    def _write_rows(
        self,
        gen: Path,
        total: int,
        old: FeatureTable | None,
        n_new: int,
        batches: Iterable[dict[str, torch.Tensor]],
    ) -> dict[str, np.memmap]:
        start = len(old) if old else 0
        arrays: dict[str, np.memmap] = {}
        pos = start
        for batch in batches:
            rows = {k: self._storable(k, v) for k, v in batch.items()}
            if not arrays:
                arrays = self._allocate(gen, total, rows, old)
            self._check_fields(gen, arrays, rows)
            n = next(iter(rows.values())).shape[0]
            for k, v in rows.items():
                arrays[k][pos : pos + n] = v
            pos += n
        if not arrays:  # nothing new: a plain copy (not reached by the public API)
            arrays = self._allocate(gen, total, {}, old)
        if pos != start + n_new:
            raise RuntimeError(
                f"feature cache {self.root}: got {pos - start} rows, expected {n_new}"
            )
        for a in arrays.values():
            a.flush()
        return arrays

    def _allocate(
        self, gen: Path, total: int, rows: dict[str, np.ndarray], old: FeatureTable | None
    ) -> dict[str, np.memmap]:
        specs = {k: (v.shape[1:], v.dtype) for k, v in rows.items()}
        if old is not None:
            old_specs = {k: (a.shape[1:], a.dtype) for k, a in old.arrays.items()}
            if rows and old_specs != specs:
                raise DataError(
                    f"the backbone's features changed shape or dtype under the same cache key "
                    f"(cached {old_specs}, now {specs}): its cache_key() must change too",
                    file=self.root,
                )
            specs = old_specs
        arrays = {}
        for k, (shape, dtype) in specs.items():
            path = gen / f"{k}.npy"
            arrays[k] = np.lib.format.open_memmap(
                path, mode="w+", dtype=dtype, shape=(total, *shape)
            )
            if old is not None:
                src = old.arrays[k]
                for i in range(0, len(old), _COPY_ROWS):
                    j = min(i + _COPY_ROWS, len(old))
                    arrays[k][i:j] = src[i:j]
        return arrays

    def _check_fields(self, gen: Path, arrays: dict, rows: dict[str, np.ndarray]) -> None:
        got = {k: (v.shape[1:], v.dtype) for k, v in rows.items()}
        want = {k: (a.shape[1:], a.dtype) for k, a in arrays.items()}
        if got != want:
            raise DataError(f"feature batches disagree: {got} vs {want}", file=gen)
        if len({v.shape[0] for v in rows.values()}) != 1:
            raise DataError(f"feature fields of one batch differ in length: {got}", file=gen)

    def _storable(self, name: str, t: torch.Tensor) -> np.ndarray:
        t = t.detach().cpu()
        if t.is_floating_point():
            with np.errstate(over="ignore"):
                arr = t.float().numpy().astype(self.dtype)
            if not np.isfinite(arr).all():
                raise DataError(
                    f"non-finite values in feature {name!r} once stored as {self.dtype} "
                    "(overflow? build the cache with dtype=np.float32)",
                    file=self.root,
                )
            return arr
        return t.numpy()

    def _drop_orphans(self, keep: str | None) -> None:
        """Remove generation folders the manifest does not name (interrupted writes)."""
        current = keep
        if current is None and self.manifest_path.exists():
            try:
                current = json.loads(self.manifest_path.read_text(encoding="utf-8"))["generation"]
            except (OSError, ValueError, KeyError, TypeError):
                current = None
        for p in self.root.glob("g-*"):
            if p.is_dir() and p.name != current:
                shutil.rmtree(p, ignore_errors=True)


# ---- the cache ------------------------------------------------------------------------
def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _missing(table: FeatureTable | None, ids: Iterable[str]) -> list[str]:
    have = set(table.ids) if table else set()
    return [i for i in dict.fromkeys(ids) if i not in have]


class FeatureCache:
    """Frozen image / text features of one backbone, cached under ``root``.

    Args:
        root: the cache folder (created on first write).
        dtype: storage dtype of floating features (float16 halves the disk and page cache).
    """

    def __init__(self, root: str | Path, dtype: np.dtype | type = np.float16) -> None:
        self.root = Path(root)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"cache dtype must be a floating type, got {self.dtype}")

    def image_features(
        self,
        backbone: FrozenStage,
        ids: Sequence[str],
        paths: Mapping[str, str | Path] | Sequence[str | Path],
        *,
        batch_size: int = 64,
        device: torch.device | str = "cpu",
        workers: int = 0,
        progress: bool = True,
    ) -> FeatureTable:
        """Features of every image in ``ids``, computing (with a progress bar) the missing ones.

        Args:
            paths: image id -> file, or a sequence aligned with ``ids``; only the missing
                ids need one.
            device: where the pixels go; the backbone's frozen towers must already be there.
            workers: threads decoding images (0: in this thread).
        """
        path_of = _path_map(ids, paths)
        # the loader's version too: a file that decodes to other pixels needs new features
        key = f"{backbone.image_cache_key()}|loader-{LOADER_VERSION}"
        store = _Store(store_dir(self.root, "images", key), "images", self.dtype)

        def fill(table: FeatureTable | None, missing: list[str]) -> FeatureTable:
            for i in missing:
                if i not in path_of:
                    raise DataError("no image path given for this id", record=i, file=self.root)
            log.info("feature cache %s: computing %d image features", store.root, len(missing))
            batches = self._image_batches(
                backbone, missing, path_of, batch_size, device, workers, progress
            )
            return store.extend(key, table, missing, batches, hashed=False)

        return store.ensure(key, False, ids, fill)

    def text_features(
        self,
        backbone: FrozenStage,
        texts: Sequence[str],
        *,
        batch_size: int = 256,
        progress: bool = True,
        query: bool = False,
    ) -> FeatureTable:
        """Features of every unique text, keyed by the text itself (``table.get(texts)``).
        ``query``: the texts are queries (evaluation, search), read through the backbone's
        ``read_queries`` first and cached under its ``query_cache_key``; training captions
        are encoded as written."""
        query = query and hasattr(backbone, "query_cache_key")
        key = backbone.query_cache_key() if query else backbone.text_cache_key()

        def read(chunk: list[str]) -> list[str]:
            return read_queries(backbone, chunk) if query else chunk

        store = _Store(store_dir(self.root, "texts", key), "texts", self.dtype)
        by_id = {text_id(t): t for t in texts}

        def fill(table: FeatureTable | None, missing: list[str]) -> FeatureTable:
            # shortest first: each batch then pads to about its own length, not to the longest
            # text of a random draw (1.15x the texts/s on hinted fmnist captions at 2 threads,
            # benchmarks/results/feature-fill.md)
            missing.sort(key=lambda i: len(by_id[i]))
            log.info("feature cache %s: computing %d text features", store.root, len(missing))

            def batches() -> Iterator[dict[str, torch.Tensor]]:
                with tqdm(
                    total=len(missing), desc="text features", unit="text", disable=not progress
                ) as bar:
                    for chunk in _chunks(missing, batch_size):
                        yield backbone.text_features(read([by_id[i] for i in chunk]))
                        bar.update(len(chunk))

            return store.extend(key, table, missing, batches(), hashed=True)

        return store.ensure(key, True, by_id, fill)

    def _image_batches(
        self,
        backbone: FrozenStage,
        ids: list[str],
        path_of: Mapping[str, Path],
        batch_size: int,
        device: torch.device | str,
        workers: int,
        progress: bool,
    ) -> Iterator[dict[str, torch.Tensor]]:
        pre = backbone.preprocess
        pool = ThreadPoolExecutor(max_workers=workers) if workers > 0 else None
        load = pool.map if pool else map
        try:
            with tqdm(
                total=len(ids), desc="image features", unit="img", disable=not progress
            ) as bar:
                for chunk in _chunks(ids, batch_size):
                    pixels = torch.stack(list(load(lambda i: load_tensor(path_of[i], pre), chunk)))
                    yield {IMAGE_FIELD: backbone.image_features(pixels.to(device))}
                    bar.update(len(chunk))
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)


def store_dir(root: Path, kind: str, key: str) -> Path:
    """The folder of the store of ``kind`` ("images" / "texts") under cache key ``key``."""
    return Path(root) / kind / f"k-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:16]}"


def _path_map(
    ids: Sequence[str], paths: Mapping[str, str | Path] | Sequence[str | Path]
) -> dict[str, Path]:
    if isinstance(paths, Mapping):
        return {k: Path(v) for k, v in paths.items()}
    if len(paths) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(paths)} paths")
    return {i: Path(p) for i, p in zip(ids, paths, strict=True)}
