"""The backbone contract (docs/extending.md, "Backbone") every registered backbone implements.

A backbone is split in two stages so that frozen towers run once per image / text and can be
cached on disk (``dqecir.data.features``), while training runs only the trainable part:

1. frozen stage (no gradients, cacheable, keyed by :meth:`Backbone.cache_key`):
   ``image_features(pixels) -> Tensor [B, ...]`` and ``text_features(texts) -> dict[str, Tensor]``
   (every tensor with the batch as first dimension, so rows can be stored per id / per text).
2. trainable stage:
   ``encode_gallery(image_feats) -> [B, Nt, d]`` L2-normalised tokens (gallery never sees text);
   ``encode_query(image_feats, text_feats) -> (q [B, d] L2-normalised, h [B, dh])``.

Similarity is ``s(q, T) = max_k <q, T_k>`` (:func:`dqecir.similarity.similarity`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dqecir.data.images import Preprocess
from dqecir.errors import CheckpointError
from dqecir.similarity import pooled, similarity

__all__ = ["Backbone", "Preprocess", "pooled", "similarity", "tokenize_padded"]


class Backbone(nn.Module):
    """Base class; subclasses set the attributes and implement the five contract methods
    plus :meth:`config` (and :meth:`frozen_modules` where they hold frozen towers)."""

    name: str = "base"
    dim: int  # d: query / gallery embedding size
    num_tokens: int  # Nt: gallery tokens per image
    hidden_dim: int  # dh: size of the text-conditioned feature h the attribute head reads
    preprocess: Preprocess

    # ---- frozen stage -------------------------------------------------------------
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def text_features(self, texts: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def read_queries(self, texts: list[str]) -> list[str]:
        """The texts as a query is read at evaluation and search time; the training captions
        are encoded as written. The identity unless the backbone corrects queries (the lite
        backbone's ``text_spelling``, :mod:`dqecir.data.spelling`)."""
        return list(texts)

    def query_cache_key(self) -> str:
        """Identity of :meth:`read_queries` then :meth:`text_features` (the text cache of
        evaluation texts): :meth:`text_cache_key` unless queries are read otherwise."""
        return self.text_cache_key()

    def cache_key(self) -> str:
        """Identity of the frozen stage (weights + preprocessing); a feature cache built under
        another key is stale."""
        raise NotImplementedError

    # ---- trainable stage ----------------------------------------------------------
    def encode_gallery(self, image_feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_query(
        self, image_feats: torch.Tensor, text_feats: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ---- cache keys, config, checkpoints -------------------------------------------
    def image_cache_key(self) -> str:
        """Identity of the frozen image stage alone (defaults to :meth:`cache_key`); lets a
        text-side change keep the expensive image cache."""
        return self.cache_key()

    def text_cache_key(self) -> str:
        """Identity of the frozen text stage alone (defaults to :meth:`cache_key`)."""
        return self.cache_key()

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this backbone: ``create_backbone(name, **config())``.
        Plain JSON / YAML values only."""
        raise NotImplementedError

    def frozen_modules(self) -> list[nn.Module]:
        """Sub-modules of the frozen stage: kept in eval mode (BatchNorm statistics, dropout)
        whatever :meth:`train` is asked, and never trained."""
        return []

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights only (checkpoints hold these plus :meth:`config`; frozen
        towers come from their packages / folders). Detached views of the live weights: save
        or clone them before the next optimiser step."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` returned; names and shapes must match."""
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        missing = sorted(set(params) - set(sd))
        unexpected = sorted(set(sd) - set(params))
        if missing or unexpected:
            raise CheckpointError(
                f"{self.name} backbone weights do not match: missing {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{' ...' if len(unexpected) > 5 else ''}"
            )
        for n, p in params.items():
            if tuple(sd[n].shape) != tuple(p.shape):
                raise CheckpointError(
                    f"{self.name} backbone weight {n!r} has shape {tuple(sd[n].shape)}, "
                    f"expected {tuple(p.shape)}"
                )
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(sd[n].to(device=p.device, dtype=p.dtype))


def tokenize_padded(tokenizer, texts: list[str], max_len: int) -> dict[str, torch.Tensor]:
    """Tokenise to a fixed length (cached text rows then all share one shape)."""
    return tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=max_len, return_tensors="pt"
    )
