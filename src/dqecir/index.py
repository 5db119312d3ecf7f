"""Deprecated alias of :mod:`dqecir.search` (index building and loading), kept for one release
so that ``from dqecir.index import build_index, load_index`` keeps working; import from
:mod:`dqecir.search` instead."""

import warnings

from dqecir.search import *  # noqa: F403
from dqecir.search import __all__  # noqa: F401

warnings.warn(
    "dqecir.index is deprecated: import from dqecir.search", DeprecationWarning, stacklevel=2
)
