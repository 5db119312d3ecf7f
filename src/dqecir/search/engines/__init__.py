"""Search engines, one module each, registered in ``registry.ENGINES`` when this package is
imported: ``exact`` (:mod:`.exact`), ``flat`` / ``hnsw`` / ``ivfpq`` (:mod:`.faiss`) and
``qdrant`` (:mod:`.qdrant`). faiss and qdrant-client are imported only when such an engine is
built."""

from __future__ import annotations

from typing import Any

from dqecir.registry import ENGINES
from dqecir.search.engines import exact, faiss, qdrant  # noqa: F401  (registration)
from dqecir.search.engines.base import (
    EngineSpec,
    MissingDependencyError,
    SearchEngine,
    distinct_images,
    register_engine,
)
from dqecir.search.engines.exact import ExactEngine, ExactOptions
from dqecir.search.engines.faiss import FaissEngine, FaissOptions
from dqecir.search.engines.qdrant import (
    QdrantEngine,
    QdrantOptions,
    collection_name,
    open_qdrant,
    upload_to_qdrant,
)

__all__ = [
    "EngineSpec",
    "ExactEngine",
    "ExactOptions",
    "FaissEngine",
    "FaissOptions",
    "MissingDependencyError",
    "QdrantEngine",
    "QdrantOptions",
    "SearchEngine",
    "collection_name",
    "distinct_images",
    "make_engine",
    "open_qdrant",
    "register_engine",
    "upload_to_qdrant",
]


def make_engine(
    name: str, embeddings: Any, options: Any | None = None, index: Any | None = None
) -> SearchEngine:
    """The registered engine ``name`` over ``embeddings`` ``[N, Nt, D]`` (``index``: the loaded
    :class:`~dqecir.search.index.Index`, for engines that need it, e.g. ``qdrant``); ``options``:
    an instance of the engine's options dataclass, or None for its defaults."""
    spec: EngineSpec = ENGINES.get(name)
    if options is not None and (spec.options is None or not isinstance(options, spec.options)):
        wanted = spec.options.__name__ if spec.options else "no options"
        raise ValueError(f"engine {name} takes {wanted}, not {type(options).__name__}")
    if spec.needs_index and index is None:
        raise ValueError(f"the {name} engine needs the loaded index")
    return spec.build(embeddings, options, index)
