"""``blip2``: the paper's backbone, ``transformers``' ``Blip2ForImageTextRetrieval`` from a local folder.

The folder is the user's copy of ``Salesforce/blip2-itm-vit-g`` (nothing is fetched at run
time). Frozen stage: the ViT (``vision_model``) -> image tokens ``[B, 1 + patches, C_vit]``;
the "text features" are the tokenizer's ``input_ids`` / ``attention_mask`` padded to
``max_text_len`` (the Q-Former that reads them is trained). Trainable stage: query tokens, the
Q-Former (with its text embeddings) and both projections; the ITM head stays frozen (unused).

- query: the Q-Former on ``[query tokens ; text tokens]`` cross-attending the reference image
  (the ITM path; needs ``use_qformer_text_input=True``), the output at position ``Nq`` (the
  text ``[CLS]``) is ``h``; ``q = normalise(text_projection(h))``.
- gallery: the image-only Q-Former pass -> ``vision_projection`` -> normalise, ``Nq`` tokens.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dqecir.data.images import Preprocess
from dqecir.errors import DataError
from dqecir.models.backbones.base import Backbone, tokenize_padded
from dqecir.registry import register_backbone

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_VOCABS = ("vocab.txt", "tokenizer.json")
HOW_TO_GET = (
    "expected the folder of Salesforce/blip2-itm-vit-g: config.json (model_type 'blip-2', "
    "qformer_config.use_qformer_text_input true), weights (model.safetensors or "
    "pytorch_model.bin, or their .index.json shards) and tokenizer files (tokenizer_config.json "
    "with vocab.txt or tokenizer.json). Get it once on a machine with internet: "
    "`huggingface-cli download Salesforce/blip2-itm-vit-g --local-dir DIR` (or "
    "huggingface_hub.snapshot_download('Salesforce/blip2-itm-vit-g', local_dir=DIR)), copy DIR "
    "here and pass model_dir=DIR"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_model_dir(model_dir: str | Path) -> dict[str, Any]:
    """Validate a BLIP-2 retrieval folder and return its parsed config.json.

    Raises:
        DataError: naming the folder / file, saying what was expected and how to get it.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise DataError(f"BLIP-2 model folder not found; {HOW_TO_GET}", file=root)
    cfg_path = root / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(
            f"missing or unreadable config.json ({e}); {HOW_TO_GET}", file=cfg_path
        ) from e
    if not isinstance(cfg, dict) or cfg.get("model_type") != "blip-2":
        found = cfg.get("model_type") if isinstance(cfg, dict) else type(cfg).__name__
        raise DataError(
            f"model_type is {found!r}, not 'blip-2'; {HOW_TO_GET}",
            file=cfg_path,
            field="model_type",
        )
    if not (cfg.get("qformer_config") or {}).get("use_qformer_text_input", False):
        raise DataError(
            "this BLIP-2 checkpoint has no Q-Former text input (a captioning / generation "
            f"variant?), the retrieval (ITM) one is needed; {HOW_TO_GET}",
            file=cfg_path,
            field="qformer_config.use_qformer_text_input",
        )
    if not any((root / f).is_file() for f in WEIGHT_FILES):
        raise DataError(f"no model weights ({', '.join(WEIGHT_FILES)}); {HOW_TO_GET}", file=root)
    if not (root / "tokenizer_config.json").is_file() or not any(
        (root / f).is_file() for f in TOKENIZER_VOCABS
    ):
        raise DataError(f"no tokenizer files; {HOW_TO_GET}", file=root)
    return cfg


def _preprocess_from(root: Path, image_size: int, target_pad: float) -> Preprocess:
    """Mean / std from the folder's preprocessor_config.json where present, else CLIP's."""
    mean, std = CLIP_MEAN, CLIP_STD
    pp = root / "preprocessor_config.json"
    if pp.is_file():
        try:
            d = json.loads(pp.read_text(encoding="utf-8"))
            mean = tuple(float(x) for x in d.get("image_mean", mean))
            std = tuple(float(x) for x in d.get("image_std", std))
        except (OSError, ValueError, TypeError) as e:
            raise DataError(f"unreadable preprocessor config ({e})", file=pp) from e
    return Preprocess(image_size=image_size, mean=mean, std=std, target_pad=target_pad)


