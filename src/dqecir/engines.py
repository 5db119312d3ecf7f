"""Search engines over gallery tokens, behind one interface, and the :class:`Searcher` that
turns a (reference image, text) pair into ranked index images.

Every engine answers ``search(queries [Q, D], k) -> (scores [Q, k] float32, indices [Q, k]
int64)`` with the image score ``s(q, T) = max_t <q, T_t>`` (METHOD.md), best first. ``k`` is
clipped to the gallery size; an approximate engine that finds fewer than ``k`` images pads
with index -1 and score -inf.

- :class:`ExactEngine` (``exact``): chunked matmul + running top-k in torch. float16 storage is
  upcast chunk by chunk into a small float32 buffer that stays in cache, so memory traffic is
  the float16 bytes; scores are float32.
- :class:`FaissEngine` (``flat``, ``hnsw``, ``ivfpq``): faiss over the token vectors (float32;
  ``Nt`` vectors per image). It fetches ``k * Nt * overfetch`` token hits, maps them to their
  images and rescores those candidates exactly (max over all their tokens, float32) before the
  final top-k. For ``flat`` this is exact with ``overfetch = 1``: the best token of a true top-k
  image ranks at most ``(k - 1) * Nt + 1`` among all tokens. faiss is optional
  (``pip install 'dqecir[index]'``).
- :class:`QdrantEngine` (``qdrant``): the index's vectors in a Qdrant collection (local mode,
  a server or a cluster; :func:`upload_to_qdrant` fills it), one point per image (its token,
  or its pooled tokens when ``Nt > 1``) or one per token with the image row in the point id.
  Hits are de-duplicated per image (max over its tokens) and, by default, rescored exactly
  from the local index like the faiss engines. ``pip install 'dqecir[qdrant]'``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dqecir.errors import DqecirError, QueryError

log = logging.getLogger(__name__)

ENGINES = ("exact", "flat", "hnsw", "ivfpq", "qdrant")


class MissingDependencyError(DqecirError):
    """An optional dependency needed for the requested feature is not installed."""


class SearchEngine(Protocol):
    name: str

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def _as_tokens(embeddings: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``[N, Nt, D]`` tensor sharing memory with ``embeddings`` (a read-only memmap is fine:
    engines never write to it). ``[N, D]`` means ``Nt = 1``."""
    if isinstance(embeddings, np.ndarray):
        with warnings.catch_warnings():  # read-only memmap: torch warns, we only read
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(embeddings)
    else:
        t = embeddings
    if t.dim() == 2:
        t = t.unsqueeze(1)
    if t.dim() != 3 or t.dtype not in (torch.float16, torch.float32):
        raise ValueError(
            f"embeddings must be [N, Nt, D] float16/32, got {tuple(t.shape)} {t.dtype}"
        )
    return t


def _queries(queries: torch.Tensor | np.ndarray, dim: int) -> torch.Tensor:
    q = torch.as_tensor(queries).detach().to("cpu", torch.float32)
    if q.dim() == 1:
        q = q.unsqueeze(0)
    if q.dim() != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must be [Q, {dim}], got {tuple(q.shape)}")
    return q.contiguous()


