"""Run ``dqecir`` under torchrun from a test (shared by the distributed and sharded tests)."""

import os
import subprocess
import sys


def torchrun(args: list[str], nproc: int = 2, timeout: int = 120) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=N -m dqecir.cli ARGS`` (one thread each)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "dqecir.cli", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    return res
