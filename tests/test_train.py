"""End to end on the tiny backbone: train -> evaluate -> submission, resume, TRNS state."""

import json
from pathlib import Path

import pytest
import torch

from dqecir.checkpoint import load_checkpoint
from dqecir.cli import main
from dqecir.config import load_config
from dqecir.data.synthetic import make_benchmark
from dqecir.evaluate import evaluate_checkpoint
from dqecir.train import Trainer, train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny_shapes.yaml"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    make_benchmark("shapes", out, seed=0, size="tiny")
    return out


def _cfg(bench, tmp, *overrides):
    return load_config(
        CONFIG,
        [f"data.root={bench / 'cirr'}", f"data.cache_dir={tmp / 'cache'}", "train.epochs=2",
         *overrides],
    )  # fmt: skip


def _steps(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
            if r["event"] == "step"]  # fmt: skip


def test_train_evaluate_end_to_end(bench, tmp_path):
    best = train(_cfg(bench, tmp_path, "train.log_every=1"), tmp_path / "run")
    assert best.exists() and (tmp_path / "run" / "config.yaml").exists()
    steps = _steps(tmp_path / "run")
    assert all(torch.isfinite(torch.tensor(s["loss"])) for s in steps)
    metrics, written = evaluate_checkpoint(
        best, "cirr", bench / "cirr", "test1", cache_dir=tmp_path / "cache", device="cpu"
    )
    for key in ("recall@1", "recall@10", "recall_subset@1", "map@10", "avg"):
        assert 0.0 <= metrics[key] <= 100.0
    assert any(k.startswith("color/") for k in metrics)
    # the CIRCO layout of the same benchmark gives the same mAP (same images, same gts)
    m2, _ = evaluate_checkpoint(
        best, "circo", bench / "circo", "test", cache_dir=tmp_path / "cache2", device="cpu"
    )
    assert m2["map@10"] == pytest.approx(metrics["map@10"], abs=1e-6)


def test_submission_files_score_like_the_model_rankings(bench, tmp_path):
    from dqecir.data.formats import load_benchmark
    from dqecir.data.pipeline import build_features
    from dqecir.evaluate import rank_split, score_split, write_submission
    from dqecir.models.cir import load_model
    from dqecir.scoring import score_predictions_file

    best = train(_cfg(bench, tmp_path, "train.epochs=1"), tmp_path / "run")
    model, _ = load_model(best)
    for layout, split in (("cirr", "test1"), ("circo", "test")):
        s = load_benchmark(layout, bench / layout, split)[0]
        table = build_features(model.backbone, [s], train=False, cache_dir=tmp_path / "c",
                               device=torch.device("cpu"))  # fmt: skip
        r = rank_split(model, s, table, torch.device("cpu"))
        assert all(q.reference not in r.rankings[q.qid] for q in s.queries)
        files = write_submission(r, tmp_path / "sub", f"{layout}")
        scored = score_predictions_file(layout, bench / layout, split, files[0])
        direct = score_split(r)
        key = "recall@10"
        assert scored[key] == pytest.approx(direct[key])
        assert scored["map@10"] == pytest.approx(direct["map@10"])


def test_resumed_run_continues_exactly(bench, tmp_path):
    over = ("train.log_every=1", "model.attribute_weights=gate", "loss.w_attr=0.5",
            "trns.enabled=true", "trns.warmup_epochs=1", "trns.k=4", "loss.w_kl=1.0",
            "loss.w_rank=0.5", "train.epochs=3")  # fmt: skip
    full = tmp_path / "full"
    train(_cfg(bench, tmp_path, *over), full)
    part = tmp_path / "part"
    train(_cfg(bench, tmp_path, *over), part, stop_after_epoch=2)
    saved_negs = load_checkpoint(part / "last.safetensors").tensors["trns.negatives"]
    assert (saved_negs >= 0).any(), "TRNS should have mined by the end of epoch 2"
    t = Trainer(_cfg(bench, tmp_path, *over), part)
    t.resume(part / "last.safetensors")
    assert torch.equal(t.negatives, saved_negs), "a resumed run must keep its negative sets"
    train(None, part, resume=True)
    a = [s for s in _steps(full) if s["epoch"] == 2]
    b = [s for s in _steps(part) if s["epoch"] == 2]
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        for k in ("loss", "itc", "kl", "rank", "attr"):
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-6), k
    trns = [json.loads(r) for r in (full / "log.jsonl").read_text().splitlines()]
    trns = [r for r in trns if r["event"] == "trns"]
    assert len(trns) == 2 and all("zone_median" in r for r in trns)


