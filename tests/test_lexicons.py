"""Lexicons are data: the packaged ones load and label; an embedded benchmark writes the lexicon
of its train phrasing next to its annotations."""

from pathlib import Path

import pytest
import yaml

from dqecir.data.synthetic import make_benchmark
from dqecir.models.attribute import Lexicon, load_lexicon

LEX = Path(__file__).resolve().parents[1] / "src" / "dqecir" / "lexicons"


@pytest.mark.parametrize("name", ["fashioniq", "cirr"])
def test_every_packaged_lexicon_loads_and_labels(name):
    lex = Lexicon(yaml.safe_load((LEX / f"{name}.yaml").read_text()))
    assert {"color", "shape"} <= set(lex.attributes)
    assert lex.labels("make it red", ["color", "shape"])[0] == 1.0


def test_benchmark_lexicon_is_its_train_phrasing(tmp_path):
    make_benchmark("shapes", tmp_path / "b", size="tiny", progress=False)
    meta = yaml.safe_load((tmp_path / "b" / "meta.json").read_text())
    lex = load_lexicon("benchmark", tmp_path / "b" / "cirr")
    assert lex is not None
    train = meta["phrasing"]["sides"]["train"]["words"]
    held = meta["phrasing"]["sides"]["heldout"]["words"]
    for attr in ("color", "shape"):
        for value, words in train[attr].items():
            assert set(words) <= set(lex.words[attr][value])
            assert not set(held[attr][value]) & set(lex.words[attr][value])
    assert lex.labels("make it red", ["color", "shape"]) == [1.0, 0.0]
    assert (tmp_path / "b" / "circo" / "lexicon.yaml").read_text() == (
        tmp_path / "b" / "cirr" / "lexicon.yaml"
    ).read_text()
