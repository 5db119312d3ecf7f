"""scripts/val_of_runs.py: the val numbers behind a choice are read from the runs' logs."""

from __future__ import annotations

import json
from pathlib import Path


def _val(m: float) -> dict:
    return {"map@10": m, "recall@1": m / 2, "recall_subset@1": 90.0, "color/map@10": m + 1,
            "shape/map@10": m - 1}  # fmt: skip


def _run(tmp_path: Path, name: str, maps: list[float], test: dict | None = None) -> Path:
    run = tmp_path / name
    run.mkdir()
    recs = [{"event": "step", "step": 1, "loss": 1.0}]
    recs += [{"event": "epoch", "epoch": e, "val": _val(m)} for e, m in enumerate(maps)]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    if test is not None:
        (run / "test_metrics.json").write_text(json.dumps(test))
    return run


def test_best_epoch_table_and_jsonl(script_module, tmp_path, capsys):
    mod = script_module("val_of_runs")
    a = _run(tmp_path, "a", [50.0, 70.0, 70.0, 60.0], {"map@10": 75.0, "unseen:map@10": 55.0})
    b = _run(tmp_path, "b", [40.0, 45.0])
    out = tmp_path / "rows.jsonl"
    assert mod.main([f"first={a}", str(b), "--jsonl", str(out)]) == 0
    text = capsys.readouterr().out
    # the first of two equal best epochs (epoch index 1 -> "2"), its kinds, the test beside it
    assert "| first | 2 | 70.0 | 35.0 | 90.0 | 71.0 | 69.0 | 75.0 | 55.0 |" in text
    assert "| b | 2 | 45.0 | 22.5 | 90.0 | 46.0 | 44.0 | – | – |" in text
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["name"] for r in rows] == ["first", "b"]
    assert rows[0]["val"]["color/map@10"] == 71.0 and rows[0]["test"]["map@10"] == 75.0
    assert "test" not in rows[1]


def test_bad_runs_are_named(script_module, tmp_path, capsys):
    mod = script_module("val_of_runs")
    assert mod.main([str(tmp_path / "missing")]) == 2
    assert "missing: no log.jsonl" in capsys.readouterr().err
    run = _run(tmp_path, "broken", [50.0])
    with (run / "log.jsonl").open("a") as f:
        f.write("{not json\n")
    assert mod.main([str(run)]) == 2
    assert "log.jsonl:3: not JSON" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "log.jsonl").write_text(json.dumps({"event": "step"}) + "\n")
    assert mod.main([str(empty)]) == 2
    assert "no epoch with a val 'map@10'" in capsys.readouterr().err
