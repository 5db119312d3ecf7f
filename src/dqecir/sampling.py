"""Target relative negative sampling (TRNS): pool scoring, mid-zone selection, schedule.

Pure tensor code: it takes query and pool embeddings, never a model.

For training query ``i`` with target ``t_i`` and every pool candidate ``c_j``:
``delta_ij = s(q_i, c_j) - s(q_i, t_i)`` (the target relative similarity distribution). Candidates
in the mid-zone ``low <= z_ij <= high`` are informative negatives: ``z`` is ``delta / tau``
(``zone="tau"``, default: the bounds follow the sharpening temperature), ``delta`` itself
(``zone="abs"``) or, with ``zone="quantile"``, the bounds are per-query quantiles of ``delta``
among the allowed candidates (nearest rank, rounded outwards: the band never comes out empty).
Never negatives: the target, the reference, every annotated ground truth, and (when
``dup_threshold > 0``) near-duplicates of the target (``s_img(t_i, c_j) >= dup_threshold``).
``K`` negatives are drawn uniformly from the zone; a zone smaller than ``K`` is filled with the
candidates nearest to it from below, never from above (above the zone lie likely false
negatives).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dqecir.config import TRNSConfig
from dqecir.similarity import pooled, similarity


@dataclass
class ZoneSpec:
    """The mid-zone; defaults are the config's (:class:`dqecir.config.TRNSConfig`)."""

    zone: str = TRNSConfig.zone
    zlow: float = TRNSConfig.zlow
    zhigh: float = TRNSConfig.zhigh
    low: float = TRNSConfig.low
    high: float = TRNSConfig.high
    qlow: float = TRNSConfig.qlow
    qhigh: float = TRNSConfig.qhigh

    def __post_init__(self) -> None:
        if self.zone not in ("tau", "abs", "quantile"):
            raise ValueError(f"zone must be tau, abs or quantile, got {self.zone!r}")
        lo, hi = {"tau": (self.zlow, self.zhigh), "abs": (self.low, self.high)}.get(
            self.zone, (self.qlow, self.qhigh)
        )
        if not lo < hi:
            raise ValueError(f"zone bounds must satisfy low < high, got {lo} >= {hi}")
        if self.zone == "quantile" and not (0.0 <= lo and hi <= 1.0):
            raise ValueError("quantile bounds must lie in [0, 1]")


@dataclass
class MiningResult:
    negatives: torch.Tensor
    """``[Q, K]`` pool indices, ``-1`` where not even the fill found a candidate."""
    stats: dict[str, float] = field(default_factory=dict)


class Exclusions:
    """Per-query candidate indices that are never negatives, stored flat (CSR) so that the mask
    of any chunk of queries is built without Python loops. Build once, mine many times."""

    def __init__(self, lists: Sequence[Sequence[int]]) -> None:
        lengths = torch.tensor([len(x) for x in lists], dtype=torch.long)
        self.offsets = torch.zeros(len(lists) + 1, dtype=torch.long)
        self.offsets[1:] = lengths.cumsum(0)
        self.cols = torch.tensor([j for x in lists for j in x], dtype=torch.long)
        self.rows = torch.repeat_interleave(torch.arange(len(lists)), lengths)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def mask(self, start: int, end: int, pool_size: int, device: torch.device) -> torch.Tensor:
        a, b = int(self.offsets[start]), int(self.offsets[end])
        m = torch.zeros(end - start, pool_size, dtype=torch.bool, device=device)
        m[(self.rows[a:b] - start).to(device), self.cols[a:b].to(device)] = True
        return m


