"""dqecir.data.spelling: typos read as the word meant, and its place in the lite backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dqecir.data.spelling import Speller, domain_words
from dqecir.models.cir import load_model

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_domain_words_most_frequent_first_and_without_recurring_typos() -> None:
    texts = ["a blue shirt"] * 70 + ["a blue shitr"] * 3 + ["pls a tee"] * 5 + ["one wrd"] * 2
    words = domain_words(texts)
    assert words[:3] == ["a", "blue", "shirt"]
    assert "shitr" not in words  # one edit from a word 23 times as frequent: a typo
    assert "pls" in words  # no English word, but no frequent neighbour either
    assert "wrd" not in words  # in fewer than 3 texts
    assert domain_words(texts, typo_ratio=100.0).count("shitr") == 1


def test_a_domain_word_wins_over_a_more_common_english_one() -> None:
    sp = Speller(["shirt", "tone", "change", "purple"])
    assert sp("A Button-down Shitr in the same TNOE; chnge it to pruple") == (
        "A Button-down Shirt in the same TONE; change it to purple"
    )
    # without the domain, English frequency decides, and short words are not guessed
    plain = Speller([])
    assert plain.word("shitr") != "shirt"
    assert plain.word("tnoe") == "tnoe"
    assert plain.word("conpletely") == "completely"


def test_known_words_and_non_words_stay() -> None:
    sp = Speller(["ochre"])
    for word in ("rhomb", "pentacle", "ochre", "espadrilles", "robin's", "i'd", "x2", "ab"):
        assert sp(word) == word
    # words with digits, "_" or letters outside ASCII are never split into correctable parts
    for text in ("café au lait", "jalapeño", "shitr2", "shitr_x", "tnoe's", "https"):
        assert Speller(["shirt", "tone"])(text) == text
    assert sp.word("ocre") == "ochre"  # four letters: only a domain word reads it
    assert Speller([]).word("ocre") == "ocre"
    assert Speller([], known=["ocre"]).word("ocre") == "ocre"


def test_fingerprint_follows_the_domain() -> None:
    assert Speller(["shirt"]).fingerprint() == Speller(["shirt"]).fingerprint()
    assert Speller(["shirt"]).fingerprint() != Speller(["shirt", "tone"]).fingerprint()


def test_compare_spelling_scores_both_readings(
    lite_trained: tuple[Path, Path], script_module, monkeypatch, capsys
) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    mod = script_module("compare_spelling")
    ckpt, cirr = lite_trained
    bench = cirr.parent
    assert mod.main([str(ckpt), "--root", str(bench), "--splits", "val", "val-unseen"]) == 0
    row = capsys.readouterr().out.splitlines()[2].split(" | ")
    for cell in row[1:]:
        raw, rest = cell.strip(" |").split(" -> ")
        fixed, diff = rest.split(" (")
        assert 0 <= float(raw) <= 100 and 0 <= float(fixed) <= 100
        assert float(diff.split(";")[0]) == pytest.approx(float(fixed) - float(raw), abs=0.11)
        assert int(diff.split("; ")[1].split()[0]) >= 0


def test_compare_spelling_refuses_another_backbone(
    tiny_trained, script_module, monkeypatch, capsys
) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    mod = script_module("compare_spelling")
    ckpt, root = tiny_trained
    assert mod.main([str(ckpt), "--root", str(root.parent)]) == 2
    assert "has no text_spelling" in capsys.readouterr().err


def test_training_stores_the_caption_words_and_queries_read_through_them(
    lite_trained: tuple[Path, Path],
) -> None:
    ckpt = lite_trained[0]
    model, _ = load_model(ckpt, torch.device("cpu"))
    bb = model.backbone
    words = bb.config()["spell_words"]
    assert "circle" in words and words[0] == "a"
    assert bb.speller is not None and bb.speller.domain == words
    import yaml  # the run's config.yaml records the words too

    saved = yaml.safe_load((ckpt.parent / "config.yaml").read_text())
    assert saved["model"]["backbone_kwargs"]["spell_words"] == words
    # queries are corrected, under their own cache key; training captions are read as written
    assert bb.read_queries(["make it a cirlce"]) == ["make it a circle"]
    assert bb.query_cache_key() == bb.text_cache_key() + f":spell@{bb.speller.fingerprint()}"
    typo, right = bb.text_features(["make it a cirlce"]), bb.text_features(["make it a circle"])
    assert not torch.equal(typo["tokens"], right["tokens"])
    searcher_like = bb.text_features(bb.read_queries(["make it a cirlce"]))
    assert torch.equal(searcher_like["tokens"], right["tokens"])


def test_evaluation_features_are_those_of_the_corrected_query(
    lite_trained: tuple[Path, Path], tmp_path: Path
) -> None:
    from dqecir.data.features import FeatureCache

    model, _ = load_model(lite_trained[0], torch.device("cpu"))
    bb, cache = model.backbone, FeatureCache(tmp_path)
    texts = ["make it a cirlce", "make it a circle"]
    as_query = cache.text_features(bb, texts, query=True, progress=False).get(texts)["tokens"]
    as_caption = cache.text_features(bb, texts, progress=False).get(texts)["tokens"]
    assert torch.equal(as_query[0], as_query[1])
    assert not torch.equal(as_caption[0], as_caption[1])
    assert torch.equal(as_caption[1], as_query[1])


def test_spell_captions_corrects_the_training_captions_too(
    lite_trained: tuple[Path, Path],
) -> None:
    from dqecir.models.backbones.lite import LiteBackbone

    model, _ = load_model(lite_trained[0], torch.device("cpu"))
    bb = model.backbone
    bb.spell_captions = True
    assert bb.query_cache_key() == bb.text_cache_key() and ":spell@" in bb.text_cache_key()
    typo, right = bb.text_features(["make it a cirlce"]), bb.text_features(["make it a circle"])
    assert torch.equal(typo["tokens"], right["tokens"])
    with pytest.raises(ValueError, match="spell_captions needs text_spelling"):
        LiteBackbone(fusion="combiner", spell_captions=True)
