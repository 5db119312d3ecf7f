"""Deprecated alias of :mod:`dqecir.search` (engines and the Searcher), kept for one release so
that ``from dqecir.engines import Searcher, make_engine`` keeps working; import from
:mod:`dqecir.search` instead."""

import warnings

from dqecir.search import (
    ExactEngine,
    FaissEngine,
    FaissOptions,
    MissingDependencyError,
    QdrantEngine,
    QdrantOptions,
    SearchEngine,
    Searcher,
    SearchResult,
    check_query,
    make_engine,
    open_qdrant,
    upload_to_qdrant,
)

__all__ = ["ExactEngine", "FaissEngine", "FaissOptions", "MissingDependencyError",
           "QdrantEngine", "QdrantOptions", "SearchEngine", "SearchResult", "Searcher",
           "check_query", "make_engine", "open_qdrant", "upload_to_qdrant"]  # fmt: skip

warnings.warn(
    "dqecir.engines is deprecated: import from dqecir.search", DeprecationWarning, stacklevel=2
)
