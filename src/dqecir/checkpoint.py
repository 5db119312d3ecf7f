"""Checkpoints: one safetensors file, written atomically, validated on load, never unpickled.

Tensors are stored under prefixes: ``model.`` (trainable weights), ``optim.`` (optimizer state
tensors), ``trns.`` (current negative sets), ``rng.`` (torch RNG states). Everything else — the
resolved config, preprocessing, epoch / step, optimizer hyper-parameters, Python / numpy RNG
state, metrics — is JSON in the file's metadata under the key ``dqecir``, together with
``tensors_sha256``: the sha256 of every tensor (name, dtype, shape, bytes, in name order),
checked on load, so that a changed byte in the weights (one NaN where a float was) is refused
instead of evaluated. Model weights must also be finite.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dqecir.errors import CheckpointError
from dqecir.files import atomic_write

log = logging.getLogger(__name__)

FORMAT = "dqecir-checkpoint"
VERSION = 1


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode("utf-8"))
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in state["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, sc in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(sc)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: Path,
    *,
    model_state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write a checkpoint atomically. ``meta`` must be JSON-serialisable; it should hold at least
    ``config`` (the resolved config) and ``preprocess``."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    full_meta = dict(meta, format=FORMAT, version=VERSION)
    if optimizer is not None:
        opt_t, opt_meta = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_t)
        full_meta["optimizer"] = opt_meta
    if scheduler is not None:
        full_meta["scheduler"] = scheduler.state_dict()
    for k, v in (extra_tensors or {}).items():
        tensors[k] = v.detach().cpu().contiguous()
    full_meta["rng_cuda"] = torch.cuda.is_available()
    tensors["rng.torch"] = torch.get_rng_state()
    full_meta["tensors_sha256"] = tensors_sha256(tensors)
    header = {"dqecir": json.dumps(full_meta)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=header))


class Checkpoint:
    """A loaded checkpoint: ``meta`` (JSON) and its tensors by section."""

    def __init__(self, path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]):
        self.path = path
        self.meta = meta
        self.tensors = tensors

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        p = prefix + "."
        return {k[len(p) :]: v for k, v in self.tensors.items() if k.startswith(p)}

    @property
    def model_state(self) -> dict[str, torch.Tensor]:
        return self.section("model")

    def optimizer_state(self) -> dict[str, Any] | None:
        if "optimizer" not in self.meta:
            return None
        return _unflatten_optimizer(self.section("optim"), self.meta["optimizer"])

    def restore_rng(self) -> None:
        """Set torch's, Python's and numpy's global generators to the states saved with
        :func:`host_rng_state` (a resumed run then draws what the uninterrupted run drew)."""
        torch.set_rng_state(self.tensors["rng.torch"])
        s = self.meta["python_rng"]
        random.setstate((s[0], tuple(s[1]), s[2]))
        n = self.meta["numpy_rng"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def host_rng_state() -> dict[str, list]:
    """Python's and numpy's generator states as JSON, for a checkpoint's ``meta`` (torch's is
    stored as a tensor by :func:`save_checkpoint`)."""
    v, state, g = random.getstate()
    name, keys, pos, has_g, gauss = np.random.get_state()
    return {
        "python_rng": [v, list(state), g],
        "numpy_rng": [name, keys.tolist(), int(pos), int(has_g), float(gauss)],
    }


def check_optimizer_shapes(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """torch loads optimizer moments of any shape and fails at the first step; fail now."""
    params = [p for g in opt.param_groups for p in g["params"]]
    for pid, st in state["state"].items():
        if not 0 <= int(pid) < len(params):
            raise ValueError(f"optimizer state for parameter {pid}, the model has {len(params)}")
        for name, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() and v.shape != params[int(pid)].shape:
                raise ValueError(
                    f"optimizer {name} of parameter {pid} has shape {tuple(v.shape)}, the "
                    f"parameter {tuple(params[int(pid)].shape)}"
                )


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and validate a checkpoint; any problem is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.safetensors"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupted: {e}") from e
    raw = header.get("dqecir")
    if raw is None:
        raise CheckpointError(f"checkpoint {path}: not a dqecir checkpoint (no 'dqecir' metadata)")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {path}: metadata is not valid JSON ({e!r:.120})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: unknown format {meta.get('format')!r}")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"checkpoint {path}: metadata field 'version' must be an integer")
    if version > VERSION:
        raise CheckpointError(
            f"checkpoint {path}: format version {meta.get('version')} is newer than this "
            f"dqecir supports ({VERSION}); upgrade dqecir"
        )
    for key in ("config", "preprocess"):
        if key not in meta:
            raise CheckpointError(f"checkpoint {path}: metadata lacks '{key}'")
    if not any(k.startswith("model.") for k in tensors):
        raise CheckpointError(f"checkpoint {path}: holds no model weights")
    _check_tensors(path, meta, tensors)
    return Checkpoint(path, meta, tensors)


def _check_tensors(path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    want = meta.get("tensors_sha256")
    if want is None:
        log.warning("checkpoint %s was written without a tensor checksum: not verified", path)
    elif tensors_sha256(tensors) != want:
        raise CheckpointError(
            f"checkpoint {path}: its tensors do not match the checksum written with them "
            "(the file was corrupted or edited); use another checkpoint or retrain"
        )
    for name, t in tensors.items():
        if name.startswith("model.") and t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise CheckpointError(
                    f"checkpoint {path}: weight {name[len('model.') :]} holds {bad} NaN / "
                    "infinite value(s); the run that wrote it diverged"
                )
