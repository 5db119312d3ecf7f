"""scripts/compare_hint_rules.py: one checkpoint's val splits scored under two hint rules."""

from __future__ import annotations

from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_scores_each_rule_and_the_difference(
    lite_trained: tuple[Path, Path], script_module, monkeypatch, capsys
) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    mod = script_module("compare_hint_rules")
    ckpt, root = lite_trained
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
