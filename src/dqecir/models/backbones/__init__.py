"""Backbones (the contract: docs/extending.md, "Backbone"); importing this package registers them.

Each module imports its heavy dependencies (transformers, efficientnet) only when a backbone
is built, so registering them all stays cheap.
"""

from dqecir.data.images import Preprocess
from dqecir.models.backbones import blip2, lite, tiny  # noqa: F401  (registration)
from dqecir.models.backbones.base import Backbone
from dqecir.similarity import pooled, similarity

__all__ = ["Backbone", "Preprocess", "pooled", "similarity"]
