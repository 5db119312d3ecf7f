"""Learnable attribute weights (AW) and the lexicons that label texts with attributes.

Two realisations (docs/method.md, "Attribute weights"), both keeping the gallery side query-independent so that one
index serves every query:

- ``gate``: ``g(m) = softplus(w_0) + sum_a alpha_a(m) softplus(w_a)``, ``q* = normalise(q ⊙ g)``;
  the gallery is unchanged (``<q ⊙ g, t> `` ranks like ``<q ⊙ g, t ⊙ 1>``).
- ``subspace``: projections ``P_a`` give attribute embeddings on both sides; gallery tokens become
  ``[t ; P_color t ; P_shape t]`` and the query ``[q ; alpha_color P_color q ; alpha_shape P_shape q]``
  (each block normalised), so a single inner product scores it.

``alpha_a(m) = sigmoid(W_a h + b_a)`` is multi-label: a text can change colour AND shape. The
attribute loss ``L_attr`` that trains them is :class:`dqecir.losses.AttributeLoss`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dqecir.config import ConfigError

_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(x) = 1


class AttributeWeights(nn.Module):
    def __init__(
        self,
        mode: str,
        dim: int,
        hidden_dim: int,
        attributes: Sequence[str],
        subspace_dim: int = 64,
    ) -> None:
        super().__init__()
        if mode not in ("gate", "subspace"):
            raise ValueError(f"attribute_weights must be gate or subspace, got {mode!r}")
        if not attributes:
            raise ValueError("attribute weights need at least one attribute")
        self.mode = mode
        self.attributes = list(attributes)
        self.dim = dim
        self.relevance = nn.Linear(hidden_dim, len(self.attributes))
        if mode == "gate":
            self.w0 = nn.Parameter(torch.full((dim,), _SOFTPLUS_ONE))
            self.w = nn.Parameter(torch.full((len(self.attributes), dim), _SOFTPLUS_ONE))
        else:
            proj = torch.randn(len(self.attributes), subspace_dim, dim) / math.sqrt(dim)
            self.proj = nn.Parameter(proj)
        self.subspace_dim = subspace_dim

    @property
    def out_dim(self) -> int:
        if self.mode == "gate":
            return self.dim
        return self.dim + len(self.attributes) * self.subspace_dim

    def relevance_logits(self, h: torch.Tensor) -> torch.Tensor:
        """``[B, A]`` logits of ``alpha``."""
        return self.relevance(h.float())

    def attribute_space(self, x: torch.Tensor, a: int) -> torch.Tensor:
        """Embedding of ``x`` (``[..., d]``) in attribute ``a``'s weighted subspace, normalised."""
        if self.mode == "gate":
            return F.normalize(x * F.softplus(self.w[a]), dim=-1)
        return F.normalize(x @ self.proj[a].T, dim=-1)

    def query(self, q: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted query ``q*`` and the relevance ``alpha`` ``[B, A]``."""
        alpha = torch.sigmoid(self.relevance_logits(h))
        return self.weighted(q, alpha), alpha

    def weighted(self, q: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """``q*`` from the backbone's query ``q`` and a given relevance ``alpha`` ``[B, A]``."""
        q = q.float()
        if self.mode == "gate":
            g = F.softplus(self.w0) + alpha @ F.softplus(self.w)
            return F.normalize(q * g, dim=-1)
        blocks = [q] + [
            alpha[:, a : a + 1] * self.attribute_space(q, a) for a in range(len(self.attributes))
        ]
        return F.normalize(torch.cat(blocks, dim=-1), dim=-1)

    def gallery(self, tokens: torch.Tensor) -> torch.Tensor:
        """Gallery tokens ``[B, Nt, d]`` -> what the index stores ``[B, Nt, out_dim]``."""
        if self.mode == "gate":
            return tokens
        blocks = [tokens.float()] + [
            self.attribute_space(tokens.float(), a) for a in range(len(self.attributes))
        ]
        return torch.cat(blocks, dim=-1) / math.sqrt(1 + len(self.attributes))


def _deletions(word: str) -> set[str]:
    """``word`` and every string one letter shorter (the symmetric-delete neighbourhood)."""
    return {word} | {word[:i] + word[i + 1 :] for i in range(len(word))}


class Lexicon:
    """Per-benchmark word lists that mark an attribute in a text (data, not code).

    ``words[attribute] = {value: [phrases...]}``; a text mentions an attribute when one of its
    phrases occurs as whole words, or, failing that, when one of its words is one typo away
    (a letter dropped, added, replaced or two swapped) from a phrase's head word of at least
    ``fuzzy_min_len`` letters ("pinnk", "colourfull", "sneakr"; real captions have such typos).
    ``fuzzy_min_len=0`` turns that off. The value a text names is the first phrase found (for
    the optional value loss).
    """

    def __init__(
        self, words: Mapping[str, Mapping[str, Sequence[str]]], fuzzy_min_len: int = 5
    ) -> None:
        self.words = {a: {v: list(p) for v, p in vals.items()} for a, vals in words.items()}
        self.fuzzy_min_len = fuzzy_min_len
        self._patterns: dict[str, list[tuple[str, re.Pattern[str]]]] = {}
        self._fuzzy: dict[str, set[str]] = {}
        self._alternations: dict[str, tuple[re.Pattern[str] | None, dict[str, str]]] = {}
        for a, vals in self.words.items():
            pats = []
            heads: set[str] = set()
            for v, phrases in vals.items():
                for ph in phrases:
                    pats.append((v, re.compile(r"\b" + re.escape(ph.lower()) + r"\b")))
                    head = ph.lower().split()[-1] if ph.split() else ""
                    if fuzzy_min_len and len(head) >= fuzzy_min_len and head.isalpha():
                        heads |= _deletions(head)
            self._patterns[a] = pats
            self._fuzzy[a] = heads

    def _fuzzy_hit(self, text: str, attribute: str) -> bool:
        heads = self._fuzzy.get(attribute)
        if not heads:
            return False
        for w in re.findall(r"[a-z]+", text):
            if len(w) >= self.fuzzy_min_len - 1 and not heads.isdisjoint(_deletions(w)):
                return True
        return False

    @property
    def attributes(self) -> list[str]:
        return list(self.words)

    def values(self, attribute: str) -> list[str]:
        return list(self.words.get(attribute, {}))

    def labels(self, text: str, attributes: Sequence[str]) -> list[float]:
        """1.0 per attribute that ``text`` mentions (a phrase as whole words, or a typo of a
        head word), else 0.0. One alternation of every phrase per attribute: the same answer
        as searching each phrase alone, in one scan (the demo's 74,605 train captions against
        about 580 phrases took 16.3 s one phrase at a time, 1.6 s so)."""
        t = text.lower()
        out = []
        for a in attributes:
            pattern = self._alternation(a)[0]
            hit = pattern is not None and pattern.search(t) is not None
            out.append(float(hit or self._fuzzy_hit(t, a)))
        return out

    def named_values(self, text: str, attribute: str) -> set[str]:
        """Every value of ``attribute`` whose phrases occur in ``text`` as whole words (the
        longest phrase wins where two overlap: "dark red" is not also "red")."""
        pattern, value_of = self._alternation(attribute)
        if pattern is None:
            return set()
        return {value_of[m.group(0)] for m in pattern.finditer(text.lower())}

    def _alternation(self, attribute: str) -> tuple[re.Pattern[str] | None, dict[str, str]]:
        cached = self._alternations.get(attribute)
        if cached is None:
            value_of = {
                ph.lower(): v
                for v, phrases in self.words.get(attribute, {}).items()
                for ph in phrases
            }
            phrases = sorted(value_of, key=len, reverse=True)
            pattern = (
                re.compile(r"\b(?:" + "|".join(re.escape(ph) for ph in phrases) + r")\b")
                if phrases
                else None
            )
            cached = self._alternations[attribute] = (pattern, value_of)
        return cached

    def value(self, text: str, attribute: str) -> str | None:
        t = text.lower()
        best: tuple[int, str] | None = None
        for v, p in self._patterns.get(attribute, []):
            m = p.search(t)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), v)
        return best[1] if best else None


