"""What the WordNet hints (dqecir.data.hints) reach on the embedded benchmarks' vocabulary.

    .venv/bin/python scripts/hint_coverage.py [--seed 0] [--rule 3]
    .venv/bin/python scripts/hint_coverage.py --compare 2 3 [--data data]

Prints, per benchmark:
- shape words (garments / object shapes): how many of the held-out words of the phrasing split
  (seed ``--seed``) get a hint, already contain their class name, or neither, split by the
  word's source tag (``wordnet``: drawn from the same WordNet tree the hints walk, so hinted by
  construction; ``reviewed`` / ``plural``: not), and whether any word of a class list is hinted
  as another class;
- colour names: the same walk with the colour classes' WordNet synsets (the noun senses of each
  class name under "color" 04956594), on the names that contain no class word, against the
  CIELAB class of the vocabulary file: the measurement behind leaving colours unhinted.

With ``--compare A B``: over every caption (and training variant) of every split of the built
benchmarks under ``--data`` (``<kind>-default/cirr``), how many texts read differently under
rule B than under rule A, and the (split, span, class) matches that B adds.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from dqecir.data.hints import (
    DEFAULT_HINT_RULE,
    HINT_RULES,
    HINT_SOURCES,
    LexicalHints,
    load_hints,
    noun_graph,
)
from dqecir.data.synthetic.phrasing import Phrasing
from dqecir.data.synthetic.vocabulary import load_vocabulary, read_data_file

COLOR_ROOT = "04956594"  # color, colour, coloring, colouring: a visual attribute of things


def under(graph, synset: str, root: str, depth: int = 12) -> bool:
    frontier = [synset]
    for _ in range(depth):
        frontier = [h for s in frontier for h in graph.hypernyms.get(s, ())]
        if root in frontier:
            return True
    return False


def color_hints(classes: list[str]) -> LexicalHints:
    g = noun_graph()
    synsets = {
        c: [s for s in g.senses.get(c.replace(" ", "_"), ()) if under(g, s, COLOR_ROOT)]
        for c in classes
    }
    return LexicalHints({c: s for c, s in synsets.items() if s}, g)


def shape_report(benchmark: str, seed: int, rule: int) -> None:
    hints = load_hints(benchmark, rule=rule)
    entries = read_data_file(HINT_SOURCES[benchmark])["classes"]
    tags = {next(iter(e)): e[next(iter(e))] for c in entries.values() for e in c["words"]
            if isinstance(e, dict)}  # fmt: skip
    vocab = load_vocabulary(benchmark)
    wrong = [(w, m[2], v) for v, ws in vocab.words["shape"].items() for w in ws
             for m in hints.matches(w) if m[2] != v]  # fmt: skip
    held = Phrasing(benchmark, seed).sides["heldout"].words["shape"]
    counts: Counter = Counter()
    for value, words in held.items():
        for w in words:
            how = "hinted" if hints(w) != w else ("names class" if value in w else "neither")
            counts[(how, tags.get(w, "?"))] += 1
    total = sum(counts.values())
    print(f"{benchmark}: {total} held-out shape words (seed {seed}, hint rule {rule})")
    for (how, tag), n in sorted(counts.items()):
        print(f"  {how:12s} {tag:9s} {n}")
    print(f"  words of a class list hinted as another class: {len(wrong)} {wrong[:5]}")


def color_report(benchmark: str) -> None:
    vocab = load_vocabulary(benchmark)
    classes = list(vocab.words["color"])
    hints = color_hints(classes)
    counts: Counter = Counter()
    disagree = []
    for value, words in vocab.words["color"].items():
        for w in words:
            if any(c in re.split(r"[\s-]+", w) for c in classes):
                counts["contains a class word"] += 1
                continue
            found = {m[2] for m in hints.matches(w)}
            if not found:
                counts["no class reached"] += 1
            elif found == {value}:
                counts["agrees with CIELAB class"] += 1
            else:
                counts["disagrees"] += 1
                disagree.append(f"{w} ({value} vs {'/'.join(sorted(found))})")
    print(f"{benchmark}: {sum(counts.values())} colour names, WordNet hue tree vs CIELAB class")
    for k, n in counts.items():
        print(f"  {k:26s} {n}")
    print("  e.g. " + ", ".join(disagree[:8]))


def compare_rules(benchmark: str, root: Path, old: int, new: int) -> None:
    """Texts whose hinted form differs between rule ``old`` and ``new``, per split, and the
    matches ``new`` adds (module docstring)."""
    h_old, h_new = load_hints(benchmark, rule=old), load_hints(benchmark, rule=new)
    texts, changed, added = Counter(), Counter(), Counter()
    for path in sorted((root / "captions").glob("cap.*.json")):
        split = path.name.removeprefix("cap.").removesuffix(".json")
        for q in json.loads(path.read_text(encoding="utf-8")):
            for text in dict.fromkeys([q["caption"], *q.get("caption_variants", [])]):
                texts[split] += 1
                if h_old(text) == h_new(text):
                    continue
                changed[split] += 1
                before = {(text[a:b].lower(), c) for a, b, c in h_old.matches(text)}
                for a, b, c in h_new.matches(text):
                    if (text[a:b].lower(), c) not in before:
                        added[(split, text[a:b].lower(), c)] += 1
    print(f"{benchmark}: texts read differently under rule {new} than under rule {old}")
    for split in texts:
        print(f"  {split:24s} {changed[split]:6d} of {texts[split]}")
    for (split, span, name), n in sorted(added.items()):
        print(f"  added  {split:24s} {span!r} ({name}) {n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--rule", type=int, default=DEFAULT_HINT_RULE, help="the hint rule (dqecir.data.hints)"
    )
    ap.add_argument("--compare", nargs=2, type=int, metavar=("A", "B"), choices=HINT_RULES)
    ap.add_argument("--data", type=Path, default=Path("data"), help="the built benchmarks")
    args = ap.parse_args()
    if args.compare:
        for b in HINT_SOURCES:
            root = args.data / f"{b}-default" / "cirr"
            if not (root / "captions").is_dir():
                raise SystemExit(f"{root}: no captions (build it: dqecir make-benchmark {b})")
            compare_rules(b, root, *args.compare)
        return
    for b in HINT_SOURCES:
        shape_report(b, args.seed, args.rule)
        color_report(b)


if __name__ == "__main__":
    main()
