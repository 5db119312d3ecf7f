"""What a hint rule changes at query time alone: the same trained checkpoints scored with their
texts read under two hint rules (dqecir.data.hints), on the val splits of each phrasing.

    .venv/bin/python scripts/compare_hint_rules.py CHECKPOINT [CHECKPOINT ...]
        [--root data/fmnist-default] [--rules 2 3] [--splits val val-unseen val-newwords]

A paired measurement: nothing is retrained, so the difference is what the new rule's hints on
held-out words do for a model that learnt to read hints under the old rule (the hints of the
words both rules hint are the same). Prints mAP@10 per rule and split and the difference, one
line per checkpoint. Choose on val splits only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from relevance_errors import rank_benchmark_split

from dqecir.data.hints import HINT_RULES, load_hints
from dqecir.metrics import map_at_k
from dqecir.models.cir import load_model


def split_map(model: torch.nn.Module, root: Path, split_name: str) -> float:
    split, ranking = rank_benchmark_split(model, root, split_name, torch.device("cpu"))
    rankings = [ranking.rankings[q.qid] for q in split.queries]
    return map_at_k(rankings, [q.gt or (q.target,) for q in split.queries], 10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--root", type=Path, default=Path("data/fmnist-default"))
    ap.add_argument("--rules", nargs=2, type=int, default=[2, 3], choices=HINT_RULES)
    ap.add_argument("--splits", nargs="+", default=["val", "val-unseen", "val-newwords"])
    a = ap.parse_args(argv)
    print(f"| checkpoint | rule | {' | '.join(a.splits)} |")
    print(f"|---|---|{'---|' * len(a.splits)}")
    for ckpt in a.checkpoints:
        model, _ = load_model(ckpt, torch.device("cpu"))
        holders = [m for m in model.modules() if getattr(m, "hints", None) is not None]
        if not holders:
            print(f"{ckpt}: the model reads no hints (model.backbone_kwargs.text_hints)",
                  file=sys.stderr)  # fmt: skip
            return 2
        name = holders[0].config()["text_hints"]
        rows = []
        for rule in a.rules:
            for m in holders:
                m.hints = load_hints(name, rule=rule)
            rows.append([split_map(model, a.root, s) for s in a.splits])
        for rule, row in zip(a.rules, rows, strict=True):
            print(f"| {ckpt} | {rule} | {' | '.join(f'{x:.1f}' for x in row)} |")
        diff = [y - x for x, y in zip(*rows, strict=True)]
        print(f"| {ckpt} | {a.rules[1]} - {a.rules[0]} | {' | '.join(f'{d:+.1f}' for d in diff)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
