"""scripts/compare_hint_rules.py: one checkpoint's val splits scored under two hint rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from dqecir.config import load_config
from dqecir.data.synthetic import make_benchmark
from dqecir.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def lite_hinted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A lite combiner that reads shapes hints, trained one epoch on the tiny shapes benchmark."""
    root = tmp_path_factory.mktemp("lite-hinted")
    make_benchmark("shapes", root / "bench", seed=0, size="tiny")
    cfg = load_config(
        CONFIGS / "lite_shapes.yaml",
        [
            f"data.root={root / 'bench' / 'cirr'}",
            f"data.cache_dir={root / 'cache'}",
            "data.make.size=tiny",
            "train.epochs=1",
            "trns.enabled=false",
            "model.backbone_kwargs.text_hints=shapes",
            "model.backbone_kwargs.hint_rule=2",
        ],
    )
    return train(cfg, root / "run"), root / "bench" / "cirr"


def test_scores_each_rule_and_the_difference(
    lite_hinted: tuple[Path, Path], script_module, monkeypatch, capsys
) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    mod = script_module("compare_hint_rules")
    ckpt, root = lite_hinted
    args = [str(ckpt), "--root", str(root.parent), "--splits", "val", "val-newwords"]
    assert mod.main(args) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]]
    assert [r[1] for r in rows] == ["2", "3", "3 - 2"]
    two, three, diff = ([float(x.strip(" |")) for x in r[2:]] for r in rows)
    assert all(0 <= x <= 100 for x in two + three)
    assert diff == pytest.approx([b - a for a, b in zip(two, three, strict=True)], abs=0.11)


def test_refuses_a_model_without_hints(tiny_trained, script_module, monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    mod = script_module("compare_hint_rules")
    ckpt, root = tiny_trained
    assert mod.main([str(ckpt), "--root", str(root.parent)]) == 2
    assert "reads no hints" in capsys.readouterr().err
