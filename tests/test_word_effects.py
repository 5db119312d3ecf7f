"""Word effects (leave-one-word-out on the query embedding).

Whether the word naming the change has the largest effect is tested on a deterministic
construction, not on a trained checkpoint: the tiny backbone the tests train (a word-hash bag
of words, 1-20 epochs on 300 images, val mAP@10 about 11 %) has not learned what "red" means,
so which word moves its ranking most is noise (measured on the 48 colour / shape queries of the
tiny shapes test1: the word with the largest effect was a colour / shape word in 11 after 2
epochs and 13 after 20, about what picking a word at random gives). The construction below is a model whose query embedding is a
known function of the words: colour and shape words point along their own axes, other words
are small fixed vectors; the gallery holds every colour x shape. There the answer is known,
and the test checks that :meth:`Searcher.word_effects` finds it through the real search path
(encoding, engine, hits, rescoring). The trained `lite` model's behaviour is measured in
docs/usage-search.md.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from dqecir.search import ExactEngine, Index, Searcher
from dqecir.search.searcher import text_words, without_word

COLORS = ("red", "green", "blue")
SHAPES = ("circle", "square", "star")
DIM = len(COLORS) + len(SHAPES) + 2


def _axis(i: int) -> torch.Tensor:
    v = torch.zeros(DIM)
    v[i] = 1.0
    return v


def _word(word: str) -> torch.Tensor:
    word = word.strip(",.").lower()
    if word in COLORS:
        return _axis(COLORS.index(word))
    if word in SHAPES:
        return _axis(len(COLORS) + SHAPES.index(word))
    g = torch.Generator().manual_seed(zlib.crc32(word.encode()))
    return 0.05 * torch.randn(DIM, generator=g)  # filler words: small, fixed


class _Backbone:
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.reshape(len(pixels), DIM)  # the "image" is its embedding

    def text_features(self, texts: list[str]) -> dict[str, torch.Tensor]:
        bags = [sum((_word(w) for w in t.split()), torch.zeros(DIM)) for t in texts]
        return {"bag": torch.stack(bags)}


class _Model:
    """q = normalise(0.5 reference + sum of word vectors): the text says what changes."""

    backbone = _Backbone()
    attributes: list[str] = []

    def query(self, feats: torch.Tensor, text: dict[str, torch.Tensor]) -> dict:
        q = torch.nn.functional.normalize(0.5 * feats + text["bag"], dim=-1)
        return {"q_star": q}


def _item(color: str, shape: str) -> torch.Tensor:
    v = _axis(COLORS.index(color)) + _axis(len(COLORS) + SHAPES.index(shape))
    return torch.nn.functional.normalize(v, dim=0)


@pytest.fixture()
def searcher() -> Searcher:
    ids = [f"{c}-{s}.png" for c in COLORS for s in SHAPES]
    emb = torch.stack([_item(*i[:-4].split("-")) for i in ids]).unsqueeze(1).numpy()
    index = Index(root=Path("idx"), manifest={"images_root": "/images"}, ids=ids, embeddings=emb)
    return Searcher(_Model(), index, ExactEngine(emb), torch.device("cpu"))


@pytest.mark.parametrize(
    ("reference", "text", "change"),
    [
        (("blue", "circle"), "make it red", "red"),
        (("blue", "circle"), "same colour, but a star please", "star"),
        (("green", "square"), "I would like it in blue", "blue"),
        (("red", "star"), "turn the shape into a circle,", "circle,"),
    ],
)
def test_the_word_naming_the_change_has_the_largest_effect(searcher, reference, text, change):
    pixels = _item(*reference)
    result = searcher.search(pixels, text, k=3, word_effects=True)
    effects = result.word_effects
    assert [w.word for w in effects] == text.split()
    assert all(text[w.start : w.end] == w.word for w in effects)  # spans for the page
    best = max(effects, key=lambda w: w.effect)
    assert best.word == change, [(w.word, round(w.effect, 3)) for w in effects]
    others = [abs(w.effect) for w in effects if w is not best]
    assert best.effect > 3 * max(others)
    # the top hits carry the changed attribute; removing its word drops their scores
    target = change.strip(",")
    assert all(target in h.id for h in result.hits[:1])


def test_effect_is_the_mean_score_drop_of_the_hits(searcher):
    """Against a direct computation: encode the text without each word, score the hits."""
    pixels = _item("blue", "circle")
    text = "make it red"
    result = searcher.search(pixels, text, k=4, word_effects=True)
    gallery = torch.from_numpy(searcher.index.embeddings[:, 0])
    rows = [searcher.index.row(h.id) for h in result.hits]

    def scores(t: str) -> torch.Tensor:
        q = searcher.encode(pixels.unsqueeze(0), [t])["q_star"][0]
        return gallery[rows] @ q

    for w in result.word_effects:
        want = float((scores(text) - scores(without_word(text, w.start, w.end))).mean())
        assert w.effect == pytest.approx(want, abs=1e-6)
    plain = searcher.search(pixels, text, k=4)  # the same hits as without the effects
    assert plain.hits == result.hits
    again = searcher.word_effects(pixels, text, result.hits)
    assert [w.effect for w in again] == pytest.approx([w.effect for w in result.word_effects])


def test_words_and_removal_keep_punctuation_and_spacing():
    text = "  swap orange,  for blue "
    assert text_words(text) == [("swap", 2, 6), ("orange,", 7, 14), ("for", 16, 19),
                                ("blue", 20, 24)]  # fmt: skip
    assert without_word(text, 7, 14) == "swap for blue"
    assert without_word("red", 0, 3) == ""


def test_no_word_effects_unless_asked(searcher):
    result = searcher.search(_item("blue", "circle"), "make it red", k=2)
    assert result.word_effects is None and result.to_dict()["word_effects"] is None


def test_word_effects_cost_one_text_encoding_per_word(searcher, monkeypatch):
    """A search with word effects sends one batch of 1 + words texts through the text side
    and runs the image side once, as a plain search does."""
    calls = {"text": [], "image": 0}
    bb = searcher.model.backbone
    text_features, image_features = bb.text_features, bb.image_features

    def count_text(texts):
        calls["text"].append(len(texts))
        return text_features(texts)

    def count_image(pixels):
        calls["image"] += 1
        return image_features(pixels)

    monkeypatch.setattr(bb, "text_features", count_text)
    monkeypatch.setattr(bb, "image_features", count_image)
    searcher.search(_item("blue", "circle"), "make it a red star", k=3, word_effects=True)
    assert calls == {"text": [6], "image": 1}  # the query and its 5 variants, one batch
    searcher.search(_item("blue", "circle"), "make it a red star", k=3)
    assert calls == {"text": [6, 1], "image": 2}


def test_search_cli_json_has_word_effects(tiny_trained, tmp_path, capsys):
    import json

    from dqecir.cli import main
    from dqecir.search import build_index

    ck, bench = tiny_trained
    build_index(ck, bench / "test1", tmp_path / "index", progress=False)
    ref = sorted((bench / "test1").glob("*.png"))[0]
    argv = ["search", "--index", str(tmp_path / "index"), "--image", str(ref), "--text",
            "make it red", "-k", "4", "--json"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    effects = out["word_effects"]
    assert [w["word"] for w in effects] == ["make", "it", "red"]
    assert all(np.isfinite(w["effect"]) for w in effects)
    assert main([*argv[:-1], "--no-word-effects", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["word_effects"] is None
    assert main(argv[:-1]) == 0  # text output: one more line
    assert "word effects (score drop without the word): make " in capsys.readouterr().out


class _SpellingBackbone(_Backbone):
    """Reads a query's "rde" as "red", as the lite backbone's text_spelling would."""

    def read_queries(self, texts: list[str]) -> list[str]:
        return [" ".join("red" if w == "rde" else w for w in t.split()) for t in texts]


def test_search_reads_queries_through_the_backbones_read_queries(searcher, monkeypatch):
    pixels = _item("blue", "circle")
    typo = searcher.search(pixels, "make it rde", k=3)
    assert not typo.hits[0].id.startswith("red")  # read as written, "rde" is a filler word
    monkeypatch.setattr(_Model, "backbone", _SpellingBackbone())
    fixed = searcher.search(pixels, "make it rde", k=3)
    assert fixed.hits == searcher.search(pixels, "make it red", k=3).hits
    assert fixed.hits[0].id.startswith("red")
