"""Lexical hints: a word the model never saw in training, read through WordNet.

A caption may name a garment with a word no training caption used ("a pair of wellies", "an
anorak"). The text tower (MiniLM-L6) places many such words far from their class
(docs/method.md, "Words people type"). WordNet 3.0 (Debian ``wordnet-base``) knows most English
nouns and where they sit: an anorak is a kind of jacket, a jacket a kind of coat. A
:class:`LexicalHints` walks those hypernym pointers from every noun sense of the words of a
caption; when the senses of a word (or of a two- or three-word compound: "tank top") reach
exactly one class of the benchmark, the class name is inserted after it:

    "swap it for an anorak"  ->  "swap it for an anorak (coat)"

The hinted text is what the backbone encodes, in training and at query time alike (the option
travels with the model's config, and the text cache is keyed by it). Words whose senses reach no
class are left as they are; which others are (a word with senses in two classes, a span that
contains its class name) depends on the rule below. The classes and their WordNet synsets are
the vocabulary files' (``garments.yaml``, ``objects.yaml``): the class definitions, not the
word lists, so a held-out word is hinted only through WordNet's own tree.

Three rules (``rule``), each made the default once it measured better on ``val-unseen``
(docs/method.md, "The second hint rule, no token dropout, and L_attr's weight" and "The third
hint rule: adjectives and label names"); the third is the default:

- ``1``: a word whose senses reach two classes gets no hint, nor does a span that contains its
  class name anywhere ("peacoat", "dress shirt", "work-shirt").
- ``2``: such a word gets the class of its first sense that reaches one (WordNet orders a word's
  senses by how often they were tagged in its corpus: "jumper" is first a sweater, then a
  pinafore dress), and every span but the bare class name gets its hint ("peacoat (coat)",
  "dress shirt (shirt)"; "coats" does not), so that a compound reads the same whether or not it
  contains a class name as a substring or as a modifier.

- ``3``: rule 2, and also adjectives: a word with no noun sense that reaches a class is read
  through the nouns WordNet derives its adjective senses from (pointers ``+`` and ``\\``,
  first sense first): "three-sided" and "triangular" come from "triangle", "round" from
  "circle", so "a three-sided shape" -> "a three-sided (triangle) shape". Rule 3 also reads each
  class's ``label_synsets`` (the senses of the dataset's own label name that the word-list
  synsets lack: Fashion-MNIST's label 0 is "T-shirt/top", so the garment sense of "top").

Only the "shape" attribute (garments, object shapes) is hinted: for colour names WordNet's hue
tree and the benchmarks' colour classes (CIELAB regions) disagree on 33 of the 79 xkcd names
without a class word that WordNet reaches (docs/method.md).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import chain
from pathlib import Path

from dqecir.data.synthetic.vocabulary import (
    DATA_DIR,
    WORDNET_DIR,
    parse_synset,
    read_data_file,
)
from dqecir.errors import DataError

HINT_SOURCES = {"fmnist": "garments.yaml", "shapes": "objects.yaml"}
"""``text_hints`` names -> the vocabulary file whose class synsets are hinted."""

HINT_RULES = (1, 2, 3)
"""The hint rules (module docstring)."""
DEFAULT_HINT_RULE = 3

HYPERNYM = ("@", "@i")
DERIVED_NOUN = ("+", "\\")  # an adjective's derivationally related form, its pertainym
MAX_NGRAM = 3
WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*", re.IGNORECASE)
PLURAL_RULES = (("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
                ("ies", "y"), ("s", ""))  # fmt: skip


@dataclass(frozen=True)
class NounGraph:
    """WordNet's noun lemmas (``index.noun``), their hypernyms (``data.noun``) and the plural
    exceptions (``noun.exc``)."""

    senses: Mapping[str, tuple[str, ...]]  # lemma (lower case, "_" between words) -> synsets
    hypernyms: Mapping[str, tuple[str, ...]]  # synset -> its hypernym synsets
    exceptions: Mapping[str, str]  # irregular plural -> singular

    def singulars(self, lemma: str) -> list[str]:
        """``lemma`` and the singular forms WordNet's morphology gives for its last word."""
        out = [lemma]
        if lemma in self.exceptions:
            out.append(self.exceptions[lemma])
        for suffix, repl in PLURAL_RULES:
            if lemma.endswith(suffix) and len(lemma) > len(suffix) + 1:
                out.append(lemma[: -len(suffix)] + repl)
        return [w for w in dict.fromkeys(out) if w in self.senses]


