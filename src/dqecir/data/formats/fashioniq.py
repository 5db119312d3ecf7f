"""FashionIQ (XiaoxiaoGuo/fashion-iq) in its published layout, one category at a time.

::

    <root>/captions/cap.<category>.<split>.json      [{"target", "candidate", "captions": [c0, c1]}]
    <root>/image_splits/split.<category>.<split>.json ["<image id>", ...]
    <root>/images/<image id>.<png|jpg|jpeg|webp>

Protocol: the gallery is the category's split images and the reference is NOT removed from
the ranking (``remove_reference=False``). The test captions carry no ``target``.
"""

from __future__ import annotations

import os
from pathlib import Path

from dqecir.data.formats.common import (
    Locator,
    RecordRef,
    as_record,
    attach_images,
    check_query_ids,
    get_field,
    get_str_list,
    read_json_list,
    read_records,
    targets_hidden,
    warn_empty_captions,
)
from dqecir.data.formats.protocol import (
    Benchmark,
    PredictionsFormat,
    Rankings,
    register_benchmark,
    write_json_files,
)
from dqecir.data.types import CIRSplit, Query
from dqecir.errors import DataError

CATEGORIES = ("dress", "shirt", "toptee")
VERSION = "dqecir-fiq1"
"""The ``version`` of dqecir's FashionIQ predictions format (docs/formats.md)."""
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
"""Searched in this order: an id stored under two extensions resolves to the first."""


def caption_file(root: Path, category: str, split: str) -> Path:
    return Path(root) / "captions" / f"cap.{category}.{split}.json"


def split_file(root: Path, category: str, split: str) -> Path:
    return Path(root) / "image_splits" / f"split.{category}.{split}.json"


def fashioniq_categories(root: Path, split: str) -> list[str]:
    """Categories whose caption file for ``split`` exists under ``root``, sorted."""
    folder = Path(root) / "captions"
    prefix, suffix = "cap.", f".{split}.json"
    found = [
        p.name[len(prefix) : -len(suffix)]
        for p in folder.glob(f"cap.*.{split}.json")
        if p.name.startswith(prefix) and p.name.endswith(suffix)
    ]
    return sorted(c for c in found if c and "." not in c)


def load_fashioniq(
    root: str | Path,
    split: str,
    category: str,
    *,
    resolve_images: bool = True,
    skip_missing: bool = False,
) -> CIRSplit:
    """Load one FashionIQ category split.

    Query ids are ``"<category>/<index in the caption file>"``; ``texts`` are the two captions,
    stripped; ``gt`` is the single target; ``group`` is the category.
    """
    root = Path(root)
    cap_path = caption_file(root, category, split)
    gallery_path = split_file(root, category, split)
    records = read_records(cap_path)
    gallery = read_id_list(gallery_path)
    hidden = targets_hidden(split)
    queries = [
        _parse_record(as_record(r, cap_path, i), RecordRef(cap_path, i), category, hidden)
        for i, r in enumerate(records)
    ]
    check_query_ids(queries, gallery, gallery, cap_path)
    result = CIRSplit(
        benchmark="fashioniq", split=split, queries=queries, gallery=gallery, remove_reference=False
    )
    warn_empty_captions(result, cap_path)
    if resolve_images:
        attach_images(
            result,
            image_locator(root / "images"),
            annotation_file=cap_path,
            gallery_file=gallery_path,
            skip_missing=skip_missing,
        )
    return result


def read_id_list(path: Path) -> list[str]:
    """A FashionIQ image split file: a JSON list of distinct image ids."""
    ids = read_json_list(path)
    seen: set[str] = set()
    for i, image in enumerate(ids):
        if not isinstance(image, str):
            raise DataError(f"image id must be a string, got {image!r}", file=path, record=f"#{i}")
        if image in seen:
            raise DataError(f"duplicate image id {image!r}", file=path, record=f"#{i}")
        seen.add(image)
    return ids


def _parse_record(record: dict, where: RecordRef, category: str, hidden: bool) -> Query:
    reference = get_field(record, "candidate", str, where)
    target = get_field(record, "target", str, where, optional=hidden)
    captions = get_str_list(record, "captions", where)
    if len(captions) != 2:
        raise where.error(f"expected 2 captions, got {len(captions)}", field="captions")
    if not hidden and not any(c.strip() for c in captions):
        raise where.error("both captions are empty", field="captions")
    return Query(
        qid=f"{category}/{where.index}",
        reference=reference,
        texts=tuple(c.strip() for c in captions),
        target=target,
        gt=(target,) if target is not None else (),
        group=category,
    )


def image_locator(images_dir: Path) -> Locator:
    """Find ``<id>.<ext>`` under ``images_dir`` (extension case ignored), listing it once."""
    found: dict[str, Path] = {}
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    if images_dir.is_dir():
        with os.scandir(images_dir) as entries:
            files = [Path(e.path) for e in entries if e.is_file()]
        for path in files:
            ext = path.suffix.lower()
            if ext not in rank:
                continue
            best = found.get(path.stem)
            if best is None or rank[ext] < rank[best.suffix.lower()]:
                found[path.stem] = path
    pattern = "{" + ",".join(e[1:] for e in IMAGE_EXTENSIONS) + "}"

    def locate(image: str) -> tuple[Path, bool]:
        if image in found:
            return found[image], True
        return images_dir / f"{image}.{pattern}", False

    return locate


def write_submission(
    rankings: Rankings, subset_rankings: Rankings | None, out_dir: Path, name: str
) -> list[Path]:
    """``<name>.json`` in dqecir's FashionIQ predictions format (docs/formats.md)."""
    return write_json_files({f"{name}.json": {"version": VERSION, **rankings}}, out_dir)


def _categories(root: Path, split: str) -> list[str]:
    cats = fashioniq_categories(root, split)
    if not cats:
        raise DataError(
            f"no FashionIQ caption files cap.<category>.{split}.json", file=Path(root) / "captions"
        )
    return cats


FASHIONIQ = register_benchmark(
    Benchmark(
        name="fashioniq",
        load=load_fashioniq,
        default_ks={"recall": (10, 50)},
        headline="average/recall@10",
        write_submission=write_submission,
        predictions=PredictionsFormat(version=VERSION),
        groups=_categories,
    )
)