def _digest(parts: list[str | bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


@register_backbone("blip2")
class Blip2Backbone(Backbone):
    name = "blip2"

    def __init__(
        self,
        model_dir: str,
        max_text_len: int = 32,
        target_pad: float = 1.25,
        vision_dtype: str = "float32",
    ) -> None:
        """Args:
        model_dir: the local Salesforce/blip2-itm-vit-g folder (see :func:`check_model_dir`).
        max_text_len: tokens per text (padding / truncation length).
        vision_dtype: dtype of the frozen ViT ("float32", "bfloat16", "float16"); the
            Q-Former and projections stay float32 (autocast is the trainer's business).
        """
        super().__init__()
        from transformers import AutoTokenizer, Blip2ForImageTextRetrieval

        if vision_dtype not in DTYPES:
            raise ValueError(f"vision_dtype must be one of {sorted(DTYPES)}, got {vision_dtype!r}")
        root = Path(model_dir).expanduser().resolve()
        self._raw_config = check_model_dir(root)
        self.model_dir = root
        self._config = dict(
            model_dir=str(root),
            max_text_len=max_text_len,
            target_pad=target_pad,
            vision_dtype=vision_dtype,
        )
        try:
            self.model = Blip2ForImageTextRetrieval.from_pretrained(
                str(root), local_files_only=True, dtype=torch.float32
            )
            self.tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
        except pickle.UnpicklingError:  # torch.load(weights_only=True) refused code
            raise DataError(
                "refused to load pytorch_model.bin: it holds pickled Python objects other than "
                "tensors, which are never unpickled here. Use the model.safetensors of "
                "Salesforce/blip2-itm-vit-g, or convert the file to safetensors on a trusted "
                "machine",
                file=root,
            ) from None
        except (OSError, ValueError, RuntimeError, KeyError) as e:  # missing / misshapen weights
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            raise DataError(
                f"cannot load the BLIP-2 model ({reason}); {HOW_TO_GET}", file=root
            ) from e
        cfg = self.model.config
        self.max_text_len = max_text_len
        self.num_queries = cfg.num_query_tokens
        self.dim, self.num_tokens = cfg.image_text_hidden_size, cfg.num_query_tokens
        self.hidden_dim = cfg.qformer_config.hidden_size
        self.preprocess = _preprocess_from(root, cfg.vision_config.image_size, target_pad)

        self.model.vision_model.to(DTYPES[vision_dtype])
        for p in [*self.model.vision_model.parameters(), *self.model.itm_head.parameters()]:
            p.requires_grad_(False)
        self.train()

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.model.vision_model]

    # ---- cache keys ---------------------------------------------------------------
    def image_cache_key(self) -> str:
        weights = sorted(
            f"{p.name}:{p.stat().st_size}"
            for p in self.model_dir.iterdir()
            if p.name.endswith((".safetensors", ".bin"))
        )
        vision_cfg = json.dumps(self._raw_config.get("vision_config", {}), sort_keys=True)
        pre = json.dumps(self.preprocess.to_dict(), sort_keys=True)
        digest = _digest([vision_cfg, *weights, self._config["vision_dtype"], pre])
        return f"blip2-image-v1:{self.model_dir.name}:{digest}"

    def text_cache_key(self) -> str:
        files = [
            (self.model_dir / f).read_bytes()
            for f in ("tokenizer_config.json", *TOKENIZER_VOCABS)
            if (self.model_dir / f).is_file()
        ]
        return f"blip2-text-v1:{_digest([*files, str(self.max_text_len)])}"

    def cache_key(self) -> str:
        return f"{self.image_cache_key()}|{self.text_cache_key()}"

    # ---- frozen stage -------------------------------------------------------------
    @torch.no_grad()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """ViT tokens ``[B, 1 + patches, C_vit]`` (after the post-layernorm)."""
        vision = self.model.vision_model
        pixels = pixels.to(device=vision.embeddings.patch_embedding.weight.device)
        pixels = pixels.to(vision.embeddings.patch_embedding.weight.dtype)
        return vision(pixel_values=pixels).last_hidden_state

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` ``[B, max_text_len]`` (int64)."""
        enc = tokenize_padded(self.tokenizer, texts, self.max_text_len)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    # ---- trainable stage ----------------------------------------------------------
    def _qformer(self, embeds: torch.Tensor, mask: torch.Tensor | None, image: torch.Tensor):
        image = image.to(self.model.query_tokens.dtype)
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        return self.model.qformer(
            query_embeds=embeds,
            query_length=self.num_queries,
            attention_mask=mask,
            encoder_hidden_states=image,
            encoder_attention_mask=image_mask,
        ).last_hidden_state

    def encode_gallery(self, image_feats: torch.Tensor) -> torch.Tensor:
        queries = self.model.query_tokens.expand(image_feats.shape[0], -1, -1)
        out = self._qformer(queries, None, image_feats)
        return F.normalize(self.model.vision_projection(out), dim=-1)

    def encode_query(
        self, image_feats: torch.Tensor, text_feats: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, nq = image_feats.shape[0], self.num_queries
        device = self.model.query_tokens.device
        ids = text_feats["input_ids"].to(device=device, dtype=torch.long)
        text_mask = text_feats["attention_mask"].to(device=device, dtype=torch.long)
        queries = self.model.query_tokens.expand(b, -1, -1)
        embeds = self.model.embeddings(input_ids=ids, query_embeds=queries)
        mask = torch.cat([text_mask.new_ones(b, nq), text_mask], dim=1)
        h = self._qformer(embeds, mask, image_feats)[:, nq]
        return F.normalize(self.model.text_projection(h), dim=-1), h


# ---- a tiny random folder, for tests and smoke runs --------------------------------
_TINY_WORDS = (
    "a an and the is it make change to with without of in on more less has have "
    "red blue green black white yellow pink gray grey brown purple orange color colour "
    "round square circle triangle star shape collar sleeve sleeves neck v-neck long short "
    "dress shirt top bigger smaller larger size same but"
).split()


def write_tiny_vocab(path: Path) -> Path:
    """A small WordPiece vocabulary (special tokens, a few words, letters and ``##`` letters,
    so every lower-case word tokenizes without [UNK])."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789-,.!?'")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_TINY_WORDS, *letters]
    tokens += [f"##{c}" for c in letters]
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n", encoding="utf-8")
    return path


def save_random_blip2(
    out_dir: str | Path,
    *,
    hidden: int = 32,
    num_queries: int = 4,
    image_size: int = 28,
    patch_size: int = 14,
    layers: int = 2,
    dim: int = 16,
    seed: int = 0,
) -> Path:
    """Write a tiny random ``Blip2ForImageTextRetrieval`` folder (config, safetensors weights,
    a small BERT tokenizer) that ``create_backbone("blip2", model_dir=out_dir)`` loads: the
    same code path as the real checkpoint, in seconds."""
    from transformers import AutoTokenizer, Blip2Config, Blip2ForImageTextRetrieval

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_tiny_vocab(out / "vocab.txt")
    tok_cfg = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg), encoding="utf-8")
    # loading by path works across transformers versions (the constructor's vocab argument
    # changed name in 5.x)
    tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    size = dict(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4,
    )  # fmt: skip
    config = Blip2Config(
        # std 0.02: the default vision init (1e-10) gives every image the same ViT tokens,
        # so a test could not catch an image-side bug
        vision_config=dict(
            **size, image_size=image_size, patch_size=patch_size, initializer_range=0.02
        ),
        qformer_config=dict(
            **size,
            vocab_size=len(tokenizer),
            max_position_embeddings=64,
            cross_attention_frequency=1,
            use_qformer_text_input=True,
        ),
        text_config=dict(
            model_type="opt",
            hidden_size=hidden,
            num_hidden_layers=1,
            num_attention_heads=4,
            ffn_dim=2 * hidden,
            word_embed_proj_dim=hidden,
            vocab_size=len(tokenizer),
        ),  # fmt: skip
        num_query_tokens=num_queries,
        image_text_hidden_size=dim,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        model = Blip2ForImageTextRetrieval(config)
        with torch.no_grad():  # random init leaves the query tokens at zero: all queries alike
            model.query_tokens.normal_(0.0, 0.02)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