class ExactEngine:
    """Exact max-over-tokens search by chunked matmul (ground truth for the other engines).

    The gallery is scanned in blocks; each block gives its own top-k and one final top-k
    merges them, so no ``[Q, N]`` score matrix is ever held.

    A single query on float16 storage (``half_single_query``) first scans with a float16
    matmul, which reads the float16 bytes once without an upcast copy (on this project's
    2-core VM: 43 ms vs 58 ms for the upcast scan at 10^6 x 256), keeps the best
    ``k + 32`` per block and rescores them exactly in float32. The result is the exact one:
    when float16 rounding could have left out an image scoring within the rounding bound of
    the k-th, the query is rerun by the upcast scan (counted in ``fallbacks``).

    Args:
        embeddings: ``[N, Nt, D]`` (or ``[N, D]``) float16 or float32; not copied.
        block_bytes: size of the float32 working block a float16 block is upcast into (small
            enough to stay in cache, large enough that the per-op overhead and the thread
            barriers of each op stay small); float32 storage is read in place, in blocks 4x
            larger.
    """

    name = "exact"
    fallbacks = 0

    def __init__(
        self,
        embeddings: np.ndarray | torch.Tensor,
        *,
        block_bytes: int = 4 << 20,
        half_single_query: bool = True,
    ) -> None:
        self.tokens = _as_tokens(embeddings)
        self.count, self.nt, self.dim = self.tokens.shape
        self.block_bytes = block_bytes
        self.half_single_query = half_single_query and self.tokens.dtype == torch.float16
        self._max_norm: float | None = None

    def __len__(self) -> int:
        return self.count

    @property
    def block_images(self) -> int:
        per_block = self.block_bytes * (4 if self.tokens.dtype == torch.float32 else 1)
        return max(1, per_block // (4 * self.nt * self.dim))

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = _queries(queries, self.dim)
        k = min(int(k), self.count)
        if k < 1:
            raise ValueError("k must be >= 1 and the gallery non-empty")
        if self.half_single_query and len(q) == 1:
            found = self._search_half(q, k)
            if found is not None:
                return found
            self.fallbacks += 1
        block = self.block_images
        upcast = self.tokens.dtype != torch.float32
        buf = torch.empty(block * self.nt, self.dim) if upcast else None
        scores, indices = [], []
        with torch.inference_mode():
            for start in range(0, self.count, block):
                b = min(block, self.count - start)
                rows = self.tokens[start : start + b].reshape(b * self.nt, self.dim)
                if buf is not None:
                    rows = buf[: b * self.nt].copy_(rows)
                s = torch.mm(q, rows.T)  # [Q, b * Nt]
                if self.nt > 1:
                    s = s.view(len(q), b, self.nt).amax(dim=2)
                top = s.topk(min(k, b), dim=1)
                scores.append(top.values)
                indices.append(top.indices + start)
            s, j = torch.cat(scores, 1).topk(k, dim=1)
            return s, torch.cat(indices, 1).gather(1, j)

    def _max_token_norm(self) -> float:
        if self._max_norm is None:
            norms = [
                self.tokens[a : a + 65536].float().norm(dim=-1).max()
                for a in range(0, self.count, 65536)
            ]
            self._max_norm = float(torch.stack(norms).max())
        return self._max_norm

    def _search_half(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One query by float16 matmul + exact rescoring of the best ``k + 32`` per block;
        None when float16 rounding could have changed the top k."""
        # float16 rounding of the query (2^-11 relative) and of each score (2^-11 relative,
        # float32 accumulation): |error| <= 2^-10 |q| max|t|; a 1.5x margin on top.
        tol = 1.5 * 2.0**-10 * float(q.norm()) * self._max_token_norm()
        keep = k + 32
        block = 16 * self.block_images
        q16 = q.half()
        found, cut = [], float("-inf")
        with torch.inference_mode():
            for start in range(0, self.count, block):
                b = min(block, self.count - start)
                rows = self.tokens[start : start + b].reshape(b * self.nt, self.dim)
                s = torch.mm(q16, rows.T).float()
                if self.nt > 1:
                    s = s.view(1, b, self.nt).amax(dim=2)
                top = s.topk(min(keep, b), dim=1)
                found.append(top.indices + start)
                if b > keep:  # images left out of this block score at most its last kept
                    cut = max(cut, float(top.values[0, -1]))
            candidates = torch.cat(found, 1)
            exact = self.rescore(q, candidates)
            s, j = exact.topk(k, dim=1)
        if cut + tol >= float(s[0, -1]):
            return None
        return s, candidates.gather(1, j)

    def rescore(self, q: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Exact float32 scores ``[Q, C]`` of candidate images ``[Q, C]`` (-1: none -> -inf)."""
        safe = candidates.clamp(min=0)
        g = self.tokens[safe.reshape(-1)].float().view(*safe.shape, self.nt, self.dim)
        s = torch.einsum("qd,qctd->qct", q, g).amax(-1)
        return s.masked_fill(candidates < 0, float("-inf"))


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as e:
        raise MissingDependencyError(
            "the flat / hnsw / ivfpq engines need faiss: pip install 'dqecir[index]' "
            "(or use the exact engine)"
        ) from e
    return faiss


@dataclass(frozen=True)
class FaissOptions:
    """Engine settings. ``None`` picks a default from the gallery size."""

    overfetch: int | None = None
    """Token hits fetched per wanted image, times ``Nt`` (default 1 for flat, 4 otherwise)."""
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int | None = None
    """IVF lists (default ``4 sqrt(n)``, at most ``n / 39``)."""
    nprobe: int | None = None
    """IVF lists probed per query (default ``max(1, nlist / 8)``, at most 64)."""
    pq_m: int | None = None
    """PQ sub-quantizers (default ``D / 8``, a divisor of ``D``)."""
    train_size: int = 100_000
    seed: int = 0


class FaissEngine:
    """faiss flat (exact, inner product), HNSW or IVF-PQ over the token vectors, with the
    image aggregation and exact rescoring described in the module docstring."""

    def __init__(
        self,
        embeddings: np.ndarray | torch.Tensor,
        kind: str = "flat",
        options: FaissOptions | None = None,
    ) -> None:
        faiss = _import_faiss()
        if kind not in ("flat", "hnsw", "ivfpq"):
            raise ValueError(f"faiss engine kind must be flat, hnsw or ivfpq, got {kind!r}")
        self.name = kind
        self.exact = ExactEngine(embeddings)
        self.count, self.nt, self.dim = self.exact.count, self.exact.nt, self.exact.dim
        self.options = options or FaissOptions()
        vectors = self._vectors()
        self.index = self._build(faiss, kind, vectors)
        self.overfetch = self.options.overfetch or (1 if kind == "flat" else 4)

    def __len__(self) -> int:
        return self.count

    def _vectors(self) -> np.ndarray:
        flat = self.exact.tokens.reshape(-1, self.dim)
        return np.ascontiguousarray(flat.float().numpy(), dtype=np.float32)

    def _build(self, faiss: Any, kind: str, x: np.ndarray) -> Any:
        o, d = self.options, self.dim
        ip = faiss.METRIC_INNER_PRODUCT
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, o.hnsw_m, ip)
            index.hnsw.efConstruction = o.ef_construction
        else:
            index = self._ivfpq(faiss, x)
        index.add(x)
        return index

    def _ivfpq(self, faiss: Any, x: np.ndarray) -> Any:
        o, d, n = self.options, self.dim, x.shape[0]
        nlist = o.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        m = o.pq_m or _largest_divisor_at_most(d, max(1, d // 8))
        if d % m:
            raise ValueError(f"pq_m={m} must divide the dimension {d}")
        # faiss wants >= 39 training points per centroid, for the PQ codebooks too
        nbits = max(1, min(8, int(math.log2(max(2, n // 39)))))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(o.seed)
        sample = x if n <= o.train_size else x[np.sort(rng.choice(n, o.train_size, False))]
        index.train(sample)
        index.nprobe = o.nprobe or min(nlist, max(1, nlist // 8), 64)
        self._quantizer = quantizer  # the IVF index does not own it
        return index

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = _queries(queries, self.dim)
        k = min(int(k), self.count)
        if k < 1:
            raise ValueError("k must be >= 1 and the gallery non-empty")
        fetch = min(self.count * self.nt, k * self.nt * self.overfetch)
        if self.name == "hnsw":
            faiss = _import_faiss()
            params = faiss.SearchParametersHNSW(efSearch=max(self.options.ef_search, fetch))
            dist, tok = self.index.search(q.numpy(), fetch, params=params)
        else:
            dist, tok = self.index.search(q.numpy(), fetch)
        candidates = self._candidates(torch.from_numpy(dist), torch.from_numpy(tok), k)
        scores = self.exact.rescore(q, candidates)
        s, j = scores.topk(min(k, scores.shape[1]), dim=1)
        idx = candidates.gather(1, j).masked_fill(torch.isinf(s), -1)
        return _pad(s, idx, k)

    def _candidates(self, dist: torch.Tensor, tok: torch.Tensor, k: int) -> torch.Tensor:
        """The best ``k * overfetch`` distinct images ``[Q, C]`` (-1 padded) among the token
        hits ``[Q, fetch]``, ranked by their best hit (a lower bound of their true score)."""
        images = torch.where(tok >= 0, tok // self.nt, torch.full_like(tok, -1))
        return distinct_images(dist, images, k * self.overfetch)[0]


def distinct_images(
    scores: torch.Tensor, images: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """De-duplicate hits per image: ``scores`` / ``images`` ``[Q, H]`` (image -1: no hit) ->
    the best ``keep`` distinct images ``[Q, C]`` and their best hit score (max over their
    tokens among the hits), best first, padded with -1 / -inf."""
    rows = []
    for d, t in zip(scores, images, strict=True):
        ok = t >= 0
        uniq, inverse = torch.unique(t[ok], return_inverse=True)
        best = torch.full((len(uniq),), float("-inf")).scatter_reduce(
            0, inverse, d[ok].float(), reduce="amax"
        )
        top = best.topk(min(keep, len(uniq)))
        rows.append((uniq[top.indices], top.values))
    width = max(1, max(len(r[0]) for r in rows))
    out = torch.full((len(rows), width), -1, dtype=torch.int64)
    best_out = torch.full((len(rows), width), float("-inf"))
    for i, (r, v) in enumerate(rows):
        out[i, : len(r)], best_out[i, : len(v)] = r, v
    return out, best_out


def _pad(s: torch.Tensor, i: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if s.shape[1] >= k:
        return s, i
    extra = k - s.shape[1]
    s = torch.cat([s, torch.full((s.shape[0], extra), float("-inf"))], 1)
    i = torch.cat([i, torch.full((i.shape[0], extra), -1, dtype=torch.int64)], 1)
    return s, i


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(m for m in range(1, cap + 1) if n % m == 0)


def make_engine(
    name: str,
    embeddings: np.ndarray | torch.Tensor,
    options: FaissOptions | QdrantOptions | None = None,
    index: Any | None = None,
) -> SearchEngine:
    """``exact``, ``flat``, ``hnsw`` or ``ivfpq`` over ``embeddings`` ``[N, Nt, D]``;
    ``qdrant`` over the collection of ``index`` (a loaded :class:`dqecir.index.Index`) at
    ``options.url``."""
    if name == "exact":
        return ExactEngine(embeddings)
    if name in ("flat", "hnsw", "ivfpq"):
        if isinstance(options, QdrantOptions):
            raise ValueError(f"engine {name} takes FaissOptions, not QdrantOptions")
        return FaissEngine(embeddings, name, options)
    if name == "qdrant":
        if index is None or not isinstance(options, QdrantOptions):
            raise ValueError("the qdrant engine needs the index and QdrantOptions(url=...)")
        return QdrantEngine.for_index(index, options)
    raise ValueError(f"unknown engine {name!r}; choose one of {ENGINES}")


# ---- Qdrant ----------------------------------------------------------------------------
QDRANT_POINTS = ("auto", "image", "token")


@dataclass(frozen=True)
class QdrantOptions:
    """Where the Qdrant collection lives and how it is searched."""

    url: str = ":memory:"
    """``http(s)://host:6333`` (a server or a cluster node), a local folder (qdrant-client's
    local mode, one process at a time) or ``:memory:``."""
    api_key: str | None = None
    collection: str | None = None
    """Default: :func:`collection_name` of the index (one collection per index and points)."""
    points: str = "auto"
    """image: one point per image; token: one per gallery token; auto: image when ``Nt = 1``."""
    exact: bool = False
    """Qdrant's exhaustive search instead of its HNSW graph."""
    hnsw_ef: int = 128
    overfetch: int = 4
    """Images fetched per wanted image (x ``Nt`` token points) before exact rescoring."""
    rescore: bool = True
    """Rescore candidates exactly from the local index (max over all their tokens)."""
    shard_number: int | None = None
    replication_factor: int | None = None
    on_disk: bool = False
    """Keep the vectors on disk (memory-mapped) on the server."""
    upload_batch: int = 1024
    timeout: int = 60


def _import_qdrant() -> Any:
    try:
        import qdrant_client
    except ImportError as e:
        raise MissingDependencyError(
            "the Qdrant store needs qdrant-client: pip install 'dqecir[qdrant]'"
        ) from e
    return qdrant_client


def open_qdrant(options: QdrantOptions) -> Any:
    """A ``QdrantClient`` for ``options.url`` (server URL, local folder or ``:memory:``)."""
    qc = _import_qdrant()
    url = options.url
    if url == ":memory:":
        return qc.QdrantClient(location=":memory:")
    if url.startswith(("http://", "https://")):
        return qc.QdrantClient(url=url, api_key=options.api_key, timeout=options.timeout)
    Path(url).mkdir(parents=True, exist_ok=True)
    return qc.QdrantClient(path=url)


def resolve_points(points: str, tokens: int) -> str:
    if points not in QDRANT_POINTS:
        raise ValueError(f"points must be one of {QDRANT_POINTS}, got {points!r}")
    if points == "auto":
        return "image" if tokens == 1 else "token"
    return points


def collection_name(index: Any, points: str = "auto") -> str:
    """``dqecir-<embeddings sha256 prefix>-<image|token>``: a new index (or a rebuilt one)
    gets a new collection, an unchanged one finds its own."""
    sha = index.manifest["files"]["embeddings.npy"]["sha256"][:16]
    return f"dqecir-{sha}-{resolve_points(points, index.tokens)}"


def _point_vectors(tokens: torch.Tensor, points: str) -> torch.Tensor:
    """Vectors uploaded for a block of images ``[b, Nt, D]``: every token, or one vector per
    image (its token when ``Nt = 1``, else its mean-pooled re-normalised tokens)."""
    tokens = tokens.float()
    if points == "token":
        return tokens.reshape(-1, tokens.shape[-1])
    if tokens.shape[1] == 1:
        return tokens[:, 0]
    return torch.nn.functional.normalize(tokens.mean(1), dim=-1)


def upload_to_qdrant(
    index: Any, client: Any, options: QdrantOptions, *, overwrite: bool = False
) -> dict[str, Any]:
    """Create (or complete) the collection of ``index`` and upload its points, with payload
    ``{"id", "path", "row"[, "token"]}``; point id = row (image points) or
    ``row * Nt + token``. A complete collection with the same vector size is left alone;
    another one under the same name is an error unless ``overwrite``."""
    from qdrant_client import models

    points = resolve_points(options.points, index.tokens)
    name = options.collection or collection_name(index, points)
    per = index.tokens if points == "token" else 1
    want = len(index) * per
    if client.collection_exists(name):
        size = client.get_collection(name).config.params.vectors.size
        have = client.count(name, exact=True).count
        if size != index.dim or have > want:
            if not overwrite:
                raise DqecirError(
                    f"Qdrant collection {name} holds {have} points of size {size}, not this "
                    f"index's {want} of size {index.dim}; pass overwrite (--overwrite) or "
                    "another collection name"
                )
            client.delete_collection(name)
        elif have == want:
            log.info("Qdrant collection %s is complete (%d points)", name, have)
            return {"collection": name, "points": points, "count": have, "uploaded": 0}
    if not client.collection_exists(name):
        client.create_collection(
            name,
            vectors_config=models.VectorParams(
                size=index.dim, distance=models.Distance.DOT, on_disk=options.on_disk or None
            ),
            shard_number=options.shard_number,
            replication_factor=options.replication_factor,
        )
    tokens = _as_tokens(index.embeddings)
    step = max(1, options.upload_batch // per)
    root = index.images_root
    for start in range(0, len(index), step):
        block = tokens[start : start + step]
        rows = range(start, start + len(block))
        payload = [
            {"id": index.ids[r], "path": str(root / index.ids[r]), "row": r}
            | ({"token": t} if points == "token" else {})
            for r in rows
            for t in range(per)
        ]
        client.upload_collection(
            name,
            vectors=_point_vectors(block, points).numpy(),
            payload=payload,
            ids=[r * per + t for r in rows for t in range(per)],
            batch_size=options.upload_batch,
            wait=True,
        )
    return {"collection": name, "points": points, "count": want, "uploaded": want}


class QdrantEngine:
    """Search a Qdrant collection of an index's vectors (see :func:`upload_to_qdrant`).

    Fetches ``k * overfetch`` images' worth of points (``x Nt`` for token points), maps point
    ids to image rows, keeps each image's best hit (max over its tokens) and, with
    ``rescore``, rescores those candidates exactly from the local embeddings. Token points
    without rescoring are exact too when Qdrant's search is (``exact``): the best token of a
    true top-k image ranks at most ``(k - 1) * Nt + 1`` among all tokens.
    """

    name = "qdrant"

    def __init__(
        self,
        client: Any,
        collection: str,
        embeddings: np.ndarray | torch.Tensor,
        options: QdrantOptions | None = None,
    ) -> None:
        self.client, self.collection = client, collection
        self.options = options or QdrantOptions()
        self.exact = ExactEngine(embeddings)
        self.count, self.nt, self.dim = self.exact.count, self.exact.nt, self.exact.dim
        if not client.collection_exists(collection):
            raise DqecirError(
                f"Qdrant has no collection {collection!r} at {self.options.url}: fill it with "
                "`dqecir index ... --store qdrant --url URL`"
            )
        n = client.count(collection, exact=True).count
        if n == self.count:
            self.points = "image"
        elif n == self.count * self.nt:
            self.points = "token"
        else:
            raise DqecirError(
                f"Qdrant collection {collection!r} holds {n} points; this index needs "
                f"{self.count} (image points) or {self.count * self.nt} (token points): "
                "an interrupted upload? rerun `dqecir index ... --store qdrant`"
            )

    @classmethod
    def for_index(cls, index: Any, options: QdrantOptions) -> QdrantEngine:
        client = open_qdrant(options)
        name = options.collection or collection_name(index, options.points)
        return cls(client, name, index.embeddings, options)

    def __len__(self) -> int:
        return self.count

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        from qdrant_client import models

        q = _queries(queries, self.dim)
        k = min(int(k), self.count)
        if k < 1:
            raise ValueError("k must be >= 1 and the gallery non-empty")
        o = self.options
        per = self.nt if self.points == "token" else 1
        keep = k * o.overfetch if o.rescore else k
        fetch = min(self.count * per, keep * per)
        params = models.SearchParams(exact=o.exact, hnsw_ef=max(o.hnsw_ef, fetch))
        requests = [
            models.QueryRequest(query=row.tolist(), limit=fetch, params=params, with_payload=False)
            for row in q
        ]
        with warnings.catch_warnings():  # local mode: always exhaustive, params unused
            warnings.filterwarnings("ignore", "Local mode performs exact", UserWarning)
            found = self.client.query_batch_points(self.collection, requests=requests)
        scores = torch.full((len(q), fetch), float("-inf"))
        images = torch.full((len(q), fetch), -1, dtype=torch.int64)
        for i, res in enumerate(found):
            for j, point in enumerate(res.points[:fetch]):
                scores[i, j], images[i, j] = point.score, int(point.id) // per
        candidates, best = distinct_images(scores, images, keep)
        if o.rescore:
            best = self.exact.rescore(q, candidates)
        s, j = best.topk(min(k, best.shape[1]), dim=1)
        idx = candidates.gather(1, j).masked_fill(torch.isinf(s), -1)
        return _pad(s, idx, k)


# ---- model + index + engine --------------------------------------------------------
def check_query(
    text: str, k: int, *, max_chars: int | None = None, max_k: int | None = None
) -> None:
    """Refuse what no search can answer, with the same words everywhere (``dqecir search``,
    the HTTP API, :meth:`Searcher.search`): empty text, text that is not valid UTF-8 (a
    command line given undecodable bytes), ``k < 1``, and the server's limits when given."""
    if not text.strip():
        raise QueryError("text is empty: describe the change you want")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise QueryError(
            f"text is not valid UTF-8 (undecodable byte at character {e.start + 1})"
        ) from None
    if max_chars is not None and len(text) > max_chars:
        raise QueryError(f"text has {len(text)} characters, the limit is {max_chars}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or (max_k and k > max_k):
        bound = f"between 1 and {max_k}" if max_k else "at least 1"
        raise QueryError(f"k must be {bound}, got {k}")


@dataclass(frozen=True)
class Hit:
    rank: int
    id: str
    path: str
    score: float


@dataclass(frozen=True)
class WordEffect:
    """How much one word of the text holds the top results up (see :meth:`Searcher.search`)."""

    word: str
    start: int
    """Character span ``[start, end)`` of the word in the query text."""
    end: int
    effect: float
    """Mean drop of the top results' scores when the query is encoded without this word
    (positive: the word pulls them up; negative: it holds them down)."""


_WORD = re.compile(r"\S+")
MAX_EFFECT_WORDS = 64
"""Words explained per query (each costs one more text encoding)."""


def text_words(text: str) -> list[tuple[str, int, int]]:
    """The words of a query text as ``(word, start, end)``: runs of non-space characters
    (punctuation stays with its word, as it is removed with it)."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def without_word(text: str, start: int, end: int) -> str:
    """``text`` with the span ``[start, end)`` left out and the spaces around it joined."""
    return " ".join((text[:start] + " " + text[end:]).split())


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    relevance: dict[str, float] | None
    """How much the text is about each attribute (``alpha``, from the attribute weights), plus
    ``other = 1 - max(alpha)``; None when the model has no attribute weights."""
    word_effects: list[WordEffect] | None = None
    """Leave-one-word-out effect of each word on these hits, when asked for."""

    def to_text(self) -> str:
        """Ranked lines ``rank  score  path``, a relevance line and a word-effects line, for a
        terminal."""
        lines = [f"{h.rank:>4}  {h.score:.4f}  {h.path}" for h in self.hits]
        if self.relevance is not None:
            rel = "  ".join(f"{a} {v:.2f}" for a, v in self.relevance.items())
            lines.append(f"attribute relevance of the text: {rel}")
        if self.word_effects:
            eff = "  ".join(f"{w.word} {w.effect:+.3f}" for w in self.word_effects)
            lines.append(f"word effects (score drop without the word): {eff}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": [h.__dict__ for h in self.hits],
            "relevance": self.relevance,
            "word_effects": (
                [w.__dict__ for w in self.word_effects] if self.word_effects is not None else None
            ),
        }


class Searcher:
    """A model, the index built with it and an engine: (image, text) -> ranked index images.

    Thread-safe for concurrent :meth:`search` calls (the model runs in inference mode, the
    engines keep no per-call state).
    """

    def __init__(self, model: Any, index: Any, engine: SearchEngine, device: torch.device):
        self.model, self.index, self.engine, self.device = model, index, engine, device

    @classmethod
    def open(
        cls,
        index_dir: str | Path,
        *,
        checkpoint: str | Path | None = None,
        engine: str = "exact",
        device: str | torch.device = "cpu",
        verify: bool = True,
        options: FaissOptions | QdrantOptions | None = None,
    ) -> Searcher:
        """Load the index, its checkpoint (``checkpoint`` or the one the manifest names; its
        sha256 must match) and build the engine (``qdrant``: ``options`` is a
        :class:`QdrantOptions` naming the server)."""
        from dqecir.device import resolve_device
        from dqecir.index import load_index
        from dqecir.models.cir import load_model

        index = load_index(index_dir, verify=verify)
        ck = index.check_checkpoint(checkpoint if checkpoint is not None else index.checkpoint_path)
        device = resolve_device(device)
        model, _ = load_model(ck, device)
        preprocess = json.loads(json.dumps(model.backbone.preprocess.to_dict()))
        if model.embed_dim != index.dim or preprocess != index.manifest["preprocess"]:
            raise DqecirError(
                f"index {index.root}: dimension or preprocessing differs from checkpoint {ck}"
            )
        return cls(model, index, make_engine(engine, index.embeddings, options, index), device)

    @property
    def attributes(self) -> list[str]:
        return list(self.model.attributes)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``q_star`` ``[B, D]`` (and ``alpha`` ``[B, A]`` with attribute weights) for a batch
        of preprocessed reference images and their texts."""
        feats = self.model.backbone.image_features(pixels.to(self.device))
        return self._encode_texts(feats, texts)

    @torch.inference_mode()
    def _encode_texts(self, feats: torch.Tensor, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        bb = self.model.backbone
        tfeats = {k: v.to(self.device) for k, v in bb.text_features(list(texts)).items()}
        out = self.model.query(feats, tfeats)
        return {k: v.float().cpu() for k, v in out.items() if k in ("q_star", "alpha")}

    def search(
        self,
        pixels: torch.Tensor,
        text: str,
        k: int = 10,
        exclude: Sequence[str] = (),
        *,
        word_effects: bool = False,
    ) -> SearchResult:
        """Top ``k`` for one reference (``pixels`` ``[3, S, S]``, from
        :func:`dqecir.data.images.to_tensor`) and text; ids in ``exclude`` are left out (the
        reference itself when it comes from the index).

        With ``word_effects``, also the leave-one-word-out effect of each word (at most
        :data:`MAX_EFFECT_WORDS`) on these hits: the query is encoded again without the word,
        and its effect is the mean drop of the hits' scores (exact, max over their gallery
        tokens). Cost: one more text encoding and query fusion per word, in the same batch as
        the query itself; the image features are computed once; no further index scan (only
        the k hits are rescored)."""
        if not word_effects:
            return self.search_batch(pixels.unsqueeze(0), [text], k, [exclude])[0]
        self._check(text, k)
        words = text_words(text)[:MAX_EFFECT_WORDS]
        variants = [text] + [without_word(text, a, b) for _, a, b in words]
        with torch.inference_mode():
            feats = self.model.backbone.image_features(pixels.unsqueeze(0).to(self.device))
            enc = self._encode_texts(feats.expand(len(variants), *feats.shape[1:]), variants)
        first = {key: v[:1] for key, v in enc.items()}
        result = self._answer(first, k, [exclude])[0]
        effects = self._effects(words, enc["q_star"], result.hits)
        return SearchResult(result.hits, result.relevance, effects)

    def word_effects(
        self, pixels: torch.Tensor, text: str, hits: Sequence[Hit]
    ) -> list[WordEffect]:
        """The word effects of ``text`` on given ``hits`` (see :meth:`search`, which computes
        them with the query in one batch)."""
        words = text_words(text)[:MAX_EFFECT_WORDS]
        variants = [text] + [without_word(text, a, b) for _, a, b in words]
        with torch.inference_mode():
            feats = self.model.backbone.image_features(pixels.unsqueeze(0).to(self.device))
            enc = self._encode_texts(feats.expand(len(variants), *feats.shape[1:]), variants)
        return self._effects(words, enc["q_star"], hits)

    def _effects(
        self, words: list[tuple[str, int, int]], q: torch.Tensor, hits: Sequence[Hit]
    ) -> list[WordEffect]:
        """``q`` ``[1 + words, D]``: the query, then the query without each word."""
        if not words or not hits:
            return []
        rows = [self.index.row(h.id) for h in hits]
        tokens = torch.from_numpy(np.asarray(self.index.embeddings[rows], dtype=np.float32))
        scores = torch.einsum("vd,ktd->vkt", q, tokens).amax(-1)  # [1 + words, hits]
        drop = (scores[:1] - scores[1:]).mean(1)
        return [
            WordEffect(w, a, b, float(d)) for (w, a, b), d in zip(words, drop.tolist(), strict=True)
        ]

    def _check(self, text: str, k: int) -> None:
        check_query(text, k)
        if len(self.index) == 0:
            raise QueryError(f"index {self.index.root} holds no images (all were unreadable?)")

    def search_batch(
        self,
        pixels: torch.Tensor,
        texts: Sequence[str],
        k: int = 10,
        exclude: Sequence[Sequence[str]] | None = None,
    ) -> list[SearchResult]:
        for text in texts:
            self._check(text, k)
        return self._answer(self.encode(pixels, texts), k, exclude)

    def _answer(
        self,
        enc: dict[str, torch.Tensor],
        k: int,
        exclude: Sequence[Sequence[str]] | None,
    ) -> list[SearchResult]:
        """Results of encoded queries (``q_star`` ``[Q, D]``, ``alpha``)."""
        n = len(enc["q_star"])
        exclude = exclude or [()] * n
        extra = max((len(e) for e in exclude), default=0)
        scores, idx = self.engine.search(enc["q_star"], k + extra)
        alpha = enc.get("alpha")
        return [
            SearchResult(
                self._hits(scores[r], idx[r], k, set(exclude[r])),
                self._relevance(alpha[r]) if alpha is not None else None,
            )
            for r in range(n)
        ]

    def _hits(self, scores: torch.Tensor, idx: torch.Tensor, k: int, skip: set[str]) -> list[Hit]:
        hits: list[Hit] = []
        for s, i in zip(scores.tolist(), idx.tolist(), strict=True):
            if i < 0 or len(hits) == k:
                break
            image_id = self.index.ids[i]
            if image_id in skip:
                continue
            hits.append(Hit(len(hits) + 1, image_id, str(self.index.images_root / image_id), s))
        return hits

    def _relevance(self, alpha: torch.Tensor) -> dict[str, float]:
        rel = {a: float(v) for a, v in zip(self.attributes, alpha.tolist(), strict=True)}
        rel["other"] = 1.0 - max(rel.values(), default=0.0)
        return rel
