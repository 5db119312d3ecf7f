"""``tiny``: a random backbone of a few thousand parameters, for tests and smoke runs.

Frozen stage: a fixed random strided convolution pooled to a ``grid x grid`` map (image tokens)
and a word-hash tokenizer with a fixed random embedding table (no files). Trainable stage: a
small fusion; the gallery has ``Nt = grid`` tokens (one per row of the map), so the
max-over-tokens similarity path is exercised.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dqecir.data.images import Preprocess
from dqecir.models.backbones.base import Backbone
from dqecir.registry import register_backbone

_WORD = re.compile(r"[a-z0-9]+")
_PAD, _CLS = 0, 1


def hash_tokenize(texts: list[str], vocab: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Word-hash token ids ``[B, max_len]`` (position 0 is a CLS token) and a bool mask."""
    ids = torch.full((len(texts), max_len), _PAD, dtype=torch.long)
    for i, text in enumerate(texts):
        words = _WORD.findall(text.lower())[: max_len - 1]
        row = [_CLS] + [2 + zlib.crc32(w.encode("utf-8")) % (vocab - 2) for w in words]
        ids[i, : len(row)] = torch.tensor(row)
    return ids, ids != _PAD


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens [B, L, C]`` over the positions where ``mask [B, L]`` is true."""
    m = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)


@register_backbone("tiny")
class TinyBackbone(Backbone):
    name = "tiny"

    def __init__(
        self,
        dim: int = 16,
        hidden: int = 64,
        channels: int = 8,
        grid: int = 2,
        image_size: int = 32,
        vocab: int = 64,
        max_text_len: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if vocab < 3 or grid < 1 or max_text_len < 2:
            raise ValueError("tiny backbone needs vocab >= 3, grid >= 1, max_text_len >= 2")
        self._config = dict(
            dim=dim,
            hidden=hidden,
            channels=channels,
            grid=grid,
            image_size=image_size,
            vocab=vocab,
            max_text_len=max_text_len,
            seed=seed,
        )
        self.dim, self.num_tokens, self.hidden_dim = dim, grid, hidden
        self.grid, self.vocab, self.max_text_len = grid, vocab, max_text_len
        self.preprocess = Preprocess(image_size=image_size)

        # frozen towers: fixed by the seed, never trained
        gen = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, channels, kernel_size=4, stride=4)
        self.word_emb = nn.Embedding(vocab, channels)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) / 7.0)
            self.conv.bias.zero_()
            self.word_emb.weight.copy_(torch.randn(self.word_emb.weight.shape, generator=gen))
        for p in [*self.conv.parameters(), *self.word_emb.parameters()]:
            p.requires_grad_(False)

        # trainable fusion
        self.gallery_proj = nn.Linear(channels, dim)
        self.image_proj = nn.Linear(channels, hidden)
        self.text_proj = nn.Linear(channels, hidden)
        self.fuse = nn.Linear(hidden, dim)

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.conv, self.word_emb]

    def image_cache_key(self) -> str:
        c = self._config
        return (
            f"tiny-image-v1:seed={c['seed']}:channels={c['channels']}:grid={c['grid']}:"
            f"pre={self.preprocess.to_dict()}"
        )

    def text_cache_key(self) -> str:
        c = self._config
        return f"tiny-text-v1:seed={c['seed']}:vocab={c['vocab']}:len={c['max_text_len']}"

    def cache_key(self) -> str:
        return f"{self.image_cache_key()}|{self.text_cache_key()}"

    @torch.no_grad()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, grid*grid, channels]`` tokens."""
        x = F.adaptive_avg_pool2d(F.relu(self.conv(pixels)), self.grid)
        return x.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``tokens [B, L, channels]`` and ``mask [B, L]`` (bool), ``L = max_text_len``."""
        ids, mask = hash_tokenize(texts, self.vocab, self.max_text_len)
        ids = ids.to(self.word_emb.weight.device)
        return {"tokens": self.word_emb(ids), "mask": mask.to(ids.device)}

    def encode_gallery(self, image_feats: torch.Tensor) -> torch.Tensor:
        x = image_feats.to(self.gallery_proj.weight.dtype)
        rows = x.reshape(x.shape[0], self.grid, self.grid, x.shape[-1]).mean(2)
        return F.normalize(self.gallery_proj(rows), dim=-1)

    def encode_query(
        self, image_feats: torch.Tensor, text_feats: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.gallery_proj.weight.dtype
        img = image_feats.to(dtype).mean(1)
        txt = masked_mean(text_feats["tokens"].to(dtype), text_feats["mask"])
        h = torch.tanh(self.image_proj(img) + self.text_proj(txt))
        q = F.normalize(self.fuse(h) + self.gallery_proj(img), dim=-1)
        return q, h
