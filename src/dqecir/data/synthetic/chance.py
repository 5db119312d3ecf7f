"""Chance levels: the metrics a uniformly random ranking scores on a generated benchmark."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def random_ap_at_k(num_candidates: int, num_gt: int, k: int) -> float:
    """Expected CIRCO AP@K (a fraction) of a uniformly random ranking of ``num_candidates``
    images of which ``num_gt`` are ground truths.

    ``AP@K = sum_{i<=K} P@i rel(i) / min(K, G)`` and, for a random order of N images,
    ``E[P@i rel(i)] = (G/N + (i-1) G(G-1) / (N(N-1))) / i`` (rel(i) and each earlier rel(j)
    are relevant together with probability G(G-1) / (N(N-1))).
    """
    n, g = num_candidates, num_gt
    if g == 0 or n == 0:
        return 0.0
    pair = g * (g - 1) / (n * (n - 1)) if n > 1 else 0.0
    total = sum((g / n + (i - 1) * pair) / i for i in range(1, min(k, n) + 1))
    return total / min(k, g)


def chance_levels(root: Path, split: str = "test", ks: Sequence[int] = (1, 5, 10, 25, 50)) -> dict:
    """Metrics of a random ranking on one split of a generated benchmark (CIRCO layout under
    ``root/circo``), overall, per query kind and on held-out queries, in percent.

    The reference is removed from the ranking (N = gallery - 1 candidates): Recall@K on the
    hard target is K / N, Recall_subset@K is K / 5, mAP@K is :func:`random_ap_at_k` averaged
    over the queries' actual ground-truth counts.
    """
    ann = Path(root) / "circo" / "annotations"
    records = json.loads((ann / f"{split}.json").read_text(encoding="utf-8"))
    gallery = json.loads((ann / f"gallery.{split}.json").read_text(encoding="utf-8"))
    n = len(gallery) - 1

    def levels(recs: list[dict]) -> dict:
        out: dict = {"queries": len(recs)}
        if not recs:
            return out
        out["mean_gt"] = round(float(np.mean([len(r["gt_img_ids"]) for r in recs])), 2)
        for k in ks:
            out[f"R@{k}"] = round(100 * min(k, n) / n, 3)
        for k in (1, 2, 3):
            out[f"Rsubset@{k}"] = round(100 * k / 5, 3)
        for k in ks:
            aps = [random_ap_at_k(n, len(r["gt_img_ids"]), k) for r in recs]
            out[f"mAP@{k}"] = round(100 * float(np.mean(aps)), 3)
        return out

    kinds = sorted({r["kind"] for r in records})
    return {
        "split": split,
        "gallery": len(gallery),
        "all": levels(records),
        "by_kind": {k: levels([r for r in records if r["kind"] == k]) for k in kinds},
        "heldout": levels([r for r in records if r["heldout"]]),
    }
