"""scripts/compare_variants.py: the README's variant tables are read from an ablation JSON."""

from __future__ import annotations

import json
import re

import pytest


def _m(values):
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return {"mean": mean, "std": std, "values": values}


def _result():
    a = {"map@10": _m([80.0, 82.0]), "color/map@10": _m([90.0, 90.0]),
         "size/map@10": _m([70.0, 72.0]), "unseen:map@10": _m([60.0, 61.0])}  # fmt: skip
    b = {"map@10": _m([83.0, 84.0]), "color/map@10": _m([89.0, 89.0]),
         "size/map@10": _m([75.0, 75.0]), "unseen:map@10": _m([60.0, 60.0]),
         "unseen:attr_acc": _m([90.0, 92.0]), "unseen:attr_acc.color": _m([88.0, 88.0])}  # fmt: skip
    return {"seeds": [0, 1], "split": "test1", "git_commit": "abcdef0123",
            "variants": {"baseline+mask": a, "full": b}}  # fmt: skip


def test_table_rows_and_differences(script_module, tmp_path, capsys):
    mod = script_module("compare_variants")
    path = tmp_path / "ablation.json"
    path.write_text(json.dumps(_result()))
    assert mod.main([str(path), "--per-seed"]) == 0
    out = capsys.readouterr().out
    assert "commit abcdef0" in out
    assert "| mAP@10 | 81.0 ± 1.0 (80.0, 82.0) | 83.5 ± 0.5 (83.0, 84.0) | +2.5 |" in out
    # every query kind in the JSON gets a row, with its sign
    assert "| color changes mAP@10 |" in out and "| -1.0 |" in out
    assert "| size changes mAP@10 |" in out and "| +4.0 |" in out
    assert "| unseen mAP@10 |" in out and "| -0.5 |" in out
    assert "unseen 91.0 % (color 88.0)" in out
    # a metric one variant lacks is left out, not invented
    assert "Recall@1" not in out


def test_unknown_variant_and_bad_file(script_module, tmp_path):
    mod = script_module("compare_variants")
    path = tmp_path / "ablation.json"
    path.write_text(json.dumps(_result()))
    with pytest.raises(SystemExit, match=re.escape("'+AW' not in the ablation")):
        mod.main([str(path), "--b", "+AW"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="bad.json: cannot read"):
        mod.main([str(bad)])
    other = tmp_path / "other.json"
    other.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="other.json: not an ablation result"):
        mod.main([str(other)])
