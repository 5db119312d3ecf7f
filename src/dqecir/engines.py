"""Deprecated alias of :mod:`dqecir.search` (engines and the Searcher), kept for one release so
that ``from dqecir.engines import Searcher, make_engine`` keeps working; import from
:mod:`dqecir.search` instead."""

import warnings

from dqecir.search import *  # noqa: F403
from dqecir.search import __all__  # noqa: F401

warnings.warn(
    "dqecir.engines is deprecated: import from dqecir.search", DeprecationWarning, stacklevel=2
)
