"""The main job (``make demo``): build fmnist, train ``lite`` with the baseline loss (both fusions),
evaluate on test1 beside the two reference baselines, write ``results.md`` and a PNG grid.

Reference baselines, through the same evaluation:
- ``image-only``: the frozen reference embedding (EfficientNet-Lite0, pooled), no training;
- ``image+text sum``: projections of the frozen image and text features, summed, trained with
  ``L_itc`` (they share no embedding space untrained, so only a learned sum means anything).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dqecir.config import load_config

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


@dataclass
class DemoModel:
    name: str
    overrides: list[str]
    variant: str = "baseline+mask"
    """Which part of the method trains it (see dqecir.ablate.VARIANTS)."""
    init_from: str = ""
    """The row whose best checkpoint this row's training starts from (``train.init_from``);
    empty: from scratch."""


# The qformer is sized for the demo's time budget (docs/method.md, "Backbone sizes").
QFORMER = ["model.backbone_kwargs.fusion=qformer", "model.backbone_kwargs.width=128",
           "model.backbone_kwargs.num_layers=2", "model.backbone_kwargs.num_queries=4",
           "model.backbone_kwargs.image_skip=true"]  # fmt: skip
# Every row reads the same text cache: MiniLM's states below its top 2 layers (bf16), and its
# sentence embedding as shipped, which the frozen reference rows read instead of running those
# layers at every step (text_pooled; benchmarks/pooled_text.py).
TEXT = [
    "model.backbone_kwargs.text_layers=2",
    "train.amp=bf16",
    "model.backbone_kwargs.text_pooled=true",
]
# The language recipe chosen on val-unseen (docs/method.md, "Words people type"): MiniLM's top
# 2 layers trained with the fusion, a fresh train phrasing every epoch, and no dropout in the
# fusion or those layers (docs/method.md, "No dropout in the qformer rows"), nor on the tokens
# (docs/method.md, "The second hint rule, no token dropout").
TRAINED_TEXT = [
    *TEXT,
    "model.backbone_kwargs.token_dropout=0.0",
    "model.backbone_kwargs.dropout=0.0",
    "model.backbone_kwargs.text_dropout=0.0",
]
# Without dropout the L_itc row converges sooner: 8 epochs (docs/method.md, same section).
ITC_EPOCHS = ["train.epochs=8"]
# TRNS's band on the embedded benchmarks, which annotate every valid target: the top 1 % of the
# pool with no upper guard (chosen on the qformer's val, docs/method.md "TRNS settings on the
# qformer"); data that annotates one target per query keeps its config's guarded band.
FULL_BAND = ["trns.qlow=0.99", "trns.qhigh=1.0"]
# The DQE-CIR row continues the L_itc row's best checkpoint (its attribute head starts fresh)
# for 3 epochs, mining TRNS negatives from the start: above the val mAP@10 of 10 epochs of the
# full method from scratch in a quarter of the time (docs/method.md, "The demo's DQE-CIR row"
# and "No dropout in the qformer rows").
CONTINUE = ["train.epochs=3", "trns.warmup_epochs=0"]
# L_attr weighted 1.0 (the config's 0.5 was chosen on the combiner): the relevance holds on new
# words (val-unseen 95.9 % against 93.3 %, two seeds) at no cost in mAP@10 (docs/method.md, "The
# second hint rule, no token dropout, and L_attr's weight").
ATTR_WEIGHT = ["loss.w_attr=1.0"]
# The reference rows keep MiniLM frozen: its top layers are the tower's own, and these pooling
# fusions read the cached sentence embedding instead of running them (text_pooled).
FROZEN_TEXT = [
    *TEXT,
    "model.backbone_kwargs.text_trainable=false",
    "model.backbone_kwargs.token_dropout=0.0",
]
MODELS = [
    DemoModel(
        "image-only (frozen, untrained)",
        ["model.backbone_kwargs.fusion=image_only", "train.epochs=0", *FROZEN_TEXT],
    ),  # fmt: skip
    DemoModel("image+text sum (L_itc)", ["model.backbone_kwargs.fusion=sum", *FROZEN_TEXT]),
    DemoModel(
        "lite combiner, frozen text (L_itc)",
        ["model.backbone_kwargs.fusion=combiner", *FROZEN_TEXT],
    ),
    DemoModel("lite qformer (L_itc)", [*QFORMER, *TRAINED_TEXT, *ITC_EPOCHS]),
    DemoModel(
        "lite qformer, DQE-CIR (full)",
        [*QFORMER, *TRAINED_TEXT, *FULL_BAND, *CONTINUE, *ATTR_WEIGHT],
        "full",
        init_from="lite qformer (L_itc)",
    ),
]


def run_slug(name: str) -> str:
    """The directory under ``OUT/runs`` of the demo row ``name``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# The hint rule of the demo's rows (dqecir.data.hints; docs/method.md, "The third hint rule")
