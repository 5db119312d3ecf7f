"""Scoring rankings with each benchmark's official protocol, from memory or from a file.

:func:`score_rankings` is shared by model evaluation and by the file scorer
(:func:`score_predictions_file`, behind ``dqecir score``). Scoring never filters or re-orders
a ranking: whatever the protocol removes (the reference, for CIRR and CIRCO) must already be
absent from what is scored. Metric keys are listed in docs/formats.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dqecir.data.formats import load_benchmark
from dqecir.data.formats.common import read_json
from dqecir.data.types import CIRSplit, Query
from dqecir.errors import DataError, PredictionsError
from dqecir.metrics import map_at_k, recall_at_k, recall_subset_at_k, subset_ranking
from dqecir.registry import get_benchmark

MIN_ENTRIES = {"recall": 50, "recall_subset": 3}
"""Shortest ranking a predictions file may hold, per metric (``recall``: CIRCO and FashionIQ
too), capped by what the split allows: the gallery minus the reference where the protocol
removes it, or the ``img_set`` members minus the reference."""


# ---------------------------------------------------------------------------------------
# scoring rankings held in memory
# ---------------------------------------------------------------------------------------


def score_rankings(
    split: CIRSplit,
    rankings: Mapping[str, Sequence[str]] | None,
    *,
    subset_rankings: Mapping[str, Sequence[str]] | None = None,
    ks: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, float]:
    """Score one split's rankings; a flat dict of percentages plus ``num_queries``.

    Args:
        split: the annotations (every query must have a target).
        rankings: query id -> ranked gallery image ids, best first (``None``: score only
            ``subset_rankings``, as for a CIRR ``recall_subset`` file).
        subset_rankings: CIRR only: query id -> ranked ``img_set`` members minus the reference.
            When ``None`` they are derived from ``rankings`` by
            :func:`dqecir.metrics.subset_ranking`.
        ks: per family (``recall``, ``recall_subset``, ``map``) the cut-offs to report,
            replacing that family's defaults (the benchmark protocol's ``default_ks``).

    Every metric is also reported as ``<kind>/<metric>`` over the queries of each ``kind`` and
    as ``heldout/<metric>`` over the queries marked ``heldout``, when queries carry them.
    """
    default_ks = get_benchmark(split.benchmark).default_ks
    _require_targets(split)
    if rankings is None and subset_rankings is None:
        raise ValueError("nothing to score: give rankings and/or subset_rankings")
    families = {**default_ks, **{k: tuple(v) for k, v in (ks or {}).items()}}
    groups: list[tuple[str, list[Query]]] = [("", split.queries)]
    for kind in sorted({q.kind for q in split.queries if q.kind is not None}):
        groups.append((f"{kind}/", [q for q in split.queries if q.kind == kind]))
    heldout = [q for q in split.queries if q.heldout]
    if heldout:
        groups.append(("heldout/", heldout))
    out: dict[str, float] = {}
    for prefix, queries in groups:
        metrics = _score_group(split, queries, rankings, subset_rankings, families)
        out.update({prefix + key: value for key, value in metrics.items()})
    return out


def _require_targets(split: CIRSplit) -> None:
    if not split.queries:
        raise DataError(f"{split.benchmark} split {split.split!r} has no queries to score")
    without = [q.qid for q in split.queries if q.target is None]
    if len(without) == len(split.queries):
        raise DataError(
            f"{split.benchmark} split {split.split!r} has no targets (its annotations hide "
            "them), so it cannot be scored here; use the benchmark's evaluation server"
        )
    if without:
        raise DataError(
            f"{split.benchmark} split {split.split!r}: {len(without)} queries have no target",
            record=without[0],
        )


def _ranking(rankings: Mapping[str, Sequence[str]], qid: str, what: str) -> Sequence[str]:
    if qid not in rankings:
        raise PredictionsError(f"no {what} for this query", record=qid)
    return rankings[qid]


def _score_group(
    split: CIRSplit,
    queries: list[Query],
    rankings: Mapping[str, Sequence[str]] | None,
    subset_rankings: Mapping[str, Sequence[str]] | None,
    families: Mapping[str, tuple[int, ...]],
) -> dict[str, float]:
    out: dict[str, float] = {}
    targets = [q.target for q in queries]
    if rankings is not None:
        ranked = [_ranking(rankings, q.qid, "ranking") for q in queries]
        for k in families.get("recall", ()):
            out[f"recall@{k}"] = recall_at_k(ranked, targets, k)
        for k in families.get("map", ()):
            out[f"map@{k}"] = map_at_k(ranked, [q.gt for q in queries], k)
    subset_ks = families.get("recall_subset", ())
    subsets = _subsets(queries, rankings, subset_rankings) if subset_ks else None
    if subsets is not None:
        for k in subset_ks:
            out[f"recall_subset@{k}"] = recall_subset_at_k(subsets, targets, k)
    if "recall@5" in out and "recall_subset@1" in out:
        out["avg"] = (out["recall@5"] + out["recall_subset@1"]) / 2
    out["num_queries"] = float(len(queries))
    return out


def _subsets(
    queries: list[Query],
    rankings: Mapping[str, Sequence[str]] | None,
    subset_rankings: Mapping[str, Sequence[str]] | None,
) -> list[Sequence[str]] | None:
    """Subset rankings of ``queries``; ``None`` when no query has ``img_set`` members."""
    if subset_rankings is not None:
        return [_ranking(subset_rankings, q.qid, "subset ranking") for q in queries]
    without = [q.qid for q in queries if not q.members]
    if len(without) == len(queries):
        return None
    if without:
        raise DataError(f"{len(without)} queries have no img_set members", record=without[0])
    assert rankings is not None
    return [
        subset_ranking(rankings[q.qid], q.members, q.reference, target=q.target) for q in queries
    ]


# ---------------------------------------------------------------------------------------
# predictions files
# ---------------------------------------------------------------------------------------


@dataclass
class Predictions:
    """A validated predictions file: which metric it is for and one ranking per query."""

    benchmark: str
    metric: str
    """``recall`` (full top-50 rankings) or, for CIRR, ``recall_subset``."""
    rankings: dict[str, list[str]]


def load_splits(benchmark: str, root: Path, split: str) -> list[CIRSplit]:
    """The annotations a predictions file is checked against (no image files needed)."""
    return load_benchmark(benchmark, root, split, resolve_images=False)


def validate_predictions(benchmark: str, splits: Sequence[CIRSplit], path: Path) -> Predictions:
    """Read a predictions file and check it against ``splits``; errors name file and key.

    Checks: JSON object, version / metric fields, one ranking for every query and no
    unknown key, lists of known image ids without duplicates, at least 50 entries (3 for a
    CIRR ``recall_subset`` file, whose entries must be ``img_set`` members).
    """
    data = read_json(path, error=PredictionsError, pairs_hook=_unique_keys(path))
    if not isinstance(data, dict):
        raise PredictionsError("expected a JSON object of query id -> ranking", file=path)
    data = dict(data)
    fmt = get_benchmark(benchmark).predictions
    if fmt.version is not None:
        _expect(data.pop("version", None), (fmt.version,), path, "version")
    metric = fmt.metrics[0]
    if len(fmt.metrics) > 1:
        metric = _expect(data.pop("metric", None), fmt.metrics, path, "metric")
    queries = {q.qid: (q, s) for s in splits for q in s.queries}
    _check_keys(data, queries, path)
    galleries = {id(s): set(s.gallery) for s in splits}
    rankings: dict[str, list[str]] = {}
    for key, value in data.items():
        query, split = queries[key]
        allowed = set(query.members) if metric == "recall_subset" else galleries[id(split)]
        ranking = _parse_ranking(value, key, path, integer_ids=fmt.integer_ids)
        at_least = min(MIN_ENTRIES[metric], _rankable(allowed, query, split, metric))
        _check_ranking(ranking, key, path, allowed, at_least, split, metric)
        rankings[key] = ranking
    return Predictions(benchmark=benchmark, metric=metric, rankings=rankings)


def _unique_keys(path: Path) -> Any:
    """``object_pairs_hook`` refusing a key given twice (``json`` keeps the last silently, so
    a query would be scored on whichever ranking came last)."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise PredictionsError(
                    "key given twice in one JSON object (one ranking per query)",
                    file=path,
                    record=key,
                )
            out[key] = value
        return out

    return hook


