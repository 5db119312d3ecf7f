"""`dqecir ablate` on the tiny backbone: every variant runs, outputs are complete."""

import json
from pathlib import Path

from dqecir.ablate import VARIANTS, summarize, variant_overrides
from dqecir.cli import main
from dqecir.config import load_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny_shapes.yaml"


def test_variant_overrides_switch_the_parts():
    base = load_config(CONFIG)
    cfgs = {v: load_config(CONFIG, variant_overrides(base, v)) for v in VARIANTS}
    assert cfgs["baseline"].model.attribute_weights == "none" and not cfgs["baseline"].trns.enabled
    assert not cfgs["baseline"].loss.mask_batch_gt and cfgs["baseline+mask"].loss.mask_batch_gt
    assert not cfgs["baseline+mask"].trns.enabled
    assert cfgs["+AW"].model.attribute_weights != "none" and cfgs["+AW"].loss.w_attr > 0
    assert cfgs["+TRNS"].trns.enabled and cfgs["+TRNS"].loss.w_kl > 0
    assert cfgs["+TRNS"].model.attribute_weights == "none"
    assert cfgs["full"].trns.enabled and cfgs["full"].model.attribute_weights != "none"


def test_summarize_mean_std():
    s = summarize({"a": [{"m": 1.0}, {"m": 3.0}]})
    assert s["a"]["m"]["mean"] == 2.0 and abs(s["a"]["m"]["std"] - 2**0.5) < 1e-9
    assert s["a"]["m"]["values"] == [1.0, 3.0]


def test_ablate_command_end_to_end(tmp_path, capsys):
    from dqecir.data.synthetic import make_benchmark

    make_benchmark("shapes", tmp_path / "b", size="tiny")
    out = tmp_path / "abl"
    rc = main(["ablate", "--config", str(CONFIG), "--seeds", "3", "--out", str(out),
               "--set", f"data.root={tmp_path / 'b' / 'cirr'}", "--set", "train.epochs=2",
               "--set", "trns.k=4"])  # fmt: skip
    assert rc == 0
    res = json.loads((out / "ablation.json").read_text())
    assert set(res["variants"]) == set(VARIANTS)
    m = res["variants"]["full"]["map@10"]
    assert len(m["values"]) == 1 and 0 <= m["mean"] <= 100
    assert "color/map@10" in res["variants"]["baseline"]
    assert res["git_commit"] and res["config"]["name"] == "tiny_shapes"
    assert "| map@10 |" in (out / "ablation.md").read_text()
    assert (out / "ablation.png").stat().st_size > 1000
    # a finished run read back keeps its training time (from its log), not the read's
    first = res["seconds_per_run"]
    assert all(t > 0 for t in first.values())
    assert main(["ablate", "--config", str(CONFIG), "--seeds", "3", "--out", str(out),
                 "--set", f"data.root={tmp_path / 'b' / 'cirr'}", "--set", "train.epochs=2",
                 "--set", "trns.k=4"]) == 0  # fmt: skip
    again = json.loads((out / "ablation.json").read_text())["seconds_per_run"]
    assert again == first
    # the same --out with another config: the finished runs are refused, not read back
    capsys.readouterr()
    rc = main(["ablate", "--config", str(CONFIG), "--seeds", "3", "--out", str(out),
               "--set", f"data.root={tmp_path / 'b' / 'cirr'}", "--set", "train.epochs=1",
               "--set", "trns.k=4"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc != 0 and "baseline-seed3" in err and "train.epochs" in err
