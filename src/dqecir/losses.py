"""Training losses as modules that return named terms (so every term can be logged).

- :class:`ITCLoss`: in-batch InfoNCE over ``s(q*, T)`` with a learnable temperature (the
  SPRC-style baseline, ``L_itc``).
- :class:`RelevanceKL`: relevance suppression, ``KL(p_hat || p)`` over the target and its mined
  negatives, with soft targets from the target's own image similarity (``L_kl``).
- :class:`MarginRank`: semantic confusion hinge between the target and each negative (``L_rank``).
- :class:`AttributeLoss`: ``L_attr``, the attribute relevance against the lexicon labels (BCE) and
  in-batch InfoNCE in each mentioned attribute's subspace.

Which terms a run uses, their weights and the masks: :mod:`dqecir.objective`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from dqecir.models.attribute import AttributeWeights


class Temperature(nn.Module):
    """A learnable (or fixed) softmax temperature, stored as its logarithm."""

    def __init__(self, init: float = 0.07, learnable: bool = True, minimum: float = 1e-3) -> None:
        super().__init__()
        if init <= 0:
            raise ValueError(f"temperature must be > 0, got {init}")
        self.log_tau = nn.Parameter(torch.tensor(math.log(init)), requires_grad=learnable)
        self.minimum = minimum

    def forward(self) -> torch.Tensor:
        return self.log_tau.exp().clamp(min=self.minimum)


class ITCLoss(nn.Module):
    """In-batch InfoNCE: query ``i`` must pick column ``i`` among the batch's targets.

    ``scores`` is the ``[B, B]`` matrix ``s(q*_i, T_j)``; ``ignore`` (optional, boolean ``[B, B]``)
    marks off-diagonal pairs that are not negatives (another query's target that is also a valid
    target of query ``i``); they are removed from the softmax.
    """

    def forward(
        self, scores: torch.Tensor, tau: torch.Tensor, ignore: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        logits = scores.float() / tau
        if ignore is not None:
            eye = torch.eye(len(scores), dtype=torch.bool, device=scores.device)
            logits = logits.masked_fill(ignore & ~eye, float("-inf"))
        labels = torch.arange(len(scores), device=scores.device)
        return {"itc": F.cross_entropy(logits, labels)}


class RelevanceKL(nn.Module):
    """``KL(p_hat || p)`` over each query's candidate set ``S_i = {t_i} ∪ N_i``.

    ``p = softmax(s(q*_i, S_i) / tau)`` is the model's distribution; ``p_hat =
    softmax(s_img(t_i, S_i) / tau_soft)`` is how similar each candidate looks to the target itself
    (the target gets the most mass), so near-duplicates of the target are not pushed as far as
    unrelated images. Rows whose mask is all-false contribute nothing.
    """

    def __init__(self, tau_soft: float = 0.05) -> None:
        super().__init__()
        if tau_soft <= 0:
            raise ValueError(f"tau_soft must be > 0, got {tau_soft}")
        self.tau_soft = tau_soft

    def forward(
        self,
        model_scores: torch.Tensor,
        image_scores: torch.Tensor,
        tau: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``model_scores``, ``image_scores``: ``[B, C]`` with column 0 the target;
        ``valid``: ``[B, C]`` boolean (padding slots False)."""
        logits = model_scores.float() / tau
        soft = image_scores.float().detach() / self.tau_soft
        if valid is not None:
            logits = logits.masked_fill(~valid, float("-inf"))
            soft = soft.masked_fill(~valid, float("-inf"))
        log_p = F.log_softmax(logits, dim=-1)
        log_q = F.log_softmax(soft, dim=-1)
        q = log_q.exp()
        terms = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q))
        return {"kl": terms.sum(dim=-1).mean()}


