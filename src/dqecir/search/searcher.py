"""The :class:`Searcher`: a model, the index built with it and an engine, turning a (reference
image, text) pair into ranked index images, with the attribute relevance of the text and the
effect of each of its words. ``dqecir search`` and the HTTP app (:mod:`dqecir.serve.app`) both
go through :meth:`Searcher.query`."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqecir.data.features import read_queries
from dqecir.data.images import DEFAULT_MAX_PIXELS, load_image, to_tensor
from dqecir.device import resolve_device
from dqecir.errors import DqecirError, QueryError
from dqecir.models.cir import load_model
from dqecir.search.engines import SearchEngine, make_engine
from dqecir.search.index import load_index
from dqecir.similarity import similarity


def check_query(
    text: str, k: int, *, max_chars: int | None = None, max_k: int | None = None
) -> None:
    """Refuse what no search can answer, with the same words everywhere (``dqecir search``,
    the HTTP API, :meth:`Searcher.search`): empty text, text that is not valid UTF-8 (a
    command line given undecodable bytes), ``k < 1``, and the server's limits when given."""
    if not text.strip():
        raise QueryError("text is empty: describe the change you want")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise QueryError(
            f"text is not valid UTF-8 (undecodable byte at character {e.start + 1})"
        ) from None
    if max_chars is not None and len(text) > max_chars:
        raise QueryError(f"text has {len(text)} characters, the limit is {max_chars}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or (max_k and k > max_k):
        bound = f"between 1 and {max_k}" if max_k else "at least 1"
        raise QueryError(f"k must be {bound}, got {k}")


@dataclass(frozen=True)
class Hit:
    rank: int
    id: str
    path: str
    score: float


@dataclass(frozen=True)
class WordEffect:
    """How much one word of the text holds the top results up (see :meth:`Searcher.search`)."""

    word: str
    start: int
    """Character span ``[start, end)`` of the word in the query text."""
    end: int
    effect: float
    """Mean drop of the top results' scores when the query is encoded without this word
    (positive: the word pulls them up; negative: it holds them down)."""


_WORD = re.compile(r"\S+")
MAX_EFFECT_WORDS = 64
"""Words explained per query (each costs one more text encoding)."""


def text_words(text: str) -> list[tuple[str, int, int]]:
    """The words of a query text as ``(word, start, end)``: runs of non-space characters
    (punctuation stays with its word, as it is removed with it)."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def without_word(text: str, start: int, end: int) -> str:
    """``text`` with the span ``[start, end)`` left out and the spaces around it joined."""
    return " ".join((text[:start] + " " + text[end:]).split())


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    relevance: dict[str, float] | None
    """How much the text is about each attribute (``alpha``, from the attribute weights), plus
    ``other = 1 - max(alpha)``; None when the model has no attribute weights."""
    word_effects: list[WordEffect] | None = None
    """Leave-one-word-out effect of each word on these hits, when asked for."""
    reference: Path | None = None
    """The reference image file (:meth:`Searcher.query`)."""
    excluded: tuple[str, ...] = ()
    """Index ids left out of the hits (the reference, when it is an index image)."""

    def to_text(self) -> str:
        """Ranked lines ``rank  score  path``, a relevance line and a word-effects line, for a
        terminal."""
        lines = [f"{h.rank:>4}  {h.score:.4f}  {h.path}" for h in self.hits]
        if self.relevance is not None:
            rel = "  ".join(f"{a} {v:.2f}" for a, v in self.relevance.items())
            lines.append(f"attribute relevance of the text: {rel}")
        if self.word_effects:
            eff = "  ".join(f"{w.word} {w.effect:+.3f}" for w in self.word_effects)
            lines.append(f"word effects (score drop without the word): {eff}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": [h.__dict__ for h in self.hits],
            "relevance": self.relevance,
            "word_effects": (
                [w.__dict__ for w in self.word_effects] if self.word_effects is not None else None
            ),
        }


class Searcher:
    """A model, the index built with it and an engine: (image, text) -> ranked index images.

    Thread-safe for concurrent :meth:`search` calls (the model runs in inference mode, the
    engines keep no per-call state).
    """

    def __init__(self, model: Any, index: Any, engine: SearchEngine, device: torch.device):
        self.model, self.index, self.engine, self.device = model, index, engine, device

    @classmethod
    def open(
        cls,
        index_dir: str | Path,
        *,
        checkpoint: str | Path | None = None,
        engine: str = "exact",
        device: str | torch.device = "cpu",
        verify: bool = True,
        options: Any | None = None,
    ) -> Searcher:
        """Load the index, its checkpoint (``checkpoint`` or the one the manifest names; its
        sha256 must match) and build the registered engine ``engine`` with ``options`` (its
        options dataclass, e.g. :class:`~dqecir.search.engines.qdrant.QdrantOptions` naming the
        server; None: its defaults)."""
        index = load_index(index_dir, verify=verify)
        ck = index.check_checkpoint(checkpoint if checkpoint is not None else index.checkpoint_path)
        device = resolve_device(device)
        model, _ = load_model(ck, device)
        preprocess = json.loads(json.dumps(model.backbone.preprocess.to_dict()))
        if model.embed_dim != index.dim or preprocess != index.manifest["preprocess"]:
            raise DqecirError(
                f"index {index.root}: dimension or preprocessing differs from checkpoint {ck}"
            )
        return cls(model, index, make_engine(engine, index.embeddings, options, index), device)

    @property
    def attributes(self) -> list[str]:
        return list(self.model.attributes)

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``q_star`` ``[B, D]`` (and ``alpha`` ``[B, A]`` with attribute weights) for a batch
        of preprocessed reference images and their texts."""
        feats = self.model.backbone.image_features(pixels.to(self.device))
        return self._encode_texts(feats, texts)

    @torch.inference_mode()
    def _encode_texts(self, feats: torch.Tensor, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        bb = self.model.backbone
        tfeats = {
            k: v.to(self.device) for k, v in bb.text_features(read_queries(bb, texts)).items()
        }
        out = self.model.query(feats, tfeats)
        return {k: v.float().cpu() for k, v in out.items() if k in ("q_star", "alpha")}

    def search(
        self,
        pixels: torch.Tensor,
        text: str,
        k: int = 10,
        exclude: Sequence[str] = (),
        *,
        word_effects: bool = False,
    ) -> SearchResult:
        """Top ``k`` for one reference (``pixels`` ``[3, S, S]``, from
        :func:`dqecir.data.images.to_tensor`) and text; ids in ``exclude`` are left out (the
        reference itself when it comes from the index).

        With ``word_effects``, also the leave-one-word-out effect of each word (at most
        :data:`MAX_EFFECT_WORDS`) on these hits: the query is encoded again without the word,
        and its effect is the mean drop of the hits' scores (exact, max over their gallery
        tokens). Cost: one more text encoding and query fusion per word, in the same batch as
        the query itself; the image features are computed once; no further index scan (only
        the k hits are rescored)."""
        if not word_effects:
            return self.search_batch(pixels.unsqueeze(0), [text], k, [exclude])[0]
        self._check(text, k)
        words = text_words(text)[:MAX_EFFECT_WORDS]
        variants = [text] + [without_word(text, a, b) for _, a, b in words]
        with torch.inference_mode():
            feats = self.model.backbone.image_features(pixels.unsqueeze(0).to(self.device))
            enc = self._encode_texts(feats.expand(len(variants), *feats.shape[1:]), variants)
        first = {key: v[:1] for key, v in enc.items()}
        result = self._answer(first, k, [exclude])[0]
        effects = self._effects(words, enc["q_star"], result.hits)
        return SearchResult(result.hits, result.relevance, effects)

    def query(
        self,
        text: str,
        k: int = 10,
        *,
        file: str | Path | None = None,
        image_id: str | None = None,
        keep_reference: bool = False,
        word_effects: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> SearchResult:
        """Top ``k`` for a reference given as an image ``file`` or as an ``image_id`` of the
        index (exactly one), and a text: what ``dqecir search`` and the HTTP API both answer.

        The reference, when it is an index image (an id, or a file under the index's images
        folder that is indexed), is left out of the hits unless ``keep_reference``. The image
        is read by :func:`~dqecir.data.images.load_image` (``max_pixels``: the server's upload
        limit) and preprocessed as the model's checkpoint says. A reading problem is a
        :class:`~dqecir.errors.DataError` naming the file; an unknown id a
        :class:`~dqecir.errors.QueryError`."""
        self._check(text, k)
        if (file is None) == (image_id is None):
            raise QueryError("give exactly one reference: an image file or an image_id")
        if image_id is not None:
            if image_id not in self.index:
                raise QueryError(f"no image {image_id!r} in the index")
            path, own = self.index.path_of(image_id), image_id
        else:
            path = Path(file)
            own = self.index.id_of(path)
        img = load_image(path, max_pixels=max_pixels)
        pixels = to_tensor(img, self.model.backbone.preprocess)
        exclude = (own,) if own is not None and not keep_reference else ()
        result = self.search(pixels, text, k, exclude, word_effects=word_effects)
        return replace(result, reference=path, excluded=exclude)

    def word_effects(
        self, pixels: torch.Tensor, text: str, hits: Sequence[Hit]
    ) -> list[WordEffect]:
        """The word effects of ``text`` on given ``hits`` (see :meth:`search`, which computes
        them with the query in one batch)."""
        words = text_words(text)[:MAX_EFFECT_WORDS]
        variants = [text] + [without_word(text, a, b) for _, a, b in words]
        with torch.inference_mode():
            feats = self.model.backbone.image_features(pixels.unsqueeze(0).to(self.device))
            enc = self._encode_texts(feats.expand(len(variants), *feats.shape[1:]), variants)
        return self._effects(words, enc["q_star"], hits)

    def _effects(
        self, words: list[tuple[str, int, int]], q: torch.Tensor, hits: Sequence[Hit]
    ) -> list[WordEffect]:
        """``q`` ``[1 + words, D]``: the query, then the query without each word."""
        if not words or not hits:
            return []
        rows = [self.index.row(h.id) for h in hits]
        tokens = torch.from_numpy(np.asarray(self.index.embeddings[rows], dtype=np.float32))
        scores = similarity(q, tokens)  # [1 + words, hits]
        drop = (scores[:1] - scores[1:]).mean(1)
        return [
            WordEffect(w, a, b, float(d)) for (w, a, b), d in zip(words, drop.tolist(), strict=True)
        ]

    def _check(self, text: str, k: int) -> None:
        check_query(text, k)
        if len(self.index) == 0:
            raise QueryError(f"index {self.index.root} holds no images (all were unreadable?)")

    def search_batch(
        self,
        pixels: torch.Tensor,
        texts: Sequence[str],
        k: int = 10,
        exclude: Sequence[Sequence[str]] | None = None,
    ) -> list[SearchResult]:
        for text in texts:
            self._check(text, k)
        return self._answer(self.encode(pixels, texts), k, exclude)

    def _answer(
        self,
        enc: dict[str, torch.Tensor],
        k: int,
        exclude: Sequence[Sequence[str]] | None,
    ) -> list[SearchResult]:
        """Results of encoded queries (``q_star`` ``[Q, D]``, ``alpha``)."""
        n = len(enc["q_star"])
        exclude = exclude or [()] * n
        extra = max((len(e) for e in exclude), default=0)
        scores, idx = self.engine.search(enc["q_star"], k + extra)
        alpha = enc.get("alpha")
        return [
            SearchResult(
                self._hits(scores[r], idx[r], k, set(exclude[r])),
                self._relevance(alpha[r]) if alpha is not None else None,
            )
            for r in range(n)
        ]

    def _hits(self, scores: torch.Tensor, idx: torch.Tensor, k: int, skip: set[str]) -> list[Hit]:
        hits: list[Hit] = []
        for s, i in zip(scores.tolist(), idx.tolist(), strict=True):
            if i < 0 or len(hits) == k:
                break
            image_id = self.index.ids[i]
            if image_id in skip:
                continue
            hits.append(Hit(len(hits) + 1, image_id, str(self.index.images_root / image_id), s))
        return hits

    def _relevance(self, alpha: torch.Tensor) -> dict[str, float]:
        rel = {a: float(v) for a, v in zip(self.attributes, alpha.tolist(), strict=True)}
        rel["other"] = 1.0 - max(rel.values(), default=0.0)
        return rel
