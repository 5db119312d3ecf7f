"""The demo's rows over several training seeds: seen / unseen mAP@10 and the unseen / seen ratio
("kept") of each row in each demo folder, then their mean and standard deviation.

    .venv/bin/python scripts/demo_seeds.py demo runs/demo-s1 runs/demo-s2 [--rows "lite qformer"]

Each folder is a `dqecir demo --out DIR [--set train.seed=N]` result (its results.json); the
benchmark draw is the same in all of them (the demo builds it with seed 0), so the spread is the
training seed's. ``--rows`` keeps the rows whose name starts with one of the given prefixes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

COLUMNS = [
    ("seen", "map@10"),
    ("unseen", "unseen:map@10"),
    ("new forms", "newforms:map@10"),
    ("new words", "newwords:map@10"),
    ("relevance unseen", "unseen:attr_acc"),
]


def row_values(metrics: dict) -> dict[str, float]:
    out = {name: metrics[key] for name, key in COLUMNS if key in metrics}
    if "seen" in out and "unseen" in out:
        out["kept"] = out["unseen"] / out["seen"]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demos", nargs="+", type=Path)
    ap.add_argument("--rows", nargs="*", default=["lite qformer"])
    a = ap.parse_args(argv)
    per_row: dict[str, list[tuple[str, dict[str, float]]]] = {}
    for d in a.demos:
        path = d / "results.json"
        if not path.is_file():
            raise SystemExit(f"{d}: no results.json (not a finished `dqecir demo --out` folder)")
        for row, metrics in json.loads(path.read_text())["metrics"].items():
            if a.rows and not any(row.startswith(p) for p in a.rows):
                continue
            per_row.setdefault(row, []).append((str(d), row_values(metrics)))
    names = [n for n, _ in COLUMNS] + ["kept"]
    print("| row | run | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for row, runs in per_row.items():
        for run, vals in runs:
            cells = [fmt(vals.get(n), n) for n in names]
            print(f"| {row} | {run} | " + " | ".join(cells) + " |")
        cells = []
        for n in names:
            xs = [v[n] for _, v in runs if n in v]
            if not xs:
                cells.append("–")
                continue
            sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
            cells.append(f"{fmt(statistics.mean(xs), n)} ± {fmt(sd, n)}")
        print(f"| **{row}** | mean ± std of {len(runs)} | " + " | ".join(cells) + " |")


def fmt(x: float | None, name: str) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if name == "kept" else f"{x:.1f}"


if __name__ == "__main__":
    main()
