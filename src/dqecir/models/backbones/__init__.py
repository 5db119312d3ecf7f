"""Backbones (METHOD.md "Backbone contract"); importing this package registers them.

Each module imports its heavy dependencies (transformers, efficientnet) only when a backbone
is built, so registering them all stays cheap.
"""

from dqecir.models.backbones import blip2, lite, tiny  # noqa: F401  (registration)
from dqecir.models.backbones.base import Backbone, Preprocess, pooled, similarity

__all__ = ["Backbone", "Preprocess", "pooled", "similarity"]
