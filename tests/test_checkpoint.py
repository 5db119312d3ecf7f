"""Checkpoints: atomic write, validation on load, optimizer round trip."""

import pytest
import torch

from dqecir.checkpoint import load_checkpoint, save_checkpoint
from dqecir.errors import CheckpointError
from dqecir.files import atomic_write


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


def _tensor_bytes_offset(path, name):
    """Where the bytes of tensor ``name`` start in a safetensors file (8-byte header length,
    JSON header, then the data block)."""
    import json
    import struct

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return 8 + n + header[name]["data_offsets"][0]


def test_a_changed_weight_byte_is_refused(tmp_path):
    """One NaN written over a weight (what made evaluate report recall@1 3.3 with exit 0)."""
    import struct

    p = tmp_path / "ck.safetensors"
    _save(p)
    data = bytearray(p.read_bytes())
    at = _tensor_bytes_offset(p, "model.weight")
    data[at : at + 4] = struct.pack("<f", float("nan"))
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the checksum") as e:
        load_checkpoint(p)
    assert "ck.safetensors" in str(e.value)


def test_non_finite_weights_are_refused_even_with_a_valid_checksum(tmp_path):
    model = torch.nn.Linear(3, 2)
    state = dict(model.state_dict())
    state["weight"] = state["weight"].clone()
    state["weight"][0, 1] = float("inf")
    p = tmp_path / "diverged.safetensors"
    save_checkpoint(p, model_state=state, meta={"config": {}, "preprocess": {}})
    with pytest.raises(CheckpointError, match="weight weight holds 1 NaN / infinite"):
        load_checkpoint(p)


def test_checkpoints_without_a_checksum_still_load_with_a_warning(tmp_path, caplog):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    p = tmp_path / "old.safetensors"
    _save(p)
    with safe_open(str(p), framework="pt") as f:
        meta = json.loads(f.metadata()["dqecir"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    del meta["tensors_sha256"]
    save_file(tensors, str(p), metadata={"dqecir": json.dumps(meta)})
    with caplog.at_level("WARNING"):
        assert load_checkpoint(p).meta["config"] == {"name": "x"}
    assert "without a tensor checksum" in caplog.text


def test_metadata_python_cannot_hold_is_refused(tmp_path):
    from safetensors.torch import save_file

    for name, raw in [("deep", "[" * 100_000 + "]" * 100_000), ("list", "[1, 2]"),
                      ("digits", '{"format": "dqecir-checkpoint", "version": ' + "9" * 5000 + "}"),
                      ("version", '{"format": "dqecir-checkpoint", "version": "1"}')]:  # fmt: skip
        p = tmp_path / f"{name}.safetensors"
        save_file({"model.w": torch.zeros(2)}, str(p), metadata={"dqecir": raw})
        with pytest.raises(CheckpointError, match=f"checkpoint {p}"):
            load_checkpoint(p)


def test_deeply_nested_yaml_config_is_a_config_error(tmp_path):
    from dqecir.config import ConfigError, load_config

    p = tmp_path / "deep.yaml"
    p.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(p)
