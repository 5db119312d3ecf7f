"""The scores of the method, as pure tensor functions (no model, no data).

- :func:`similarity`: ``s(q, T) = max_k <q, T_k>``, a query against a gallery image's tokens
  (BLIP-2 ITC style; the cosine when ``Nt = 1``). Training, TRNS, evaluation and the exact
  search engine all rank by it.
- :func:`pooled`: an image's tokens mean-pooled and re-normalised; ``s_img(a, b) = <pooled(a),
  pooled(b)>`` is the image-to-image similarity of TRNS's duplicate guard and of the soft
  targets of ``L_kl``.
"""

from __future__ import annotations

import torch
from torch import nn


def similarity(q: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """``s(q, T) = max_k <q, T_k>`` for every query / gallery pair, or for each query and its
    own candidates.

    Args:
        q: ``[Q, d]`` queries.
        gallery: ``[G, Nt, d]`` gallery tokens (``Nt = 1`` for pooled encoders; ``[G, d]``
            means ``Nt = 1``), scored against every query; or ``[Q, C, Nt, d]``: query ``i``'s
            own ``C`` candidates (TRNS negatives), scored against query ``i`` only.
    Returns:
        ``[Q, G]`` scores, or ``[Q, C]`` for per-query candidates.
    """
    if gallery.dim() == 4:
        return torch.einsum("qd,qcnd->qcn", q, gallery).amax(dim=-1)
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