def _rankable(allowed: set[str], query: Query, split: CIRSplit, metric: str) -> int:
    """How many images a complete ranking of ``query`` holds under the protocol."""
    drops_reference = metric == "recall_subset" or split.remove_reference
    return len(allowed) - int(drops_reference and query.reference in allowed)


def _expect(value: object, allowed: tuple[str, ...], path: Path, key: str) -> str:
    if value not in allowed:
        shown = "missing" if value is None else repr(value)
        raise PredictionsError(
            f"{shown}, expected {' or '.join(repr(a) for a in allowed)}", file=path, record=key
        )
    return str(value)


def _check_keys(data: Mapping, queries: Mapping, path: Path) -> None:
    unknown = [k for k in data if k not in queries]
    if unknown:
        raise PredictionsError(
            f"not a query id of the annotations ({len(unknown)} unknown keys)",
            file=path,
            record=unknown[0],
        )
    missing = [k for k in queries if k not in data]
    if missing:
        raise PredictionsError(
            f"missing query: no ranking for {len(missing)} of {len(queries)} queries",
            file=path,
            record=missing[0],
        )


def _parse_ranking(value: object, key: str, path: Path, *, integer_ids: bool) -> list[str]:
    if not isinstance(value, list):
        raise PredictionsError("ranking must be a JSON list", file=path, record=key)
    out: list[str] = []
    for position, item in enumerate(value, start=1):
        if integer_ids and isinstance(item, int) and not isinstance(item, bool):
            out.append(str(item))
        elif integer_ids and isinstance(item, str) and _decimal(item):
            out.append(str(int(item)))
        elif not integer_ids and isinstance(item, str):
            out.append(item)
        else:
            wanted = "an integer image id" if integer_ids else "an image name (string)"
            raise PredictionsError(
                f"entry {position} is {item!r}, expected {wanted}", file=path, record=key
            )
    return out


