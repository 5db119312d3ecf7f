"""From loaded splits to tensors the trainer and the evaluator index into.

Frozen features are computed once per image / unique text (through the on-disk feature cache
when one is given) and held in memory; a query is then three integer indices (reference, target,
text) into them, so a training step runs only the trainable head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dqecir.data.features import IMAGE_FIELD, FeatureCache, FrozenStage
from dqecir.data.types import CIRSplit, Query
from dqecir.errors import DataError


def query_texts(
    q: Query, train: bool, random_order: bool = True, max_variants: int = 0
) -> list[str]:
    """The text(s) a query is read as. FashionIQ's two captions are joined as "c0 and c1" for
    evaluation; training also uses "c1 and c0" (a random order per step, as SPRC does) unless
    ``random_order`` is off. A training query with other phrasings (``variants``) is read as
    any of them (its first ``max_variants``; 0: all). Empty captions (kept only in test splits,
    see the loaders) are read as the empty text."""
    if train and q.variants:
        return list(q.variants[:max_variants] if max_variants > 0 else q.variants)
    if not q.texts:
        raise DataError("query has no text", record=q.qid)
    texts = [t.strip() for t in q.texts if t.strip()]
    if not texts:
        return [""]
    if len(texts) == 1:
        return texts
    joined = " and ".join(texts)
    if not train or not random_order:
        return [joined]
    return [joined, " and ".join(reversed(texts))]


class LazyRows:
    """Rows of a memory-mapped feature array, read (and cast to float32) only when indexed.

    Stands in for an in-memory tensor where the frozen features do not fit in memory (the
    BLIP-2 ViT tokens: about 700 KiB per image)."""

    def __init__(self, array: np.ndarray, rows: np.ndarray) -> None:
        self.array = array
        self.rows = rows  # table row -> row of ``array``

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.array.shape[1:])

    def __getitem__(self, idx: torch.Tensor | slice | list[int]) -> torch.Tensor:
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        src = self.rows[idx]
        order = np.argsort(src, kind="stable")  # sequential reads from the memory map
        out = np.empty((len(src), *self.array.shape[1:]), dtype=np.float32)
        out[order] = self.array[src[order]]
        return torch.from_numpy(out)


@dataclass
class SplitFeatures:
    """Frozen features of a set of images and a set of texts, with id -> row maps."""

    image_ids: list[str]
    images: torch.Tensor | LazyRows
    texts: list[str]
    text_feats: dict[str, torch.Tensor]
    image_row: dict[str, int] = field(init=False)
    text_row: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.image_row = {i: r for r, i in enumerate(self.image_ids)}
        self.text_row = {t: r for r, t in enumerate(self.texts)}

    def image_rows(self, ids: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self.image_row[i] for i in ids], dtype=torch.long)

    def text_batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Text features of ``rows`` (held as float16, returned as float32)."""
        out = {}
        for k, v in self.text_feats.items():
            t = v[rows]
            out[k] = t.float() if t.is_floating_point() else t
        return out


def split_images(split: CIRSplit) -> tuple[list[str], list[Path]]:
    """Every image a split touches (gallery first, then references / members), with paths."""
    seen: dict[str, None] = dict.fromkeys(split.gallery)
    for q in split.queries:
        seen.setdefault(q.reference)
        for m in q.members:
            seen.setdefault(m)
        for g in q.gt:
            seen.setdefault(g)
    ids = list(seen)
    missing = [i for i in ids if i not in split.image_paths]
    if missing:
        raise DataError(
            f"{len(missing)} image id(s) have no file path (first: {missing[:3]}); the loader "
            "must resolve images for training / evaluation",
            file=f"{split.benchmark}:{split.split}",
        )
    return ids, [split.image_paths[i] for i in ids]


