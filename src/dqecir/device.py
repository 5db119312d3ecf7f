"""Which ``torch.device`` a device name means: the one place ``"auto"`` is resolved."""

from __future__ import annotations

import torch

from dqecir.config import ConfigError


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; any other name as torch reads it. Asking
    for CUDA on a machine without it is a :class:`~dqecir.config.ConfigError`."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for, but CUDA is not available")
    return dev
