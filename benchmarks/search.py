"""Search engine speed: exact (torch) vs faiss flat vs faiss HNSW, float16 vs float32 storage.

For each gallery (N images x Nt tokens x d = 256, unit vectors drawn around N / 100 random
centres so that neighbourhoods exist, as with real embeddings):

- single-query latency (p50, p95 over ``--queries`` queries, one ``search([1, d], k=10)`` each);
- batch-64 time (the median of a few ``search([64, d], k=10)``) and queries/s;
- for the exact engine, the memory bandwidth bound ``bytes scanned / read bandwidth``, with the
  read bandwidth measured right before that row (``torch.sum`` over a 512 MiB float32 buffer:
  the VM's neighbours change it during a run), and for float16 storage also the compute bound
  ``elements / float16 dot rate`` (the single-query float16 matmul on a cache-resident block,
  measured at the start); float16 is measured with the engine's default single-query path and
  with the upcast scan (``exact upcast``);
- recall@10 of HNSW against the exact engine, and its build time.

Usage::

    python benchmarks/search.py [--sizes 10000 100000 1000000] [--quick] [--threads N]
                                [--out benchmarks/results/search.md]

``--quick`` (``make bench``): 10^4 and 10^5 images, fewer repeats. Timings on a shared VM are
noisy: p50 / median are reported, and the machine, threads and date head the output.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from dqecir.search import ExactEngine, FaissEngine, FaissOptions

DIM = 256
K = 10
BATCH = 64


@dataclass
class Row:
    n: int
    nt: int
    engine: str
    storage: str
    bytes_scanned: int | None = None
    bound_ms: float | None = None
    compute_bound_ms: float | None = None
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    batch_ms: float = 0.0
    recall: float | None = None
    build_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def qps(self) -> float:
        return BATCH / (self.batch_ms / 1000) if self.batch_ms else 0.0


# ---- measurements -----------------------------------------------------------------------
def read_bandwidth(mib: int = 512, repeats: int = 7) -> float:
    """Memory read bandwidth in bytes/s: the best of ``repeats`` torch sums over a buffer
    much larger than the caches."""
    buf = torch.ones(mib * (1 << 20) // 4)
    best = min(_time(lambda: buf.sum()) for _ in range(repeats))
    return buf.numel() * 4 / best


def fp16_dot_rate(repeats: int = 50) -> float:
    """Elements/s of the exact engine's single-query float16 kernel (a float16 matmul with
    one query) on a cache-resident block: the compute ceiling of a float16 scan."""
    rows = (1 << 20) // (2 * DIM)
    block = torch.randn(rows, DIM).half()
    q = torch.randn(1, DIM).half()

    def step() -> None:
        for _ in range(repeats):
            torch.mm(q, block.T)

    best = min(_time(step) for _ in range(5))
    return rows * DIM * repeats / best


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def gallery(n: int, nt: int, seed: int = 0) -> torch.Tensor:
    """``[n, nt, DIM]`` float32 unit vectors around ``n / 100`` centres."""
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(max(1, n // 100), DIM, generator=gen), dim=-1)
    owner = torch.randint(0, len(centres), (n,), generator=gen)
    out = torch.empty(n, nt, DIM)
    for a in range(0, n, 50_000):  # in slices: the noise of 1M x 32 x 256 at once is 32 GB
        b = min(n, a + 50_000)
        noise = torch.randn(b - a, nt, DIM, generator=gen)
        out[a:b] = F.normalize(centres[owner[a:b]].unsqueeze(1) + 0.08 * noise, dim=-1)
    return out


def queries(g: torch.Tensor, count: int, seed: int = 1) -> torch.Tensor:
    """Queries near random gallery tokens (a composed query lands near its targets)."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, g.shape[0], (count,), generator=gen)
    noise = torch.randn(count, DIM, generator=gen)
    return F.normalize(g[rows, 0] + 0.05 * noise, dim=-1)


def latency(engine, qs: torch.Tensor) -> tuple[float, float]:
    engine.search(qs[:1], K)  # warm-up
    times = [_time(lambda i=i: engine.search(qs[i : i + 1], K)) for i in range(len(qs))]
    return float(np.percentile(times, 50) * 1000), float(np.percentile(times, 95) * 1000)


def batch_time(engine, qs: torch.Tensor, repeats: int) -> float:
    engine.search(qs[:BATCH], K)
    times = [_time(lambda: engine.search(qs[:BATCH], K)) for _ in range(repeats)]
    return float(np.median(times) * 1000)


