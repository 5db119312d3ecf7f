"""The demo's table and grid on the tiny benchmark (the real demo runs `lite` at default size)."""

import json
from pathlib import Path

import pytest

from dqecir import demo


def test_demo_writes_table_and_grid(tmp_path, monkeypatch):
    # Same pipeline with the tiny backbone: every model row trains, evaluates and is tabled.
    monkeypatch.setattr(
        demo, "MODELS",
        [demo.DemoModel("tiny baseline (L_itc)", ["train.epochs=1"]),
         demo.DemoModel("tiny DQE-CIR (full)", ["train.epochs=2"], "full",
                        init_from="tiny baseline (L_itc)")],
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
    assert hints == [
        f"model.backbone_kwargs.text_hints={kind}",
        f"model.backbone_kwargs.hint_rule={demo.HINT_RULE}",
        "model.backbone_kwargs.text_spelling=true",
    ]
    for m in demo.MODELS:
        variant = variant_overrides(load_config(cfg), m.variant)
        c = load_config(cfg, [*hints, *variant, *m.overrides])
        kw = c.model.backbone_kwargs
        assert kw["text_hints"] == kind  # every row reads the same hinted texts
        assert kw["hint_rule"] == demo.HINT_RULE
        assert kw["text_spelling"] is True  # queries are read with their typos corrected
        assert kw["text_layers"] == 2 and kw["text_pooled"]  # every row shares one text cache
        assert kw.get("text_trainable", True) == ("qformer" in m.name)
        if m.variant == "full":  # the band chosen on the qformer's val, not the config's guard
            assert (c.trns.qlow, c.trns.qhigh) == (0.99, 1.0)
            assert c.loss.w_attr == 1.0  # the weight chosen on val-unseen
        assert kw["token_dropout"] == 0.0
        if m.init_from:  # continues an earlier row of the same backbone
            names = [x.name for x in demo.MODELS]
            parent = demo.MODELS[names.index(m.init_from)]
            assert names.index(m.init_from) < names.index(m.name)
            p = load_config(cfg, [*hints, *parent.overrides])
            assert {k: v for k, v in p.model.backbone_kwargs.items() if k != "token_dropout"} == {
                k: v for k, v in kw.items() if k != "token_dropout"
            }


def test_demo_rows_in_parallel_processes_match_the_serial_table(tmp_path, monkeypatch, capfd):
    # --jobs 2: the first row fills the cache, the other two train in two spawned workers at
    # once; the table keeps MODELS' order and every row is scored and logged to its own file.
    # The full row continues the baseline's checkpoint: it waits for it, then starts from it.
    models = [demo.DemoModel("tiny untrained", ["train.epochs=0"]),
              demo.DemoModel("tiny baseline (L_itc)", ["train.epochs=1"]),
              demo.DemoModel("tiny DQE-CIR (full)", ["train.epochs=2"], "full",
                             init_from="tiny baseline (L_itc)")]  # fmt: skip
    monkeypatch.setattr(demo, "MODELS", models)
    cfg = Path(__file__).resolve().parents[1] / "configs" / "tiny_shapes.yaml"
    res = demo.run_demo(tmp_path / "data", tmp_path / "out", config=cfg, size="tiny",
                        grid_queries=3, kind="shapes", jobs=2)  # fmt: skip
    text = res.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("| tiny ")]
    assert [ln.split(" | ")[0] for ln in lines[:3]] == ["| " + m.name for m in models]
    assert "in 2 processes at once" in text
    assert "epoch 1/" not in capfd.readouterr().err  # workers draw no progress bars
    assert "TQDM_DISABLE" not in __import__("os").environ  # restored in the parent
    for m in models[1:]:
        log = (tmp_path / "out" / "runs" / demo.run_slug(m.name) / "demo.log").read_text()
        assert "dqecir.train" in log
    full = tmp_path / "out" / "runs" / demo.run_slug(models[2].name)
    itc = tmp_path / "out" / "runs" / demo.run_slug(models[1].name) / "best.safetensors"
    init = [r for r in map(json.loads, (full / "log.jsonl").open()) if r["event"] == "init"]
    assert init and init[0]["from"] == str(itc)
    assert "starts from the best checkpoint of `tiny baseline (L_itc)`" in text
    got = json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]
    assert set(got) == {m.name for m in models}
    assert all(0.0 <= got[m.name]["map@10"] <= 100.0 for m in models)


@pytest.mark.parametrize("parent", ["a", "c"])  # no such row; a later row
def test_a_row_that_continues_no_earlier_row_is_refused_before_training(tmp_path, monkeypatch,
                                                                         parent):  # fmt: skip
    monkeypatch.setattr(demo, "MODELS", [demo.DemoModel("tiny", ["train.epochs=0"]),
                                         demo.DemoModel("b", [], init_from=parent),
                                         demo.DemoModel("c", [])])  # fmt: skip
    cfg = Path(__file__).resolve().parents[1] / "configs" / "tiny_shapes.yaml"
    for jobs in (1, 2):
        with pytest.raises(ValueError, match=f"'b' starts from '{parent}', not an earlier row"):
            demo.run_demo(tmp_path / "data", tmp_path / f"out{jobs}", config=cfg, size="tiny",
                          kind="shapes", jobs=jobs)  # fmt: skip
        assert not (tmp_path / f"out{jobs}" / "runs").exists()  # nothing trained


def test_demo_refuses_zero_jobs(tmp_path):
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        demo.run_demo(tmp_path / "d", tmp_path / "o", jobs=0)