HINT_RULE = 3


def demo_hints(kind: str, config: Path) -> list[str]:
    """Every row of a lite demo reads its texts with the benchmark's WordNet hints for garment /
    object words (dqecir.data.hints; chosen on val-unseen, docs/method.md "WordNet hints") and
    corrects the typos of its queries (dqecir.data.spelling; docs/method.md "Spelling
    correction of queries")."""
    if load_config(config).model.backbone != "lite":
        return []
    return [
        f"model.backbone_kwargs.text_hints={kind}",
        f"model.backbone_kwargs.hint_rule={HINT_RULE}",
        "model.backbone_kwargs.text_spelling=true",
    ]


TABLE_KEYS = ["map@10", "recall@1", "recall@10", "recall@50", "recall_subset@1", "avg"]
KINDS = ["color", "shape", "both"]


def run_demo(
    data: Path,
    out: Path,
    *,
    config: Path | None = None,
    overrides: list[str] | None = None,
    size: str = "default",
    grid_queries: int = 6,
    kind: str = "fmnist",
    jobs: int = 1,
) -> Path:
    """Run the demo; returns the path of ``results.md``.

    ``jobs`` > 1: after the first row (which fills the feature cache for every row), the other
    rows train in ``jobs`` worker processes at once, longest first, each with an equal share of
    the CPU threads (``train.num_threads``); each worker's log goes to
    ``OUT/runs/<row>/demo.log``. The demo's small fusions use a second thread poorly, so two
    lanes of one thread each get more done per second than one lane of two. Results differ from
    ``jobs=1`` only by the floating-point order of another thread count."""
    from dqecir.data.synthetic import make_benchmark

    if jobs < 1:
        raise ValueError(f"demo jobs must be >= 1, got {jobs}")
    for i, m in enumerate(MODELS):  # before anything trains: a row continues an earlier one
        if m.init_from and m.init_from not in [x.name for x in MODELS[:i]]:
            raise ValueError(f"demo row {m.name!r} starts from {m.init_from!r}, not an earlier row")
    t_start = time.perf_counter()
    config = config or CONFIG_DIR / f"lite_{kind}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    bench = data / f"{kind}-{size}"
    if not (bench / "cirr").exists():
        make_benchmark(kind, bench, seed=0, size=size)
    hints = demo_hints(kind, Path(config))
    rows: dict[str, dict[str, float]] = {}
    times: dict[str, float] = {}
    best_ckpt: dict[str, Path] = {}
    base = [f"data.root={bench / 'cirr'}", *hints, *(overrides or [])]
    serial = MODELS if jobs == 1 else MODELS[:1]
    for m in serial:
        log.info("demo: %s", m.name)
        rows[m.name], times[m.name], best_ckpt[m.name] = _run_row(
            Path(config), base, m, out / "runs" / run_slug(m.name), bench, _start(m, best_ckpt)
        )
    if jobs > 1 and len(MODELS) > 1:
        _run_rows_parallel(Path(config), base, MODELS[1:], out, bench, jobs, rows, times,
                           best_ckpt)  # fmt: skip
    rows = {m.name: rows[m.name] for m in MODELS}  # table order, whatever finished first
    results = out / "results.md"
    total = time.perf_counter() - t_start
    results.write_text(
        _markdown(rows, times, size, total, kind, Path(config).name, jobs, hinted=bool(hints))
    )
    (out / "results.json").write_text(json.dumps({"metrics": rows, "seconds": times}, indent=1))
    grid = out / "queries.png"
    draw_grid(best_ckpt[MODELS[-1].name], bench / "cirr", grid, n=grid_queries)
    log.info("demo: wrote %s and %s", results, grid)
    print(results.read_text())
    return results


def _start(m: DemoModel, best_ckpt: dict[str, Path]) -> Path | None:
    """The checkpoint row ``m`` starts from (its ``init_from`` row's best, which has run:
    :func:`run_demo` checks that it is an earlier row), None from scratch."""
    return best_ckpt[m.init_from].resolve() if m.init_from else None


def _run_row(
    config: Path, base: list[str], m: DemoModel, run: Path, bench: Path, start: Path | None = None
) -> tuple[dict[str, float], float, Path]:
    """Train and evaluate one demo row (from the checkpoint ``start`` when given): (test1
    metrics, seconds, best checkpoint)."""
    from dqecir.ablate import variant_overrides
    from dqecir.evaluate import evaluate_checkpoint
    from dqecir.train import train

    t0 = time.perf_counter()
    variant = variant_overrides(load_config(config, base), m.variant)
    init = [f"train.init_from={start}"] if start is not None else []
    cfg = load_config(config, [*base, *variant, *m.overrides, *init])
    ckpt = train(cfg, run)
    metrics, _ = evaluate_checkpoint(ckpt, "cirr", bench / "cirr", "test1", device="auto")
    return metrics, time.perf_counter() - t0, ckpt