def test_features_too_large_for_memory_stay_memory_mapped(bench, tmp_path):
    from dqecir.data.formats import load_benchmark
    from dqecir.data.pipeline import LazyRows, build_features
    from dqecir.registry import create_backbone

    bb = create_backbone("tiny")
    s = load_benchmark("cirr", bench / "cirr", "val")
    dev = torch.device("cpu")
    eager = build_features(bb, s, train=False, cache_dir=tmp_path / "c", device=dev)
    lazy = build_features(bb, s, train=False, cache_dir=tmp_path / "c", device=dev,
                          max_memory_gb=0.0)  # fmt: skip
    assert isinstance(lazy.images, LazyRows) and isinstance(eager.images, torch.Tensor)
    rows = torch.tensor([5, 0, 3, 3, len(eager.image_ids) - 1])
    assert torch.equal(lazy.images[rows], eager.images[rows])
    assert torch.equal(lazy.images[2:6], eager.images[2:6])
    assert lazy.images.shape == tuple(eager.images.shape)


def test_evaluate_scores_every_phrasing_and_attribute_relevance(bench, tmp_path):
    best = train(_cfg(bench, tmp_path, "train.epochs=1", "model.attribute_weights=gate"),
                 tmp_path / "run")  # fmt: skip
    metrics, _ = evaluate_checkpoint(
        best, "cirr", bench / "cirr", "test1", cache_dir=tmp_path / "cache", device="cpu"
    )
    for p in ("", "unseen:", "newforms:", "newwords:"):
        assert 0.0 <= metrics[p + "map@10"] <= 100.0
        assert 0.0 <= metrics[p + "attr_acc.color"] <= 100.0
        assert p + "color/map@10" in metrics
    only, _ = evaluate_checkpoint(best, "cirr", bench / "cirr", "test1", phrasings=["unseen"],
                                  cache_dir=tmp_path / "cache", device="cpu")  # fmt: skip
    assert only == {k: v for k, v in metrics.items() if k.startswith("unseen:")}
    with pytest.raises(ValueError, match="not found"):
        evaluate_checkpoint(best, "cirr", bench / "cirr", "train", phrasings=["unseen"],
                            cache_dir=tmp_path / "cache", device="cpu")  # fmt: skip


def test_training_never_reads_heldout_phrasing(bench, tmp_path, monkeypatch):
    """Training and model selection load the train and val (seen) splits only; the training
    texts are the train caption pools; the lexicon behind L_attr holds no held-out word."""
    import dqecir.data.formats as formats

    loaded = []
    real = formats.load_benchmark

    def spy(benchmark, root, split, **kw):
        loaded.append(split)
        return real(benchmark, root, split, **kw)

    monkeypatch.setattr(formats, "load_benchmark", spy)
    cfg = _cfg(bench, tmp_path, "train.epochs=1", "model.attribute_weights=gate", "loss.w_attr=0.5")
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.fit()
    assert set(loaded) == {"train", "val"}
    meta = json.loads((bench / "meta.json").read_text())
    held = meta["phrasing"]["sides"]["heldout"]["words"]
    held_words = {w for vals in held.values() for ws in vals.values() for w in ws}
    lex_words = {
        w for vals in trainer.data.lexicon.words.values() for ws in vals.values() for w in ws
    }
    assert not held_words & lex_words
    train_caps = json.loads((bench / "cirr/captions/cap.rc2.train.json").read_text())
    pools = {t for r in train_caps for t in r["caption_variants"]}
    assert set(trainer.data.train_table.texts) == pools
    for name in ("val-unseen", "test1-unseen", "test1"):
        other = json.loads((bench / f"cirr/captions/cap.rc2.{name}.json").read_text())
        assert not {r["caption"] for r in other} & set(trainer.data.train_table.texts) - pools


