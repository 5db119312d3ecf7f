"""What every search engine is: the interface, its registration, and the helpers they share.

Every engine answers ``search(queries [Q, D], k) -> (scores [Q, k] float32, indices [Q, k]
int64)`` with the image score ``s(q, T) = max_t <q, T_t>`` (:func:`dqecir.similarity.similarity`),
best first. ``k`` is clipped to the gallery size; an approximate engine that finds fewer than
``k`` images pads with index -1 and score -inf.

An engine registers an :class:`EngineSpec` (``registry.ENGINES``): its name, the dataclass of
its options and how to build it over an index's embeddings. How to add one: docs/extending.md,
"Search engine".
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from dqecir.errors import DqecirError
from dqecir.registry import ENGINES


class MissingDependencyError(DqecirError):
    """An optional dependency needed for the requested feature is not installed."""


class SearchEngine(Protocol):
    name: str

    def __len__(self) -> int: ...

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]: ...


Builder = Callable[[Any, Any, Any], SearchEngine]
"""``build(embeddings [N, Nt, D], options or None, index or None) -> engine``."""


@dataclass(frozen=True)
class EngineSpec:
    """A registered search engine."""

    name: str
    build: Builder
    options: type | None = None
    """The dataclass of its options (``dqecir search`` / ``serve`` and :func:`make_engine`
    pass an instance or None for its defaults)."""
    needs_index: bool = False
    """Built over the loaded index itself (its manifest, ids), not only its embeddings."""


def register_engine(
    name: str, options: type | None = None, *, needs_index: bool = False
) -> Callable[[Builder], Builder]:
    """Decorator on a builder: make the engine ``name`` known to :func:`make_engine`, the
    :class:`~dqecir.search.searcher.Searcher`, the HTTP app and the command line."""

    def decorate(build: Builder) -> Builder:
        ENGINES.register(name)(EngineSpec(name, build, options, needs_index))
        return build

    return decorate


def clip_k(k: int, count: int) -> int:
    """``k`` clipped to the gallery size; an error when nothing can be returned."""
    k = min(int(k), count)
    if k < 1:
        raise ValueError("k must be >= 1 and the gallery non-empty")
    return k


def as_tokens(embeddings: np.ndarray | torch.Tensor) -> torch.Tensor:
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


def as_queries(queries: torch.Tensor | np.ndarray, dim: int) -> torch.Tensor:
    q = torch.as_tensor(queries).detach().to("cpu", torch.float32)
    if q.dim() == 1:
        q = q.unsqueeze(0)
    if q.dim() != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must be [Q, {dim}], got {tuple(q.shape)}")
    return q.contiguous()


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


def pad_results(s: torch.Tensor, i: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if s.shape[1] >= k:
        return s, i
    extra = k - s.shape[1]
    s = torch.cat([s, torch.full((s.shape[0], extra), float("-inf"))], 1)
    i = torch.cat([i, torch.full((i.shape[0], extra), -1, dtype=torch.int64)], 1)
    return s, i