def _wordnet_files(root: Path, names: Sequence[str]) -> dict[str, Path]:
    files = {n: Path(root) / n for n in names}
    for path in files.values():
        if not path.is_file():
            raise DataError(
                "WordNet database not found (install the Debian package wordnet-base)", file=path
            )
    return files


def _read_index(path: Path) -> dict[str, tuple[str, ...]]:
    """``index.<pos>``: lemma (lower case, "_" between words) -> its synsets, most frequent
    sense first."""
    senses: dict[str, tuple[str, ...]] = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            if not line.startswith("  "):
                p = line.split()
                senses[p[0].lower()] = tuple(p[-int(p[2]) :])
    return senses


def _read_related(
    path: Path, relations: tuple[str, ...], pos: str | None = None
) -> dict[str, tuple[str, ...]]:
    """``data.<pos>``: synset -> the targets of its ``relations`` pointers (into ``pos``)."""
    related: dict[str, tuple[str, ...]] = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            if not line.startswith("  "):
                synset = parse_synset(line, relations, pos)
                related[synset.offset] = synset.related
    return related


@cache
def noun_graph(root: Path = WORDNET_DIR) -> NounGraph:
    files = _wordnet_files(root, ("index.noun", "data.noun", "noun.exc"))
    exceptions = {}
    with open(files["noun.exc"], encoding="latin-1") as f:
        for line in f:
            p = line.split()
            if len(p) >= 2:
                exceptions[p[0].lower()] = p[1].lower()
    return NounGraph(
        _read_index(files["index.noun"]), _read_related(files["data.noun"], HYPERNYM), exceptions
    )


@dataclass(frozen=True)
class AdjectiveNouns:
    """WordNet's adjective lemmas (``index.adj``) and, per adjective synset, the noun synsets
    it is derived from or pertains to (``data.adj``, pointers ``+`` and ``\\`` to nouns)."""

    senses: Mapping[str, tuple[str, ...]]  # lemma (lower case, "_" between words) -> synsets
    nouns: Mapping[str, tuple[str, ...]]  # adjective synset -> noun synsets


@cache
def adjective_nouns(root: Path = WORDNET_DIR) -> AdjectiveNouns:
    files = _wordnet_files(root, ("index.adj", "data.adj"))
    return AdjectiveNouns(
        _read_index(files["index.adj"]), _read_related(files["data.adj"], DERIVED_NOUN, "n")
    )


