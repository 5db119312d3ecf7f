"""The faiss engines (``flat``, ``hnsw``, ``ivfpq``): faiss over the token vectors (float32;
``Nt`` vectors per image). They fetch ``k * Nt * overfetch`` token hits, map them to their
images and rescore those candidates exactly (max over all their tokens, float32) before the
final top-k. For ``flat`` this is exact with ``overfetch = 1``: the best token of a true top-k
image ranks at most ``(k - 1) * Nt + 1`` among all tokens. faiss is optional
(``pip install 'dqecir[index]'``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dqecir.search.engines.base import (
    MissingDependencyError,
    as_queries,
    clip_k,
    distinct_images,
    pad_results,
    register_engine,
)
from dqecir.search.engines.exact import ExactEngine


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
        q = as_queries(queries, self.dim)
        k = clip_k(k, self.count)
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
        return pad_results(s, idx, k)

    def _candidates(self, dist: torch.Tensor, tok: torch.Tensor, k: int) -> torch.Tensor:
        """The best ``k * overfetch`` distinct images ``[Q, C]`` (-1 padded) among the token
        hits ``[Q, fetch]``, ranked by their best hit (a lower bound of their true score)."""
        images = torch.where(tok >= 0, tok // self.nt, torch.full_like(tok, -1))
        return distinct_images(dist, images, k * self.overfetch)[0]


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(m for m in range(1, cap + 1) if n % m == 0)


def _builder(kind: str) -> Any:
    def build(embeddings: Any, options: FaissOptions | None, index: Any) -> FaissEngine:
        return FaissEngine(embeddings, kind, options)

    return build


for _kind in ("flat", "hnsw", "ivfpq"):
    register_engine(_kind, FaissOptions)(_builder(_kind))
