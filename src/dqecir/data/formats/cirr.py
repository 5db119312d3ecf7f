"""CIRR (Cuberick-Orion/CIRR, release rc2) in its published layout.

::

    <root>/captions/cap.rc2.<split>.json       [{pairid, reference, target_hard, target_soft,
                                                  caption, img_set: {id, members, ...}}]
    <root>/image_splits/split.rc2.<split>.json {"<image name>": "./<relative path>"}

Paths in the split file are relative to ``<root>``. ``test1`` records carry no
``target_hard`` / ``target_soft`` (our embedded benchmarks do carry them there; then they are
kept). Protocol: the gallery is every image of the split, the reference is removed at ranking
time (``remove_reference=True``).

Ground truths: ``target_hard`` first, then every ``target_soft`` key whose value is exactly
1.0. CIRR's soft scores are 1.0 (also a valid target), 0.5 / 0.2 (partly valid) and -1.0
(not valid); the hard target is always a ground truth, even in the 42 val records whose
``target_soft`` does not list it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from dqecir.data.formats.common import (
    RecordRef,
    as_record,
    attach_images,
    check_query_ids,
    get_caption,
    get_field,
    get_str_list,
    kind_and_heldout,
    phrasing_fields,
    read_json,
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

VERSION = "rc2"


def caption_file(root: Path, split: str) -> Path:
    return Path(root) / "captions" / f"cap.rc2.{split}.json"


def split_file(root: Path, split: str) -> Path:
    return Path(root) / "image_splits" / f"split.rc2.{split}.json"


def load_cirr(
    root: str | Path,
    split: str,
    *,
    resolve_images: bool = True,
    skip_missing: bool = False,
) -> CIRSplit:
    """Load a CIRR split (``train``, ``val``, ``test1``, or any name in the same layout)."""
    root = Path(root)
    cap_path = caption_file(root, split)
    images_path = split_file(root, split)
    records = read_records(cap_path)
    images = read_image_map(images_path)
    hidden = targets_hidden(split)
    queries: list[Query] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(records):
        query = _parse_record(as_record(raw, cap_path, i), cap_path, i, hidden)
        if query.qid in seen:
            raise DataError(
                f"duplicate pairid (first at record #{seen[query.qid]})",
                file=cap_path,
                record=f"#{i} (id {query.qid})",
                field="pairid",
            )
        seen[query.qid] = i
        queries.append(query)
    gallery = list(images)
    check_query_ids(queries, gallery, gallery, cap_path)
    result = CIRSplit(benchmark="cirr", split=split, queries=queries, gallery=gallery)
    warn_empty_captions(result, cap_path)
    if resolve_images:

        def locate(image: str) -> tuple[Path, bool]:
            path = root / images[image]
            return path, path.is_file()

        attach_images(
            result,
            locate,
            annotation_file=cap_path,
            gallery_file=images_path,
            skip_missing=skip_missing,
        )
    return result


def read_image_map(path: Path) -> dict[str, str]:
    """The split file: image name -> path relative to the root (must stay relative)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError("expected a JSON object of image name -> relative path", file=path)
    for name, rel in data.items():
        if not isinstance(rel, str):
            raise DataError(f"path must be a string, got {rel!r}", file=path, record=name)
        if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
            raise DataError(f"path {rel!r} must be relative to the root", file=path, record=name)
    return data


def _parse_record(record: dict, file: Path, index: int, hidden: bool) -> Query:
    pairid = get_field(record, "pairid", (int, str), RecordRef(file, index))
    where = RecordRef(file, index, pairid)
    reference = get_field(record, "reference", str, where)
    caption = get_caption(record, "caption", where, allow_empty=hidden)
    target = get_field(record, "target_hard", str, where, optional=hidden)
    gt: tuple[str, ...] = ()
    if target is not None:
        soft = get_field(record, "target_soft", dict, where)
        gt = (target, *[k for k, v in soft.items() if _soft_score(v, where) == 1.0 and k != target])
    img_set = get_field(record, "img_set", dict, where)
    members = get_str_list(img_set, "members", where, label="img_set.members")
    kind, heldout = kind_and_heldout(record, where)
    return Query(
        qid=str(pairid),
        reference=reference,
        texts=(caption,),
        target=target,
        gt=gt,
        members=tuple(members),
        kind=kind,
        heldout=heldout,
        **phrasing_fields(record, where),
    )


def _soft_score(value: object, where: RecordRef) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise where.error(f"soft score must be a number, got {value!r}", field="target_soft")
    return float(value)


def write_submission(
    rankings: Rankings, subset_rankings: Rankings | None, out_dir: Path, name: str
) -> list[Path]:
    """The test server's two files: ``<name>_recall.json`` (50 names per pair id) and, with
    subset rankings, ``<name>_recall_subset.json`` (3 names)."""
    files: dict[str, object] = {
        f"{name}_recall.json": {"version": VERSION, "metric": "recall", **rankings}
    }
    if subset_rankings is not None:
        subsets = {qid: ids[:3] for qid, ids in subset_rankings.items()}
        files[f"{name}_recall_subset.json"] = {
            "version": VERSION, "metric": "recall_subset", **subsets
        }  # fmt: skip
    return write_json_files(files, out_dir)


def _load(root: str | Path, split: str, group: None, **kw: bool) -> CIRSplit:
    return load_cirr(root, split, **kw)


CIRR = register_benchmark(
    Benchmark(
        name="cirr",
        load=_load,
        # ``map`` is a dqecir extra (mAP over target_hard + the soft targets scored 1.0): the
        # headline of the embedded benchmarks, which are scored through this layout
        default_ks={"recall": (1, 5, 10, 50), "recall_subset": (1, 2, 3), "map": (5, 10, 25, 50)},
        headline="avg",
        write_submission=write_submission,
        predictions=PredictionsFormat(version=VERSION, metrics=("recall", "recall_subset")),
        split_file=caption_file,
    )
)
