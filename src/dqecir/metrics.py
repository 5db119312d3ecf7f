"""Retrieval metrics of the three CIR benchmarks, as pure functions over rankings.

Two families, which must agree (``tests/test_metrics.py`` checks it):

* list versions (``recall_at_k``, ``recall_subset_at_k``, ``average_precision_at_k``,
  ``map_at_k``) over rankings of image ids: used to score predictions files and as the readable
  definition of each metric;
* vectorised versions over torch tensors (``ranks_from_scores``, ``relevance_matrix``,
  ``recall_from_relevance``, ``map_from_relevance``, ``subset_ranks_from_scores``): used by model
  evaluation, where rankings come from a ``[queries x gallery]`` score matrix.

Percentages (0-100) unless a docstring says otherwise. A ranking shorter than ``k`` is scored
as it is (positions past its end hold nothing relevant); nothing is re-ordered or filtered.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch

# ---------------------------------------------------------------------------------------
# list versions
# ---------------------------------------------------------------------------------------


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _check_pairs(rankings: Sequence, targets: Sequence) -> None:
    if len(rankings) != len(targets):
        raise ValueError(f"{len(rankings)} rankings but {len(targets)} targets")
    if len(rankings) == 0:
        raise ValueError("no queries to score")


def recall_at_k(rankings: Sequence[Sequence[str]], targets: Sequence[str], k: int) -> float:
    """Percentage of queries whose target is among the first ``k`` entries of its ranking."""
    _check_k(k)
    _check_pairs(rankings, targets)
    hits = sum(
        target in list(ranking[:k]) for ranking, target in zip(rankings, targets, strict=True)
    )
    return 100.0 * hits / len(rankings)


def subset_ranking(
    ranking: Sequence[str],
    members: Sequence[str],
    reference: str,
    *,
    target: str | None = None,
) -> list[str]:
    """The CIRR subset ranking of one query: ``members`` minus ``reference``, ranked.

    Members that appear in ``ranking`` keep their relative order there. Members absent from
    ``ranking`` (a submitted top-50 list need not hold all of them) were ranked below every
    listed image by whoever produced the list, so they come after every present member. Their
    order among themselves is unknown: they follow the order of ``members``, except that an
    absent ``target`` (when given) is put last. This worst case means a truncated list never
    earns a Recall_subset hit it did not show; with a full ranking (model evaluation) nothing is
    absent and the result is exact. Duplicated members are kept once.
    """
    wanted = [m for m in dict.fromkeys(members) if m != reference]
    wanted_set = set(wanted)
    present: list[str] = []
    seen: set[str] = set()
    for image in ranking:
        if image in wanted_set and image not in seen:
            present.append(image)
            seen.add(image)
    absent = [m for m in wanted if m not in seen and m != target]
    if target is not None and target in wanted_set and target not in seen:
        absent.append(target)
    return present + absent


def recall_subset_at_k(
    subset_rankings: Sequence[Sequence[str]], targets: Sequence[str], k: int
) -> float:
    """CIRR Recall_subset@K: Recall@K over the subset rankings (see :func:`subset_ranking`)."""
    return recall_at_k(subset_rankings, targets, k)


def average_precision_at_k(ranking: Sequence[str], gts: Collection[str], k: int) -> float:
    """CIRCO's AP@K as a fraction (0-1).

    ``AP@K = sum_{i<=K} P@i * rel(i) / min(K, |GT|)``: the official evaluation
    (miccunifi/CIRCO ``src/evaluation.py``) computes exactly this, marking every list entry
    that is a ground truth as relevant.
    """
    _check_k(k)
    gt_set = set(gts)
    if not gt_set:
        raise ValueError("average precision needs at least one ground truth")
    hits = 0
    total = 0.0
    for position, image in enumerate(ranking[:k], start=1):
        if image in gt_set:
            hits += 1
            total += hits / position
    return total / min(k, len(gt_set))


def map_at_k(
    rankings: Sequence[Sequence[str]], gts_list: Sequence[Collection[str]], k: int
) -> float:
    """Mean of :func:`average_precision_at_k` over queries, in percent."""
    _check_pairs(rankings, gts_list)
    aps = [average_precision_at_k(r, g, k) for r, g in zip(rankings, gts_list, strict=True)]
    return 100.0 * sum(aps) / len(aps)


def fashioniq_average(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Flatten FashionIQ per-category metrics and add their mean over categories.

    ``{"dress": {"recall@10": 30.0}, "shirt": {"recall@10": 20.0}}`` becomes
    ``{"dress/recall@10": 30.0, "shirt/recall@10": 20.0, "average/recall@10": 25.0}``.
    A ``num_queries`` entry is summed into ``num_queries`` instead of averaged. Every category
    must report the same metric keys (an average over a subset would mislead).
    """
    if not per_category:
        raise ValueError("no categories to average")
    key_sets = {cat: set(m) for cat, m in per_category.items()}
    first = next(iter(key_sets.values()))
    for cat, keys in key_sets.items():
        if keys != first:
            raise ValueError(
                f"category {cat!r} reports {sorted(keys)}, another reports {sorted(first)}"
            )
    out: dict[str, float] = {}
    for cat, metrics in per_category.items():
        for key, value in metrics.items():
            out[f"{cat}/{key}"] = float(value)
    for key in sorted(first):
        values = [float(m[key]) for m in per_category.values()]
        if key == "num_queries":
            out["num_queries"] = float(sum(values))
        else:
            out[f"average/{key}"] = sum(values) / len(values)
    return out


