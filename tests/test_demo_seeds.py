"""scripts/demo_seeds.py: the demo's rows over training seeds, from the demos' results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _demo(tmp_path: Path, name: str, seen: float, unseen: float, rel: float) -> Path:
    d = tmp_path / name
    d.mkdir()
    full = {"map@10": seen, "unseen:map@10": unseen, "newforms:map@10": seen - 1,
            "newwords:map@10": unseen + 1, "unseen:attr_acc": rel}  # fmt: skip
    metrics = {
        "image-only (frozen, untrained)": {"map@10": 15.0, "unseen:map@10": 15.0},
        "lite qformer, DQE-CIR (full)": full,
    }
    (d / "results.json").write_text(json.dumps({"metrics": metrics, "seconds": {}}))
    return d


def test_rows_per_seed_then_mean_and_std(script_module, tmp_path, capsys):
    mod = script_module("demo_seeds")
    a = _demo(tmp_path, "s0", 90.0, 72.0, 95.0)
    b = _demo(tmp_path, "s1", 88.0, 74.8, 93.0)
    mod.main([str(a), str(b)])
    out = capsys.readouterr().out
    assert "image-only" not in out  # only the qformer rows by default
    lines = [x for x in out.splitlines() if x.startswith("| lite qformer, DQE-CIR")]
    assert len(lines) == 2 and "| 0.800 |" in lines[0] and "| 0.850 |" in lines[1]
    mean = next(x for x in out.splitlines() if "mean ± std of 2" in x)
    # seen 89.0 ± 1.4, unseen 73.4 ± 2.0, kept (0.800 + 0.850) / 2 = 0.825 ± 0.035
    assert "89.0 ± 1.4" in mean and "73.4 ± 2.0" in mean and "94.0 ± 1.4" in mean
    assert "0.825 ± 0.035" in mean
    mod.main([str(a), "--rows", "image-only"])
    assert "| 1.000 |" in capsys.readouterr().out


def test_a_folder_without_results_is_a_clear_error(script_module, tmp_path):
    mod = script_module("demo_seeds")
    with pytest.raises(SystemExit, match="no results.json"):
        mod.main([str(tmp_path)])
