"""The DQE-CIR training objective: which terms, their weights, the masks, the TRNS terms.

``L = L_itc + w_kl L_kl + w_rank L_rank + w_attr L_attr`` (``loss`` section of the config):

- ``L_itc`` (:class:`~dqecir.losses.ITCLoss`): in-batch InfoNCE over ``s(q*, T)``; with
  ``mask_batch_gt`` another query's target that is an annotated ground truth of this query is
  no negative (the in-batch ground-truth mask, :meth:`DQECIRObjective.in_batch_mask`);
- ``L_kl`` (:class:`~dqecir.losses.RelevanceKL`) and ``L_rank``
  (:class:`~dqecir.losses.MarginRank`) over each query's target and its current TRNS
  negatives (:meth:`DQECIRObjective.trns_terms`), once TRNS has mined;
- ``L_attr`` (:class:`~dqecir.losses.AttributeLoss`) on models with attribute weights.

:meth:`DQECIRObjective.forward` returns every term by name (each is logged) plus ``loss``.
Under torchrun (:mod:`dqecir.distributed`) each process encodes its share of the global batch;
the in-batch terms see every process's rows (gathered with gradients) and come out the same on
every rank, and the per-slot terms are rescaled (:meth:`DQECIRObjective.over_all_slots`) so that
:meth:`DQECIRObjective.process_weight` makes the summed update the one-process update.
The Trainer (:mod:`dqecir.train`) keeps the loop, the mining schedule and the checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dqecir.config import LossConfig
from dqecir.distributed import DistEnv
from dqecir.losses import AttributeLoss, ITCLoss, MarginRank, RelevanceKL
from dqecir.models.cir import CIRModel
from dqecir.similarity import pooled, similarity


@dataclass
class ObjectiveBatch:
    """One step's inputs: this process's share of the global batch (frozen features) and
    what the in-batch terms need of the whole batch."""

    reference: torch.Tensor
    """``[B, ...]`` frozen image features of the references (this process's rows)."""
    text: dict[str, torch.Tensor]
    """Frozen text features of their texts."""
    target: torch.Tensor
    """``[B, ...]`` frozen image features of their targets."""
    queries: torch.Tensor
    """``[B_all]`` query indices of the whole (global) batch, for the ground-truth mask."""
    targets: torch.Tensor
    """``[B_all]`` image rows of the whole batch's targets."""
    labels: torch.Tensor | None = None
    """``[B_all, A]`` lexicon labels of the whole batch's texts (``L_attr``)."""
    values: torch.Tensor | None = None
    """``[B_all, A]`` the value each text names per attribute (-1: none), for the value term of
    ``L_attr`` (``loss.attr_value``); None when that term is off."""
    negatives: torch.Tensor | None = None
    """``[B, K]`` TRNS negatives (pool rows, ``-1`` where none) of this process's rows; None
    before the first mining or without TRNS."""
    negative_feats: torch.Tensor | None = None
    """Frozen image features of ``negatives`` (padding read as row 0): ``[B * K, ...]``, one row
    per slot, or with ``negative_index`` each distinct image once."""
    negative_index: torch.Tensor | None = None
    """``[B * K]``: the row of ``negative_feats`` of each negative slot when that tensor holds each
    distinct image once (a batch's negatives repeat: mined from one pool, the same image is a
    negative of many queries, so it is encoded once per step); None: one row per slot."""
    offset: int = 0
    """Position of this process's first row in the whole batch."""


class DQECIRObjective(nn.Module):
    """The loss of one step, as named terms.

    Args:
        cfg: the ``loss`` config section (weights, temperatures, margins, switches).
        gts: per training query, the image rows of its annotated ground truths (the in-batch
            mask keeps them out of the negatives).
        trns: whether TRNS is on (``trns.enabled``); its terms then run once it has mined.
        negative_grad: whether those terms train the negatives' gallery encoding
            (``trns.negative_grad``); off, it runs without gradient and only the attribute
            transform of the index (``model.to_index``) trains through the negatives.
        relevance_grad: whether those terms train the attribute relevance ``alpha``
            (``trns.relevance_grad``); off, they score a ``q*`` built from ``alpha`` held fixed
            (the same values), so only ``L_itc`` and ``L_attr`` train it.
        dist: this process's place under torchrun (a single process by default).
    """

    def __init__(
        self,
        cfg: LossConfig,
        gts: Sequence[Sequence[int]],
        *,
        trns: bool = False,
        negative_grad: bool = True,
        relevance_grad: bool = True,
        dist: DistEnv | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.negative_grad = negative_grad
        self.relevance_grad = relevance_grad
        self.dist = dist or DistEnv()
        self.gt_sets = [set(g) for g in gts]
        self.uses_negatives = trns and (cfg.w_kl > 0 or cfg.w_rank > 0)
        """Whether the mined negatives enter the loss (the Trainer mines only then)."""
        self.itc = ITCLoss()
        self.kl = RelevanceKL(cfg.tau_soft)
        self.rank = MarginRank()
        self.attr = AttributeLoss(cfg.attr_bce, cfg.attr_nce, cfg.attr_value)

    def in_batch_mask(self, queries: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """``[B_all, B_all]``: whether batch target ``j`` is an annotated ground truth of batch
        query ``i`` (so not its negative); None without ``mask_batch_gt``."""
        if not self.cfg.mask_batch_gt:
            return None
        tg = targets.tolist()
        return torch.tensor([[t in self.gt_sets[i] for t in tg] for i in queries.tolist()])

    def forward(self, model: CIRModel, batch: ObjectiveBatch) -> dict[str, torch.Tensor]:
        """Every term of the batch plus ``loss``, the weighted sum."""
        gather = self.dist.gather  # identity in a single process
        device = batch.reference.device
        tau = model.temperature()
        qo = model.query(batch.reference, batch.text)
        tgt_tokens = model.gallery_tokens(batch.target)
        tgt = model.to_index(tgt_tokens)
        q_star = qo["q_star"].float()
        all_tgt = gather(tgt.float())
        scores = similarity(gather(q_star), all_tgt)  # [B_all, B_all]
        ignore = self.in_batch_mask(batch.queries, batch.targets)
        ignore = ignore.to(device) if ignore is not None else None
        terms = dict(self.itc(scores, tau, ignore))
        if ignore is not None and len(ignore) > 1:  # logged: other ground truths the mask hides
            n = len(ignore)
            terms["mask_share"] = (ignore.sum() - ignore.diagonal().sum()).float() / (n * (n - 1))
        total = terms["itc"]
        if self.uses_negatives and batch.negatives is not None:
            mine = slice(batch.offset, batch.offset + len(q_star))
            q_trns, s_trns = q_star, scores[mine]
            if not self.relevance_grad and "alpha" in qo:
                assert model.aw is not None  # alpha comes from the attribute weights
                q_trns = model.aw.weighted(qo["q"], qo["alpha"].detach()).float()
                s_trns = similarity(q_trns, all_tgt)
            trns = self.trns_terms(
                model, batch, q_trns, s_trns, tgt_tokens, tau,
                ignore[mine] if ignore is not None else None,
            )  # fmt: skip
            terms.update(trns)
            total = total + self.cfg.w_kl * trns.get("kl", 0.0)
            total = total + self.cfg.w_rank * trns.get("rank", 0.0)
        if model.aw is not None and self.cfg.w_attr > 0 and batch.labels is not None:
            t_pooled = gather(pooled(tgt_tokens.float()))
            terms.update(
                self.attr(
                    model.aw,
                    gather(qo["h"]),
                    gather(qo["q"]),
                    t_pooled,
                    batch.labels,
                    tau,
                    batch.values,
                )  # fmt: skip
            )
            total = total + self.cfg.w_attr * terms["attr"]
        terms["loss"] = total
        return terms

    def trns_terms(
        self,
        model: CIRModel,
        batch: ObjectiveBatch,
        q_star: torch.Tensor,
        scores: torch.Tensor,
        tgt_tokens: torch.Tensor,
        tau: torch.Tensor,
        ignore: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """``L_kl`` and ``L_rank`` over each query's target and its current TRNS negatives.

        ``scores`` ``[B, N]``: this process's queries against the targets of the whole
        (gathered) batch; query ``i``'s own target is column ``batch.offset + i``.
        """
        cfg, negs, offset = self.cfg, batch.negatives, batch.offset
        assert negs is not None and batch.negative_feats is not None
        n, k = negs.shape
        device = q_star.device
        valid = (negs >= 0).to(device)
        with torch.set_grad_enabled(self.negative_grad and torch.is_grad_enabled()):
            neg_tokens = model.gallery_tokens(batch.negative_feats)
        n_idx = model.to_index(neg_tokens).float()
        img_n = pooled(neg_tokens.float()).detach() if cfg.w_kl > 0 else None
        if batch.negative_index is not None:  # distinct images -> slots
            slot = batch.negative_index.to(device)
            n_idx = n_idx[slot]
            img_n = img_n[slot] if img_n is not None else None
        s_neg = similarity(q_star, n_idx.view(n, k, *n_idx.shape[1:]))  # [B, K]
        s_pos = scores.diagonal(offset)
        out: dict[str, torch.Tensor] = {}
        if cfg.w_kl > 0:
            # soft targets: how much each candidate looks like the target itself (s_img)
            img_t = pooled(tgt_tokens.float()).detach()
            assert img_n is not None
            img_n = img_n.view(n, k, 1, -1)
            m_scores = torch.cat([s_pos.unsqueeze(1), s_neg], 1)
            i_scores = torch.cat([torch.ones_like(s_pos).unsqueeze(1), similarity(img_t, img_n)], 1)
            kvalid = torch.cat([torch.ones_like(valid[:, :1]), valid], 1)
            if cfg.kl_inbatch:
                cols = torch.arange(scores.shape[1], device=device)
                own = offset + torch.arange(n, device=device)
                off = cols.unsqueeze(0) != own.unsqueeze(1)
                if ignore is not None:
                    off &= ~ignore
                img_all = img_t
                if self.dist.active:
                    img_all = self.dist.gather_nograd(pooled(tgt_tokens.detach().float()))
                m_scores = torch.cat([m_scores, scores], 1)
                i_scores = torch.cat([i_scores, similarity(img_t, img_all)], 1)
                kvalid = torch.cat([kvalid, off], 1)
            out.update(self.kl(m_scores, i_scores, tau, kvalid))
        if cfg.w_rank > 0:
            unit = tau.detach() if cfg.rank_margin_units == "tau" else 1.0
            rank = self.rank(s_pos, s_neg, cfg.rank_margin * unit, valid)
            out.update(self.over_all_slots(rank, valid, scores.shape[1]))
        return out

    def over_all_slots(
        self, terms: dict[str, torch.Tensor], valid: torch.Tensor, n_all: int
    ) -> dict[str, torch.Tensor]:
        """Under torchrun: rescale terms that average over this process's valid negative slots
        (``MarginRank``) so that the batch-share weighting of :meth:`process_weight` makes them
        the average over the slots of the whole batch, as in one process."""
        if not self.dist.active:
            return terms
        mine = valid.sum().clamp(min=1).float()
        every = self.dist.all_sum(valid.sum()).clamp(min=1).float()
        factor = mine / every * n_all / len(valid)
        return {k: v * factor for k, v in terms.items()}

    def process_weight(self, n_batch: int) -> float:
        """What this process's loss is multiplied by before its backward pass, so that the
        gradients averaged over processes are the one-process gradients of the whole batch
        (shares may differ by one row); 1 in a single process."""
        if not self.dist.active:
            return 1.0
        share = self.dist.share(n_batch)
        return (share.stop - share.start) * self.dist.world / n_batch
