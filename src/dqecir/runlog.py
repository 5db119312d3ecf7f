"""The run folder's log: ``log.jsonl`` (one JSON object per record), optionally TensorBoard
scalars beside it, and the housekeeping of a resumed run (temporary files of interrupted writes,
records of the interrupted epoch)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from dqecir.config import ConfigError
from dqecir.files import write_text_atomic

log = logging.getLogger(__name__)


class JsonlLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        pass


class NullLog:
    """The log of a process that is not rank 0: records are dropped (rank 0 writes them)."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLog:
    """Every record also as TensorBoard scalars at its global step (``train.tensorboard``):
    ``train/<term>`` (step records), ``trns/<statistic>``, ``val/<metric>`` and
    ``epoch/<term>`` (epoch records). The ``tensorboard`` package is imported only here."""

    def __init__(self, inner: JsonlLog, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ConfigError(
                "train.tensorboard is true but the tensorboard package is not installed: "
                "pip install 'dqecir[tensorboard]' (or set train.tensorboard=false)"
            ) from e
        self.inner = inner
        self.writer = SummaryWriter(log_dir=str(folder))

    def write(self, record: dict[str, Any]) -> None:
        self.inner.write(record)
        step = int(record.get("step", 0))
        event = record.get("event")
        groups = {"step": [("train", record)], "trns": [("trns", record)],
                  "epoch": [("val", record.get("val") or {}), ("epoch", record.get("train") or {}),
                            ("time", record)]}.get(event, [])  # fmt: skip
        for prefix, values in groups:
            for key, value in values.items():
                if key in ("event", "epoch", "step") or isinstance(value, (bool, dict)):
                    continue
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)
        if event == "epoch":
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


RunLog = JsonlLog | NullLog | TensorBoardLog


def open_run_log(out: Path, *, main: bool, tensorboard: bool) -> RunLog:
    """The log of a run in ``out``: rank 0 writes ``log.jsonl`` (and TensorBoard scalars when
    asked), other processes drop their records."""
    if not main:
        return NullLog()
    run_log: RunLog = JsonlLog(out / "log.jsonl")
    return TensorBoardLog(run_log, out / "tensorboard") if tensorboard else run_log


def drop_temporary_files(out: Path) -> None:
    """Temporary files of writes a kill interrupted (``atomic_write``'s ``.NAME.*.tmp``)."""
    for name in ("last.safetensors", "best.safetensors", "log.jsonl"):
        for tmp in out.glob(f".{name}.*.tmp"):
            log.info("removing %s, left by an interrupted write", tmp)
            tmp.unlink(missing_ok=True)


def truncate_log(path: Path, epochs_done: int) -> None:
    """Keep the log records of the ``epochs_done`` epochs the checkpoint holds: the records an
    interrupted epoch wrote before the kill are written again by its rerun (a line cut short
    by the kill goes too)."""
    if not path.exists():
        return
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            # where a warm-started run's weights came from stays (it precedes every epoch)
            keep = record.get("event") == "init" or int(record["epoch"]) < epochs_done
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):  # not ours
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        log.info("resume: dropped %d log records of the interrupted epoch from %s", dropped, path)
        write_text_atomic(path, "".join(f"{x}\n" for x in kept))
