"""Lexicons are data: each embedded benchmark's lexicon names every word its captions use."""

from pathlib import Path

import pytest
import yaml

from dqecir.data.synthetic import fmnist, shapes
from dqecir.models.attribute import Lexicon

LEX = Path(__file__).resolve().parents[1] / "src" / "dqecir" / "lexicons"


@pytest.mark.parametrize("name, mod", [("fmnist", fmnist), ("shapes", shapes)])
def test_lexicon_covers_generator_words(name, mod):
    lex = yaml.safe_load((LEX / f"{name}.yaml").read_text())
    for attr, values in mod.WORDS.items():
        for value, phrases in values.items():
            assert set(phrases) <= set(lex[attr][value]), (attr, value)


@pytest.mark.parametrize("name", ["fmnist", "shapes", "fashioniq", "cirr"])
def test_every_lexicon_loads_and_labels(name):
    lex = Lexicon(yaml.safe_load((LEX / f"{name}.yaml").read_text()))
    assert {"color", "shape"} <= set(lex.attributes)
    assert lex.labels("make it red", ["color", "shape"])[0] == 1.0