def test_each_epoch_reads_a_fresh_phrasing(bench, tmp_path):
    trainer = Trainer(_cfg(bench, tmp_path), tmp_path)
    qz = trainer.queries
    assert int(qz.n_options.min()) == 8  # the tiny benchmark writes 8 phrasings per query
    rows = torch.arange(len(qz))
    seen = torch.stack([qz.options_of_epoch(rows, e, trainer.data.text_offset) for e in range(8)])
    assert all(len(set(seen[:, i].tolist())) == 8 for i in range(len(qz)))
    assert torch.equal(seen[0], qz.options_of_epoch(rows, 8, trainer.data.text_offset))
    capped = Trainer(_cfg(bench, tmp_path, "data.caption_variants=2"), tmp_path)
    assert int(capped.queries.n_options.max()) == 2


def _records(run: Path) -> list[tuple]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [(r["event"], r["epoch"], r["step"]) for r in map(json.loads, lines)]


def test_resume_after_a_kill_keeps_one_copy_of_each_record(bench, tmp_path):
    """A kill in the middle of epoch 2 leaves its first records (one of them cut short) and a
    temporary checkpoint file; the resumed run's log is the uninterrupted run's, record for
    record, and the temporary file is gone."""
    over = ("train.log_every=1", "train.epochs=3")
    full, part = tmp_path / "full", tmp_path / "part"
    train(_cfg(bench, tmp_path, *over), full)
    train(_cfg(bench, tmp_path, *over), part, stop_after_epoch=1)
    killed = [r for r in (full / "log.jsonl").read_text().splitlines()
              if json.loads(r)["epoch"] == 1][:4]  # fmt: skip
    with open(part / "log.jsonl", "a") as f:
        f.write("\n".join(killed) + "\n" + killed[-1][:17])  # the last line half written
    (part / ".last.safetensors.k1ll3d.tmp").write_bytes(b"partial checkpoint")
    assert main(["train", "--resume", str(part)]) == 0
    assert _records(part) == _records(full)
    assert not list(part.glob(".*.tmp"))


def test_set_with_resume_is_refused(bench, tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(bench, tmp_path, "train.epochs=2"), run, stop_after_epoch=1)
    before = (run / "last.safetensors").read_bytes()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=5"]) == 2
    err = capsys.readouterr().err
    assert "--set would be ignored, so they are refused" in err and "--out NEW_DIR" in err
    assert (run / "last.safetensors").read_bytes() == before


def test_resume_log_truncation_drops_lines_that_are_not_records(tmp_path):
    """A log line nested 100,000 deep (RecursionError) or with a 5000-digit epoch (ValueError)
    is not a record of this run: dropped like a line cut short, never a traceback."""
    from dqecir.runlog import truncate_log

    path = tmp_path / "log.jsonl"
    good = [json.dumps({"event": "epoch", "epoch": e, "step": 4 * e}) for e in (0, 1)]
    junk = ["[" * 100_000 + "]" * 100_000, '{"event": "step", "epoch": ' + "9" * 5000 + "}"]
    init = json.dumps({"event": "init", "from": "x.safetensors", "loaded": [], "fresh": []})
    path.write_text("\n".join([init, good[0], *junk, "[1]", good[1]]) + "\n")
    truncate_log(path, epochs_done=1)
    assert path.read_text().splitlines() == [init, good[0]]  # a warm start's record stays


