"""Retrieval metrics of the three CIR benchmarks, as pure functions over rankings.

``recall_at_k``, ``recall_subset_at_k``, ``average_precision_at_k`` and ``map_at_k`` over
rankings of image ids score predictions files and model evaluation alike (evaluation turns its
score matrix into rankings first); ``tests/test_metrics.py`` checks each against a naive loop.

Percentages (0-100) unless a docstring says otherwise. A ranking shorter than ``k`` is scored
as it is (positions past its end hold nothing relevant); nothing is re-ordered or filtered.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence


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


def group_average(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Flatten per-group metrics (FashionIQ's categories) and add their mean over groups.

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