def _select_by_value(
    delta: torch.Tensor,
    excluded: torch.Tensor,
    spec: ZoneSpec,
    tau: float,
    k: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed bounds on ``delta / tau`` (``tau``) or ``delta`` (``abs``). Returns the chosen pool
    indices ``[C, k]`` (-1 where none), the zone sizes and the counts above the zone."""
    if spec.zone == "tau":
        z, lo, hi = delta / tau, spec.zlow, spec.zhigh
    else:
        z, lo, hi = delta, spec.low, spec.high
    ok = ~excluded
    in_zone = ok & (z >= lo) & (z <= hi)
    below = ok & (z < lo)
    # Uniform sample from the zone (random keys in [2, 3)); then the nearest from below.
    keys = torch.rand(z.shape, generator=generator, device=z.device)
    key = torch.where(in_zone, keys + 2.0, torch.full_like(keys, -1.0))
    key = torch.maximum(key, torch.where(below, torch.sigmoid(z), torch.full_like(keys, -1.0)))
    vals, idx = key.topk(min(k, z.shape[1]), dim=1)
    chosen = torch.where(vals >= 0, idx, torch.full_like(idx, -1))
    return chosen, in_zone.sum(1), (ok & (z > hi)).sum(1)


def _select_by_rank(
    delta: torch.Tensor,
    excluded: torch.Tensor,
    spec: ZoneSpec,
    k: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-query quantile band by rank among the allowed candidates: descending positions
    ``floor((1 - qhigh)(n - 1))`` to ``ceil((1 - qlow)(n - 1))`` (nearest rank, rounded outwards:
    never empty). Only the top of each row is needed, so one ``topk`` replaces a sort, and the
    sample is drawn among those few columns, not the whole pool."""
    n = (~excluded).sum(dim=1, keepdim=True).clamp(min=1)
    hi_pos = torch.floor((1.0 - spec.qhigh) * (n - 1)).long()
    lo_pos = torch.ceil((1.0 - spec.qlow) * (n - 1)).long()
    width = min(delta.shape[1], int(lo_pos.max()) + 1 + k)  # the band + room to fill below
    vals, idx = delta.masked_fill(excluded, float("-inf")).topk(width, dim=1)
    pos = torch.arange(width, device=delta.device).unsqueeze(0)
    valid = torch.isfinite(vals)
    in_band = valid & (pos >= hi_pos) & (pos <= lo_pos)
    below = valid & (pos > lo_pos)
    keys = torch.rand(vals.shape, generator=generator, device=delta.device)
    nearest = 1.0 - pos.float() / width  # below the band: nearest (smallest position) first
    key = torch.where(in_band, keys + 2.0, torch.where(below, nearest, torch.full_like(keys, -1.0)))
    kv, kidx = key.topk(min(k, width), dim=1)
    chosen = torch.where(kv >= 0, idx.gather(1, kidx), torch.full_like(kidx, -1))
    return chosen, in_band.sum(1), (valid & (pos < hi_pos)).sum(1)


def mine_negatives(
    queries: torch.Tensor,
    pool: torch.Tensor,
    targets: torch.Tensor,
    excluded: Sequence[Sequence[int]] | Exclusions,
    k: int,
    spec: ZoneSpec,
    tau: float,
    *,
    dup_threshold: float = 0.0,
    chunk_size: int = 1024,
    generator: torch.Generator | None = None,
) -> MiningResult:
    """Select ``k`` mid-zone negatives for every query.

    Args:
        queries: ``[Q, D]`` weighted queries ``q*``.
        pool: ``[P, Nt, D]`` (or ``[P, D]``) candidate embeddings as indexed.
        targets: ``[Q]`` pool index of each query's target.
        excluded: per query, pool indices that are never negatives (reference, annotated ground
            truths; the target is always excluded), as lists or a prebuilt :class:`Exclusions`.
        k: negatives per query.
        spec: zone definition; ``tau``: the current temperature.
        dup_threshold: exclude candidates whose image similarity to the target is at least this
            (0 disables the guard).
        chunk_size: queries scored at once; memory stays ``O(chunk_size * P * Nt)``.
    """
    t0 = time.perf_counter()
    n_q, n_p = queries.shape[0], pool.shape[0]
    if not isinstance(excluded, Exclusions):
        excluded = Exclusions(excluded)
    if len(excluded) != n_q or targets.shape[0] != n_q:
        raise ValueError("queries, targets and excluded must have the same length")
    if k <= 0:
        raise ValueError("k must be positive")
    pool = pool.float()
    pool_pooled = pooled(pool) if dup_threshold > 0 else None
    out = torch.full((n_q, k), -1, dtype=torch.long)
    zone_sizes = torch.zeros(n_q, dtype=torch.long)
    filled = torch.zeros(n_q, dtype=torch.long)
    dup_excluded = torch.zeros(n_q, dtype=torch.long)
    above = torch.zeros(n_q, dtype=torch.long)
    for start in range(0, n_q, chunk_size):
        end = min(start + chunk_size, n_q)
        q = queries[start:end].float()
        tgt = targets[start:end].long()
        rows = torch.arange(end - start, device=q.device)
        s = similarity(q, pool)  # [C, P]
        delta = s - s[rows, tgt].unsqueeze(1)
        ex = excluded.mask(start, end, n_p, s.device)
        ex[rows, tgt] = True
        if pool_pooled is not None:
            s_img = pool_pooled[tgt] @ pool_pooled.T
            dup = (s_img >= dup_threshold) & ~ex
            dup_excluded[start:end] = dup.sum(1).cpu()
            ex |= dup
        if spec.zone == "quantile":
            chosen, zone_n, above_n = _select_by_rank(delta, ex, spec, k, generator)
        else:
            chosen, zone_n, above_n = _select_by_value(delta, ex, spec, tau, k, generator)
        out[start:end, : chosen.shape[1]] = chosen.cpu()
        zone_sizes[start:end] = zone_n.cpu()
        above[start:end] = above_n.cpu()
        filled[start:end] = (zone_sizes[start:end] < k).long()
    stats = {
        "zone_median": float(zone_sizes.float().median()),
        "zone_p10": float(torch.quantile(zone_sizes.float(), 0.1)),
        "zone_mean": float(zone_sizes.float().mean()),
        "filled_from_below_frac": float(filled.float().mean()),
        "dup_excluded_mean": float(dup_excluded.float().mean()),
        "above_zone_mean": float(above.float().mean()),
        "missing_slots": int((out < 0).sum()),
        "seconds": time.perf_counter() - t0,
    }
    return MiningResult(out, stats)


class TRNSSchedule:
    """When to (re)mine: after ``warmup_epochs`` of L_itc alone, then every ``interval`` epochs
    (``unit="epoch"``) or optimizer steps (``unit="step"``)."""

    def __init__(self, warmup_epochs: int, interval: int, unit: str = "epoch") -> None:
        if unit not in ("epoch", "step"):
            raise ValueError(f"interval unit must be epoch or step, got {unit!r}")
        if interval <= 0 or warmup_epochs < 0:
            raise ValueError("interval must be > 0 and warmup_epochs >= 0")
        self.warmup_epochs = warmup_epochs
        self.interval = interval
        self.unit = unit

    def due(self, epoch: int, global_step: int, steps_per_epoch: int, last_step: int) -> bool:
        """Whether to mine before the step ``global_step`` (0-based) of epoch ``epoch``.

        ``last_step`` is the global step of the last mining (-1 if never)."""
        start = self.warmup_epochs * steps_per_epoch
        if global_step < start:
            return False
        if last_step < 0:
            return True
        if self.unit == "step":
            return global_step - last_step >= self.interval
        at_epoch_start = global_step == epoch * steps_per_epoch
        epochs_since = (global_step - last_step) // max(steps_per_epoch, 1)
        return at_epoch_start and epochs_since >= self.interval
