"""Model evaluation with each benchmark's protocol, and submission files for test splits.

The gallery is embedded once per split; queries are scored in batches against it. Where the
protocol says so (CIRR, CIRCO, our embedded benchmarks) the reference image is removed from the
model's ranking before anything is scored or written; FashionIQ keeps it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from dqecir.data.pipeline import SplitFeatures, query_texts
from dqecir.data.synthetic.phrasing import VARIANTS
from dqecir.data.types import CIRSplit
from dqecir.models.cir import CIRModel, embed_gallery
from dqecir.registry import get_benchmark

log = logging.getLogger(__name__)


PHRASINGS = tuple(VARIANTS)
"""Phrasing variants an embedded benchmark writes for val / test (``<split>-<variant>``, the
first, ``seen``, being ``<split>`` itself)."""


@dataclass
class SplitRanking:
    split: CIRSplit
    rankings: dict[str, list[str]]
    subset_rankings: dict[str, list[str]] | None
    relevance: dict[str, list[float]] | None = None
    """Attribute relevance ``alpha`` per query (models with attribute weights)."""


@torch.no_grad()
def rank_split(
    model: CIRModel,
    split: CIRSplit,
    table: SplitFeatures,
    device: torch.device,
    *,
    batch_size: int = 256,
    topk: int = 50,
    gallery_emb: torch.Tensor | None = None,
    progress: bool = False,
) -> SplitRanking:
    """Top-``topk`` gallery ids per query (reference removed where the protocol says so), and the
    ranking of ``img_set.members`` minus the reference where the split has them."""
    model.eval()
    gal_rows = table.image_rows(split.gallery)
    if gallery_emb is None:
        gallery_emb = embed_gallery(model, table.images[gal_rows], device, batch_size)
    gal_pos = {g: i for i, g in enumerate(split.gallery)}
    rankings: dict[str, list[str]] = {}
    subsets: dict[str, list[str]] = {}
    relevance: dict[str, list[float]] = {}
    has_members = any(q.members for q in split.queries)
    # The removed reference (score -inf) must never reach the written ranking.
    k = min(topk, len(split.gallery) - (1 if split.remove_reference else 0))
    qs = split.queries
    for start in tqdm(
        range(0, len(qs), batch_size), desc="queries", disable=not progress, leave=False
    ):
        batch = qs[start : start + batch_size]
        ref = table.images[table.image_rows([q.reference for q in batch])].to(device).float()
        trows = torch.tensor([table.text_row[query_texts(q, train=False)[0]] for q in batch])
        tf = {k_: v.to(device) for k_, v in table.text_batch(trows).items()}
        qo = model.query(ref, tf)
        q_star = qo["q_star"].float()
        if "alpha" in qo:
            for q, a in zip(batch, qo["alpha"].float().cpu().tolist(), strict=True):
                relevance[q.qid] = a
        scores = model.score(q_star, gallery_emb)
        if split.remove_reference:
            for i, q in enumerate(batch):
                p = gal_pos.get(q.reference)
                if p is not None:
                    scores[i, p] = float("-inf")
        top = scores.topk(k, dim=1).indices.cpu().tolist()
        for i, q in enumerate(batch):
            rankings[q.qid] = [split.gallery[j] for j in top[i]]
            if has_members and q.members:
                mem = [m for m in q.members if m != q.reference]
                ms = torch.tensor([scores[i, gal_pos[m]] for m in mem])
                order = torch.argsort(ms, descending=True, stable=True).tolist()
                subsets[q.qid] = [mem[j] for j in order]
    return SplitRanking(split, rankings, subsets if has_members else None, relevance or None)


def score_split(r: SplitRanking, attributes: Sequence[str] = ()) -> dict[str, float]:
    from dqecir.scoring import score_rankings

    out = score_rankings(r.split, r.rankings, subset_rankings=r.subset_rankings)
    if r.relevance and attributes:
        out.update(relevance_accuracy(r.split, r.relevance, attributes))
    return out


def relevance_accuracy(
    split: CIRSplit, relevance: dict[str, list[float]], attributes: Sequence[str]
) -> dict[str, float]:
    """How often the attribute relevance says right whether the text names an attribute
    (``alpha > 0.5`` against the annotation's ``mentions``), per attribute and overall, in
    percent; nothing where the queries carry no ``mentions``."""
    hits = {a: [] for a in attributes}
    for q in split.queries:
        if q.mentions is None or q.qid not in relevance:
            continue
        for a, alpha in zip(attributes, relevance[q.qid], strict=False):
            hits[a].append((alpha > 0.5) == (a in q.mentions))
    out = {f"attr_acc.{a}": 100.0 * sum(h) / len(h) for a, h in hits.items() if h}
    if out:
        every = [x for h in hits.values() for x in h]
        out["attr_acc"] = 100.0 * sum(every) / len(every)
    return out


def validate(
    model: CIRModel,
    splits: Sequence[CIRSplit],
    table: SplitFeatures,
    device: torch.device,
    *,
    batch_size: int = 256,
    topk: int = 50,
) -> dict[str, float]:
    """The metrics of ``splits`` (with targets) whose frozen features ``table`` holds: what
    training selects its best epoch by."""
    results = []
    for s in splits:
        r = rank_split(model, s, table, device, batch_size=batch_size, topk=topk)
        results.append((s, score_split(r, model.attributes)))
    return merge_metrics(results)


def merge_metrics(results: Sequence[tuple[CIRSplit, dict[str, float]]]) -> dict[str, float]:
    """The metrics of one loaded split (a grouped benchmark's: ``<group>/<metric>`` and the
    average), as its protocol merges them."""
    return get_benchmark(results[0][0].benchmark).merge(results)


def write_submission(r: SplitRanking, out_dir: Path, name: str) -> list[Path]:
    """The evaluation server's files for a split, as its protocol writes them (CIRR: recall +
    recall_subset; CIRCO: id -> ranked ids; FashionIQ: dqecir's format, see docs/formats.md).
    Returns the paths written."""
    bench = get_benchmark(r.split.benchmark)
    return bench.write_submission(r.rankings, r.subset_rankings, Path(out_dir), name)


def evaluate_checkpoint(
    checkpoint: Path,
    benchmark: str,
    root: Path,
    split: str,
    *,
    out_dir: Path | None = None,
    device: str = "auto",
    cache_dir: Path | None = None,
    categories: Sequence[str] | None = None,
    phrasings: Sequence[str] | None = None,
) -> tuple[dict[str, float], list[Path]]:
    """Evaluate a checkpoint on a benchmark split.

    Splits with targets are scored (same keys as ``dqecir score``); splits without targets get
    the official submission files in ``out_dir``. Returns the metrics and the files written.

    Where the benchmark also holds other phrasings of the split (``<split>-unseen``,
    ``-newforms``, ``-newwords``: the embedded benchmarks), each is scored too, its metrics
    prefixed ``<variant>:`` (``unseen:map@10``); ``phrasings`` limits which (default: all
    present). Models with attribute weights add ``attr_acc.<attribute>``: how often the
    relevance agrees with the annotated mentions.
    """
    from dqecir.data.formats import load_benchmark
    from dqecir.data.pipeline import build_features
    from dqecir.device import resolve_device
    from dqecir.models.cir import load_model

    dev = resolve_device(device)
    model, ck = load_model(checkpoint, dev)
    bench = get_benchmark(benchmark)
    kw = {"categories": list(categories)} if categories and bench.groups is not None else {}
    variants = bench.variants(Path(root), split, PHRASINGS[1:])
    if phrasings is not None:
        unknown = sorted(set(phrasings) - set(variants))
        if unknown:
            raise ValueError(
                f"phrasing(s) {unknown} not found for split {split!r} (present: {sorted(variants)})"
            )
        variants = {v: n for v, n in variants.items() if v in phrasings}
    by_variant = {v: load_benchmark(benchmark, Path(root), n, **kw) for v, n in variants.items()}
    cache = cache_dir or Path(root) / ".dqecir-cache"
    every = [s for splits in by_variant.values() for s in splits]
    table = build_features(model.backbone, every, train=False, cache_dir=cache, device=dev)
    metrics: dict[str, float] = {}
    written: list[Path] = []
    gallery_cache: dict[tuple[str, ...], torch.Tensor] = {}
    for v, splits in by_variant.items():
        results = []
        out = out_dir or ck.path.parent / f"submission-{benchmark}-{variants[v]}"
        for s in splits:
            key = tuple(s.gallery)
            if key not in gallery_cache:  # the variants share their gallery
                rows = table.image_rows(s.gallery)
                gallery_cache[key] = embed_gallery(model, table.images[rows], dev)
            r = rank_split(model, s, table, dev, progress=True, gallery_emb=gallery_cache[key])
            name = f"{benchmark}_{variants[v]}" + (
                f"_{s.queries[0].group}" if s.queries and s.queries[0].group else ""
            )
            if s.has_targets:
                results.append((s, score_split(r, model.attributes)))
            else:
                written += write_submission(r, out, name)
        prefix = "" if v == "seen" else f"{v}:"
        for k, val in (merge_metrics(results) if results else {}).items():
            metrics[prefix + k] = val
    if written and every[-1].remove_reference:
        log.info("the reference image was removed from every ranking before writing")
    return metrics, written