LEXICONS = Path(__file__).resolve().parents[1] / "lexicons"
"""The lexicons shipped with the package (``fashioniq``, ``cirr``)."""


def load_lexicon(spec: str, root: str | Path = "") -> Lexicon | None:
    """The attribute lexicon ``spec`` names: ``benchmark`` (the ``lexicon.yaml`` an embedded
    benchmark writes into its layout folder ``root``: its train phrasing only), a name under
    ``dqecir/lexicons`` or a YAML path; None for an empty spec."""
    if not spec:
        return None
    import yaml

    if spec == "benchmark":
        path = Path(root) / "lexicon.yaml"
    else:
        path = Path(spec)
        if not path.suffix:
            path = LEXICONS / f"{spec}.yaml"
    if not path.is_file():
        raise ConfigError(f"lexicon {spec!r}: no file {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"lexicon {path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"lexicon {path}: expected attribute -> value -> phrases")
    return Lexicon(data)


def value_labels(
    lexicon: Lexicon | None, texts: Sequence[str], attributes: Sequence[str]
) -> torch.Tensor:
    """``[len(texts), A]`` long: the index (in ``lexicon.values(a)``) of the one value of
    attribute ``a`` that each text names, -1 where it names none or several ("not red but blue"
    names two: which one the target has is not read from words) — the labels of the value term
    of ``L_attr`` (:class:`dqecir.losses.AttributeLoss`)."""
    out = torch.full((len(texts), max(1, len(attributes))), -1, dtype=torch.long)
    if lexicon is None:
        return out
    for a, name in enumerate(attributes):
        index = {v: i for i, v in enumerate(lexicon.values(name))}
        for row, text in enumerate(texts):
            named = lexicon.named_values(text, name)
            if len(named) == 1:
                out[row, a] = index[next(iter(named))]
    return out


def text_labels(
    lexicon: Lexicon | None, texts: Sequence[str], attributes: Sequence[str]
) -> torch.Tensor:
    """``[len(texts), A]`` 0/1 labels: which attributes each text mentions (the targets of the
    attribute relevance in ``L_attr``); zeros without a lexicon or attributes."""
    if lexicon is None or not attributes:
        return torch.zeros(len(texts), max(1, len(attributes)))
    return torch.tensor([lexicon.labels(t, attributes) for t in texts])