def _rewrite_checkpoint(path: Path, change) -> None:
    """Write ``path`` again with ``change(tensors)`` applied and a valid checksum: a
    well-formed file whose content does not fit the run."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from dqecir.checkpoint import tensors_sha256

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["dqecir"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    change(tensors)
    meta["tensors_sha256"] = tensors_sha256(tensors)
    save_file(tensors, str(path), metadata={"dqecir": json.dumps(meta)})


def _first(tensors: dict, prefix: str) -> str:
    return sorted(k for k in tensors if k.startswith(prefix) and tensors[k].dim() == 2)[0]


def _transpose_weight(t: dict) -> None:
    k = _first(t, "model.")
    t[k] = t[k].T.contiguous()


def _resize_moment(t: dict) -> None:
    t[_first(t, "optim.")] = torch.zeros(7, 7)


def _nan_weight(t: dict) -> None:
    k = _first(t, "model.")
    t[k] = t[k].clone()
    t[k][0, 0] = float("nan")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop("trns.negatives"), "cannot resume from it (KeyError: 'trns.negatives')"),
        (lambda t: t.pop(_first(t, "model.")), "missing"),
        (_transpose_weight, "shape"),
        (lambda t: t.update({"trns.negatives": torch.zeros(3, 1, dtype=torch.long)}), "shape"),
        (_resize_moment, "optimizer"),
        (_nan_weight, "holds 1 NaN / infinite value(s)"),  # was trained on at NaN loss
    ],
)
def test_resume_from_a_checkpoint_that_does_not_fit_is_a_clear_error(
    bench, tmp_path, capsys, change, message
):
    run = tmp_path / "run"
    train(_cfg(bench, tmp_path, "train.epochs=2"), run, stop_after_epoch=1)
    _rewrite_checkpoint(run / "last.safetensors", change)
    log_before = (run / "log.jsonl").read_text()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "last.safetensors" in err and message in err and "Traceback" not in err, err
    assert (run / "log.jsonl").read_text() == log_before  # nothing of the run lost


def test_a_non_finite_loss_stops_training_with_a_message(bench, tmp_path, capsys, monkeypatch):
    """The loss turns NaN in epoch 2: the run stops there, says so, and last.safetensors
    still holds the good epoch 1 (before, the NaN epoch was trained and saved)."""
    step_losses = Trainer.step_losses

    def poisoned(self, b, gen):
        terms = step_losses(self, b, gen)
        if self.state.epoch == 1 and self.state.global_step % self.steps_per_epoch == 2:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(Trainer, "step_losses", poisoned)
    run = tmp_path / "run"
    argv = ["train", "--config", str(CONFIG), "--out", str(run), "--set",
            f"data.root={bench / 'cirr'}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--set", "train.epochs=3"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "training diverged at epoch 2" in err and "loss nan" in err
    assert "holds epoch 1" in err and "Traceback" not in err
    assert load_checkpoint(run / "last.safetensors").meta["state"]["epoch"] == 1
    assert [r for r in _records(run) if r[0] == "diverged"]


def test_evaluate_refuses_a_checkpoint_with_a_nan_written_into_it(bench, tmp_path, capsys):
    import struct

    best = train(_cfg(bench, tmp_path, "train.epochs=1"), tmp_path / "run")
    raw = bytearray(best.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in sorted(header) if k.startswith("model.") and "F32" in str(header[k]))
    at = 8 + n + header[name]["data_offsets"][0]
    raw[at : at + 4] = struct.pack("<f", float("nan"))
    best.write_bytes(bytes(raw))
    argv = ["evaluate", "--checkpoint", str(best), "--benchmark", "cirr", "--root",
            str(bench / "cirr"), "--split", "val", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "do not match the checksum" in err and "best.safetensors" in err


def test_value_term_labels_come_from_the_train_lexicon_and_reach_the_log(bench, tmp_path):
    trainer = Trainer(
        _cfg(bench, tmp_path, "model.attribute_weights=subspace", "loss.w_attr=0.5",
             "loss.attr_value=0.5", "train.log_every=1", "train.epochs=1"),
        tmp_path,
    )  # fmt: skip
    data = trainer.data
    vals = data.value_labels
    assert vals is not None and vals.shape == data.text_labels.shape
    # a text names a value of an attribute only where the lexicon marks that attribute
    assert not ((vals >= 0) & (data.text_labels < 0.5)).any()
    assert (vals >= 0).float().mean() > 0.3
    trainer.fit()
    steps = _steps(tmp_path)
    assert all("attr_value" in s and s["attr_value"] > 0 for s in steps)
    off = Trainer(_cfg(bench, tmp_path, "model.attribute_weights=subspace"), tmp_path)
    assert off.data.value_labels is None


def test_init_from_starts_the_backbone_from_a_checkpoint_and_the_new_heads_fresh(bench, tmp_path):
    # an L_itc run (no attribute head), then full DQE-CIR continuing it: every backbone weight
    # starts from the checkpoint, the attribute head fresh, and the log says which is which
    off = ["model.attribute_weights=none", "trns.enabled=false", "loss.w_attr=0"]
    src = train(_cfg(bench, tmp_path, "train.epochs=1", *off), tmp_path / "itc")
    saved = load_checkpoint(src).model_state
    cfg = _cfg(bench, tmp_path, "train.epochs=1", f"train.init_from={src}")
    (tmp_path / "full").mkdir()
    trainer = Trainer(cfg, tmp_path / "full")
    fresh = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.warm_start(src)
    trainer.log.close()
    now = dict(trainer.model.named_parameters())
    backbone = [k for k in saved if k.startswith("backbone.")]
    assert backbone and all(torch.equal(now[k].detach(), saved[k]) for k in backbone)
    heads = [n for n in now if n.startswith("aw.")]
    assert heads and all(torch.equal(now[n].detach(), fresh[n]) for n in heads)
    rec = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    init = [r for r in rec if r["event"] == "init"]
    assert (
        init
        and set(init[0]["fresh"]) == set(heads)
        and init[0]["backbone_weights"] == len(backbone)
    )
    # through train(): the continued run trains and writes its own checkpoint
    best = train(cfg, tmp_path / "full2")
    assert best.exists() and any(
        r["event"] == "init" for r in map(json.loads, (tmp_path / "full2" / "log.jsonl").open())
    )


def test_init_from_keeps_a_frozen_temperature_as_configured(bench, tmp_path):
    src = train(_cfg(bench, tmp_path, "train.epochs=1"), tmp_path / "src")
    cfg = _cfg(bench, tmp_path, "train.epochs=1", "loss.learn_temperature=false",
               "loss.temperature=0.2", f"train.init_from={src}")  # fmt: skip
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.warm_start(src)
    trainer.log.close()
    assert trainer._tau() == pytest.approx(0.2)
    saved = load_checkpoint(src).model_state
    heads = [(n, p) for n, p in trainer.model.named_parameters() if n.startswith("aw.")]
    assert heads and all(torch.equal(p.detach(), saved[n]) for n, p in heads)  # they did load


def test_init_from_a_checkpoint_of_another_size_is_a_clear_error(bench, tmp_path):
    from dqecir.errors import CheckpointError

    src = train(_cfg(bench, tmp_path, "train.epochs=1", "model.backbone_kwargs.hidden=32"),
                tmp_path / "small")  # fmt: skip
    cfg = _cfg(bench, tmp_path, "train.epochs=1", f"train.init_from={src}")
    with pytest.raises(CheckpointError, match=r"train.init_from .*small.*shape"):
        train(cfg, tmp_path / "run")
    missing = _cfg(bench, tmp_path, f"train.init_from={tmp_path / 'nope.safetensors'}")
    with pytest.raises(CheckpointError, match="does not exist"):
        train(missing, tmp_path / "run2")


def test_mining_embeds_under_the_training_autocast_and_scores_in_float32(
    bench, tmp_path, monkeypatch
):
    """train.amp reaches TRNS mining: the pool and the queries are embedded under it, and the
    scores that pick the negatives are float32 (outside the autocast)."""
    import dqecir.mining as mining

    trainer = Trainer(_cfg(bench, tmp_path, "train.amp=bf16"), tmp_path / "run")
    trainer.log.close()
    casts, dtypes = [], []
    embed, select = mining.embed_gallery, mining.mine_negatives

    def spy_embed(*a, **k):
        casts.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return embed(*a, **k)

    def spy_select(queries, pool, *a, **k):
        dtypes.append((queries.dtype, pool.dtype, torch.is_autocast_enabled("cpu")))
        return select(queries, pool, *a, **k)

    monkeypatch.setattr(mining, "embed_gallery", spy_embed)
    monkeypatch.setattr(mining, "mine_negatives", spy_select)
    low, _ = trainer.miner.mine(trainer.model, trainer._tau(), 5, amp=torch.bfloat16)
    full, _ = trainer.miner.mine(trainer.model, trainer._tau(), 5, amp=None)
    assert casts == [torch.bfloat16, None]
    assert dtypes == [(torch.float32, torch.float32, False)] * 2
    qz = trainer.queries
    for negs in (low, full):
        assert negs.shape == (len(qz), trainer.cfg.trns.k) and (negs >= 0).any()
        for i in range(len(qz)):  # never the reference or an annotated ground truth
            got = set(negs[i][negs[i] >= 0].tolist())
            assert not got & ({int(qz.reference[i])} | set(qz.gts[i]))
    trainer.mine()  # the Trainer passes its own autocast
    assert casts[-1] == torch.bfloat16


def test_anchor_decay_pulls_pretrained_weights_toward_their_start_and_nothing_else():
    """train.anchor_decay: the weights under backbone.text_top leave AdamW's decay toward zero
    and move toward their starting values by lr * rate of the gap per step; the rest keep the
    usual weight decay and no anchor."""
    import torch.nn as nn

    from dqecir.config import ConfigError, load_config
    from dqecir.train import AnchorDecay, make_optimizer

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.text_top = nn.ModuleList([nn.Linear(3, 3)])
            self.fusion = nn.Linear(3, 3)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Backbone()

    torch.manual_seed(0)
    m = Model()
    cfg = load_config(None, ["train.lr=0.1", "train.anchor_decay=2", "train.weight_decay=0.05"])
    opt = make_optimizer(m, cfg)
    top_w, fusion_w = m.backbone.text_top[0].weight, m.backbone.fusion.weight
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay_of[id(top_w)] == 0.0 and decay_of[id(fusion_w)] == 0.05
    anchor = AnchorDecay(m, opt, cfg.train.anchor_decay)
    assert anchor.count == 12  # the top layer's weight and bias only
    start_top, start_fusion = top_w.detach().clone(), fusion_w.detach().clone()
    with torch.no_grad():
        top_w.add_(1.0)  # as if training had moved it
        fusion_w.add_(1.0)
    anchor.step()
    # the gap shrinks by lr * rate = 0.2
    assert torch.allclose(top_w - start_top, torch.full_like(top_w, 0.8))
    assert torch.equal(fusion_w, start_fusion + 1.0)
    with pytest.raises(ConfigError, match="train.anchor_decay must be >= 0"):
        make_optimizer(m, load_config(None, ["train.anchor_decay=-1"]))
    off = make_optimizer(m, load_config(None, ["train.weight_decay=0.05"]))
    assert {
        g["weight_decay"] for g in off.param_groups if any(p is top_w for p in g["params"])
    } == {0.05}
