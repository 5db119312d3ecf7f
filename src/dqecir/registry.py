"""Name -> entry registries (timm style), one per kind of extension point.

- ``BACKBONES``: ``@register_backbone("tiny")`` on a :class:`~dqecir.models.backbones.base.Backbone`
  class; :func:`create_backbone` builds one.
- ``BENCHMARKS``: annotation protocols (:class:`~dqecir.data.formats.protocol.Benchmark`:
  loader, default Ks, headline metric, submission writer, category grouping), registered by
  :mod:`dqecir.data.formats`.
- ``ENGINES``: search engines (:class:`~dqecir.search.engines.base.EngineSpec`: a builder and its
  options), registered by :mod:`dqecir.search.engines`.
- ``EMBEDDED``: the embedded benchmark kinds ``dqecir make-benchmark`` writes (``shapes``,
  ``fmnist``: factories of a :class:`~dqecir.data.synthetic.build.BenchmarkDefinition`).

Each registry imports the package that fills it on first use, so callers never have to (and
this module imports none of them: it sits below everything it lists). How to add an entry of
each kind: docs/extending.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from dqecir.errors import DqecirError

if TYPE_CHECKING:
    from dqecir.data.formats.protocol import Benchmark
    from dqecir.models.backbones.base import Backbone
    from dqecir.search.engines.base import EngineSpec

T = TypeVar("T")


class UnknownNameError(DqecirError, ValueError):
    """A name that no registry entry answers to."""


class Registry(Generic[T]):
    """Maps names to entries of one kind (factories, or protocol objects).

    Args:
        kind: what the entries are ("backbone", "benchmark"), used in error messages.
        populate: module imported before the first lookup, whose import registers the
            entries (avoids import cycles between the registry and what it registers).
    """

    def __init__(self, kind: str, populate: str | None = None) -> None:
        self.kind = kind
        self._populate = populate
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an entry under ``name`` (names are unique); returns it."""

        def decorate(entry: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and existing is not entry and existing != entry:
                raise ValueError(f"{self.kind} {name!r} is already registered ({existing!r})")
            self._entries[name] = entry
            return entry

        return decorate

    def _ensure_populated(self) -> None:
        if self._populate is not None:
            importlib.import_module(self._populate)

    def names(self) -> list[str]:
        self._ensure_populated()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        self._ensure_populated()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __iter__(self) -> Iterator[str]:
        """The names, sorted: a registry is its own ``choices`` for argparse (read when a
        command line is checked, so building the parser imports none of the entries)."""
        return iter(self.names())

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the factory registered under ``name``."""
        return self.get(name)(**kwargs)  # type: ignore[operator]


BACKBONES: Registry[Callable[..., Backbone]] = Registry(
    "backbone", populate="dqecir.models.backbones"
)
BENCHMARKS: Registry[Benchmark] = Registry("benchmark", populate="dqecir.data.formats")
ENGINES: Registry[EngineSpec] = Registry("engine", populate="dqecir.search.engines")
EMBEDDED: Registry[Callable[..., Any]] = Registry(
    "benchmark kind", populate="dqecir.data.synthetic"
)


def register_backbone(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class decorator: make a :class:`~dqecir.models.backbones.base.Backbone` creatable by name."""
    return BACKBONES.register(name)


def create_backbone(name: str, **kwargs: Any) -> Backbone:
    """Build a registered backbone; ``create_backbone(name, **bb.config())`` rebuilds ``bb``."""
    return BACKBONES.create(name, **kwargs)


def list_backbones() -> list[str]:
    return BACKBONES.names()


def get_benchmark(name: str) -> Benchmark:
    """The registered annotation protocol ``name`` (``cirr``, ``circo``, ``fashioniq``)."""
    return BENCHMARKS.get(name)
