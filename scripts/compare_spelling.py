"""What correcting the typos of queries does at query time alone: the same trained checkpoints
scored with their val queries read as written and read through a speller (dqecir.data.spelling).

    .venv/bin/python scripts/compare_spelling.py CHECKPOINT [CHECKPOINT ...]
        [--root data/fmnist-default] [--splits val val-unseen val-newwords]

A checkpoint trained without ``text_spelling`` gets the speller the option would have given it
(the words of its benchmark's training captions, :func:`dqecir.data.spelling.domain_words`);
one trained with it is scored with its own and without. Nothing is retrained, and the training
captions are read as written either way (as ``text_spelling`` reads them), so the difference is
the correction's alone. Prints mAP@10 per split, as written / corrected, the difference and how many
of the split's query texts the correction changes, one line per checkpoint. Choose on val splits only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from compare_hint_rules import split_map

from dqecir.data.formats import load_benchmark
from dqecir.data.pipeline import query_texts
from dqecir.data.spelling import Speller, domain_words
from dqecir.models.cir import load_model


def corrected(root: Path, split_name: str, speller: Speller) -> int:
    """How many query texts of the split the speller changes."""
    split = load_benchmark("cirr", root / "cirr", split_name)[0]
    texts = [t for q in split.queries for t in query_texts(q, False)]
    return sum(speller(t) != t for t in texts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--root", type=Path, default=Path("data/fmnist-default"))
    ap.add_argument("--splits", nargs="+", default=["val", "val-unseen", "val-newwords"])
    a = ap.parse_args(argv)
    train = load_benchmark("cirr", a.root / "cirr", "train")[0]
    domain = domain_words(t for q in train.queries for t in query_texts(q, True))
    print(f"| checkpoint | {' | '.join(a.splits)} |")
    print(f"|---|{'---|' * len(a.splits)}")
    for ckpt in a.checkpoints:
        model, _ = load_model(ckpt, torch.device("cpu"))
        bb = model.backbone
        if not hasattr(bb, "speller"):
            print(f"{ckpt}: a {bb.name!r} backbone has no text_spelling", file=sys.stderr)
            return 2
        speller = bb.speller or Speller(domain, known=bb.tokenizer.get_vocab())
        rows = []
        for s in (None, speller):
            bb.speller = s
            rows.append([split_map(model, a.root, name) for name in a.splits])
        changed = [corrected(a.root, name, speller) for name in a.splits]
        cells = [
            f"{x:.1f} -> {y:.1f} ({y - x:+.1f}; {n} texts)"
            for x, y, n in zip(*rows, changed, strict=True)
        ]
        print(f"| {ckpt} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
