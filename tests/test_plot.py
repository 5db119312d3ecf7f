"""``dqecir plot`` over real tiny runs, and TensorBoard event files from ``dqecir train``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dqecir.cli import main
from dqecir.config import load_config
from dqecir.data.synthetic import make_benchmark
from dqecir.plot import plot_runs
from dqecir.train import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny_shapes.yaml"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An ablation-like folder: full-seed0, full-seed1 (TRNS mining from epoch 2) and
    baseline-seed0, 2 epochs each on the tiny shapes benchmark."""
    root = tmp_path_factory.mktemp("plot")
    make_benchmark("shapes", root / "bench", seed=0, size="tiny")
    common = [f"data.root={root / 'bench' / 'cirr'}", f"data.cache_dir={root / 'cache'}",
              "train.epochs=2", "train.log_every=2"]  # fmt: skip
    variants = {
        "full-seed0": ["train.seed=0"],
        "full-seed1": ["train.seed=1"],
        "baseline-seed0": ["trns.enabled=false", "loss.w_kl=0", "loss.w_rank=0",
                           "model.attribute_weights=none", "loss.w_attr=0"],
    }  # fmt: skip
    for name, over in variants.items():
        train(load_config(CONFIG, [*common, *over]), root / "runs" / name)
    return root / "runs"


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def test_plot_draws_every_logged_term_zone_statistic_and_metric(runs, tmp_path, capsys):
    out = tmp_path / "runs.png"
    assert main(["plot", str(runs), "--out", str(out)]) == 0  # a folder of runs
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)  # its last line
    done = plot_runs([runs], out)
    assert done.runs == ["baseline-seed0", "full-seed0", "full-seed1"]
    recs = [r for run in runs.iterdir() for r in _records(run)]
    terms = {k for r in recs if r["event"] == "step" for k in r} - {
        "event", "epoch", "step", "samples_per_s"}  # fmt: skip
    assert {"loss", "itc", "kl", "rank", "attr", "lr", "tau"} <= terms
    stats = {k for r in recs if r["event"] == "trns" for k in r} - {
        "event", "epoch", "step", "tau", "seconds", "pool_seconds"}  # fmt: skip
    assert {"zone_median", "zone_p10", "missing_slots"} <= stats
    metrics = {k for r in recs if r["event"] == "epoch" for k in r["val"] if "/" not in k}
    want = ({f"train: {k}" for k in terms} | {f"TRNS: {k}" for k in stats}
            | {f"val: {k}" for k in metrics - {"num_queries"}})  # fmt: skip
    assert set(done.panels) == want and done.panels[0] == "train: loss"
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[0] == 290 * math.ceil(len(done.panels) / 4) and img.shape[1] == 1680
    # two groups overlaid (the seeds of "full" share a colour): tab10's first two colours
    for rgb in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(img.astype(int) - rgb).sum(axis=2) < 30).sum() > 200, rgb
    picked = plot_runs([runs / "full-seed0"], tmp_path / "one.png", metrics=["color/*"])
    assert {p for p in picked.panels if p.startswith("val:")} == {
        f"val: {k}" for r in _records(runs / "full-seed0") if r["event"] == "epoch"
        for k in r["val"] if k.startswith("color/")}  # fmt: skip


def test_plot_skips_a_cut_line_and_refuses_what_is_not_a_run(runs, tmp_path, capsys, caplog):
    import shutil

    run = tmp_path / "killed"
    shutil.copytree(runs / "full-seed0", run)
    with open(run / "log.jsonl", "a") as f:
        f.write('{"event": "step", "epoch": 2, "st')  # a kill in mid-write
    assert main(["plot", str(run), "--out", str(tmp_path / "k.png")]) == 0
    assert "log.jsonl line" in caplog.text and "skipped" in caplog.text
    assert main(["plot", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_train_writes_tensorboard_events_when_asked(runs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make_benchmark("shapes", tmp_path / "bench", seed=0, size="tiny")
    common = [f"data.root={tmp_path / 'bench' / 'cirr'}", f"data.cache_dir={tmp_path / 'c'}",
              "train.epochs=2", "train.log_every=1"]  # fmt: skip
    run = tmp_path / "run"
    train(load_config(CONFIG, [*common, "train.tensorboard=true"]), run)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    recs = _records(run)
    steps = [r for r in recs if r["event"] == "step"]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(
        [r["loss"] for r in steps])  # fmt: skip
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in steps]
    epochs = [r for r in recs if r["event"] == "epoch"]
    assert [e.value for e in events.Scalars("val/map@10")] == pytest.approx(
        [r["val"]["map@10"] for r in epochs])  # fmt: skip
    assert {"trns/zone_median", "epoch/loss", "time/epoch_seconds", "train/lr"} <= tags
    assert not (runs / "full-seed0" / "tensorboard").exists()  # off by default
