"""Search your own images: embed a folder into an index, search it with a reference image and a
text, with an exact, faiss or Qdrant engine.

- :mod:`.index`: the index on disk and loading it verified; :mod:`.build`: the resumable build;
  :mod:`.shards`: the sharded build under torchrun;
- :mod:`.engines`: one module per engine, registered (``registry.ENGINES``) with its options;
- :mod:`.searcher`: :class:`Searcher`, what the command line and the HTTP app call.
"""

from __future__ import annotations

from dqecir.search.build import build_index
from dqecir.search.engines import (
    ExactEngine,
    ExactOptions,
    FaissEngine,
    FaissOptions,
    MissingDependencyError,
    QdrantEngine,
    QdrantOptions,
    SearchEngine,
    make_engine,
    open_qdrant,
    upload_to_qdrant,
)
from dqecir.search.index import BuildReport, Index, list_images, load_index
from dqecir.search.searcher import Hit, Searcher, SearchResult, WordEffect, check_query
from dqecir.search.shards import merge_shards, shard_dir

__all__ = [
    "BuildReport",
    "ExactEngine",
    "ExactOptions",
    "FaissEngine",
    "FaissOptions",
    "Hit",
    "Index",
    "MissingDependencyError",
    "QdrantEngine",
    "QdrantOptions",
    "SearchEngine",
    "SearchResult",
    "Searcher",
    "WordEffect",
    "build_index",
    "check_query",
    "list_images",
    "load_index",
    "make_engine",
    "merge_shards",
    "open_qdrant",
    "shard_dir",
    "upload_to_qdrant",
]
