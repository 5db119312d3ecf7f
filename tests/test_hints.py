"""WordNet hints (dqecir.data.hints): the rule on a hand-made graph, then on the real database
and the benchmarks' garment / object classes, and through the lite backbone."""

from __future__ import annotations

import pytest
import torch

from dqecir.data.hints import HINT_SOURCES, LexicalHints, NounGraph, load_hints
from dqecir.data.synthetic.vocabulary import load_vocabulary, read_data_file
from dqecir.errors import DataError

# A tiny noun graph: clothing <- coat (class) <- jacket <- anorak; footwear <- boot (class);
# "jumper" has a sense under coat and one under the "dress" class; "flannel" a sense under
# "trousers"; "bike" reaches nothing.
SENSES = {
    "coat": ("c",), "jacket": ("j",), "anorak": ("a",), "boot": ("b",), "dress": ("d",),
    "jumper": ("j2", "d2"), "flannel": ("f",), "trousers": ("t",), "shirt": ("s",),
    "bike": ("x",), "tank_top": ("tt",), "tank": ("tk",), "top": ("tp",), "louse": ("l",),
}  # fmt: skip
HYPERNYMS = {
    "clothing": (), "c": ("clothing",), "j": ("c",), "a": ("j",), "b": ("clothing",),
    "d": ("clothing",), "j2": ("c",), "d2": ("d",), "f": ("t",), "t": ("clothing",),
    "s": ("clothing",), "x": (), "tt": ("s",), "tk": (), "tp": ("clothing",), "l": ("a",),
}  # fmt: skip
CLASSES = {"coat": ["c"], "ankle boot": ["b"], "dress": ["d"], "trousers": ["t"], "shirt": ["s"]}


@pytest.fixture
def toy() -> LexicalHints:
    return LexicalHints(CLASSES, NounGraph(SENSES, HYPERNYMS, {"lice": "louse"}))


def test_a_hyponym_gets_its_class_and_others_are_left_alone(toy: LexicalHints) -> None:
    assert toy("swap it for an anorak") == "swap it for an anorak (coat)"
    assert toy("make it a bike") == "make it a bike"
    assert toy("same but boots") == "same but boots (ankle boot)"  # plural rule
    assert toy("two lice") == "two lice (coat)"  # noun.exc irregular plural


def test_two_classes_or_the_class_name_itself_give_no_hint(toy: LexicalHints) -> None:
    assert toy("is a jumper") == "is a jumper"  # a coat sense and a dress sense
    assert toy("make it a coat") == "make it a coat"
    assert toy("a long dress") == "a long dress"


def test_compounds_longest_first_and_modifiers_dropped(toy: LexicalHints) -> None:
    assert toy("a tank top please") == "a tank top (shirt) please"
    assert toy("a flannel shirt") == "a flannel shirt"  # flannel modifies shirt
    assert toy("flannel, not a shirt") == "flannel (trousers), not a shirt"


def test_depth_limit_and_case_and_idempotence() -> None:
    g = NounGraph(SENSES, HYPERNYMS, {})
    assert LexicalHints(CLASSES, g, max_depth=1)("an anorak") == "an anorak"  # 2 steps away
    h = LexicalHints(CLASSES, g)
    once = h("An ANORAK and Boots")
    assert once == "An ANORAK (coat) and Boots (ankle boot)"
    assert h(once) == once


def test_bad_class_maps_are_refused() -> None:
    g = NounGraph(SENSES, HYPERNYMS, {})
    with pytest.raises(DataError, match="no WordNet noun synset zz"):
        LexicalHints({"coat": ["zz"]}, g)
    with pytest.raises(DataError, match="two classes"):
        LexicalHints({"coat": ["c"], "jacket": ["c"]}, g)
    with pytest.raises(ValueError, match="text_hints"):
        load_hints("cirr")


@pytest.mark.parametrize("benchmark", ["fmnist", "shapes"])
def test_real_wordnet_hints_never_name_a_wrong_class(benchmark: str) -> None:
    """On the real database: no word of a class's list is hinted as another class, and every
    word tagged ``wordnet`` (a lemma at most 2 levels under a class synset) reaches its class
    unless its senses also reach a second one."""
    hints = load_hints(benchmark)
    vocab = load_vocabulary(benchmark)
    tags = {
        next(iter(e)): e[next(iter(e))]
        for c in read_data_file(HINT_SOURCES[benchmark])["classes"].values()
        for e in c["words"]
        if isinstance(e, dict)
    }
    reached = 0
    for value, words in vocab.words["shape"].items():
        for word in words:
            for _, _, name in hints.matches(word):
                assert name == value, (word, name, value)
            if tags.get(word) == "wordnet" and hints.lookup(word) is not None:
                reached += 1
    assert reached >= 15


def test_real_wordnet_examples() -> None:
    h = load_hints("fmnist")
    assert h("swap it for an anorak") == "swap it for an anorak (coat)"
    assert h("Make it a Tank Top") == "Make it a Tank Top (t-shirt)"
    assert h("same but as boots") == "same but as boots (ankle boot)"
    assert h("make it red, keep the sleeves") == "make it red, keep the sleeves"
    assert h("a flannel shirt") == "a flannel shirt"


def test_lite_reads_hinted_text_and_keys_its_cache_by_them() -> None:
    from dqecir.registry import create_backbone

    plain = create_backbone("lite", fusion="combiner", text_dtype="float32").eval()
    hinted = create_backbone(
        "lite", fusion="combiner", text_dtype="float32", text_hints="fmnist"
    ).eval()
    assert hinted.config()["text_hints"] == "fmnist"
    assert "hints=fmnist@" in hinted.text_cache_key()
    assert plain.text_cache_key() != hinted.text_cache_key()
    a = hinted.text_features(["swap it for an anorak"])
    b = plain.text_features(["swap it for an anorak (coat)"])
    assert torch.equal(a["mask"], b["mask"])
    assert torch.allclose(a["tokens"], b["tokens"], atol=1e-5)
    c = plain.text_features(["swap it for an anorak"])
    assert c["mask"].sum() < a["mask"].sum()
