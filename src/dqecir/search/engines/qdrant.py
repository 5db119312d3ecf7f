"""The Qdrant engine (``qdrant``): the index's vectors in a Qdrant collection (local mode, a
server or a cluster; :func:`upload_to_qdrant` fills it), one point per image (its token, or its
pooled tokens when ``Nt > 1``) or one per token with the image row in the point id. Hits are
de-duplicated per image (max over its tokens) and, by default, rescored exactly from the local
index like the faiss engines. ``pip install 'dqecir[qdrant]'``."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqecir.errors import DqecirError
from dqecir.search.engines.base import (
    MissingDependencyError,
    as_queries,
    as_tokens,
    clip_k,
    distinct_images,
    pad_results,
    register_engine,
)
from dqecir.search.engines.exact import ExactEngine

log = logging.getLogger(__name__)

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
    tokens = as_tokens(index.embeddings)
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

        q = as_queries(queries, self.dim)
        k = clip_k(k, self.count)
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
        return pad_results(s, idx, k)


@register_engine("qdrant", QdrantOptions, needs_index=True)
def _build(embeddings: Any, options: QdrantOptions | None, index: Any) -> QdrantEngine:
    if not isinstance(options, QdrantOptions):
        raise ValueError("the qdrant engine needs QdrantOptions(url=...)")
    return QdrantEngine.for_index(index, options)
