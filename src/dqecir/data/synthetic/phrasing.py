"""Modification texts of the embedded benchmarks: sentence forms x words, with a held-out split.

The vocabulary (:mod:`dqecir.data.synthetic.vocabulary`) and the sentence forms
(``vocabulary/forms.yaml``, its header says how a caption is put together) are data. A
:class:`Phrasing` splits both, seeded, into a *train* part and a *held-out* part: every form list
(core forms per query kind, keep-clauses, connectors, prefixes, suffixes, resizing verbs) and
every class's word list (colour names, shape nouns, size words, comparatives, generic nouns; the
class name always stays in train, so every class keeps words on both sides).

Training captions use train forms and train words only. Validation and test queries are written
four times over the same images: ``seen`` (train forms, train words), ``unseen`` (held-out forms
and held-out words), ``newforms`` (held-out forms, train words) and ``newwords`` (train forms,
held-out words). :meth:`Phrasing.lexicon` gives the attribute lexicon of the train words, the only
one a model may learn from.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import yaml

from dqecir.data.synthetic.vocabulary import DATA_DIR, Vocabulary, load_vocabulary, plural
from dqecir.errors import DataError

SIDES = ("train", "heldout")
VARIANTS = {
    "seen": ("train", "train"),
    "unseen": ("heldout", "heldout"),
    "newforms": ("heldout", "train"),
    "newwords": ("train", "heldout"),
}
"""Phrasing variant -> (forms side, words side)."""
KIND_LISTS = {"color": "color", "shape": "shape", "both": "both", "size": "size"}
KEEP_LIST = {"color": "keep_shape", "shape": "keep_color", "size": "keep_all"}
SLOT_ATTRS = {
    "c": "color", "oc": "color", "a_cs": ("color", "shape"), "a_ocs": ("color", "shape"),
    "s": "shape", "os": "shape", "a_s": "shape", "a_os": "shape",
    "z": "size", "oz": "size", "a_z": "size", "rel": "size", "resize": "size",
}  # fmt: skip
"""Which attribute a slot names (the caption's ``mentions``)."""
_SLOT = re.compile(r"\{(\w+)\}")
_KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]


@dataclass(frozen=True)
class Form:
    text: str
    keep: bool = False
    """Says the other attribute stays (not used inside a ``both`` query)."""

    @property
    def slots(self) -> frozenset[str]:
        return frozenset(_SLOT.findall(self.text))

    def mentions(self) -> set[str]:
        out: set[str] = set()
        for s in self.slots:
            a = SLOT_ATTRS.get(s)
            out |= {a} if isinstance(a, str) else set(a or ())
        return out


@dataclass(frozen=True)
class Caption:
    text: str
    mentions: tuple[str, ...]
    """Attributes whose values the text names (sorted)."""


@dataclass(frozen=True)
class PhrasingParams:
    heldout_share: float = 0.3
    """Share of every form list and every class's word list held out."""
    canonical_p: float = 0.35
    """Probability that a train caption uses the class name itself ("red", "coat")."""
    keep_p: float = 0.3
    prefix_p: float = 0.3
    suffix_p: float = 0.3
    joint_p: float = 0.5
    """A ``both`` query takes a joint form with this probability, else two joined clauses."""
    typo_p: float = 0.1
    case_p: tuple[float, float, float, float] = (0.55, 0.35, 0.05, 0.05)
    """lower case, sentence case, title case, upper case."""


@cache
def load_forms(benchmark: str, root: Path = DATA_DIR) -> dict:
    path = Path(root) / "forms.yaml"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"cannot read sentence forms ({e})", file=path) from e

    def forms(items: Sequence) -> tuple[Form, ...]:
        out = []
        for it in items:
            if isinstance(it, str):
                out.append(Form(it))
            elif it.get("only", benchmark) == benchmark:
                out.append(Form(str(it["text"]), bool(it.get("keep", False))))
        return tuple(out)

    lists = {k: forms(doc[k]) for k in ("color", "shape", "both", "size")}
    lists.update({k: forms(doc[k]) for k in ("keep_shape", "keep_color", "keep_all")})
    return {
        "forms": lists,
        "resize": {d: tuple(v) for d, v in doc["resize"].items()},
        "join": tuple(doc["join"]),
        "prefix": tuple(doc["prefix"]),
        "polite_prefix": tuple(doc["polite_prefix"]),
        "suffix": tuple(doc["suffix"]),
        "imperative_verbs": frozenset(doc["imperative_verbs"]),
    }


