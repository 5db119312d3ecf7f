"""What the DQE-CIR terms do during a run, read from its log.jsonl (issue: "find out why").

    python scripts/trns_diagnostics.py RUN_DIR [RUN_DIR ...]

Per epoch: its seconds, the TRNS update's zone sizes (median and 10th percentile of the
mid-zone each query draws its negatives from), the mean number of pool images above the zone
(``above``), the empty negative slots, the epoch means of the share of active L_rank hinges
(``rank_active``: negatives within the margin of the target), L_kl, L_rank, L_itc, the value
term, and the in-batch mask's share (other annotated ground truths hidden from L_itc among the
batch's off-diagonal pairs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(run: Path) -> list[str]:
    recs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    trns = {r["epoch"]: r for r in recs if r["event"] == "trns"}
    out = []
    for e in (r for r in recs if r["event"] == "epoch"):
        t, m = trns.get(e["epoch"], {}), e.get("train", {})

        def f(d: dict, k: str, scale: float = 1.0, fmt: str = ".2f") -> str:
            return format(d[k] * scale, fmt) if k in d else "–"

        out.append(
            f"| {e['epoch'] + 1} | {e['epoch_seconds']:.0f} | {f(t, 'zone_median', fmt='.0f')} | "
            f"{f(t, 'zone_p10', fmt='.0f')} | {f(t, 'above_zone_mean', fmt='.1f')} | "
            f"{f(t, 'missing_slots', fmt='.0f')} | {f(m, 'rank_active', 100, '.1f')} | "
            f"{f(m, 'kl')} | {f(m, 'rank', fmt='.3f')} | {f(m, 'itc')} | {f(m, 'attr_value')} | "
            f"{f(m, 'mask_share', 100, '.2f')} | {f(e.get('val', {}), 'map@10', fmt='.1f')} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+", type=Path)
    for run in ap.parse_args().runs:
        print(f"\n{run}\n")
        print("| epoch | s | zone median | zone p10 | above | empty slots | rank active % | L_kl "
              "| L_rank | L_itc | value | mask share % | val mAP@10 |")  # fmt: skip
        print("|---" * 13 + "|")
        print("\n".join(rows(run)))


if __name__ == "__main__":
    main()
