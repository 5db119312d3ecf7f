"""Where held-out garment / object words lose mAP@10: for each held-out shape word of the
benchmark's phrasing split, the mean AP@10 of a split's queries whose caption holds it.

    .venv/bin/python scripts/word_errors.py CHECKPOINT [--root data/fmnist-default]
        [--split val-newwords] [--examples 2]

Words are matched whole, longest first (the same patterns as scripts/relevance_errors.py); the
ground truths are those the scorer uses (every annotated target). Choose on val splits.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch
from relevance_errors import heldout_words, rank_benchmark_split

from dqecir.metrics import average_precision_at_k
from dqecir.models.cir import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--root", type=Path, default=Path("data/fmnist-default"))
    ap.add_argument("--split", default="val-newwords")
    ap.add_argument("--attribute", default="shape")
    ap.add_argument("--examples", type=int, default=2)
    a = ap.parse_args()
    dev = torch.device("cpu")
    model, _ = load_model(a.checkpoint, dev)
    split, ranking = rank_benchmark_split(model, a.root, a.split, dev)
    patterns = heldout_words(a.root / "meta.json").get(a.attribute, [])
    scores: dict[str, list[float]] = collections.defaultdict(list)
    examples: dict[str, list[str]] = collections.defaultdict(list)
    every = []
    for q in split.queries:
        gts = q.gt or ((q.target,) if q.target else ())
        if not gts:
            continue
        score = 100 * average_precision_at_k(ranking.rankings[q.qid], gts, 10)
        every.append(score)
        text = q.texts[0].lower()
        for word in {p.pattern for p in patterns if p.search(text)}:
            scores[word].append(score)
            examples[word].append(f"{score:.0f} [{q.kind}] {q.texts[0]}")
    print(f"{a.checkpoint} on {a.split}: {len(every)} queries, mAP@10 "
          f"{sum(every) / max(len(every), 1):.1f}")  # fmt: skip
    print(f"| held-out {a.attribute} word | queries | mean AP@10 | e.g. |")
    print("|---|---|---|---|")
    for word, s in sorted(scores.items(), key=lambda kv: sum(kv[1]) / len(kv[1])):
        name = word.removeprefix("(?<![a-z])").removesuffix("(?![a-z])").replace("\\", "")
        shown = "; ".join(examples[word][: a.examples])
        print(f"| {name} | {len(s)} | {sum(s) / len(s):.1f} | {shown} |")


if __name__ == "__main__":
    main()
