"""HTTP API + web page over an index (``dqecir serve``); needs the ``serve`` extra."""

from dqecir.serve.app import Limits, create_app, serve

__all__ = ["Limits", "create_app", "serve"]