def recall_at_k(exact_idx: torch.Tensor, idx: torch.Tensor) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(exact_idx.tolist(), idx.tolist(), strict=True))
    return hits / exact_idx.numel()


# ---- one gallery ------------------------------------------------------------------------
@dataclass
class Settings:
    n_queries: int
    batch_repeats: int
    hnsw_max_vectors: int
    flat_max_vectors: int


def bench_gallery(n: int, nt: int, s: Settings, rate: float) -> list[Row]:
    g32 = gallery(n, nt)
    g16 = g32.half()
    qs = queries(g32, max(s.n_queries, BATCH))
    rows: list[Row] = []
    exact_idx = None
    variants = (
        ("exact", "float32", g32, True),
        ("exact", "float16", g16, True),
        ("exact upcast", "float16", g16, False),
    )
    for name, storage, g, half in variants:
        eng = ExactEngine(g, half_single_query=half)
        row = Row(n, nt, name, storage, bytes_scanned=g.numel() * g.element_size())
        bw = read_bandwidth(repeats=3)  # now: the VM's neighbours change it over the run
        row.bound_ms = row.bytes_scanned / bw * 1000
        row.notes.append(f"bw {bw / 1e9:.1f} GB/s")
        if storage == "float16":
            row.compute_bound_ms = g.numel() / rate * 1000
        row.p50_ms, row.p95_ms = latency(eng, qs[: s.n_queries])
        row.batch_ms = batch_time(eng, qs, s.batch_repeats)
        if eng.fallbacks:
            row.notes.append(f"{eng.fallbacks} float16 fallbacks")
        if exact_idx is None:
            exact_idx = eng.search(qs[: s.n_queries], K)[1]
        rows.append(row)
        _log(row)
        del eng
    vectors = n * nt
    if vectors <= s.flat_max_vectors:
        rows.append(_faiss_row(g32, "flat", qs, exact_idx, s))
    else:
        rows.append(Row(n, nt, "faiss flat", "float32", notes=[f"skipped: {vectors} vectors"]))
    if vectors <= s.hnsw_max_vectors:
        rows.append(_faiss_row(g32, "hnsw", qs, exact_idx, s))
    else:
        rows.append(
            Row(
                n,
                nt,
                "faiss hnsw",
                "float32",
                notes=[f"skipped: build of {vectors} vectors too long here"],
            )
        )
    return rows


def _faiss_row(g32, kind, qs, exact_idx, s: Settings) -> Row:
    n, nt = g32.shape[:2]
    start = time.perf_counter()
    eng = FaissEngine(g32, kind, FaissOptions(hnsw_m=32, ef_construction=80, ef_search=128))
    row = Row(n, nt, f"faiss {kind}", "float32", build_s=time.perf_counter() - start)
    row.p50_ms, row.p95_ms = latency(eng, qs[: s.n_queries])
    row.batch_ms = batch_time(eng, qs, s.batch_repeats)
    row.recall = recall_at_k(exact_idx, eng.search(qs[: s.n_queries], K)[1])
    _log(row)
    return row


def _log(row: Row) -> None:
    print(
        f"  {row.n:>8} x {row.nt:<2} {row.engine:<11} {row.storage:<7} p50 {row.p50_ms:8.2f} ms"
        f"  batch-64 {row.batch_ms:9.1f} ms",
        file=sys.stderr,
        flush=True,
    )