def _row_worker(
    config: Path,
    base: list[str],
    m: DemoModel,
    run: Path,
    bench: Path,
    threads: int,
    start: Path | None = None,
) -> tuple[dict[str, float], float, Path]:
    """One row in a worker process: its own thread share, and its log and stderr in
    ``run/demo.log``, so that no bar of several lanes reaches the console (``TQDM_DISABLE``, set
    before the worker starts, turns off the bars that do not set ``disable`` themselves)."""
    import sys

    torch.set_num_threads(threads)
    run.mkdir(parents=True, exist_ok=True)
    if sys.stderr is not sys.__stderr__:  # the previous row's log, in a reused worker
        sys.stderr.close()
    sys.stderr = open(run / "demo.log", "a", buffering=1)  # noqa: SIM115 (until the next row)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return _run_row(config, [*base, f"train.num_threads={threads}"], m, run, bench, start)


def _run_rows_parallel(
    config: Path,
    base: list[str],
    models: list[DemoModel],
    out: Path,
    bench: Path,
    jobs: int,
    rows: dict[str, dict[str, float]],
    times: dict[str, float],
    best_ckpt: dict[str, Path],
) -> None:
    """``models`` in ``jobs`` processes, the most expensive first (later rows of the table are the
    larger models), a row that continues another once that one is done; the feature cache must
    already hold everything they read (the first row fills it: workers never write it at the
    same time)."""
    import multiprocessing as mp
    import os
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // jobs)
    log.info("demo: %d rows in %d processes, %d thread(s) each; logs in %s/runs/<row>/demo.log",
             len(models), jobs, threads, out)  # fmt: skip
    # tqdm reads TQDM_DISABLE when it is imported: the workers inherit it from this environment
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            waiting, running = list(reversed(models)), dict[Future, DemoModel]()
            while waiting or running:
                for m in [m for m in waiting if not m.init_from or m.init_from in best_ckpt]:
                    waiting.remove(m)
                    run = out / "runs" / run_slug(m.name)
                    start = _start(m, best_ckpt)
                    running[pool.submit(_row_worker, config, base, m, run, bench, threads,
                                        start)] = m  # fmt: skip
                # every parent is an earlier row (run_demo checked): one is always running
                assert running, f"demo rows {[m.name for m in waiting]} cannot start"
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    m = running.pop(fut)
                    rows[m.name], times[m.name], best_ckpt[m.name] = fut.result()
                    log.info("demo: %s done (%.0f s, test1 map@10 %.1f)", m.name, times[m.name],
                             rows[m.name].get("map@10", float("nan")))  # fmt: skip
    finally:
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before


PHRASE_KEYS = ["map@10", "recall@10", "recall_subset@1"]
VARIANT_TITLES = {"": "seen", "unseen:": "unseen", "newforms:": "new forms only",
                  "newwords:": "new words only"}  # fmt: skip


def _f(m: dict[str, float], k: str) -> str:
    v = m.get(k)
    return "–" if v is None else f"{v:.1f}"


def _kept(m: dict[str, float], prefix: str, k: str) -> str:
    seen, other = m.get(k), m.get(prefix + k)
    return "–" if not seen or other is None else f"{other / seen:.2f}"


