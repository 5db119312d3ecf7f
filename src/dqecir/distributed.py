"""torch.distributed helpers for training and indexing under ``torchrun``.

Nothing here changes behaviour by itself: a :class:`DistEnv` describes the process (rank,
world size, local rank) and every collective is a no-op when ``world == 1``, so the
single-process code path runs the same statements with identity gathers.

- :func:`init_distributed` joins the process group that ``torchrun`` describes in the
  environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``):
  ``nccl`` for CUDA devices, ``gloo`` on CPU.
- :meth:`DistEnv.gather` concatenates a batch-first tensor over ranks **with gradients**
  (rows may differ in number between ranks): the backward pass sums the gradient of the
  gathered tensor over ranks and hands each rank its own rows, so that with gradients averaged
  over ranks the update equals the one of a single process holding the whole batch (the
  semantics of open_clip's ``gather_with_grad``; our own implementation).
- :meth:`DistEnv.average_gradients` replaces DDP: every trainable gradient is averaged over
  ranks after ``backward`` (a parameter without a gradient on every rank keeps ``None``, as in
  a single process, so AdamW skips it).
- :func:`epoch_batches` / :meth:`DistEnv.share`: the distributed sampler. Every rank draws the
  same permutation (seeded by seed and epoch), cuts it into global batches of
  ``batch_size * world`` and takes its own disjoint slice of each.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dqecir.device import resolve_device

_GRAD_BUCKET = 1 << 24
"""Gradient elements averaged per all-reduce call (64 MiB of float32)."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False
    """Whether :func:`init_distributed` created the process group (and must destroy it)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    # ---- sharding -----------------------------------------------------------------
    def share(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` items (sizes differ by at most one)."""
        return rank_slice(n, self.world, self.rank)

    # ---- collectives (identity / no-op in a single process) --------------------------
    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``x`` from every rank, in rank order, gradients flowing back to each
        rank's own rows. Returned as float32 (gloo reduces no bfloat16)."""
        if not self.active:
            return x
        return _GatherWithGrad.apply(x.float())

    @torch.no_grad()
    def gather_nograd(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``x`` from every rank (any dtype gloo / nccl carry), in rank order."""
        if not self.active:
            return x
        return _gather_rows(x.contiguous())[0]

    @torch.no_grad()
    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of ``x`` over ranks (no gradient)."""
        if not self.active:
            return x
        x = x.detach().clone()
        dist.all_reduce(x)
        return x

    @torch.no_grad()
    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average ``.grad`` over ranks, in buckets; ``None`` stays ``None`` only where every
        rank has none."""
        if not self.active or not params:
            return
        device = params[0].device
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
        live = [p for p, h in zip(params, has.tolist(), strict=True) if h]
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets(live, _GRAD_BUCKET):
            flat = torch.cat([p.grad.reshape(-1).float() for p in bucket])
            dist.all_reduce(flat)
            flat /= self.world
            pos = 0
            for p in bucket:
                n = p.grad.numel()
                p.grad.copy_(flat[pos : pos + n].view_as(p.grad))
                pos += n

    @torch.no_grad()
    def broadcast_parameters(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Copy rank 0's values into every rank's ``params`` (identical start)."""
        if not self.active:
            return
        for p in params:
            dist.broadcast(p.data, src=0)

    def weighted_mean(self, values: dict[str, float], weight: float) -> dict[str, float]:
        """``sum_r weight_r * value_r / sum_r weight_r`` for every key (same keys on every
        rank): the batch mean of per-rank means."""
        if not self.active:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] * weight for k in keys] + [weight], dtype=torch.float64)
        t = t.to(_comm_device())
        dist.all_reduce(t)
        return {k: float(t[i] / t[-1]) for i, k in enumerate(keys)}

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable, small: metrics, flags)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_objects(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the body on rank 0 first, then on the first process of every node, then on the
        rest: work that fills an on-disk cache (one writer at a time) is done once per
        filesystem, shared or node-local, and the others find it done."""
        if not self.active:
            yield
            return
        phase = 0 if self.is_main else (1 if self.local_rank == 0 else 2)
        for p in range(3):
            if p == phase:
                yield
            dist.barrier()


def rank_slice(n: int, world: int, rank: int) -> slice:
    """Contiguous part ``rank`` of ``n`` items split over ``world`` ranks (the first
    ``n % world`` ranks get one more)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def epoch_batches(n: int, batch_size: int, world: int = 1) -> list[tuple[int, int]]:
    """``(start, end)`` of the global batches of one epoch over a permutation of ``n`` items.

    A global batch holds ``batch_size * world`` items (``batch_size`` per rank). The last one
    holds the remainder; under ``world > 1`` a remainder smaller than ``world`` (a rank would
    get nothing) joins the previous batch instead: no item is dropped or repeated. With one
    process this is ``ceil(n / batch_size)`` batches, as always.
    """
    if batch_size < 1 or world < 1:
        raise ValueError("batch_size and world must be >= 1")
    if n < world:
        raise ValueError(f"{n} training queries cannot be shared by {world} processes")
    g = batch_size * world
    bounds = [(s, min(s + g, n)) for s in range(0, n, g)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < world:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


def env_world() -> tuple[int, int, int]:
    """``(rank, world, local_rank)`` from the variables ``torchrun`` sets (0, 1, 0 without)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def init_distributed(device: str | torch.device = "cpu", timeout_s: float = 1800) -> DistEnv:
    """Join the process group ``torchrun`` describes, or return a single-process env.

    ``device`` picks the backend: ``nccl`` for CUDA (and sets this process's CUDA device to
    ``cuda:LOCAL_RANK``), ``gloo`` otherwise. An already initialised group is reused (and left
    for its owner to destroy).
    """
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return DistEnv(dist.get_rank(), dist.get_world_size(), local, owns_group=False)
    rank, world, local = env_world()
    if world <= 1:
        return DistEnv()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    cuda = _is_cuda(device)
    if cuda:
        torch.cuda.set_device(local)
    from datetime import timedelta

    dist.init_process_group(
        backend="nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s)
    )
    return DistEnv(dist.get_rank(), dist.get_world_size(), local, owns_group=True)


def shutdown(env: DistEnv) -> None:
    """Destroy the process group when ``env`` created it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def local_device(name: str | torch.device, env: DistEnv) -> torch.device:
    """``name`` resolved for this process (:func:`~dqecir.device.resolve_device`); a bare
    ``cuda`` under torchrun -> ``cuda:LOCAL_RANK``."""
    dev = resolve_device(name)
    if dev.type == "cuda" and dev.index is None and env.active:
        dev = torch.device("cuda", env.local_rank)
    return dev


def _comm_device() -> torch.device:
    """Where tensors of the process group's collectives must live (nccl: this process's GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _is_cuda(device: str | torch.device) -> bool:
    return resolve_device(device).type == "cuda"


def _buckets(params: Sequence[torch.nn.Parameter], size: int) -> Iterator[list]:
    bucket, n = [], 0
    for p in params:
        bucket.append(p)
        n += p.numel()
        if n >= size:
            yield bucket
            bucket, n = [], 0
    if bucket:
        yield bucket


def _gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """all_gather of batch-first tensors whose first dimension differs between ranks; returns
    the rows in rank order and each rank's row count."""
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    width = max(counts)
    padded = x.new_zeros((width, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]), counts


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out, counts = _gather_rows(x)
        ctx.start = sum(counts[: dist.get_rank()])
        ctx.rows = x.shape[0]
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on every row
        return grad[ctx.start : ctx.start + ctx.rows]
