"""TRNS mining for one training run: embed the pool (every training image) with the current
model, embed each training query, draw its negatives (:func:`dqecir.sampling.mine_negatives`,
pure tensor code). The Trainer decides when (:class:`dqecir.sampling.TRNSSchedule`) and keeps
the negative sets in its checkpoints."""

from __future__ import annotations

import time
from typing import Any

import torch

from dqecir.config import TRNSConfig
from dqecir.data.pipeline import SplitFeatures, TrainQueries
from dqecir.distributed import DistEnv
from dqecir.models.cir import CIRModel, embed_gallery
from dqecir.sampling import Exclusions, ZoneSpec, mine_negatives


class NegativeMiner:
    """TRNS mining for one run: embeds the pool (every training image) with the current model,
    embeds each training query, and draws its negatives (:func:`~dqecir.sampling.mine_negatives`).
    Under torchrun each process embeds its share of the pool and mines its share of the
    queries; every process ends with every query's negatives."""

    def __init__(
        self, table: SplitFeatures, queries: TrainQueries, cfg: TRNSConfig, batch_size: int,
        device: torch.device, dist: DistEnv,
    ) -> None:  # fmt: skip
        self.table, self.queries, self.cfg = table, queries, cfg
        self.batch_size, self.device, self.dist = batch_size, device, dist
        self.zone = ZoneSpec(cfg.zone, cfg.zlow, cfg.zhigh, cfg.low, cfg.high, cfg.qlow, cfg.qhigh)
        qz = queries
        self.rows = dist.share(len(qz))  # the queries this process mines
        # never negatives (reference + annotated ground truths), built once
        never = [sorted(set(g) | {r}) for g, r in zip(qz.gts, qz.reference.tolist(), strict=True)]
        self.excluded = Exclusions(never[self.rows])

    @torch.no_grad()
    def mine(
        self, model: CIRModel, tau: float, seed: int, amp: torch.dtype | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``[Q, K]`` negatives of every query (-1 where none) and the mining statistics.

        ``amp``: the training autocast dtype (``train.amp``), under which the pool and the
        queries are embedded as the steps see them (at bf16 on a CPU in about two thirds of the
        time, benchmarks/train_step.py); the scores that pick the negatives are float32."""
        t0 = time.perf_counter()
        model.eval()
        d, mine, bs, qz = self.dist, self.rows, self.batch_size, self.queries
        images = self.table.images  # on the CPU; batches move to the device
        pool_rows = images if not d.active else _Rows(images, d.share(len(images)))
        cast = torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None)
        with cast:
            pool = embed_gallery(model, pool_rows, self.device, bs).float()
        pool = d.gather_nograd(pool)  # all of it
        t_pool = time.perf_counter() - t0
        qs = []
        for i in range(mine.start, mine.stop, bs):
            sl = slice(i, min(i + bs, mine.stop))
            tf = {k: v.to(self.device) for k, v in self.table.text_batch(qz.text[sl, 0]).items()}
            ref = images[qz.reference[sl]].to(self.device, non_blocking=True).float()
            with cast:
                qs.append(model.query(ref, tf)["q_star"].float())
        gen = torch.Generator(device=self.device).manual_seed(seed + 7919 * d.rank)
        res = mine_negatives(
            torch.cat(qs), pool, qz.target[mine].to(self.device), self.excluded, self.cfg.k,
            self.zone, tau, dup_threshold=self.cfg.dup_threshold, chunk_size=self.cfg.chunk_size,
            generator=gen,
        )  # fmt: skip
        negatives = d.gather_nograd(res.negatives.to(self.device)).cpu()  # all queries
        stats = dict(res.stats)
        if d.active:
            stats = _merge_mining_stats(d.all_gather_objects((mine.stop - mine.start, stats)))
        stats["pool_seconds"] = t_pool
        stats["total_seconds"] = time.perf_counter() - t0
        return negatives, stats


class _Rows:
    """Rows ``[start, stop)`` of a feature table (tensor or memory-mapped rows), sliced
    lazily: what :func:`~dqecir.models.cir.embed_gallery` needs of this process's share of
    the pool."""

    def __init__(self, rows: Any, part: slice) -> None:
        self.rows, self.part = rows, part

    def __len__(self) -> int:
        return self.part.stop - self.part.start

    def __getitem__(self, s: slice) -> torch.Tensor:
        start, stop, _ = s.indices(len(self))
        return self.rows[self.part.start + start : self.part.start + stop]


def _merge_mining_stats(parts: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """One record from every process's TRNS statistics: query-weighted means (of medians and
    quantiles too: an approximation), slot counts summed, times the slowest process's."""
    total = sum(n for n, _ in parts) or 1
    out: dict[str, float] = {}
    for key in parts[0][1]:
        vals = [(n, st[key]) for n, st in parts]
        if key == "missing_slots":
            out[key] = sum(v for _, v in vals)
        elif key.endswith("seconds"):
            out[key] = max(v for _, v in vals)
        else:
            out[key] = sum(n * v for n, v in vals) / total
    out["processes"] = len(parts)
    return out
