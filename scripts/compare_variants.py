"""Print a markdown table comparing two variants of a `dqecir ablate` result (ablation.json).

    python scripts/compare_variants.py docs/results/qformer_shapes/ablation.json \
        [--a baseline+mask] [--b full] [--per-seed]

Rows: the headline metrics on seen phrasing, mAP@10 per query kind (every kind the JSON holds),
the headline metrics on the unseen-phrasing copy, mAP@10 of its "new forms only" / "new words
only" halves, then the attribute
relevance accuracy of variant B where it was measured. Every number is read from the JSON: the
README's tables of the qformer ablations are this script's output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dqecir.ablate import metric_kinds

HEADLINE = [("mAP@10", "map@10"), ("Recall@1", "recall@1"), ("Recall@10", "recall@10"),
            ("Recall_subset@1", "recall_subset@1")]  # fmt: skip
HALVES = [("new forms only", "newforms:"), ("new words only", "newwords:")]


def table(result: dict, a: str, b: str, per_seed: bool = False) -> str:
    variants = result.get("variants", {})
    for v in (a, b):
        if v not in variants:
            raise SystemExit(f"variant {v!r} not in the ablation (it has {sorted(variants)})")
    va, vb = variants[a], variants[b]

    def cell(m: dict) -> str:
        s = f"{m['mean']:.1f} ± {m['std']:.1f}"
        if per_seed:
            s += " (" + ", ".join(f"{x:.1f}" for x in m["values"]) + ")"
        return s

    kinds = [kind for kind in metric_kinds(vb) if kind != "heldout"]
    rows = list(HEADLINE)
    rows += [(f"{kind} changes mAP@10", f"{kind}/map@10") for kind in kinds]
    rows += [(f"unseen {name}", f"unseen:{key}") for name, key in HEADLINE]
    rows += [(f"{label} mAP@10", f"{prefix}map@10") for label, prefix in HALVES]
    seeds = ", ".join(str(s) for s in result.get("seeds", []))
    commit = str(result.get("git_commit", "?"))[:7]
    out = [f"Seeds {seeds}, {result.get('split', 'test')} split, commit {commit}; mean ± std"
           + (" (per seed in brackets)" if per_seed else "") + f"; {b} − {a} on the mean:", "",
           f"| metric | {a} | {b} | {b} − {a} |", "|---|---|---|---|"]  # fmt: skip
    for name, key in rows:
        if key not in va or key not in vb:
            continue
        diff = vb[key]["mean"] - va[key]["mean"]
        out.append(f"| {name} | {cell(va[key])} | {cell(vb[key])} | {diff:+.1f} |")
    acc = []
    for label, prefix in (("seen", ""), ("unseen", "unseen:")):
        if f"{prefix}attr_acc" in vb:
            parts = ", ".join(f"{k.split('.', 1)[1]} {vb[k]['mean']:.1f}" for k in sorted(vb)
                              if k.startswith(f"{prefix}attr_acc."))  # fmt: skip
            acc.append(f"{label} {vb[f'{prefix}attr_acc']['mean']:.1f} % ({parts})")
    if acc:
        out += ["", f"Attribute relevance accuracy of {b} (alpha > 0.5 against the attributes the "
                f"text names): {'; '.join(acc)}."]  # fmt: skip
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ablation", type=Path, help="ablation.json written by `dqecir ablate`")
    p.add_argument("--a", default="baseline+mask", help="reference variant")
    p.add_argument("--b", default="full", help="compared variant")
    p.add_argument("--per-seed", action="store_true", help="also print each seed's value")
    args = p.parse_args(argv)
    try:
        result = json.loads(args.ablation.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{args.ablation}: cannot read the ablation result: {e}") from e
    if not isinstance(result, dict) or not isinstance(result.get("variants"), dict):
        raise SystemExit(f"{args.ablation}: not an ablation result (no 'variants' object)")
    print(table(result, args.a, args.b, args.per_seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
