"""Where the attribute relevance goes wrong on a split: each wrong decision (alpha > 0.5 against
the attributes the caption names), by kind of error and by which held-out words the caption
holds (from the benchmark's meta.json), with examples.

    .venv/bin/python scripts/relevance_errors.py CHECKPOINT [--root data/fmnist-default]
        [--split test1-unseen] [--examples 5]

A "false" error fires an attribute the caption does not name, "missed" leaves out one it names.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

import torch

from dqecir.data.formats import load_benchmark
from dqecir.data.pipeline import build_features
from dqecir.evaluate import rank_split
from dqecir.models.cir import load_model


def heldout_words(meta: Path) -> dict[str, list[re.Pattern]]:
    """Attribute -> patterns of the held-out side's words (whole words, any case)."""
    side = json.loads(meta.read_text())["phrasing"]["sides"]["heldout"]["words"]
    out = {}
    for attr, values in side.items():
        words = sorted({w for ws in values.values() for w in ws}, key=len, reverse=True)
        out[attr] = [re.compile(rf"(?<![a-z]){re.escape(w.lower())}(?![a-z])") for w in words]
    return out


def rank_benchmark_split(model, root: Path, split_name: str, dev: torch.device):
    """``split_name`` of the benchmark at ``root`` (its CIRR layout) and ``model``'s ranking of
    it (with the attribute relevance where the model has one), features through the
    benchmark's cache."""
    cirr = root / "cirr"
    split = load_benchmark("cirr", cirr, split_name)[0]
    table = build_features(
        model.backbone, [split], train=False, cache_dir=cirr / ".dqecir-cache", device=dev
    )
    return split, rank_split(model, split, table, dev, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--root", type=Path, default=Path("data/fmnist-default"))
    ap.add_argument("--split", default="test1-unseen")
    ap.add_argument("--examples", type=int, default=5)
    a = ap.parse_args()
    dev = torch.device("cpu")
    model, _ = load_model(a.checkpoint, dev)
    if not model.attributes:
        raise SystemExit(f"{a.checkpoint}: the model has no attribute weights")
    split, ranking = rank_benchmark_split(model, a.root, a.split, dev)
    held = heldout_words(a.root / "meta.json")
    decisions = 0
    errors: collections.Counter = collections.Counter()
    examples: dict[tuple, list] = collections.defaultdict(list)
    for q in split.queries:
        alpha = (ranking.relevance or {}).get(q.qid)
        if alpha is None or q.mentions is None:
            continue
        text = q.texts[0].lower()
        has = [x for x in model.attributes if any(p.search(text) for p in held.get(x, []))]
        where = "+".join(f"held-out {x} word" for x in has) or "no held-out word"
        for attr, al in zip(model.attributes, alpha, strict=False):
            decisions += 1
            named = attr in q.mentions
            if (al > 0.5) != named:
                key = (f"{attr} {'missed' if named else 'false'}", where)
                errors[key] += 1
                examples[key].append(f"{al:.2f} [{q.kind}] {q.texts[0]}")
    wrong = sum(errors.values())
    print(f"{a.checkpoint} on {a.split}: {decisions} decisions, {wrong} wrong "
          f"({100 * (1 - wrong / max(decisions, 1)):.1f} % right)")  # fmt: skip
    print("| error | caption holds | count |")
    print("|---|---|---|")
    for (kind, where), n in sorted(errors.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {where} | {n} |")
    for key, ex in sorted(examples.items(), key=lambda kv: -len(kv[1])):
        print(f"\n{key[0]}, {key[1]}:")
        for e in ex[: a.examples]:
            print("   ", e)


if __name__ == "__main__":
    main()
