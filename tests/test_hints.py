"""WordNet hints (dqecir.data.hints): the rule on a hand-made graph, then on the real database
and the benchmarks' garment / object classes, and through the lite backbone."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from dqecir.data.hints import (
    HINT_SOURCES,
    AdjectiveNouns,
    LexicalHints,
    NounGraph,
    load_hints,
)
from dqecir.data.synthetic.vocabulary import DATA_DIR, load_vocabulary, read_data_file
from dqecir.errors import DataError

# A tiny noun graph: clothing <- coat (class) <- jacket <- anorak; footwear <- boot (class);
# "jumper" has a sense under coat and one under the "dress" class; "flannel" a sense under
# "trousers"; "bike" reaches nothing.
SENSES = {
    "coat": ("c",), "jacket": ("j",), "anorak": ("a",), "boot": ("b",), "dress": ("d",),
    "jumper": ("j2", "d2"), "flannel": ("f",), "trousers": ("t",), "shirt": ("s",),
    "bike": ("x",), "tank_top": ("tt",), "tank": ("tk",), "top": ("tp",), "louse": ("l",),
    "peacoat": ("pc",), "dress_shirt": ("ds",),
}  # fmt: skip
HYPERNYMS = {
    "clothing": (), "c": ("clothing",), "j": ("c",), "a": ("j",), "b": ("clothing",),
    "d": ("clothing",), "j2": ("c",), "d2": ("d",), "f": ("t",), "t": ("clothing",),
    "s": ("clothing",), "x": (), "tt": ("s",), "tk": (), "tp": ("clothing",), "l": ("a",),
    "pc": ("j",), "ds": ("s",),
}  # fmt: skip
CLASSES = {"coat": ["c"], "ankle boot": ["b"], "dress": ["d"], "trousers": ["t"], "shirt": ["s"]}


@pytest.fixture
def toy() -> LexicalHints:
    """The first rule (what the recorded runs before the second one used)."""
    return LexicalHints(CLASSES, NounGraph(SENSES, HYPERNYMS, {"lice": "louse"}), rule=1)


@pytest.fixture
def toy2() -> LexicalHints:
    return LexicalHints(CLASSES, NounGraph(SENSES, HYPERNYMS, {"lice": "louse"}), rule=2)


def test_a_hyponym_gets_its_class_and_others_are_left_alone(toy: LexicalHints) -> None:
    assert toy("swap it for an anorak") == "swap it for an anorak (coat)"
    assert toy("make it a bike") == "make it a bike"
    assert toy("same but boots") == "same but boots (ankle boot)"  # plural rule
    assert toy("two lice") == "two lice (coat)"  # noun.exc irregular plural


def test_two_classes_or_the_class_name_itself_give_no_hint(toy: LexicalHints) -> None:
    assert toy("is a jumper") == "is a jumper"  # a coat sense and a dress sense
    assert toy("make it a coat") == "make it a coat"
    assert toy("a long dress") == "a long dress"


def test_rule_1_leaves_spans_that_contain_a_class_name(toy: LexicalHints) -> None:
    assert toy("a peacoat") == "a peacoat"
    assert toy("a dress shirt") == "a dress shirt"


def test_rule_2_first_sense_and_every_span_but_the_bare_class_name(toy2: LexicalHints) -> None:
    assert toy2.rule == 2
    assert toy2("is a jumper") == "is a jumper (coat)"  # its first sense reaching a class
    assert toy2("a peacoat") == "a peacoat (coat)"  # "coat" inside a word
    assert toy2("a dress shirt") == "a dress shirt (shirt)"  # another class name as modifier
    assert toy2("swap it for an anorak") == "swap it for an anorak (coat)"
    for bare in ("make it a coat", "make them coats", "a long dress", "Two Shirts"):
        assert toy2(bare) == bare
    assert toy2("a flannel shirt") == "a flannel shirt"  # a modifier, then the bare head
    once = toy2("A Peacoat or a dress shirt")
    assert once == "A Peacoat (coat) or a dress shirt (shirt)"
    assert toy2(once) == once


def test_the_rule_is_part_of_the_fingerprint_and_rule_1_keeps_its_own() -> None:
    import hashlib

    g = NounGraph(SENSES, HYPERNYMS, {})
    one, two = LexicalHints(CLASSES, g, rule=1), LexicalHints(CLASSES, g, rule=2)
    assert one.fingerprint() != two.fingerprint()
    # the digest of rule 1 is the one its text caches were written under
    old = repr((sorted(one.class_of.items()), one.max_depth))
    assert one.fingerprint() == hashlib.sha256(old.encode()).hexdigest()[:12]
    three = LexicalHints(CLASSES, g, rule=3)
    assert len({one.fingerprint(), two.fingerprint(), three.fingerprint()}) == 3
    with pytest.raises(ValueError, match="hint rule"):
        LexicalHints(CLASSES, g, rule=4)


# Adjectives of the toy graph: "coated" derives from coat's sense, "jacketed" from jacket's,
# "bootlike" has a first sense with no noun and a second from boot, "mixed" derives from both
# coat and dress, "flannel" is also an adjective (its noun sense decides, under trousers).
ADJECTIVES = AdjectiveNouns(
    {"coated": ("A1",), "jacketed": ("A2",), "bootlike": ("A3", "A4"), "mixed": ("A5",),
     "flannel": ("A6",), "bare": ("A7",)},
    {"A1": ("c",), "A2": ("j",), "A3": (), "A4": ("b",), "A5": ("c", "d"), "A6": ("c",),
     "A7": ("x",)},
)  # fmt: skip


def test_rule_3_reads_adjectives_through_the_nouns_they_derive_from() -> None:
    g = NounGraph(SENSES, HYPERNYMS, {})
    h = LexicalHints(CLASSES, g, rule=3, adjectives=ADJECTIVES)
    assert h("a jacketed one") == "a jacketed (coat) one"  # its noun is under the class
    assert h("a coated thing") == "a coated (coat) thing"
    assert h("bootlike") == "bootlike (ankle boot)"  # the first sense with a noun decides
    assert h("a mixed one") == "a mixed one"  # its noun senses reach two classes
    assert h("a bare one") == "a bare one"  # its noun reaches none
    assert h("flannel, not a shirt") == "flannel (trousers), not a shirt"  # noun sense first
    # rule 2 reads no adjectives
    two = LexicalHints(CLASSES, g, rule=2)
    assert two("a jacketed one") == "a jacketed one"


def test_rule_3_on_the_real_database() -> None:
    shapes = load_hints("shapes", rule=3)
    assert shapes("a three-sided shape") == "a three-sided (triangle) shape"
    assert shapes("MAKE IT TRIANGULAR") == "MAKE IT TRIANGULAR (triangle)"
    assert shapes("a round one") == "a round (circle) one"
    assert shapes("a hexagonal shape") == "a hexagonal (hexagon) shape"
    assert load_hints("shapes", rule=2)("a three-sided shape") == "a three-sided shape"
    # the label name's own sense: Fashion-MNIST's "T-shirt/top" (label_synsets, rule 3 only)
    fm = load_hints("fmnist", rule=3)
    assert fm("is a top") == "is a top (t-shirt)"
    assert fm("a topcoat") == "a topcoat (coat)"
    assert fm("a blouse") == "a blouse (shirt)"  # a hyponym of "top" keeps its nearer class
    assert load_hints("fmnist", rule=2)("is a top") == "is a top"


@pytest.mark.parametrize("benchmark", ["fmnist", "shapes"])
def test_rule_3_hints_no_colour_name_and_no_caption_form(benchmark: str) -> None:
    """The adjective walk adds no hint to a colour name or to a sentence form's words (a hint
    there would name a garment / shape the caption does not; "denim blue" has its noun hint
    under rule 2 already)."""
    h, h2 = load_hints(benchmark, rule=3), load_hints(benchmark, rule=2)
    vocab = load_vocabulary(benchmark)
    for value, names in vocab.words["color"].items():
        for name in names:
            assert h(name) == h2(name), (value, name)
    forms = yaml.safe_load((DATA_DIR / "forms.yaml").read_text(encoding="utf-8"))
    words: set[str] = set()

    def collect(node: object) -> None:
        if isinstance(node, str):
            words.update(re.findall(r"[a-z][a-z'-]*", node.lower()))
        elif isinstance(node, list | dict):
            for item in node.values() if isinstance(node, dict) else node:
                collect(item)

    collect({k: v for k, v in forms.items() if k not in ("source", "rule")})
    assert len(words) > 100
    hinted = sorted(w for w in words if h(w) != h2(w))
    assert hinted == [], hinted


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


@pytest.mark.parametrize("rule", [1, 2, 3])
@pytest.mark.parametrize("benchmark", ["fmnist", "shapes"])
def test_real_wordnet_hints_never_name_a_wrong_class(benchmark: str, rule: int) -> None:
    """On the real database: no word of a class's list is hinted as another class, and every
    word tagged ``wordnet`` (a lemma at most 2 levels under a class synset) reaches its class
    unless its senses also reach a second one."""
    hints = load_hints(benchmark, rule=rule)
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
            for name in re.findall(r"\(([^)]*)\)", hints(word)):
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
    assert h("a peacoat or a dress shirt") == "a peacoat (coat) or a dress shirt (shirt)"
    assert h("is a jumper") == "is a jumper (pullover)"  # WordNet's first sense: a sweater
    assert h("two coats and a bag") == "two coats and a bag"
    h1 = load_hints("fmnist", rule=1)
    assert h1("a peacoat or a dress shirt") == "a peacoat or a dress shirt"
    assert h1("is a jumper") == "is a jumper"


def test_lite_reads_hinted_text_and_keys_its_cache_by_them() -> None:
    from dqecir.registry import create_backbone

    plain = create_backbone("lite", fusion="combiner", text_dtype="float32").eval()
    hinted = create_backbone(
        "lite", fusion="combiner", text_dtype="float32", text_hints="fmnist"
    ).eval()
    assert hinted.config()["text_hints"] == "fmnist"
    assert hinted.config()["hint_rule"] == 3 and hinted.hints.rule == 3  # the default
    assert "hints=fmnist@" in hinted.text_cache_key()
    assert plain.text_cache_key() != hinted.text_cache_key()
    rule1 = create_backbone(
        "lite", fusion="combiner", text_dtype="float32", text_hints="fmnist", hint_rule=1
    )
    assert rule1.hints.rule == 1 and rule1.text_cache_key() != hinted.text_cache_key()
    a = hinted.text_features(["swap it for an anorak"])
    b = plain.text_features(["swap it for an anorak (coat)"])
    assert torch.equal(a["mask"], b["mask"])
    assert torch.allclose(a["tokens"], b["tokens"], atol=1e-5)
    c = plain.text_features(["swap it for an anorak"])
    assert c["mask"].sum() < a["mask"].sum()


def test_a_checkpoint_saved_before_the_rule_existed_reads_under_rule_1() -> None:
    from dqecir.config import checkpoint_config

    lite = {"model": {"backbone": "lite", "backbone_kwargs": {"text_hints": "fmnist"}}}
    assert checkpoint_config(lite).model.backbone_kwargs["hint_rule"] == 1
    lite["model"]["backbone_kwargs"]["hint_rule"] = 2
    assert checkpoint_config(lite).model.backbone_kwargs["hint_rule"] == 2
    plain = {"model": {"backbone": "lite", "backbone_kwargs": {"fusion": "sum"}}}
    assert "hint_rule" not in checkpoint_config(plain).model.backbone_kwargs
