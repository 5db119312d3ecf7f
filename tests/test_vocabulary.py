"""The vocabulary data files follow their written rules (colour names from matplotlib, garment /
object / size words checked against WordNet)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from dqecir.data.synthetic import fmnist, shapes
from dqecir.data.synthetic.vocabulary import (
    DATA_DIR,
    ColorRule,
    WordNet,
    assign_colors,
    ciede2000,
    load_vocabulary,
    matplotlib_color_names,
    plural,
    saturation,
    split_words,
    srgb_to_lab,
)

BENCHMARKS = {"fmnist": fmnist.COLORS, "shapes": shapes.COLORS}
NOUN_FILES = {"garments.yaml": "noun", "objects.yaml": "noun", "sizes.yaml": "adj"}


def test_ciede2000_matches_published_pairs():
    # Sharma, Wu & Dalal (2005), test data pairs 1, 7 and 17
    pairs = [
        ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
        ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
        ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ]
    for a, b, want in pairs:
        assert float(ciede2000(np.array(a), np.array(b))) == pytest.approx(want, abs=1e-4)


def test_lab_and_saturation_of_primaries():
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]], float))
    assert lab[0] == pytest.approx([100.0, 0.0, 0.0], abs=0.01)
    assert lab[1] == pytest.approx([0.0, 0.0, 0.0], abs=0.01)
    assert lab[2, 0] == pytest.approx(53.24, abs=0.05)
    sat = saturation(lab)
    assert sat[0] < 0.01 and sat[2] > 0.7


def test_css_names_are_split_into_words():
    words = {"medium", "violet", "red", "dark", "slate", "blue"}
    assert split_words("mediumvioletred", words) == "medium violet red"
    assert split_words("darkslateblue", words) == "dark slate blue"
    assert split_words("xyz", words) is None


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_color_file_is_what_the_rule_gives(name):
    doc = yaml.safe_load((DATA_DIR / f"colors-{name}.yaml").read_text(encoding="utf-8"))
    rule = ColorRule(**doc["parameters"])
    assert rule == ColorRule()
    result = assign_colors(BENCHMARKS[name], matplotlib_color_names(), rule)
    assert doc["classes"] == result.assigned
    assert doc["left_out"] == result.left_out
    assert doc["counts"]["left_out"] == len(result.left_out)


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_color_rule_holds_for_every_assigned_name(name):
    """Re-check the rule name by name: distance, ambiguity and saturation limits."""
    classes = BENCHMARKS[name]
    rule = ColorRule()
    cands = matplotlib_color_names()
    result = assign_colors(classes, cands, rule)
    centres = srgb_to_lab(np.array(list(classes.values()), float))
    names = list(classes)
    for cls, words in result.assigned.items():
        assert words[0] == cls and len(words) >= 2
        for w in words[1:]:
            code = cands[w].lstrip("#")
            lab = srgb_to_lab(np.array([int(code[i : i + 2], 16) for i in (0, 2, 4)], float))
            d = ciede2000(np.broadcast_to(lab, centres.shape), centres, k_l=rule.k_l)
            sat, csat = float(saturation(lab)), saturation(centres)
            own = d[names.index(cls)]
            assert own <= rule.max_distance
            if cls == "gray":
                assert sat < rule.neutral_saturation
                continue
            assert sat >= rule.neutral_saturation
            assert sat >= rule.min_saturation_ratio * csat[names.index(cls)]
            # the nearest of the classes the name may join, by the ambiguity margin
            others = [
                x for n, x, cs in zip(names, d, csat, strict=True)
                if n != cls and cs >= rule.neutral_saturation and sat >= rule.min_saturation_ratio * cs
            ]  # fmt: skip
            assert not others or own <= rule.max_ratio * min(others) + 1e-9
    # no name in two classes, and the obvious ones left out
    flat = [w for ws in result.assigned.values() for w in ws]
    assert len(flat) == len(set(flat))
    for neutral in ("black", "white"):
        assert neutral in result.left_out
    assert all("/" not in w for w in flat)


@pytest.mark.parametrize("file, pos", sorted(NOUN_FILES.items()))
def test_wordnet_tags_are_true(file, pos):
    """Each word tagged ``wordnet`` is a lemma of a class synset or of one at most 2 pointers
    below it; ``plural`` the plural of such a lemma; ``reviewed`` words are not in WordNet's
    tree (else they would be tagged wordnet)."""
    wn = WordNet(pos=pos)
    doc = yaml.safe_load((DATA_DIR / file).read_text(encoding="utf-8"))
    for cls, entry in doc["classes"].items():
        lemmas = set().union(*[wn.related_lemmas(s, 2) for s in entry["synsets"]])
        for item in entry["words"]:
            ((word, source),) = item.items()
            if source == "wordnet":
                assert word in lemmas, (cls, word)
            elif source == "plural":
                assert any(plural(lemma) == word for lemma in lemmas), (cls, word)
            else:
                assert source == "reviewed" and word not in lemmas, (cls, word, source)


@pytest.mark.parametrize("benchmark", sorted(BENCHMARKS))
def test_vocabulary_classes_and_words(benchmark):
    v = load_vocabulary(benchmark)
    colors = {w for ws in v.words["color"].values() for w in ws}
    assert set(v.words["color"]) == set(BENCHMARKS[benchmark])
    expected_shapes = fmnist.CATEGORIES if benchmark == "fmnist" else shapes.SHAPES
    assert tuple(v.words["shape"]) == tuple(expected_shapes)
    for attr, values in v.words.items():
        flat = [w for ws in values.values() for w in ws]
        assert len(flat) == len(set(flat)), attr  # no word in two classes
        for value, words in values.items():
            assert words[0] == value and len(words) >= 2, (attr, value)
    for value, words in v.words["shape"].items():
        for w in words:  # a shape noun must not carry a colour word ("blue jeans")
            tokens = set(re.findall(r"[a-z]+", w))
            assert not any(c in tokens for c in colors if " " not in c), (value, w)
    for noun in v.plural_only | v.paired:
        assert any(noun in ws for ws in v.words["shape"].values()), noun