def _markdown(
    rows: dict[str, dict[str, float]],
    times: dict[str, float],
    size: str,
    total: float,
    kind: str,
    config: str,
    jobs: int = 1,
    hinted: bool = False,
) -> str:
    lines = [
        f"# Demo results: {kind} test1 (reference removed)",
        "",
        f"Benchmark `{kind}` ({size} size, seed 0). Models trained on its train split (train "
        "phrasing only) with the baseline loss (L_itc with the in-batch ground-truth mask) unless "
        "the row says DQE-CIR (full method: attribute subspaces + TRNS), best epoch on val (seen "
        "phrasing), scored on test1 (reference removed) as written (seen phrasing) and with the "
        "same queries in held-out phrasing: unseen (new sentence forms and new words), new forms "
        "only, new words only. The qformer rows train MiniLM's top 2 layers with the fusion "
        "(no dropout); the reference rows keep it frozen. "
        + (
            f"Every row reads garment / object words with their WordNet hints (rule {HINT_RULE}), "
            "and its queries with their typos corrected (training captions as written). "
            if hinted
            else ""
        )
        + "".join(
            f"`{m.name}` starts from the best checkpoint of `{m.init_from}` (its s is its own "
            "training and evaluation). "
            for m in MODELS
            if m.init_from and m.name in rows
        )
        + "Produced by `make demo` "
        f"(configs/{config} with the overrides in dqecir/demo.py).",
        "",
        "| model | " + " | ".join(TABLE_KEYS) + " | s |",
        "|---|" + "---|" * (len(TABLE_KEYS) + 1),
    ]
    for name, m in rows.items():
        cells = [_f(m, k) for k in TABLE_KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {times[name]:.0f} |")
    lines += [
        "",
        "Seen and held-out phrasing (mAP@10 / R@10 / Rs@1; kept = unseen / seen mAP@10):",
        "",
    ]
    heads = [VARIANT_TITLES[p] for p in VARIANT_TITLES]
    lines.append("| model | " + " | ".join(heads) + " | kept (unseen) | kept (new forms) | "
                 "kept (new words) |")  # fmt: skip
    lines.append("|---|" + "---|" * (len(heads) + 3))
    for name, m in rows.items():
        cells = [" / ".join(_f(m, p + k) for k in PHRASE_KEYS) for p in VARIANT_TITLES]
        kept = [_kept(m, p, "map@10") for p in ("unseen:", "newforms:", "newwords:")]
        lines.append(f"| {name} | " + " | ".join(cells + kept) + " |")
    lines += ["", "Per query kind, seen / unseen phrasing (mAP@10):", ""]
    lines.append("| model | " + " | ".join(KINDS) + " | held-out combinations |")
    lines.append("|---|" + "---|" * (len(KINDS) + 1))
    for name, m in rows.items():
        cells = [
            f"{_f(m, f'{k}/map@10')} / {_f(m, f'unseen:{k}/map@10')}" for k in [*KINDS, "heldout"]
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    acc = {n: m for n, m in rows.items() if "attr_acc" in m}
    if acc:
        lines += ["", "Attribute relevance accuracy (alpha > 0.5 vs the attributes the text names), "
                  "seen / unseen:", ""]  # fmt: skip
        lines += ["| model | color | shape | both attributes |", "|---|---|---|---|"]
        for name, m in acc.items():
            cells = [f"{_f(m, k)} / {_f(m, 'unseen:' + k)}"
                     for k in ("attr_acc.color", "attr_acc.shape", "attr_acc")]  # fmt: skip
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lanes = "" if jobs == 1 else (f" (rows after the first in {jobs} processes at once: a row's "
                                  "s is its own wall time, sharing the CPU)")  # fmt: skip
    lines += ["", f"Total wall time of the demo's training and evaluation: {total:.0f} s{lanes}.",
              ""]  # fmt: skip
    return "\n".join(lines)


def draw_grid(checkpoint: Path, root: Path, out: Path, n: int = 6, k: int = 5) -> None:
    """A PNG: per row a reference, its text, the top-``k`` results (target framed green, other
    valid targets framed blue)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dqecir.data.formats import load_benchmark
    from dqecir.data.images import load_image
    from dqecir.data.pipeline import build_features
    from dqecir.evaluate import rank_split
    from dqecir.models.cir import load_model

    dev = torch.device("cpu")
    model, _ = load_model(checkpoint, dev)
    split = load_benchmark("cirr", root, "test1")[0]
    kinds_seen: dict[str, int] = {}
    picked = []
    for q in split.queries:  # a few of each kind, deterministic
        if kinds_seen.get(q.kind or "", 0) < max(1, n // 3):
            picked.append(q)
            kinds_seen[q.kind or ""] = kinds_seen.get(q.kind or "", 0) + 1
        if len(picked) >= n:
            break
    sub = type(split)(split.benchmark, split.split, picked, split.gallery, split.image_paths)
    table = build_features(model.backbone, [sub], train=False,
                           cache_dir=root / ".dqecir-cache", device=dev)  # fmt: skip
    r = rank_split(model, sub, table, dev, topk=k)
    fig, axes = plt.subplots(len(picked), k + 1, figsize=(1.6 * (k + 1), 1.9 * len(picked)))
    for row, q in enumerate(picked):
        ax = axes[row][0]
        ax.imshow(load_image(split.image_paths[q.reference]))
        ax.set_title(f"[{q.kind}] {q.texts[0]}", fontsize=6, loc="left", wrap=True)
        ax.set_ylabel("reference", fontsize=6)
        for col, gid in enumerate(r.rankings[q.qid], start=1):
            a = axes[row][col]
            a.imshow(load_image(split.image_paths[gid]))
            color = "green" if gid == q.target else ("royalblue" if gid in q.gt else None)
            if color:
                for s in a.spines.values():
                    s.set_edgecolor(color)
                    s.set_linewidth(3)
            a.set_title(f"#{col}" + (" target" if gid == q.target else (" valid" if color else "")),
                        fontsize=6)  # fmt: skip
        for a in axes[row]:
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