class MarginRank(nn.Module):
    """``mean_n max(0, margin - s(q*_i, t_i) + s(q*_i, n))`` over the negatives ``n`` of each
    query. Also returns the fraction of active (non-zero) hinges, to show the term still works."""

    def forward(
        self,
        pos_scores: torch.Tensor,
        neg_scores: torch.Tensor,
        margin: torch.Tensor | float,
        valid: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        hinge = F.relu(margin - pos_scores.float().unsqueeze(1) + neg_scores.float())
        if valid is None:
            valid = torch.ones_like(hinge, dtype=torch.bool)
        n = valid.sum().clamp(min=1)
        loss = (hinge * valid).sum() / n
        active = ((hinge > 0) & valid).sum().float() / n
        return {"rank": loss, "rank_active": active.detach()}


class AttributeLoss(nn.Module):
    """``L_attr``: (a) BCE between ``alpha`` and the lexicon labels; (b) for each attribute a text
    mentions, in-batch InfoNCE in that attribute's weighted subspace; (c) the value term: for
    each attribute, the query's attribute embedding against the targets' in the batch, every
    target whose text names the same value ("red") a positive (multi-positive InfoNCE), so the
    attribute subspace carries the value the words ask for, whatever the reference."""

    def __init__(self, w_bce: float = 1.0, w_nce: float = 1.0, w_value: float = 0.0) -> None:
        super().__init__()
        self.w_bce = w_bce
        self.w_nce = w_nce
        self.w_value = w_value

    def forward(
        self,
        aw: AttributeWeights,
        h: torch.Tensor,
        q: torch.Tensor,
        t_pooled: torch.Tensor,
        labels: torch.Tensor,
        tau: torch.Tensor,
        values: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``q``: un-weighted queries ``[B, d]``; ``t_pooled``: pooled target embeddings ``[B, d]``;
        ``labels``: ``[B, A]`` lexicon labels (0/1); ``values``: ``[B, A]`` the value index each
        text names per attribute, -1 for none (:func:`dqecir.models.attribute.value_labels`)."""
        logits = aw.relevance_logits(h)
        bce = F.binary_cross_entropy_with_logits(logits, labels.float())
        nce = q.new_zeros((), dtype=torch.float32)
        n_terms = 0
        for a in range(len(aw.attributes)) if self.w_nce > 0 else ():
            rows = labels[:, a] > 0.5
            if rows.sum() < 2:
                continue
            qa = aw.attribute_space(q[rows].float(), a)
            ta = aw.attribute_space(t_pooled.float(), a)
            logits_a = qa @ ta.T / tau
            target_cols = torch.nonzero(rows, as_tuple=False).squeeze(1)
            nce = nce + F.cross_entropy(logits_a, target_cols)
            n_terms += 1
        if n_terms:
            nce = nce / n_terms
        total = self.w_bce * bce + self.w_nce * nce
        out = {"attr_bce": bce.detach(), "attr_nce": nce.detach()}
        if self.w_value > 0 and values is not None:
            value = self.value_term(aw, q, t_pooled, values, tau)
            total = total + self.w_value * value
            out["attr_value"] = value.detach()
        out["attr"] = total
        return out

    @staticmethod
    def value_term(
        aw: AttributeWeights,
        q: torch.Tensor,
        t_pooled: torch.Tensor,
        values: torch.Tensor,
        tau: torch.Tensor,
    ) -> torch.Tensor:
        """Mean over attributes (with at least two labelled rows) of
        ``-log sum_{j: v_j = v_i} softmax_j(<P_a q_i, P_a t_j> / tau)`` over the labelled rows."""
        loss = q.new_zeros((), dtype=torch.float32)
        n_terms = 0
        for a in range(len(aw.attributes)):
            rows = values[:, a] >= 0
            if rows.sum() < 2:
                continue
            v = values[rows, a]
            qa = aw.attribute_space(q[rows].float(), a)
            ta = aw.attribute_space(t_pooled[rows].float(), a)
            logp = torch.log_softmax(qa @ ta.T / tau, dim=1)
            same = v.unsqueeze(1) == v.unsqueeze(0)
            loss = loss - torch.logsumexp(logp.masked_fill(~same, float("-inf")), dim=1).mean()
            n_terms += 1
        return loss / max(n_terms, 1)
