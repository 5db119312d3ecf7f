"""TRNS update cost as a share of an epoch's time on `lite_fmnist`.

    python benchmarks/trns_cost.py [--config configs/lite_fmnist.yaml] [--epochs 3] [--out DIR]

Trains the full method for a few epochs (features cached first, not timed) and reads the run's
log: per TRNS update, the pool embedding, the [queries x pool] scoring + mid-zone selection, and
the total, beside the epoch's wall time (the update happens inside the epoch and is counted in it).
Target: at most 15 % of an epoch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", type=Path, default=Path("configs/lite_fmnist.yaml"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    from dqecir.config import load_config
    from dqecir.train import train

    out = a.out or Path(tempfile.mkdtemp(prefix="trns-cost-"))
    cfg = load_config(a.config, [f"train.epochs={a.epochs}", "trns.enabled=true", *a.set])
    train(cfg, out)
    recs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    trns = {r["epoch"]: r for r in recs if r["event"] == "trns"}
    epochs = [r for r in recs if r["event"] == "epoch"]
    print(
        "| epoch | epoch s | TRNS pool s | TRNS score+select s | TRNS total s | share | zone median |"
    )
    print("|---|---|---|---|---|---|---|")
    shares = []
    for e in epochs:
        t = trns.get(e["epoch"])
        if t is None:
            print(f"| {e['epoch'] + 1} | {e['epoch_seconds']:.1f} | – | – | – | warm-up | – |")
            continue
        share = t["total_seconds"] / e["epoch_seconds"]
        shares.append(share)
        print(f"| {e['epoch'] + 1} | {e['epoch_seconds']:.1f} | {t['pool_seconds']:.2f} | "
              f"{t['seconds']:.2f} | {t['total_seconds']:.2f} | {100 * share:.1f} % | "
              f"{t['zone_median']:.0f} |")  # fmt: skip
    if shares:
        print(
            f"\nmean TRNS share of an epoch: {100 * sum(shares) / len(shares):.1f} % (target <= 15 %)"
        )


if __name__ == "__main__":
    main()