# ---------------------------------------------------------------------------------------
# vectorised versions (torch)
# ---------------------------------------------------------------------------------------


def _exclusion_mask(scores: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    """``exclude`` as a boolean ``[Q, G]`` mask (from a mask, or one index per query, -1 none)."""
    if exclude is None:
        return torch.zeros_like(scores, dtype=torch.bool)
    if exclude.dtype == torch.bool:
        if exclude.shape != scores.shape:
            raise ValueError(f"exclude mask {tuple(exclude.shape)} != scores {tuple(scores.shape)}")
        return exclude
    if exclude.shape != scores.shape[:1]:
        raise ValueError(f"exclude index {tuple(exclude.shape)} must be [Q={scores.shape[0]}]")
    mask = torch.zeros_like(scores, dtype=torch.bool)
    rows = torch.nonzero(exclude >= 0).squeeze(1)
    mask[rows, exclude[rows]] = True
    return mask


def ranks_from_scores(
    scores: torch.Tensor, top_n: int | None = None, *, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """Top-``top_n`` gallery indices ``[Q, N]`` per query, best first.

    Args:
        scores: ``[Q, G]`` similarities (higher is better).
        top_n: how many to keep; ``None`` keeps every gallery image that no query excludes
            (``G`` minus the largest per-query exclusion count).
        exclude: a boolean ``[Q, G]`` mask, or a ``[Q]`` integer tensor of one gallery index per
            query (``-1``: none), e.g. the reference image the protocol removes.
    Ties keep gallery order (a stable sort), so the result is deterministic. Excluded images
    never appear: ``top_n`` larger than what every query has left is an error.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [Q, G], got {tuple(scores.shape)}")
    mask = _exclusion_mask(scores, exclude)
    available = scores.shape[1] - int(mask.sum(dim=1).max().item()) if scores.shape[0] else 0
    n = available if top_n is None else top_n
    if n > available:
        raise ValueError(f"top_n={n} but some query has only {available} gallery images left")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    # a second stable sort moves excluded images last, even past scores of -inf
    last = torch.sort(mask.gather(1, order).to(torch.uint8), dim=1, stable=True).indices
    return order.gather(1, last)[:, :n]


def relevance_matrix(ranks: torch.Tensor, relevant: Sequence[Sequence[int]]) -> torch.Tensor:
    """Boolean ``[Q, N]``: whether ``ranks[q, i]`` is one of ``relevant[q]`` (gallery indices)."""
    if len(relevant) != ranks.shape[0]:
        raise ValueError(f"{len(relevant)} relevance lists for {ranks.shape[0]} rankings")
    width = max((len(r) for r in relevant), default=0)
    if width == 0:
        return torch.zeros_like(ranks, dtype=torch.bool)
    padded = torch.full((len(relevant), width), -1, dtype=ranks.dtype, device=ranks.device)
    for row, items in enumerate(relevant):
        if items:
            padded[row, : len(items)] = torch.as_tensor(list(items), dtype=ranks.dtype)
    return (ranks.unsqueeze(2) == padded.unsqueeze(1)).any(dim=2)


def recall_from_relevance(relevance: torch.Tensor, k: int) -> float:
    """Recall@K (percent) from a boolean ``[Q, N]`` relevance matrix of ranked lists."""
    _check_k(k)
    if relevance.shape[0] == 0:
        raise ValueError("no queries to score")
    return 100.0 * relevance[:, :k].any(dim=1).float().mean().item()


def map_from_relevance(relevance: torch.Tensor, num_gt: torch.Tensor, k: int) -> float:
    """mAP@K (percent), CIRCO definition, from a boolean ``[Q, N]`` relevance matrix.

    ``num_gt[q]`` is the number of ground truths of query ``q`` (``|GT|``, which the list
    may not all contain).
    """
    _check_k(k)
    if relevance.shape[0] == 0:
        raise ValueError("no queries to score")
    if bool((num_gt < 1).any()):
        raise ValueError("average precision needs at least one ground truth per query")
    rel = relevance[:, :k].double()
    positions = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64, device=rel.device)
    precision_sum = (rel.cumsum(dim=1) / positions * rel).sum(dim=1)
    denominator = num_gt.to(torch.float64).clamp(max=k)
    return 100.0 * (precision_sum / denominator).mean().item()


def subset_ranks_from_scores(
    scores: torch.Tensor, members: torch.Tensor, reference: torch.Tensor
) -> torch.Tensor:
    """Vectorised CIRR subset ranking: member gallery indices sorted by score, best first.

    Args:
        scores: ``[Q, G]`` similarities.
        members: ``[Q, M]`` distinct gallery indices of ``img_set.members`` (``-1`` pads
            short rows).
        reference: ``[Q]`` gallery index of each query's reference (removed from its subset).
    Returns:
        ``[Q, M]``: the ranked members; the reference and padding come last as ``-1``. Ties keep
        the order of ``members``.
    """
    valid = (members >= 0) & (members != reference.unsqueeze(1))
    member_scores = scores.gather(1, members.clamp(min=0))
    order = torch.sort(member_scores, dim=1, descending=True, stable=True).indices
    last = torch.sort((~valid).gather(1, order).to(torch.uint8), dim=1, stable=True).indices
    order = order.gather(1, last)
    ranked = members.gather(1, order)
    return ranked.masked_fill(~valid.gather(1, order), -1)