def split_list(
    items: Sequence, rng: np.random.Generator, share: float, keep_first: bool = False
) -> tuple[tuple, tuple]:
    """(train, held-out) parts of ``items``: ``round(share * n)`` items (at least 1 when there
    are 2 or more) held out at random; with ``keep_first`` the first item stays in train."""
    items = list(items)
    if len(items) < 2:
        return tuple(items), ()
    head, rest = (items[:1], items[1:]) if keep_first else ([], items)
    n_out = min(len(rest), max(1, int(round(share * len(items)))))
    if keep_first and n_out == len(rest) and not head:
        n_out -= 1
    order = rng.permutation(len(rest))
    out = {int(i) for i in order[:n_out]}
    train = head + [x for i, x in enumerate(rest) if i not in out]
    held = [x for i, x in enumerate(rest) if i in out]
    return tuple(train), tuple(held)


@dataclass
class _Side:
    forms: dict[str, tuple[Form, ...]] = field(default_factory=dict)
    words: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    things: tuple[str, ...] = ()
    comparatives: dict[str, tuple[str, ...]] = field(default_factory=dict)
    resize: dict[str, tuple[str, ...]] = field(default_factory=dict)
    join: tuple[str, ...] = ()
    prefix: tuple[str, ...] = ()
    polite_prefix: tuple[str, ...] = ()
    suffix: tuple[str, ...] = ()


