"""The demo's table and grid on the tiny benchmark (the real demo runs `lite` at default size)."""

from pathlib import Path

import pytest

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
    assert demo.demo_hints("shapes", cfg) == []  # hints are a lite option
    assert (tmp_path / "out" / "queries.png").stat().st_size > 5000


@pytest.mark.parametrize("kind", ["fmnist", "shapes"])
def test_every_demo_row_is_a_valid_config(kind):
    """The real rows (lite, default size) are too slow for a test; their overrides must load."""
    from dqecir.ablate import variant_overrides
    from dqecir.config import load_config

    cfg = demo.CONFIG_DIR / f"lite_{kind}.yaml"
    assert load_config(cfg).data.make["kind"] == kind
    hints = demo.demo_hints(kind, cfg)
    assert hints == [f"model.backbone_kwargs.text_hints={kind}"]
    for m in demo.MODELS:
        variant = variant_overrides(load_config(cfg), m.variant)
        c = load_config(cfg, [*hints, *variant, *m.overrides])
        kw = c.model.backbone_kwargs
        assert kw["text_hints"] == kind  # every row reads the same hinted texts
        assert kw["text_layers"] == 2  # every row shares one text cache
        assert kw.get("text_trainable", True) == ("qformer" in m.name)
        if m.variant == "full":  # the band chosen on the qformer's val, not the config's guard
            assert (c.trns.qlow, c.trns.qhigh) == (0.99, 1.0)
