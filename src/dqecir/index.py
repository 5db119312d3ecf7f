"""Deprecated alias of :mod:`dqecir.search` (index building and loading), kept for one release
so that ``from dqecir.index import build_index, load_index`` keeps working; import from
:mod:`dqecir.search` instead."""

import warnings

from dqecir.search import BuildReport, Index, build_index, list_images, load_index
from dqecir.search.shards import merge_shards, shard_dir

__all__ = ["BuildReport", "Index", "build_index", "list_images", "load_index", "merge_shards",
           "shard_dir"]  # fmt: skip

warnings.warn(
    "dqecir.index is deprecated: import from dqecir.search", DeprecationWarning, stacklevel=2
)
