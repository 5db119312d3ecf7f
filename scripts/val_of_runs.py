"""The val numbers behind a setting chosen on val, read from finished training runs.

    python scripts/val_of_runs.py NAME=RUN_DIR [NAME=RUN_DIR ...] [--jsonl OUT]

For each run (a `dqecir train` / `dqecir ablate` run folder): the epoch with the best val
headline metric (as training chose it), its val mAP@10, Recall@1, Recall_subset@1 and per
query kind mAP@10, and, when the run was scored on a test split (`test_metrics.json`), the test
mAP@10 beside it. Prints a markdown table; ``--jsonl`` also writes one JSON line per run (the
numbers the docs quote), so that they can be committed without the run folders.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

VAL_KEYS = ["map@10", "recall@1", "recall_subset@1"]


def best_epoch(run: Path, headline: str = "map@10") -> dict:
    """The epoch record whose val ``headline`` is highest (the first of equals, as training
    keeps the first best checkpoint)."""
    log = run / "log.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"{run}: no log.jsonl (not a training run folder?)")
    epochs = []
    for n, line in enumerate(log.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{log}:{n}: not JSON ({e.msg})") from None
        if rec.get("event") == "epoch" and headline in rec.get("val", {}):
            epochs.append(rec)
    if not epochs:
        raise ValueError(f"{log}: no epoch with a val {headline!r} (training not finished?)")
    return max(epochs, key=lambda r: (r["val"][headline], -r["epoch"]))


def summarize(name: str, run: Path) -> dict:
    rec = best_epoch(run)
    val = rec["val"]
    kinds = sorted({k.split("/")[0] for k in val if k.endswith("/map@10")})
    row = {"name": name, "best_epoch": rec["epoch"] + 1, "val": {k: val[k] for k in VAL_KEYS}}
    row["val"].update({f"{k}/map@10": val[f"{k}/map@10"] for k in kinds})
    test = run / "test_metrics.json"
    if test.is_file():
        t = json.loads(test.read_text())
        row["test"] = {k: t[k] for k in ("map@10", "unseen:map@10") if k in t}
    return row


def table(rows: list[dict]) -> str:
    kinds = sorted({k for r in rows for k in r["val"] if k.endswith("/map@10")})
    head = ["run", "best epoch", *[f"val {k}" for k in VAL_KEYS], *[f"val {k}" for k in kinds],
            "test map@10", "test unseen map@10"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t = r.get("test", {})
        cells = [r["name"], str(r["best_epoch"])]
        cells += [f"{r['val'].get(k, float('nan')):.1f}" for k in [*VAL_KEYS, *kinds]]
        cells += [f"{t[k]:.1f}" if k in t else "–" for k in ("map@10", "unseen:map@10")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="NAME=RUN_DIR (or RUN_DIR: its folder name)")
    ap.add_argument("--jsonl", type=Path, help="also write one JSON line per run here")
    args = ap.parse_args(argv)
    rows = []
    for spec in args.runs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        run = Path(path)
        try:
            rows.append(summarize(name or run.name, run))
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(table(rows))
    if args.jsonl:
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        args.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
