"""Name -> factory registries (timm style): ``@register_backbone("tiny")`` and ``create_backbone``.

:class:`Registry` is generic so that other kinds (benchmarks, ...) can get their own instance.
The backbone registry is filled when :mod:`dqecir.models.backbones` is imported; the
functions below import it on first use, so callers never have to.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from dqecir.errors import DqecirError

if TYPE_CHECKING:
    from dqecir.models.backbones.base import Backbone

T = TypeVar("T")


class UnknownNameError(DqecirError, ValueError):
    """A name that no registry entry answers to."""


class Registry(Generic[T]):
    """Maps names to factories of one kind of object.

    Args:
        kind: what the entries are ("backbone", "benchmark"), used in error messages.
        populate: module imported before the first lookup, whose import registers the
            entries (avoids import cycles between the registry and what it registers).
    """

    def __init__(self, kind: str, populate: str | None = None) -> None:
        self.kind = kind
        self._populate = populate
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a class or function under ``name`` (names are unique)."""

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            existing = self._factories.get(name)
            if existing is not None and existing is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered ({existing!r})")
            self._factories[name] = factory
            return factory

        return decorate

    def _ensure_populated(self) -> None:
        if self._populate is not None:
            importlib.import_module(self._populate)

    def names(self) -> list[str]:
        self._ensure_populated()
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        self._ensure_populated()
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(sorted(self._factories)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)


BACKBONES: Registry[Any] = Registry("backbone", populate="dqecir.models.backbones")


def register_backbone(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class decorator: make a :class:`~dqecir.models.backbones.base.Backbone` creatable by name."""
    return BACKBONES.register(name)


def create_backbone(name: str, **kwargs: Any) -> Backbone:
    """Build a registered backbone; ``create_backbone(name, **bb.config())`` rebuilds ``bb``."""
    return BACKBONES.create(name, **kwargs)


def list_backbones() -> list[str]:
    return BACKBONES.names()