class Phrasing:
    """Captions of one benchmark under a seeded train / held-out split of forms and words."""

    def __init__(
        self,
        benchmark: str,
        seed: int,
        params: PhrasingParams = PhrasingParams(),
        vocabulary: Vocabulary | None = None,
        forms: Mapping | None = None,
    ) -> None:
        self.benchmark = benchmark
        self.params = params
        self.vocabulary = vocabulary or load_vocabulary(benchmark)
        doc = forms or load_forms(benchmark)
        self.imperative_verbs = doc["imperative_verbs"]
        self.comparatives = _comparatives(benchmark)
        self._cum: dict[tuple, tuple[tuple[str, ...], np.ndarray]] = {}
        rng = np.random.default_rng([seed, 0xF0A5])
        self.sides = {s: _Side() for s in SIDES}
        share = params.heldout_share

        def split_into(name: str, items: Sequence, keep_first: bool = False) -> None:
            tr, ho = split_list(items, rng, share, keep_first)
            setattr(self.sides["train"], name, tr)
            setattr(self.sides["heldout"], name, ho)

        for name, lst in doc["forms"].items():
            tr, ho = split_list(lst, rng, share)
            self.sides["train"].forms[name], self.sides["heldout"].forms[name] = tr, ho
        for name in ("join", "prefix", "polite_prefix", "suffix"):
            split_into(name, doc[name])
        split_into("things", self.vocabulary.things, keep_first=True)
        for direction, verbs in doc["resize"].items():
            tr, ho = split_list(verbs, rng, share)
            self.sides["train"].resize[direction], self.sides["heldout"].resize[direction] = tr, ho
        for direction, words in self.comparatives.items():
            tr, ho = split_list(words, rng, share, keep_first=True)
            self.sides["train"].comparatives[direction] = tr
            self.sides["heldout"].comparatives[direction] = ho
        for attr, values in self.vocabulary.words.items():
            for side in self.sides.values():
                side.words[attr] = {}
            for value, words in values.items():
                if len(words) < 2:
                    raise DataError(
                        f"{benchmark}: {attr} {value!r} has {len(words)} word(s); the held-out "
                        "split needs at least 2"
                    )
                tr, ho = split_list(words, rng, share, keep_first=True)
                self.sides["train"].words[attr][value] = tr
                self.sides["heldout"].words[attr][value] = ho

    # ---- words ---------------------------------------------------------------------------
    def _word(self, side: _Side, attr: str, value: str, rng: np.random.Generator) -> str:
        """The class name with ``canonical_p`` (train side), else another word of the side, in
        proportion to its frequency where the vocabulary knows it (colour names), uniformly
        otherwise."""
        words = side.words[attr][value]
        canonical = value if value in words else None
        if canonical is not None and (len(words) == 1 or rng.random() < self.params.canonical_p):
            return canonical
        rest, cum = self._draws(side, attr, value)
        return rest[
            min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(rest) - 1)
        ]

    def _draws(self, side: _Side, attr: str, value: str) -> tuple[tuple[str, ...], np.ndarray]:
        """The non-canonical words of a class on a side and their cumulative weights (cached)."""
        key = (id(side), attr, value)
        if key not in self._cum:
            rest = tuple(w for w in side.words[attr][value] if w != value)
            weights = np.array([self.vocabulary.weight(w) for w in rest], dtype=np.float64)
            self._cum[key] = (rest, np.cumsum(weights))
        return self._cum[key]

    def _bare(self, noun: str, rng: np.random.Generator) -> str:
        if noun in self.vocabulary.paired and rng.random() < 0.5:
            return plural(noun)
        return noun

    def noun_phrase(self, noun: str, adjective: str, rng: np.random.Generator) -> str:
        """``a [adj] noun``; trousers and their kin take "a pair of" or no article, footwear is
        also said in the plural ("sneakers", "a pair of red sneakers")."""
        core = f"{adjective} {noun}".strip()
        if noun in self.vocabulary.plural_only:
            return ("a pair of ", "", "some ")[int(rng.integers(3))] + core
        if noun in self.vocabulary.paired:
            pl = f"{adjective} {plural(noun)}".strip()
            return (article(core), pl, f"a pair of {pl}")[int(rng.integers(3))]
        return article(core)

    def _fields(
        self,
        side: _Side,
        ref: Mapping[str, str],
        new: Mapping[str, str],
        rng: np.random.Generator,
    ) -> dict[str, str]:
        c = self._word(side, "color", new["color"], rng)
        oc = self._word(side, "color", ref["color"], rng)
        s = self._word(side, "shape", new["shape"], rng)
        os_ = self._word(side, "shape", ref["shape"], rng)
        f = {
            "c": c, "oc": oc, "s": self._bare(s, rng), "os": self._bare(os_, rng),
            "a_s": self.noun_phrase(s, "", rng), "a_os": self.noun_phrase(os_, "", rng),
            "a_cs": self.noun_phrase(s, c, rng), "a_ocs": self.noun_phrase(os_, oc, rng),
            "thing": side.things[int(rng.integers(len(side.things)))],
        }  # fmt: skip
        if "size" in ref and "size" in side.words:
            z = self._word(side, "size", new["size"], rng)
            sizes = list(self.vocabulary.words["size"])
            grow = sizes.index(new["size"]) > sizes.index(ref["size"])
            d = "grow" if grow else "shrink"
            rel, verbs = side.comparatives[d], side.resize[d]
            f.update(
                z=z,
                oz=self._word(side, "size", ref["size"], rng),
                a_z=article(z),
                rel=rel[int(rng.integers(len(rel)))],
                resize=verbs[int(rng.integers(len(verbs)))],
            )
        return f

    # ---- captions --------------------------------------------------------------------------
    def caption(
        self,
        kind: str,
        ref: Mapping[str, str],
        new: Mapping[str, str],
        rng: np.random.Generator,
        variant: str = "seen",
    ) -> Caption:
        """One caption of a ``kind`` query from ``ref``'s attributes to ``new``'s, in phrasing
        ``variant`` (one of :data:`VARIANTS`)."""
        if kind not in KIND_LISTS:
            raise ValueError(f"unknown query kind {kind!r}")
        forms_side, words_side = (self.sides[s] for s in VARIANTS[variant])
        f = self._fields(words_side, ref, new, rng)
        p = self.params
        parts, mentions = self._core(kind, forms_side, rng)
        keep_name = KEEP_LIST.get(kind)
        if keep_name and forms_side.forms[keep_name] and rng.random() < p.keep_p:
            keep = _pick(forms_side.forms[keep_name], rng)
            mentions |= keep.mentions()
            parts = _joined(parts, [keep.text], forms_side.join, rng)
        text = "".join(parts).format(**f)
        if rng.random() < p.prefix_p:
            first = text.split(" ", 1)[0].lower()
            pool = forms_side.prefix
            if first in self.imperative_verbs:
                pool = pool + forms_side.polite_prefix
            if pool:
                text = f"{_pick(pool, rng)} {text}"
        if rng.random() < p.suffix_p and forms_side.suffix:
            sfx = _pick(forms_side.suffix, rng)
            if sfx.lower() not in text.lower():
                text = text + (sfx if sfx in {"!", ".", "?", ".."} else f" {sfx}")
        text = " ".join(text.split())
        text = _case(text, rng, p.case_p)
        if rng.random() < p.typo_p:
            text = typo(text, rng)
        return Caption(text, tuple(sorted(mentions)))

    def _core(self, kind: str, side: _Side, rng: np.random.Generator) -> tuple[list[str], set]:
        if kind != "both" or rng.random() < self.params.joint_p:
            form = _pick(side.forms[kind], rng)
            return [form.text], form.mentions()
        color = _pick([f for f in side.forms["color"] if not f.keep], rng)
        shape = _pick([f for f in side.forms["shape"] if not f.keep], rng)
        clauses = [color.text, shape.text]
        if rng.random() < 0.5:
            clauses.reverse()
        return _joined(
            [clauses[0]], [clauses[1]], side.join, rng
        ), color.mentions() | shape.mentions()

    # ---- what the split holds -------------------------------------------------------------
    def lexicon(self, side: str = "train") -> dict[str, dict[str, list[str]]]:
        """Attribute -> value -> the surface words of that side (plurals of footwear and
        comparatives included), for :class:`dqecir.models.attribute.Lexicon`."""
        s = self.sides[side]
        out: dict[str, dict[str, list[str]]] = {}
        for attr, values in s.words.items():
            out[attr] = {}
            for value, words in values.items():
                forms = list(words)
                forms += [plural(w) for w in words if w in self.vocabulary.paired]
                out[attr][value] = forms
        if "size" in out:
            for d, words in s.comparatives.items():
                out["size"][f"({d})"] = list(words)
        return out

    def summary(self) -> dict:
        """Counts per side: words per attribute, forms per list, distinct surface forms per
        query kind (core x keep x prefix x suffix, before the words are filled in)."""
        out = {}
        for name, s in self.sides.items():
            out[name] = {
                "words": {a: sum(len(w) for w in v.values()) for a, v in s.words.items()},
                "forms": {k: len(v) for k, v in s.forms.items()},
                "wrappers": {
                    "prefix": len(s.prefix) + len(s.polite_prefix),
                    "suffix": len(s.suffix),
                    "join": len(s.join),
                    "things": len(s.things),
                },
                "surface_forms": {k: self.surface_forms(k, name) for k in self._kinds()},
            }
        return out

    def _kinds(self) -> list[str]:
        kinds = ["color", "shape", "both"]
        return kinds + (["size"] if "size" in self.vocabulary.words else [])

    def surface_forms(self, kind: str, side: str) -> int:
        """Distinct templates of ``kind`` on ``side`` before words are filled in."""
        s = self.sides[side]
        joins = max(1, len(s.join))
        if kind == "both":
            c = sum(not f.keep for f in s.forms["color"])
            sh = sum(not f.keep for f in s.forms["shape"])
            core = len(s.forms["both"]) + 2 * c * sh * joins
        else:
            core = len(s.forms[kind])
        keep = KEEP_LIST.get(kind)
        if keep:
            core *= 1 + len(s.forms[keep]) * joins
        return core * (1 + len(s.prefix) + len(s.polite_prefix)) * (1 + len(s.suffix))


