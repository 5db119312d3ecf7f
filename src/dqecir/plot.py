"""``dqecir plot``: look at runs. Every logged loss term, the TRNS zone statistics and the
validation metrics against epoch, several runs overlaid, in one PNG (matplotlib, Agg).

Reads each run's ``log.jsonl`` (see :mod:`dqecir.train`): ``step`` records (loss terms, lr,
tau) are placed at ``step / steps_per_epoch``, ``trns`` records (statistics of each mining
round) likewise, ``epoch`` records' ``val`` metrics at the epoch they close. Runs whose names
differ only by a ``-seedN`` suffix (an ablation's) share a colour and one legend entry.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from dqecir.errors import DataError

log = logging.getLogger(__name__)

LOG = "log.jsonl"
STEP_EXTRA = ("lr", "tau")
"""Step fields drawn after the loss terms (schedule, not loss)."""
NOT_PLOTTED = {"epoch", "step", "samples_per_s", "event"}
TRNS_SKIPPED = ("tau", "seconds", "pool_seconds")
"""TRNS record fields not drawn: the temperature (drawn with the steps) and the partial
timings (``total_seconds`` is drawn)."""
_SEED = re.compile(r"-seed\d+$")


@dataclass(frozen=True)
class Plotted:
    """What :func:`plot_runs` drew."""

    path: Path
    runs: list[str]
    panels: list[str]
    """Panel titles, in order (``train: <term>``, ``TRNS: <statistic>``, ``val: <metric>``)."""


@dataclass
class Run:
    """The records of one run's log, as (x, value) series per field."""

    name: str
    path: Path
    steps: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    trns: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    val: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def group(self) -> str:
        return _SEED.sub("", self.name)


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders: each path is a run (holds log.jsonl) or a folder of runs (its immediate
    subfolders that hold one, e.g. an ablation's ``runs/``)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / LOG).is_file():
            found.append(p)
            continue
        if not p.is_dir():
            raise DataError("no such run folder", file=p)
        inner = sorted(d for d in p.iterdir() if (d / LOG).is_file())
        if not inner:
            raise DataError(f"no {LOG} here nor in its subfolders: not a run folder", file=p)
        found.extend(inner)
    return found


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def read_run(path: Path, name: str | None = None) -> Run:
    """Parse ``path/log.jsonl``. A line cut short (a killed run) or a record that is not an
    object is skipped with a warning naming file and line; non-numeric values are left out."""
    file = path / LOG
    lines = file.read_text(encoding="utf-8").splitlines()
    records = []
    for i, line in enumerate(lines, start=1):
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            log.warning("%s line %d: not a JSON record, skipped", file, i)
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("event"), str):
            log.warning("%s line %d: not a log record, skipped", file, i)
            continue
        records.append(rec)
    ends = [r["step"] for r in records if r["event"] == "epoch" and _number(r.get("step"))]
    per_epoch = float(ends[0]) if ends and ends[0] > 0 else None
    run = Run(name or path.name, path)
    for rec in records:
        kind = rec["event"]
        if kind in ("step", "trns"):
            step = _number(rec.get("step"))
            if step is None:
                continue
            x = step / per_epoch if per_epoch else float(rec.get("epoch", 0)) + 1.0
            target = run.steps if kind == "step" else run.trns
            for key, value in rec.items():
                v = _number(value)
                if key not in NOT_PLOTTED and v is not None:
                    target.setdefault(key, []).append((x, v))
        elif kind == "epoch" and isinstance(rec.get("val"), dict):
            x = float(rec.get("epoch", 0)) + 1.0
            for key, value in rec["val"].items():
                v = _number(value)
                if v is not None:
                    run.val.setdefault(key, []).append((x, v))
    if not (run.steps or run.val):
        raise DataError("the log holds no step or epoch records", file=file)
    return run


def _names(paths: list[Path]) -> list[str]:
    """Folder names, with the parent's prepended where two runs share a name."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" for p in paths]


def _wanted(metric: str, patterns: list[str] | None) -> bool:
    if patterns is None:
        return "/" not in metric and metric != "num_queries"
    return any(fnmatch(metric, p) for p in patterns)


def _panels(runs: list[Run], metrics: list[str] | None) -> list[tuple[str, str, str]]:
    """(section, field, title) of every panel, in order: loss terms, lr / tau, TRNS
    statistics and time per mining round, validation metrics (see :func:`plot_runs`)."""

    def keys(attr: str) -> list[str]:
        return list(dict.fromkeys(k for r in runs for k in getattr(r, attr)))

    step_keys = keys("steps")
    losses = [k for k in step_keys if k not in STEP_EXTRA]
    losses.sort(key=lambda k: (k != "loss", step_keys.index(k)))
    panels = [("steps", k, f"train: {k}") for k in losses]
    panels += [("steps", k, f"train: {k}") for k in STEP_EXTRA if k in step_keys]
    trns = [k for k in keys("trns") if k not in TRNS_SKIPPED]
    panels += [("trns", k, f"TRNS: {k}") for k in trns]
    val = [k for k in keys("val") if _wanted(k, metrics)]
    panels += [("val", k, f"val: {k}") for k in val]
    return panels


def plot_runs(
    paths: list[str | Path],
    out: str | Path,
    *,
    metrics: list[str] | None = None,
    columns: int = 4,
) -> Plotted:
    """Draw the runs in ``paths`` (see :func:`find_runs`) into the PNG ``out``.

    Args:
        metrics: glob patterns of the validation metrics to draw (default: the overall ones,
            those without a ``/``, except ``num_queries``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folders = find_runs(paths)
    runs = [read_run(p, n) for p, n in zip(folders, _names(folders), strict=True)]
    panels = _panels(runs, metrics)
    if not panels:
        raise DataError("nothing to plot: the logs hold no numeric field", file=folders[0])
    groups = list(dict.fromkeys(r.group for r in runs))
    palette = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    color = {g: palette(i % palette.N) for i, g in enumerate(groups)}
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.9 * rows), squeeze=False)
    for ax, (section, key, title) in zip(axes.flat, panels, strict=False):
        for run in runs:
            series = getattr(run, section).get(key)
            if not series:
                continue
            xs, ys = zip(*series, strict=True)
            style = "o-" if section != "steps" else "-"
            ax.plot(xs, ys, style, color=color[run.group], lw=1.2, ms=3, alpha=0.85)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=color[g], lw=2) for g in groups]
    labels = [g + (f" ({sum(r.group == g for r in runs)} seeds)" if
                   sum(r.group == g for r in runs) > 1 else "") for g in groups]  # fmt: skip
    fig.legend(handles, labels, loc="upper center", ncol=min(len(groups), 5), fontsize=9,
               frameon=False)  # fmt: skip
    top = 1 - 0.45 / (2.9 * rows) * math.ceil(len(groups) / 5)
    fig.tight_layout(rect=(0, 0, 1, top))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    log.info("plotted %d runs, %d panels into %s", len(runs), len(panels), out)
    return Plotted(out, [r.name for r in runs], [title for _, _, title in panels])
