"""Checkpoints: atomic write, validation on load, optimizer round trip."""

import pytest
import torch

from dqecir.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from dqecir.errors import CheckpointError


def _save(path, **kw):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(
        path,
        model_state=dict(model.state_dict()),
        meta={"config": {"name": "x"}, "preprocess": {"image_size": 8}, **kw},
        optimizer=opt,
        extra_tensors={"trns.negatives": torch.arange(6).view(2, 3)},
    )
    return model, opt


def test_round_trip(tmp_path):
    p = tmp_path / "ck.safetensors"
    model, opt = _save(p, epoch=3)
    ck = load_checkpoint(p)
    assert ck.meta["epoch"] == 3
    assert torch.equal(ck.model_state["weight"], model.weight.detach())
    assert torch.equal(ck.tensors["trns.negatives"], torch.arange(6).view(2, 3))
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    opt2.load_state_dict(ck.optimizer_state())
    a, b = opt.state_dict(), opt2.state_dict()
    for pid in a["state"]:
        for k, v in a["state"][pid].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][pid][k]))
    assert not list(tmp_path.glob(".*.tmp")), "temporary file left behind"


def test_corrupted_and_foreign_files_are_refused(tmp_path):
    p = tmp_path / "ck.safetensors"
    _save(p)
    data = p.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_checkpoint(bad)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a dqecir checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "ck.safetensors"
    _save(p, epoch=1)

    def boom(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert load_checkpoint(p).meta["epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp"))