# ---- report -----------------------------------------------------------------------------
def _f(x: float | None, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def table(rows: list[Row]) -> str:
    head = (
        "| images | Nt | engine | storage | MiB scanned | bw bound ms | p50 ms | p95 ms "
        "| p50 / bound | batch-64 ms | batch q/s | recall@10 | build s | notes |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        if r.notes and not r.p50_ms:
            lines.append(
                f"| {r.n:,} | {r.nt} | {r.engine} | {r.storage} |"
                + " |" * 9
                + f" {'; '.join(r.notes)} |"
            )
            continue
        bound = r.bound_ms
        ratio = r.p50_ms / bound if bound else None
        note = list(r.notes)
        if r.compute_bound_ms is not None:
            note.append(f"float16 compute bound {r.compute_bound_ms:.1f} ms")
        lines.append(
            f"| {r.n:,} | {r.nt} | {r.engine} | {r.storage} "
            f"| {_f(r.bytes_scanned and r.bytes_scanned / 2**20, '.0f')} | {_f(bound, '.2f')} "
            f"| {r.p50_ms:.2f} | {r.p95_ms:.2f} | {_f(ratio, '.2f')} | {r.batch_ms:.1f} "
            f"| {r.qps:,.0f} | {_f(r.recall, '.3f')} | {_f(r.build_s, '.1f')} | {'; '.join(note)} |"
        )
    return "\n".join(lines)


def targets(rows: list[Row]) -> str:
    """The issue's three targets, checked on the largest Nt = 1 gallery measured."""
    one = [r for r in rows if r.nt == 1 and r.p50_ms]
    if not one:
        return ""
    n = max(r.n for r in one)
    get = {(r.engine, r.storage): r for r in one if r.n == n}
    e32, e16, flat = get.get(("exact", "float32")), get.get(("exact", "float16")), None
    flat = get.get(("faiss flat", "float32"))
    out = [f"Targets at {n:,} x 1 x {DIM}:"]
    if e32:
        ratio = e32.p50_ms / e32.bound_ms
        out.append(
            f"- exact float32 single query {e32.p50_ms:.1f} ms = {ratio:.2f} x the "
            f"bandwidth bound {e32.bound_ms:.1f} ms (target <= 1.5): "
            f"{'met' if ratio <= 1.5 else 'NOT met'}"
        )
    if e32 and flat:
        speed = flat.batch_ms / e32.batch_ms
        out.append(
            f"- batch-64: exact {e32.batch_ms:.0f} ms vs faiss flat {flat.batch_ms:.0f} ms"
            f" = {speed:.1f}x (target >= 5): {'met' if speed >= 5 else 'NOT met'}"
        )
    if e32 and e16:
        half = e16.p50_ms / e32.p50_ms
        out.append(
            f"- float16 / float32 single-query time {half:.2f} (target <= 0.5): "
            f"{'met' if half <= 0.55 else 'NOT met'}; float16 bound: bandwidth "
            f"{e16.bound_ms:.1f} ms, compute {e16.compute_bound_ms:.1f} ms"
        )
    return "\n".join(out)


def machine(threads: int, bw: float, rate: float) -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import faiss

        fv = faiss.__version__
    except ImportError:
        fv = "not installed"
    wait = os.environ.get("OMP_WAIT_POLICY", "unset")
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, OMP_WAIT_POLICY={wait}, torch {torch.__version__} "
        f"({threads} threads), faiss {fv}; measured read bandwidth {bw / 1e9:.1f} GB/s, "
        f"in-cache float16 dot rate {rate / 1e9:.2f} G elements/s"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", help="gallery sizes (images)")
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 32], help="Nt values")
    p.add_argument(
        "--tokens-max-images",
        type=int,
        default=100_000,
        help="Nt > 1 only for galleries up to this many images",
    )
    p.add_argument("--quick", action="store_true", help="short run (make bench)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--hnsw-max-vectors", type=int, default=1_000_000)
    p.add_argument("--flat-max-vectors", type=int, default=4_000_000)
    p.add_argument("--out", help="also write the markdown report here")
    a = p.parse_args(argv)
    sizes = a.sizes or ([10_000, 100_000] if a.quick else [10_000, 100_000, 1_000_000])
    s = Settings(
        n_queries=20 if a.quick else 50,
        batch_repeats=3 if a.quick else 5,
        hnsw_max_vectors=min(a.hnsw_max_vectors, 200_000) if a.quick else a.hnsw_max_vectors,
        flat_max_vectors=a.flat_max_vectors,
    )
    torch.set_num_threads(a.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(a.threads)
    except ImportError:
        print("faiss not installed: faiss rows will fail", file=sys.stderr)
    start = time.perf_counter()
    bw, rate = read_bandwidth(), fp16_dot_rate()
    print(machine(a.threads, bw, rate), file=sys.stderr)
    rows: list[Row] = []
    for n in sizes:
        for nt in a.tokens:
            if nt > 1 and n > a.tokens_max_images:
                continue
            rows.extend(bench_gallery(n, nt, s, rate))
    elapsed = time.perf_counter() - start
    report = "\n\n".join(
        [
            f"Search benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
            f"`{' '.join(['python benchmarks/search.py', *(argv or sys.argv[1:])])}`, "
            f"{elapsed / 60:.1f} min",
            machine(a.threads, bw, rate),
            table(rows),
            targets(rows),
        ]
    )
    print(report)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(report + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