def build_features(
    backbone: FrozenStage,
    splits: Sequence[CIRSplit],
    *,
    train: bool,
    cache_dir: Path,
    device: torch.device,
    batch_size: int = 64,
    max_memory_gb: float = 4.0,
    max_variants: int = 0,
) -> SplitFeatures:
    """Frozen image and text features for every image and query text of ``splits``, through
    the on-disk cache in ``cache_dir`` (computed once per image / text and backbone).

    Image features are loaded into memory (float32) when they take at most ``max_memory_gb``;
    larger ones stay memory-mapped and are read per batch. Text features are held as float16
    (as cached): a pool of phrasings per training query multiplies them."""
    ids: dict[str, Path] = {}
    for s in splits:
        for i, p in zip(*split_images(s), strict=True):
            ids.setdefault(i, p)
    texts: dict[str, None] = {}
    for s in splits:
        for q in s.queries:
            for t in query_texts(q, train, max_variants=max_variants):
                texts.setdefault(t)
    image_ids = list(ids)
    cache = FeatureCache(cache_dir)
    stored = cache.image_features(backbone, image_ids, ids, batch_size=batch_size, device=device)
    arr = stored.arrays[IMAGE_FIELD]
    n_bytes = 4 * len(image_ids) * int(np.prod(arr.shape[1:]))
    if n_bytes <= max_memory_gb * 2**30:
        images: torch.Tensor | LazyRows = stored.get(image_ids)[IMAGE_FIELD]
    else:
        images = LazyRows(arr, stored.rows(image_ids))
    text_list = list(texts)
    text_feats = cache.text_features(
        backbone, text_list, batch_size=batch_size * 4, query=not train
    ).get(text_list, float_dtype=torch.float16)
    return SplitFeatures(image_ids, images, text_list, text_feats)


@dataclass
class TrainQueries:
    """Training queries as index tensors into a :class:`SplitFeatures`."""

    qids: list[str]
    reference: torch.Tensor  # [Q] image rows
    target: torch.Tensor  # [Q] image rows
    text: torch.Tensor  # [Q, max options] text rows (a query's own options repeated to fill)
    gts: list[list[int]]  # annotated ground truths, image rows (target included)
    n_options: torch.Tensor | None = None  # [Q] distinct options of each query

    def __len__(self) -> int:
        return len(self.qids)

    def options_of_epoch(
        self, rows: torch.Tensor, epoch: int, offset: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The option each query of ``rows`` is read as in ``epoch``: its options in turn from a
        per-query ``offset``, so every epoch brings each query a phrasing it did not have in the
        previous one (until its pool is used up)."""
        n = self.n_options[rows] if self.n_options is not None else torch.full_like(rows, 1)
        off = offset[rows] if offset is not None else torch.zeros_like(rows)
        return (off + epoch) % n


def build_train_queries(
    splits: Sequence[CIRSplit],
    table: SplitFeatures,
    random_order: bool = True,
    max_variants: int = 0,
) -> TrainQueries:
    """The TRNS candidate pool is every image of ``table`` (build it from the training splits
    alone: the split's gallery, every image appearing as reference or target)."""
    qids, ref, tgt, opts, gts = [], [], [], [], []
    for s in splits:
        for q in s.queries:
            if q.target is None:
                raise DataError(
                    "training query has no target", file=f"{s.benchmark}:{s.split}", record=q.qid
                )
            texts = query_texts(q, True, random_order, max_variants)
            opts.append([table.text_row[t] for t in texts])
            qids.append(q.qid)
            ref.append(table.image_row[q.reference])
            tgt.append(table.image_row[q.target])
            gts.append(sorted({table.image_row[g] for g in (q.target, *q.gt)}))
    width = max([2, *map(len, opts)])
    txt = [[o[i % len(o)] for i in range(width)] for o in opts]
    return TrainQueries(
        qids,
        torch.tensor(ref),
        torch.tensor(tgt),
        torch.tensor(txt),
        gts,
        torch.tensor([len(o) for o in opts]),
    )
