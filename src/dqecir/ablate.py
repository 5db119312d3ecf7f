"""``dqecir ablate``: baseline | baseline+mask | +AW | +TRNS | full, same backbone, data, steps and seeds.

The config file describes the full method; the variants switch its parts off:

- ``baseline``: ``L_itc`` only, SPRC-style: the annotated target is the only positive, every other
  in-batch target a negative (no attribute weights, no TRNS, ``L_kl = L_rank = L_attr = 0``);
- ``baseline+mask``: the same, but another query's target that is an annotated ground truth of
  this query is not used as its negative (``loss.mask_batch_gt``, the "never negatives" rule of
  TRNS applied in-batch; part of the method, shown apart so its share of the gain is visible);
- ``+AW``: attribute weights and ``L_attr``;
- ``+TRNS``: TRNS negatives with ``L_kl`` and ``L_rank``;
- ``full``: both.

Each (variant, seed) is trained on the train split (best epoch by the val headline metric) and
scored on the test split, in every phrasing the benchmark holds (the embedded benchmarks: seen,
unseen, new forms only, new words only; keys of the others prefixed ``<phrasing>:``). Outputs: ``ablation.json`` (variant -> metric -> mean, std, per-seed
values, with the git commit and the config), ``ablation.md`` (tables) and ``ablation.png``.
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dqecir.config import Config, ConfigError, load_config, training_differences
from dqecir.files import write_json_atomic

log = logging.getLogger(__name__)

VARIANTS = ["baseline", "baseline+mask", "+AW", "+TRNS", "full"]
TABLE_METRICS = ["map@5", "map@10", "map@25", "map@50", "recall@1", "recall@5", "recall@10",
                 "recall@50", "recall_subset@1", "recall_subset@2", "avg"]  # fmt: skip


def variant_overrides(cfg: Config, variant: str) -> list[str]:
    """Overrides that turn the full config into ``variant``: a part that the variant keeps runs
    with the config's own settings; a part it drops is switched off."""
    aw = cfg.model.attribute_weights
    if aw == "none" and variant in ("+AW", "full"):
        raise ValueError("the config describes no attribute weights (model.attribute_weights)")
    w_attr, w_kl, w_rank = cfg.loss.w_attr, cfg.loss.w_kl, cfg.loss.w_rank
    off_aw = ["model.attribute_weights=none", "loss.w_attr=0.0"]
    on_aw = [f"model.attribute_weights={aw}", f"loss.w_attr={w_attr}"]
    off_trns = ["trns.enabled=false", "loss.w_kl=0.0", "loss.w_rank=0.0"]
    on_trns = ["trns.enabled=true", f"loss.w_kl={w_kl}", f"loss.w_rank={w_rank}"]
    mask = [f"loss.mask_batch_gt={str(cfg.loss.mask_batch_gt).lower()}"]
    table = {
        "baseline": off_aw + off_trns + ["loss.mask_batch_gt=false"],
        "baseline+mask": off_aw + off_trns + ["loss.mask_batch_gt=true"],
        "+AW": on_aw + off_trns + mask,
        "+TRNS": off_aw + on_trns + mask,
        "full": on_aw + on_trns + mask,
    }
    if variant not in table:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    return table[variant]


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).parent,
        )  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, cwd=Path(__file__).parent,
        ).stdout.strip()  # fmt: skip
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def summarize(per_seed: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """variant -> metric -> {mean, std, values}."""
    out: dict[str, dict[str, Any]] = {}
    for variant, runs in per_seed.items():
        keys = sorted(set().union(*[r.keys() for r in runs])) if runs else []
        out[variant] = {}
        for k in keys:
            vals = [float(r[k]) for r in runs if k in r]
            out[variant][k] = {
                "mean": statistics.fmean(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "values": vals,
            }
    return out


PHRASING_TITLES = {
    "unseen": "Unseen phrasing (held-out sentence forms and words)",
    "newforms": "New sentence forms only (train words)",
    "newwords": "New words only (train sentence forms)",
}


def metric_kinds(metrics: dict[str, float]) -> list[str]:
    """Query kinds (and ``heldout``) among the seen-phrasing metric keys (``color/map@10``)."""
    return sorted({k.split("/")[0] for k in metrics if "/" in k and ":" not in k})


def markdown(summary: dict[str, dict[str, Any]], title: str, kinds: Sequence[str]) -> str:
    def cell(v: str, k: str) -> str:
        s = summary[v].get(k)
        return "–" if s is None else f"{s['mean']:.1f} ± {s['std']:.1f}"

    variants = list(summary)
    lines = [f"# {title}", "", "Overall, seen phrasing (mean ± std over seeds):", ""]
    lines.append("| metric | " + " | ".join(variants) + " |")
    lines.append("|---|" + "---|" * len(variants))
    for k in TABLE_METRICS + ["attr_acc"]:
        if any(k in summary[v] for v in variants):
            lines.append(f"| {k} | " + " | ".join(cell(v, k) for v in variants) + " |")
    for phrasing, head in PHRASING_TITLES.items():
        keys = [f"{phrasing}:{k}" for k in TABLE_METRICS + ["attr_acc"]]
        keys += [f"{phrasing}:{kind}/map@10" for kind in kinds]
        keys = [k for k in keys if any(k in summary[v] for v in variants)]
        if not keys:
            continue
        lines += ["", f"{head}:", ""]
        lines.append("| metric | " + " | ".join(variants) + " |")
        lines.append("|---|" + "---|" * len(variants))
        for k in keys:
            lines.append(
                f"| {k.split(':', 1)[1]} | " + " | ".join(cell(v, k) for v in variants) + " |"
            )
    for kind in kinds:
        head = "Held-out attribute combinations" if kind == "heldout" else f"Query kind `{kind}`"
        lines += ["", f"{head}:", ""]
        lines.append("| metric | " + " | ".join(variants) + " |")
        lines.append("|---|" + "---|" * len(variants))
        for k in TABLE_METRICS:
            key = f"{kind}/{k}"
            if any(key in summary[v] for v in variants):
                lines.append(f"| {k} | " + " | ".join(cell(v, key) for v in variants) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, dict[str, Any]], path: Path, metrics: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    variants = list(summary)
    metrics = [m for m in metrics if all(m in summary[v] for v in variants)]
    x = np.arange(len(metrics))
    w = 0.8 / max(1, len(variants))
    fig, ax = plt.subplots(figsize=(1.3 * len(metrics) + 2, 3.6))
    for i, v in enumerate(variants):
        means = [summary[v][m]["mean"] for m in metrics]
        stds = [summary[v][m]["std"] for m in metrics]
        ax.bar(x + i * w - 0.4 + w / 2, means, w, yerr=stds, capsize=3, label=v)
    ax.set_xticks(x, metrics, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_dir(out: Path, variant: str, seed: int) -> Path:
    """Where an ablation in ``out`` keeps its run of ``variant`` and ``seed``."""
    return out / "runs" / f"{variant.replace('+', 'plus-')}-seed{seed}"


def train_seconds(run: Path) -> float:
    """A run's training time: the sum of its logged ``epoch_seconds`` (steps and TRNS mining,
    not validation), read from ``log.jsonl``, so that a run read back counts like one trained."""
    total = 0.0
    log_file = run / "log.jsonl"
    if log_file.is_file():
        for line in log_file.read_text().splitlines():
            rec = json.loads(line) if line.strip() else {}
            if rec.get("event") == "epoch":
                total += float(rec.get("epoch_seconds", 0.0))
    return total


def check_finished_run(run: Path, cfg: Config, what: str) -> None:
    """A finished run is read back only if its saved config trains what this ablation would."""
    saved = run / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"{run}: a finished run without its config.yaml; remove it or use "
                          "another --out")  # fmt: skip
    diff = training_differences(cfg, load_config(saved))
    if diff:
        raise ConfigError(
            f"{run}: this finished run was trained with another config than the ablation's "
            f"{what} (differs in {', '.join(diff)}); use another --out or remove the run"
        )


def run_ablation(
    config: Path,
    seeds: Sequence[int],
    out: Path,
    *,
    overrides: Sequence[str] = (),
    variants: Sequence[str] = VARIANTS,
    split: str | None = None,
) -> dict[str, Any]:
    from dqecir.evaluate import evaluate_checkpoint
    from dqecir.train import resolve_headline, train

    out.mkdir(parents=True, exist_ok=True)
    base = resolve_headline(load_config(config, list(overrides)))
    test_split = split or base.data.test_split
    per_seed: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    for seed in seeds:
        for v in variants:
            run = run_dir(out, v, seed)
            cfg = load_config(
                config, [*overrides, *variant_overrides(base, v), f"train.seed={seed}"]
            )
            done = run / "test_metrics.json"
            if done.exists():  # resume an interrupted ablation without redoing finished runs
                check_finished_run(run, cfg, f"{v} seed {seed}")
                metrics = json.loads(done.read_text())
            else:
                ckpt = train(cfg, run)
                metrics, _ = evaluate_checkpoint(
                    ckpt, cfg.data.benchmark, Path(cfg.data.root), test_split,
                    device=cfg.train.device, cache_dir=Path(cfg.data.cache_dir) if cfg.data.cache_dir else None,
                )  # fmt: skip
                write_json_atomic(done, metrics)  # whole or absent: it marks the run done
            seconds[v].append(train_seconds(run))
            per_seed[v].append(metrics)
            log.info("ablation %s seed %d: %s=%.2f", v, seed, base.eval.headline,
                     metrics.get(base.eval.headline, float("nan")))  # fmt: skip
    summary = summarize(per_seed)
    kinds = metric_kinds(per_seed[variants[0]][0]) if per_seed[variants[0]] else []
    result = {
        "config": base.to_dict(),
        "config_file": str(config),
        "overrides": list(overrides),
        "seeds": list(seeds),
        "split": test_split,
        "git_commit": git_commit(),
        "seconds_per_run": {v: statistics.fmean(s) for v, s in seconds.items() if s},
        "variants": summary,
    }
    (out / "ablation.json").write_text(json.dumps(result, indent=1))
    title = f"Ablation: {base.name}, {test_split} split, seeds {list(seeds)}"
    (out / "ablation.md").write_text(markdown(summary, title, kinds))
    plot(summary, out / "ablation.png", ["map@10", "recall@1", "recall@10", "recall_subset@1"]
         + [f"{k}/map@10" for k in kinds] + ["unseen:map@10", "unseen:recall_subset@1"])  # fmt: skip
    return result