def _comparatives(benchmark: str) -> dict[str, tuple[str, ...]]:
    if benchmark != "shapes":
        return {}
    doc = yaml.safe_load((DATA_DIR / "sizes.yaml").read_text(encoding="utf-8"))
    return {d: tuple(w) for d, w in doc["comparatives"].items()}


def article(phrase: str) -> str:
    """``phrase`` with its indefinite article ("an orange star", "a blue bag")."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _pick(items: Sequence, rng: np.random.Generator):
    return items[int(rng.integers(len(items)))]


def _joined(
    first: list[str], second: list[str], joins: Sequence[str], rng: np.random.Generator
) -> list[str]:
    join = _pick(joins, rng) if joins else " and "
    return [*first, join, *second]


def _case(text: str, rng: np.random.Generator, p: Sequence[float]) -> str:
    style = int(rng.choice(4, p=np.asarray(p) / sum(p)))
    if style == 0:
        return text.lower()
    if style == 1:
        return text[:1].upper() + text[1:]
    if style == 2:
        return string.capwords(text)
    return text.upper()


def typo(text: str, rng: np.random.Generator) -> str:
    """``text`` with one typo (a letter dropped, doubled, swapped with the next, or replaced by a
    keyboard neighbour) in one word of at least 4 letters; unchanged if it has none."""
    words = text.split(" ")
    cands = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not cands:
        return text
    i = cands[int(rng.integers(len(cands)))]
    w = words[i]
    j = int(rng.integers(1, len(w) - 1))
    op = int(rng.integers(4))
    if op == 0:
        w = w[:j] + w[j + 1 :]
    elif op == 1:
        w = w[:j] + w[j] + w[j:]
    elif op == 2:
        w = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    else:
        w = w[:j] + _neighbour(w[j], rng) + w[j + 1 :]
    words[i] = w
    return " ".join(words)


def _neighbour(ch: str, rng: np.random.Generator) -> str:
    low = ch.lower()
    for row in _KEYBOARD:
        k = row.find(low)
        if k >= 0:
            opts = [row[x] for x in (k - 1, k + 1) if 0 <= x < len(row)]
            out = opts[int(rng.integers(len(opts)))]
            return out.upper() if ch.isupper() else out
    return ch
