"""Peak resident memory of a block of code, C allocations included (Pillow's image buffers are
invisible to tracemalloc). Linux: the kernel's high-water mark (VmHWM) is reset to the current
RSS by writing 5 to /proc/self/clear_refs, then read back after the block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


class Peak:
    bytes: int = 0

    @property
    def mib(self) -> float:
        return self.bytes / 2**20


@contextmanager
def peak_rss() -> Iterator[Peak]:
    """``with peak_rss() as p: ...`` then ``p.bytes``: how far the process's resident memory
    rose above where it stood when the block began."""
    peak = Peak()
    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    try:
        yield peak
    finally:
        peak.bytes = max(0, _status("VmHWM") - base)