class LexicalHints:
    """Inserts the class name after each word (or compound) whose WordNet noun senses reach
    exactly one class synset through hypernym pointers (at most ``max_depth`` of them)."""

    def __init__(
        self,
        classes: Mapping[str, Sequence[str]],
        graph: NounGraph | None = None,
        max_depth: int = 8,
        rule: int = DEFAULT_HINT_RULE,
        adjectives: AdjectiveNouns | None = None,
    ) -> None:
        if rule not in HINT_RULES:
            raise ValueError(f"hint rule must be one of {HINT_RULES}, got {rule!r}")
        self.graph = graph if graph is not None else noun_graph()
        if adjectives is None:  # the real database's, unless the noun graph is a hand-made one
            real = rule >= 3 and graph is None
            adjectives = adjective_nouns() if real else AdjectiveNouns({}, {})
        self.adjectives = adjectives
        self.max_depth = max_depth
        self.rule = rule
        self.class_of: dict[str, str] = {}
        for name, synsets in classes.items():
            for s in synsets:
                if s not in self.graph.hypernyms:
                    raise DataError(f"class {name!r}: no WordNet noun synset {s}")
                if self.class_of.setdefault(s, name) != name:
                    raise DataError(f"WordNet synset {s} is listed under two classes")
        self.classes = tuple(classes)
        names = "|".join(re.escape(c) for c in sorted(self.classes, key=len, reverse=True))
        self._hint_re = re.compile(rf"\((?:{names})\)", re.IGNORECASE)
        self._memo: dict[str, str | None] = {}

    def fingerprint(self) -> str:
        """A short digest of the class map and the walk (part of the text cache key)."""
        items = sorted(self.class_of.items())
        walk = (items, self.max_depth) if self.rule == 1 else (items, self.max_depth, self.rule)
        return hashlib.sha256(repr(walk).encode()).hexdigest()[:12]

    def _classes_of_synset(self, synset: str) -> set[str]:
        found, frontier, seen = set(), [synset], {synset}
        for _ in range(self.max_depth + 1):
            nxt = []
            for s in frontier:
                if s in self.class_of:
                    found.add(self.class_of[s])  # the nearest class on this path
                    continue
                nxt += [h for h in self.graph.hypernyms.get(s, ()) if h not in seen]
            seen.update(nxt)
            frontier = nxt
        return found

    def lookup(self, phrase: str) -> str | None:
        """The one class a phrase's noun senses reach ("anorak" -> "coat"), else None."""
        key = re.sub(r"\s+", "_", phrase.strip().lower())
        if key not in self._memo:
            self._memo[key] = self._lookup(key)
        return self._memo[key]

    def _lookup(self, key: str) -> str | None:
        lemmas = self.graph.singulars(key)
        if self.rule == 1:  # all senses of all lemmas: one class or none
            found: set[str] = set()
            for lemma in lemmas:
                for s in self.graph.senses[lemma]:
                    found |= self._classes_of_synset(s)
            return found.pop() if len(found) == 1 else None
        # the first sense (by frequency) that reaches a class decides: the noun senses, then
        # (rule 3) each adjective sense through the nouns it derives from
        senses: Iterable[Iterable[str]] = (
            (s,) for lemma in lemmas for s in self.graph.senses[lemma]
        )
        if self.rule >= 3:
            adj = self.adjectives
            senses = chain(senses, (adj.nouns.get(s, ()) for s in adj.senses.get(key, ())))
        for synsets in senses:
            found = set().union(*(self._classes_of_synset(s) for s in synsets))
            if found:
                return found.pop() if len(found) == 1 else None
        return None

    def matches(self, text: str) -> list[tuple[int, int, str]]:
        """``(start, end, class)`` of the words and compounds of ``text`` that reach a class,
        longest first, left to right; a match directly followed by another one is a modifier
        of that one's head ("flannel shirt": a shirt) and is dropped."""
        inside = [m.span() for m in self._hint_re.finditer(text)]  # hints already there
        tokens = [t for t in WORD.finditer(text) if not any(a <= t.start() < b for a, b in inside)]
        found: list[tuple[int, int, str]] = []
        i = 0
        while i < len(tokens):
            for n in range(min(MAX_NGRAM, len(tokens) - i), 0, -1):
                span = tokens[i : i + n]
                if any(a.end() + 1 != b.start() for a, b in zip(span, span[1:], strict=False)):
                    continue  # words of a compound are one space apart
                name = self.lookup(" ".join(t.group() for t in span))
                if name is not None:
                    found.append((span[0].start(), span[-1].end(), name))
                    i += n
                    break
            else:
                i += 1
        return [
            m for m, nxt in zip(found, [*found[1:], None], strict=False)
            if nxt is None or nxt[0] != m[1] + 1
        ]  # fmt: skip

    def __call__(self, text: str) -> str:
        inserts = []
        for start, end, name in self.matches(text):
            span = text[start:end].lower()
            if text[end:].lower().lstrip(" (").startswith(name):
                continue  # the hint (or the class name) follows already
            if self.rule == 1:
                named = name in span
            else:  # only the bare class name, singular or plural, goes without
                named = re.fullmatch(rf"{re.escape(name)}(?:e?s)?", span) is not None
            if not named:
                inserts.append((end, f" ({name})"))
        for pos, hint in reversed(inserts):
            text = text[:pos] + hint + text[pos:]
        return text

    def batch(self, texts: Sequence[str]) -> list[str]:
        return [self(t) for t in texts]


@cache
def load_hints(
    name: str, vocabulary_root: Path = DATA_DIR, rule: int = DEFAULT_HINT_RULE
) -> LexicalHints:
    """The hints of an embedded benchmark's shape classes (``"fmnist"``, ``"shapes"``) under
    ``rule`` (module docstring)."""
    if name not in HINT_SOURCES:
        raise ValueError(f"text_hints must be '' or one of {sorted(HINT_SOURCES)}, got {name!r}")
    data = read_data_file(HINT_SOURCES[name], vocabulary_root)
    classes = {}
    for value, entry in data["classes"].items():
        if "synsets" not in entry:
            raise DataError(f"class {value!r} has no 'synsets'", file=HINT_SOURCES[name])
        classes[value] = [str(s) for s in entry["synsets"]]
        if rule >= 3:  # the label name's own senses (module docstring)
            classes[value] += [str(s) for s in entry.get("label_synsets", ())]
    return LexicalHints(classes, rule=rule)
