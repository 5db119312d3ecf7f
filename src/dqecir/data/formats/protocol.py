"""A benchmark as one registered protocol: everything that differs between FashionIQ, CIRR and
CIRCO, in one object each format module registers (``registry.BENCHMARKS``).

Loading, scoring (``dqecir.scoring``), evaluation (``dqecir.evaluate``), training and the
command line read a benchmark only through its :class:`Benchmark`; adding one is a new format
module that registers its protocol (docs/extending.md, "Benchmark").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dqecir.data.types import CIRSplit
from dqecir.errors import DataError
from dqecir.files import write_json_atomic
from dqecir.metrics import group_average
from dqecir.registry import BENCHMARKS

Rankings = Mapping[str, Sequence[str]]
"""Query id -> ranked gallery image ids, best first."""
SubmissionWriter = Callable[[Rankings, Rankings | None, Path, str], list[Path]]
"""``write(rankings, subset_rankings, out_dir, name)`` -> the files written."""


@dataclass(frozen=True)
class PredictionsFormat:
    """The header of a predictions (submission) file."""

    version: str | None = None
    """Value the ``version`` field must hold (None: no such field)."""
    metrics: tuple[str, ...] = ("recall",)
    """Values of the ``metric`` field (a file of full rankings is ``recall``); with one value the
    field is absent."""
    integer_ids: bool = False
    """Image ids are JSON integers (CIRCO's COCO ids), read as their decimal strings."""


@dataclass(frozen=True)
class Benchmark:
    """One benchmark's protocol.

    Attributes:
        name: registry name (``cirr``), also :attr:`CIRSplit.benchmark` of what it loads.
        load: ``load(root, split, group, *, resolve_images, skip_missing) -> CIRSplit``; ``group``
            is None unless the benchmark has :attr:`groups`.
        default_ks: metric family (``recall``, ``recall_subset``, ``map``) -> cut-offs scored.
        headline: the metric that picks a run's best epoch when ``eval.headline`` is empty.
        write_submission: writes the evaluation server's files for a split without targets.
        predictions: the header of its predictions files.
        groups: ``groups(root, split)`` -> the categories present (FashionIQ: dress, shirt,
            toptee), each loaded and scored apart and averaged; None: one split.
        split_file: ``split_file(root, split)`` -> the annotation file of a split, to find the
            other phrasings of a split an embedded benchmark writes (``val-unseen``...);
            None: the benchmark has no such variants.
    """

    name: str
    load: Callable[..., CIRSplit]
    default_ks: Mapping[str, tuple[int, ...]]
    headline: str
    write_submission: SubmissionWriter
    predictions: PredictionsFormat
    groups: Callable[[Path, str], list[str]] | None = None
    split_file: Callable[[Path, str], Path] | None = None

    def load_splits(
        self,
        root: str | Path,
        split: str,
        *,
        groups: Sequence[str] | None = None,
        resolve_images: bool = True,
        skip_missing: bool = False,
    ) -> list[CIRSplit]:
        """One split per group (``groups``, default: every group present), else a one-element
        list (``groups`` must then be None)."""
        kw = {"resolve_images": resolve_images, "skip_missing": skip_missing}
        if self.groups is None:
            if groups is not None:
                raise ValueError(f"categories apply to grouped benchmarks only, not {self.name!r}")
            return [self.load(root, split, None, **kw)]
        names = list(groups) if groups is not None else self.groups(Path(root), split)
        if not names:
            raise DataError(f"no {self.name} categories for split {split!r}", file=Path(root))
        return [self.load(root, split, g, **kw) for g in names]

    def merge(self, results: Sequence[tuple[CIRSplit, dict[str, float]]]) -> dict[str, float]:
        """The metrics of a loaded split (its groups': ``<group>/<metric>`` and the average)."""
        if self.groups is None:
            if len(results) != 1:
                raise ValueError(f"{self.name}: one split to merge, got {len(results)}")
            return dict(results[0][1])
        return group_average({s.queries[0].group or s.split: m for s, m in results if s.queries})

    def variants(self, root: Path, split: str, names: Sequence[str]) -> dict[str, str]:
        """Phrasing variant -> split name for ``split`` itself (``seen``) and each variant of
        ``names`` whose ``<split>-<variant>`` annotation file exists under ``root``."""
        out = {"seen": split}
        if self.split_file is not None:
            for v in names:
                if self.split_file(Path(root), f"{split}-{v}").is_file():
                    out[v] = f"{split}-{v}"
        return out


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Make ``benchmark`` known by its name to loading, scoring, evaluation, training and the CLI."""
    return BENCHMARKS.register(benchmark.name)(benchmark)


def write_json_files(files: Mapping[str, object], out_dir: Path) -> list[Path]:
    """Write ``file name -> JSON object`` into ``out_dir`` (atomically); returns the paths."""
    written = []
    for name, obj in files.items():
        write_json_atomic(out_dir / name, obj)
        written.append(out_dir / name)
    return written
