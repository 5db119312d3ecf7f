"""The backbone contract (METHOD.md) every registered backbone implements.

A backbone is split in two stages so that frozen towers run once per image / text and can be
cached on disk (``dqecir.data.features``), while training runs only the trainable part:

1. frozen stage (no gradients, cacheable, keyed by :meth:`Backbone.cache_key`):
   ``image_features(pixels) -> Tensor [B, ...]`` and ``text_features(texts) -> dict[str, Tensor]``
   (every tensor with the batch as first dimension, so rows can be stored per id / per text).
2. trainable stage:
   ``encode_gallery(image_feats) -> [B, Nt, d]`` L2-normalised tokens (gallery never sees text);
   ``encode_query(image_feats, text_feats) -> (q [B, d] L2-normalised, h [B, dh])``.

Similarity is ``s(q, T) = max_k <q, T_k>`` (:func:`similarity`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing that travels with the model (and its checkpoints / indexes)."""

    image_size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    target_pad: float = 1.25
    """Pad the shorter side so that the aspect ratio is at most this (SPRC's target-pad);
    values <= 1 disable padding."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(
            image_size=int(d["image_size"]),
            mean=tuple(float(x) for x in d["mean"]),
            std=tuple(float(x) for x in d["std"]),
            target_pad=float(d["target_pad"]),
        )


class Backbone(nn.Module):
    """Base class; subclasses set the attributes and implement the five methods."""

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


def similarity(q: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """``s(q, T) = max_k <q, T_k>`` for every query / gallery pair.

    Args:
        q: ``[Q, d]`` queries.
        gallery: ``[G, Nt, d]`` gallery tokens (``Nt = 1`` for pooled encoders).
    Returns:
        ``[Q, G]`` scores.
    """
    if gallery.dim() == 2:
        gallery = gallery.unsqueeze(1)
    if gallery.shape[1] == 1:
        return q @ gallery[:, 0].T
    return torch.einsum("qd,gkd->qgk", q, gallery).amax(dim=-1)


def pooled(gallery: torch.Tensor) -> torch.Tensor:
    """Mean-pooled, re-normalised gallery tokens ``[G, d]`` (for image-to-image similarity)."""
    if gallery.dim() == 2:
        return gallery
    return nn.functional.normalize(gallery.mean(dim=1), dim=-1)