def _decimal(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes "²", which ``int`` refuses), short
    enough to be an image id."""
    return 0 < len(text) <= 30 and text.isascii() and text.isdigit()


def _check_ranking(
    ranking: list[str],
    key: str,
    path: Path,
    allowed: set[str],
    min_entries: int,
    split: CIRSplit,
    metric: str,
) -> None:
    first: dict[str, int] = {}
    for position, image in enumerate(ranking, start=1):
        if image in first:
            raise PredictionsError(
                f"duplicate id {image!r} at positions {first[image]} and {position}",
                file=path,
                record=key,
            )
        first[image] = position
        if image not in allowed:
            where = "img_set members" if metric == "recall_subset" else f"split {split.split!r}"
            raise PredictionsError(
                f"unknown image {image!r} (not in the {where})", file=path, record=key
            )
    if len(ranking) < min_entries:
        raise PredictionsError(
            f"ranking has {len(ranking)} entries, at least {min_entries} required",
            file=path,
            record=key,
        )


def read_predictions_file(
    benchmark: str, root: Path, split: str, predictions: Path
) -> tuple[list[CIRSplit], Predictions]:
    """The annotations of ``split`` and the validated predictions file (see
    :func:`validate_predictions`)."""
    splits = load_splits(benchmark, Path(root), split)
    return splits, validate_predictions(benchmark, splits, Path(predictions))


def has_targets(splits: Sequence[CIRSplit]) -> bool:
    """Whether the splits can be scored here (test splits of the official benchmarks hide
    their targets: their files go to the benchmark's evaluation server)."""
    return all(s.has_targets for s in splits if s.queries)


def score_predictions(splits: Sequence[CIRSplit], parsed: Predictions) -> dict[str, float]:
    """Score validated predictions against splits with targets (a grouped benchmark's groups
    apart, then their average)."""
    if parsed.metric == "recall_subset":
        return score_rankings(splits[0], None, subset_rankings=parsed.rankings)
    results = [(s, score_rankings(s, parsed.rankings)) for s in splits]
    return get_benchmark(parsed.benchmark).merge(results)


def score_predictions_file(
    benchmark: str, root: Path, split: str, predictions: Path
) -> dict[str, float]:
    """Validate and score a predictions file against the annotations under ``root``.

    Computes what the official evaluation computes from the file (docs/formats.md): CIRCO
    ``src/evaluation.py``'s mAP@K / Recall@K; CIRR's Recall@K and Recall_subset@K (from a
    ``recall`` file, Recall_subset is derived from the submitted list); FashionIQ's Recall@K
    per category and their mean. Nothing in a ranking is removed or re-ordered. A split
    without targets cannot be scored: a :class:`DataError` says so (and that the file is
    valid); ``dqecir score`` reports such a file as valid instead.
    """
    splits, parsed = read_predictions_file(benchmark, root, split, predictions)
    if not has_targets(splits):
        raise DataError(
            f"{benchmark} split {split!r} has no targets, so it cannot be scored here; the "
            f"predictions file is valid ({len(parsed.rankings)} queries) and can be submitted "
            "to the benchmark's evaluation server",
            file=predictions,
        )
    return score_predictions(splits, parsed)
