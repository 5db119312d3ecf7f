"""The demo's table and grid on the tiny benchmark (the real demo runs `lite` at default size)."""

from pathlib import Path

from dqecir import demo


def test_demo_writes_table_and_grid(tmp_path, monkeypatch):
    # Same pipeline with the tiny backbone: every model row trains, evaluates and is tabled.
    monkeypatch.setattr(
        demo, "MODELS",
        [demo.DemoModel("tiny baseline (L_itc)", ["train.epochs=1"]),
         demo.DemoModel("tiny DQE-CIR (full)", ["train.epochs=2"], "full")],
    )  # fmt: skip
    cfg = Path(__file__).resolve().parents[1] / "configs" / "tiny_shapes.yaml"
    res = demo.run_demo(tmp_path / "data", tmp_path / "out", config=cfg, size="tiny",
                        grid_queries=3, kind="shapes")  # fmt: skip
    text = res.read_text()
    assert "| tiny baseline (L_itc) |" in text and "| tiny DQE-CIR (full) |" in text
    assert "map@10" in text
    assert (tmp_path / "out" / "queries.png").stat().st_size > 5000
