"""Benchmark protocols (``registry.BENCHMARKS``): every registered one is complete, and loading,
scoring, evaluation files and the command line read nothing else. The last test is the one to
copy for a new benchmark (docs/extending.md, "Benchmark")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_official import make_circo, make_cirr, make_fashioniq

from dqecir.cli import main
from dqecir.data.formats import load_benchmark, load_cirr
from dqecir.data.formats.cirr import write_submission as cirr_files
from dqecir.data.formats.protocol import Benchmark, PredictionsFormat
from dqecir.data.types import CIRSplit, Query
from dqecir.registry import BENCHMARKS, get_benchmark
from dqecir.scoring import score_predictions_file, score_rankings

BUILDERS = {"cirr": make_cirr, "circo": make_circo, "fashioniq": make_fashioniq}


def _perfect(q: Query, s: CIRSplit) -> list[str]:
    """Every ground truth first, then the rest of the gallery (minus a removed reference)."""
    gts = list(q.gt)
    rest = [g for g in s.gallery if g not in gts and not (s.remove_reference and g == q.reference)]
    return gts + rest


def test_every_registered_benchmark_is_tested():
    assert set(BUILDERS) == set(BENCHMARKS.names()) == {"cirr", "circo", "fashioniq"}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_protocol_loads_scores_and_writes_what_its_scorer_reads(name, tmp_path):
    bench = get_benchmark(name)
    assert bench.name == name and bench.headline and bench.default_ks
    root = BUILDERS[name](tmp_path / name)
    splits = load_benchmark(name, root, "val")
    assert splits and all(s.benchmark == name and s.queries for s in splits)
    rankings = {q.qid: _perfect(q, s) for s in splits for q in s.queries}
    metrics = bench.merge([(s, score_rankings(s, rankings)) for s in splits])
    assert metrics[bench.headline] == pytest.approx(100.0)
    for family, ks in bench.default_ks.items():
        assert any(k.endswith(f"{family}@{ks[0]}") for k in metrics), family
    files = bench.write_submission(rankings, None, tmp_path / "files", name)
    assert score_predictions_file(name, root, "val", files[0]) == pytest.approx(metrics)


def test_a_new_benchmark_is_one_registration(tmp_path, monkeypatch, capsys):
    """A benchmark in CIRR's file layout under its own name, Ks and headline: registering its
    protocol makes loading, scoring and ``dqecir score --benchmark toy`` take it."""

    def load(root: Path, split: str, group: None, **kw: bool) -> CIRSplit:
        s = load_cirr(root, split, **kw)
        s.benchmark = "toy"
        return s

    toy = Benchmark(
        name="toy", load=load, default_ks={"recall": (1, 2)}, headline="recall@2",
        write_submission=cirr_files,
        predictions=PredictionsFormat(version="rc2", metrics=("recall", "recall_subset")),
    )  # fmt: skip
    BENCHMARKS.names()  # the built-in ones first
    monkeypatch.setitem(BENCHMARKS._entries, "toy", toy)  # register_benchmark(toy), undone after
    assert "toy" in BENCHMARKS
    root = make_cirr(tmp_path / "toy")
    (split,) = load_benchmark("toy", root, "val")
    rankings = {q.qid: _perfect(q, split) for q in split.queries}
    assert set(score_rankings(split, rankings)) == {"recall@1", "recall@2", "num_queries"}
    files = toy.write_submission(rankings, None, tmp_path / "files", "toy")
    argv = ["score", "--benchmark", "toy", "--root", str(root), "--split", "val",
            "--predictions", str(files[0])]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == {"recall@1": 100.0, "recall@2": 100.0,
                                                   "num_queries": 3.0}  # fmt: skip
