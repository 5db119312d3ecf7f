"""Captions: the held-out split of forms and words, what each variant may use, mentions, typos."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from dqecir.data.synthetic.phrasing import (
    SIDES,
    VARIANTS,
    Phrasing,
    PhrasingParams,
    split_list,
    typo,
)

REFS = {
    "fmnist": ({"color": "red", "shape": "coat"}, {"color": "blue", "shape": "sneaker"}),
    "shapes": (
        {"color": "red", "shape": "star", "size": "small"},
        {"color": "blue", "shape": "circle", "size": "large"},
    ),
}
CLEAN = PhrasingParams(typo_p=0.0, case_p=(1.0, 0.0, 0.0, 0.0))


def _new(benchmark: str, kind: str) -> tuple[dict, dict]:
    ref, other = REFS[benchmark]
    new = dict(ref)
    if kind in ("color", "both"):
        new["color"] = other["color"]
    if kind in ("shape", "both"):
        new["shape"] = other["shape"]
    if kind == "size":
        new["size"] = other["size"]
    return ref, new


def _kinds(benchmark: str) -> list[str]:
    return ["color", "shape", "both"] + (["size"] if benchmark == "shapes" else [])


def test_split_list_is_disjoint_and_keeps_the_first():
    rng = np.random.default_rng(0)
    for n in range(2, 30):
        items = [f"w{i}" for i in range(n)]
        tr, ho = split_list(items, rng, 0.3, keep_first=True)
        assert set(tr) | set(ho) == set(items) and not set(tr) & set(ho)
        assert tr[0] == "w0" and len(ho) >= 1 and len(tr) >= 1
    assert split_list(["only"], rng, 0.3) == (("only",), ())


@pytest.mark.parametrize("benchmark", ["fmnist", "shapes"])
def test_sides_are_disjoint_and_every_class_keeps_words_on_both(benchmark):
    ph = Phrasing(benchmark, seed=3)
    tr, ho = ph.sides["train"], ph.sides["heldout"]
    for attr, values in tr.words.items():
        for value, words in values.items():
            assert words[0] == value  # the class name stays in train
            assert words and ho.words[attr][value], (attr, value)
            assert not set(words) & set(ho.words[attr][value])
    for name in tr.forms:
        assert not {f.text for f in tr.forms[name]} & {f.text for f in ho.forms[name]}
        assert tr.forms[name] and ho.forms[name], name
    for name in ("prefix", "suffix", "join", "things"):
        assert not set(getattr(tr, name)) & set(getattr(ho, name))
    summary = ph.summary()
    for side in SIDES:
        for kind, n in summary[side]["surface_forms"].items():
            assert n >= 300, (side, kind)  # hundreds of distinct forms per kind, both sides


def test_split_depends_on_the_seed():
    a, b = Phrasing("fmnist", seed=0), Phrasing("fmnist", seed=1)
    assert a.sides["heldout"].words != b.sides["heldout"].words
    again = Phrasing("fmnist", seed=0)
    assert a.sides["heldout"].words == again.sides["heldout"].words


def _side_words(ph: Phrasing, side: str) -> set[str]:
    s = ph.sides[side]
    words = {w for vals in s.words.values() for ws in vals.values() for w in ws}
    return words | set(s.things)


@pytest.mark.parametrize("benchmark", ["fmnist", "shapes"])
def test_seen_captions_never_use_a_heldout_word(benchmark):
    """A held-out word may only appear inside a train word of the same caption."""
    ph = Phrasing(benchmark, seed=0, params=CLEAN)
    held = sorted(_side_words(ph, "heldout") - _side_words(ph, "train"), key=len)
    train_words = _side_words(ph, "train")
    rng = np.random.default_rng(0)
    for i in range(1500):
        kind = _kinds(benchmark)[i % len(_kinds(benchmark))]
        text = ph.caption(kind, *_new(benchmark, kind), rng, "seen").text
        for w in held:
            if re.search(rf"\b{re.escape(w)}\b", text):
                assert any(
                    w in t and re.search(rf"\b{re.escape(t)}\b", text) for t in train_words
                ), (w, text)


@pytest.mark.parametrize("benchmark", ["fmnist", "shapes"])
def test_variants_draw_words_and_forms_from_their_sides(benchmark):
    """Captions fill each slot from the variant's word side: with only one word per value on
    each side the words used are known exactly."""
    ph = Phrasing(benchmark, seed=0, params=CLEAN)
    rng = np.random.default_rng(1)
    ref, new = _new(benchmark, "color")
    for variant, (_, words_side) in VARIANTS.items():
        allowed = set(ph.sides[words_side].words["color"]["blue"])
        other = set(
            ph.sides["train" if words_side == "heldout" else "heldout"].words["color"]["blue"]
        )
        hits = 0
        for _ in range(200):
            text = ph.caption("color", ref, new, rng, variant).text
            hits += any(re.search(rf"\b{re.escape(w)}\b", text) for w in allowed)
            assert not any(
                re.search(rf"\b{re.escape(w)}\b", text)
                and not any(w in a for a in allowed if re.search(rf"\b{re.escape(a)}\b", text))
                for w in other
            ), (variant, text)
        assert hits >= 190, variant


@pytest.mark.parametrize("benchmark", ["fmnist", "shapes"])
def test_mentions_cover_what_the_query_changes(benchmark):
    ph = Phrasing(benchmark, seed=0, params=CLEAN)
    rng = np.random.default_rng(2)
    changes = {"color": {"color"}, "shape": {"shape"}, "both": {"color", "shape"}, "size": {"size"}}
    for kind in _kinds(benchmark):
        for variant in VARIANTS:
            for _ in range(100):
                cap = ph.caption(kind, *_new(benchmark, kind), rng, variant)
                assert changes[kind] <= set(cap.mentions), (kind, cap)


def test_typo_changes_one_word_by_one_edit():
    rng = np.random.default_rng(0)
    for _ in range(200):
        text = "make the jacket crimson please"
        out = typo(text, rng)
        a, b = text.split(), out.split()
        assert len(a) == len(b)
        diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
        assert len(diff) <= 1
        if diff:
            x, y = diff[0]
            assert abs(len(x) - len(y)) <= 1
    assert typo("a b c", rng) == "a b c"


def test_lexicon_holds_train_words_only():
    ph = Phrasing("fmnist", seed=0)
    lex = ph.lexicon("train")
    held = ph.sides["heldout"].words
    for attr, values in lex.items():
        for value, words in values.items():
            assert not set(words) & set(held[attr][value]), (attr, value)
    assert "sneakers" in lex["shape"]["sneaker"]  # plurals of footwear are labelled too


def test_params_change_the_mix():
    rng = np.random.default_rng(0)
    ph = Phrasing("fmnist", seed=0, params=dataclasses.replace(CLEAN, prefix_p=1.0))
    ref, new = _new("fmnist", "color")
    forms = {f.text.split(" ", 1)[0] for f in ph.sides["train"].forms["color"]}
    texts = [ph.caption("color", ref, new, rng).text for _ in range(50)]
    prefixes = set(ph.sides["train"].prefix) | set(ph.sides["train"].polite_prefix)
    assert sum(any(t.startswith(p.lower()) for p in prefixes) for t in texts) >= 45
    assert forms


def test_colour_words_follow_the_survey_frequency():
    """Colour names are drawn in proportion to 1 / (xkcd survey rank): "navy" (a top-100 name)
    comes up far more often than a rare one of the same class and side."""
    ph = Phrasing("fmnist", seed=0)
    vocab = ph.vocabulary
    rng = np.random.default_rng(0)
    side = ph.sides["train"]
    words = [w for w in side.words["color"]["blue"] if w != "blue"]
    common = max(words, key=vocab.weight)
    rare = min(words, key=vocab.weight)
    assert vocab.weight(common) > 10 * vocab.weight(rare)
    draws = [ph._word(side, "color", "blue", rng) for _ in range(3000)]
    assert draws.count(common) > 5 * max(1, draws.count(rare))
    assert draws.count("blue") == pytest.approx(0.35 * 3000, rel=0.15)
