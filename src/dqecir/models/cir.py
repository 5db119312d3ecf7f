"""CIRModel: a backbone plus optional attribute weights; what training, evaluation and the
index all use.

The gallery side (:meth:`CIRModel.gallery`) never sees text, so its output can be computed once
and indexed; the query side (:meth:`CIRModel.query`) applies the attribute weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dqecir.losses import Temperature
from dqecir.models.attribute import AttributeWeights
from dqecir.models.backbones.base import Backbone
from dqecir.similarity import similarity


class CIRModel(nn.Module):
    def __init__(
        self,
        backbone: Backbone,
        attribute_weights: str = "none",
        attributes: list[str] | None = None,
        subspace_dim: int = 64,
        temperature: float = 0.07,
        learn_temperature: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.aw: AttributeWeights | None = None
        if attribute_weights != "none":
            self.aw = AttributeWeights(
                attribute_weights,
                backbone.dim,
                backbone.hidden_dim,
                attributes or ["color", "shape"],
                subspace_dim,
            )
        self.temperature = Temperature(temperature, learnable=learn_temperature)

    @property
    def embed_dim(self) -> int:
        return self.aw.out_dim if self.aw is not None else self.backbone.dim

    @property
    def attributes(self) -> list[str]:
        return self.aw.attributes if self.aw is not None else []

    def query(
        self, image_feats: torch.Tensor, text_feats: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Returns ``q`` (the backbone's query), ``h``, ``q_star`` (weighted, what is scored) and,
        with attribute weights, ``alpha`` ``[B, A]``."""
        q, h = self.backbone.encode_query(image_feats, text_feats)
        out = {"q": q, "h": h}
        if self.aw is None:
            out["q_star"] = q
        else:
            out["q_star"], out["alpha"] = self.aw.query(q, h)
        return out

    def gallery_tokens(self, image_feats: torch.Tensor) -> torch.Tensor:
        """Backbone gallery tokens ``[B, Nt, d]`` (before the attribute transform)."""
        return self.backbone.encode_gallery(image_feats)

    def to_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """What the index stores for gallery tokens: ``[B, Nt, embed_dim]``."""
        return tokens if self.aw is None else self.aw.gallery(tokens)

    def gallery(self, image_feats: torch.Tensor) -> torch.Tensor:
        return self.to_index(self.gallery_tokens(image_feats))

    @staticmethod
    def score(q: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        return similarity(q, gallery)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        sd = {f"backbone.{k}": v for k, v in self.backbone.trainable_state_dict().items()}
        for name, p in self.named_parameters():
            if not name.startswith("backbone."):
                sd[name] = p.detach()
        return sd

    def load_trainable_state_dict(
        self, sd: dict[str, torch.Tensor], *, partial_heads: bool = False
    ) -> dict[str, list[str]]:
        """Load what :meth:`trainable_state_dict` returned; the backbone's weights must all
        match. Every head (the model's own weights) must match too, unless ``partial_heads`` (a
        warm start, ``train.init_from``): then trainable heads load where ``sd`` has them and
        keep their initialisation where it has not, frozen ones (a fixed temperature) keep this
        model's values, and heads of ``sd`` this model lacks are ignored. Returns the head
        names ``loaded``, ``fresh`` and ``ignored``."""
        bb = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
        self.backbone.load_trainable_state_dict(bb)
        own = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
        params = {
            n: p
            for n, p in self.named_parameters()
            if not n.startswith("backbone.") and (p.requires_grad or not partial_heads)
        }
        missing = sorted(set(params) - set(own))
        unexpected = sorted(set(own) - set(params))
        if not partial_heads and (missing or unexpected):
            raise KeyError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        loaded = [n for n in params if n in own]
        with torch.no_grad():
            for k in loaded:
                if params[k].shape != own[k].shape:
                    raise KeyError(f"{k}: shape {tuple(own[k].shape)} != {tuple(params[k].shape)}")
                params[k].copy_(own[k])
        return {"loaded": loaded, "fresh": missing, "ignored": unexpected}


@torch.no_grad()
def embed_gallery(
    model: CIRModel,
    image_feats: Any,
    device: torch.device,
    batch_size: int = 256,
    progress: bool = False,
) -> torch.Tensor:
    """Index embeddings ``[N, Nt, D]`` (float32, on ``device``) of frozen image features
    (a tensor, or anything sliced into batch tensors: memory-mapped rows, a share of them).
    What validation, evaluation and the TRNS pool score queries against."""
    from tqdm import tqdm

    model.eval()
    out = []
    it = range(0, len(image_feats), batch_size)
    for i in tqdm(it, desc="gallery", disable=not progress, leave=False):
        x = image_feats[i : i + batch_size].to(device).float()
        out.append(model.gallery(x).float())
    return torch.cat(out) if out else torch.empty(0)


def build_model(model_cfg: Any, loss_cfg: Any) -> CIRModel:
    """Build a CIRModel from the ``model`` and ``loss`` config sections."""
    from dqecir.registry import create_backbone

    backbone = create_backbone(model_cfg.backbone, **model_cfg.backbone_kwargs)
    return CIRModel(
        backbone,
        attribute_weights=model_cfg.attribute_weights,
        attributes=model_cfg.attributes,
        subspace_dim=model_cfg.subspace_dim,
        temperature=loss_cfg.temperature,
        learn_temperature=loss_cfg.learn_temperature,
    )


def load_model(path: Any, device: Any = "cpu") -> tuple[CIRModel, Any]:
    """Rebuild a trained model from a checkpoint (config + trainable weights)."""
    from dqecir.checkpoint import load_checkpoint
    from dqecir.config import checkpoint_config
    from dqecir.errors import CheckpointError

    ck = load_checkpoint(path)
    cfg = checkpoint_config(ck.meta["config"])
    model = build_model(cfg.model, cfg.loss)
    try:
        model.load_trainable_state_dict(ck.model_state)
    except KeyError as e:
        raise CheckpointError(f"checkpoint {ck.path}: weights do not fit its config: {e}") from e
    import json

    if json.loads(json.dumps(model.backbone.preprocess.to_dict())) != ck.meta["preprocess"]:
        raise CheckpointError(
            f"checkpoint {ck.path}: preprocessing {ck.meta['preprocess']} differs from the "
            f"backbone's {model.backbone.preprocess.to_dict()}"
        )
    return model.to(device).eval(), ck
