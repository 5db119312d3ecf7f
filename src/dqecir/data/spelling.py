"""Spelling correction of query texts: a typo is read as the word it was meant to be.

About one caption in ten that people type holds a typo ("a button-down shitr", "same tnoe",
"chnge it to pruple"). The text tower splits an unknown string into word pieces that may mean
something else, and the WordNet hints (:mod:`dqecir.data.hints`) cannot look it up. A
:class:`Speller` replaces each word that no dictionary knows by a word one edit away (a letter
dropped, added, replaced, or two neighbours swapped), in this order:

1. a word of the training captions (``domain``, most frequent first): "shitr" -> "shirt", not
   the more common English "shit"; "tnoe" -> "tone";
2. failing that, for words of at least ``min_general`` letters, the most frequent English word
   of pyspellchecker's frequency list ("conpletely" -> "completely"); shorter unknown words are
   too ambiguous ("ocre" could be "ochre", "core", "acre") and stay unless step 1 reads them.

A word is known, and never changed, when it is in that English list, in WordNet (Debian
``wordnet-base``: "rhomb", "pentacle", most colour and garment nouns), in the text tower's
vocabulary, or among the training captions' words. Words with digits, "_", an apostrophe or a
letter outside ASCII ("café", "x2", "robin's"), and words of fewer than 3 letters, are left as
they are, and a correction is always letters alone. The case of a replaced word follows the original
("SHITR" -> "SHIRT", "Shitr" -> "Shirt").

The option is part of the model's config (``model.backbone_kwargs.text_spelling``); the training
captions' words (``spell_words``) are collected when training starts and stored in the
checkpoint with it, so a query is read the same at search time as at evaluation.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

from dqecir.data.hints import _read_index, _wordnet_files
from dqecir.data.synthetic.vocabulary import WORDNET_DIR
from dqecir.errors import DataError

WORD = re.compile(r"\w+(?:'\w+)*")
"""A word of a text: letters, digits or "_" (any script), with inner apostrophes ("robin's");
only a word of ASCII letters alone is ever corrected."""

MEMO_SIZE = 100_000
"""Corrections a :class:`Speller` remembers (a long-running server sees unbounded input)."""

MIN_DOMAIN_COUNT = 3
"""A training-caption word enters the domain dictionary when at least this many captions hold
it: real words recur, a typo of the training captions rarely does."""

TYPO_RATIO = 20.0
"""A training-caption word no dictionary knows is a typo when a word one edit away is this many
times as frequent (:func:`domain_words`)."""


@cache
def _english_checker():
    try:
        from spellchecker import SpellChecker
    except ImportError as e:  # pragma: no cover - a pinned dependency
        raise DataError("text_spelling needs the package pyspellchecker") from e
    return SpellChecker(language="en", distance=1)


@cache
def wordnet_words(root: Path = WORDNET_DIR) -> frozenset[str]:
    """Every word of every WordNet lemma (compounds split at "_" and "-")."""
    names = [f"index.{pos}" for pos in ("noun", "adj", "verb", "adv")]
    return frozenset(
        w
        for path in _wordnet_files(Path(root), names).values()
        for lemma in _read_index(path)
        for w in re.split(r"[_\-]", lemma)
        if w
    )


def domain_words(
    texts: Iterable[str],
    min_count: int = MIN_DOMAIN_COUNT,
    typo_ratio: float = TYPO_RATIO,
    wordnet_root: Path = WORDNET_DIR,
) -> list[str]:
    """The words (lower case) that at least ``min_count`` of ``texts`` hold, most frequent
    first (ties in alphabetical order): the domain dictionary of a :class:`Speller`.

    Training captions hold typos too, and with many phrasings per query the same typo recurs
    ("shitr" in 14 of 80,000 texts); a word that neither the English list nor WordNet knows is
    left out when a word one edit away is at least ``typo_ratio`` times as frequent ("shirt":
    8,000). Domain words that are no English word ("pls", "recolour") stay."""
    counts: dict[str, int] = {}
    for t in texts:
        for w in {m.group(0).lower() for m in WORD.finditer(t)}:
            counts[w] = counts.get(w, 0) + 1
    english = _english_checker()
    real = set(english.word_frequency.dictionary) | wordnet_words(Path(wordnet_root))

    def typo(w: str) -> bool:
        if w in real or not w.isalpha():
            return False
        return any(counts.get(c, 0) >= typo_ratio * counts[w] for c in english.edit_distance_1(w))

    words = [w for w, c in counts.items() if c >= min_count and not typo(w)]
    return sorted(words, key=lambda w: (-counts[w], w))


def _same_case(new: str, old: str) -> str:
    if old.isupper() and len(old) > 1:
        return new.upper()
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


class Speller:
    """Corrects the words of a text that no dictionary knows (module docstring).

    ``domain``: the training captions' words, most frequent first (:func:`domain_words`);
    ``known``: more words to leave alone (the text tower's vocabulary)."""

    def __init__(
        self,
        domain: Sequence[str],
        known: Iterable[str] = (),
        *,
        min_general: int = 5,
        wordnet_root: Path = WORDNET_DIR,
    ) -> None:
        self.domain = [w.lower() for w in domain]
        self._rank = {w: i for i, w in reversed(list(enumerate(self.domain)))}
        self.min_general = min_general
        self._english = _english_checker()
        self._frequency = self._english.word_frequency
        self._known = (
            set(self._frequency.dictionary)
            | wordnet_words(Path(wordnet_root))
            | {w.lower() for w in known if w.isalpha()}
            | set(self._rank)
        )
        self._memo: dict[str, str] = {}

    def fingerprint(self) -> str:
        """A short digest of the dictionaries and the rule (part of the text cache key)."""
        import spellchecker

        h = hashlib.sha256()
        h.update(repr((self.domain, self.min_general, len(self._known))).encode())
        h.update(getattr(spellchecker, "__version__", "?").encode())
        return h.hexdigest()[:12]

    def word(self, word: str) -> str:
        """``word`` as meant: itself when known, else its correction (or itself when none)."""
        w = word.lower()
        if len(w) < 3 or not (w.isascii() and w.isalpha()) or w in self._known:
            return word
        fixed = self._memo.get(w)
        if fixed is None:
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            fixed = self._memo[w] = self._correct(w)
        return word if fixed == w else _same_case(fixed, word)

    def _correct(self, w: str) -> str:
        near = [c for c in self._english.edit_distance_1(w) if c.isalpha()]
        in_domain = [c for c in near if c in self._rank]
        if in_domain:
            return min(in_domain, key=lambda c: self._rank[c])
        if len(w) < self.min_general:
            return w
        english = [c for c in near if c in self._frequency]
        if not english:
            return w
        return min(english, key=lambda c: (-self._frequency[c], c))

    def __call__(self, text: str) -> str:
        return WORD.sub(lambda m: self.word(m.group(0)), text)

    def batch(self, texts: Sequence[str]) -> list[str]:
        return [self(t) for t in texts]
