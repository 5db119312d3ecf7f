"""CIRCO (miccunifi/CIRCO) in its published layout, plus one optional dqecir extension.

::

    <root>/annotations/<split>.json        [{id, reference_img_id, target_img_id,
                                             relative_caption, shared_concept, gt_img_ids}]
    <root>/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json
                                           {"images": [{"id", "file_name", ...}]}
    <root>/COCO2017_unlabeled/unlabeled2017/<file_name>
    <root>/annotations/gallery.<split>.json   OPTIONAL (dqecir): [<image id>, ...]

The gallery is every COCO unlabeled image, or, when ``gallery.<split>.json`` exists, the ids
it lists (our embedded benchmarks give each split its own gallery). Integer ids become their
decimal strings. ``test`` records carry no ``target_img_id`` / ``gt_img_ids``. Protocol: the
reference is removed at ranking time (``remove_reference=True``). ``shared_concept`` is
informative only and not stored.
"""

from __future__ import annotations

from pathlib import Path

from dqecir.data.formats.common import (
    RecordRef,
    as_record,
    attach_images,
    check_query_ids,
    get_caption,
    get_field,
    kind_and_heldout,
    phrasing_fields,
    read_json,
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


def annotation_file(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"{split}.json"


def gallery_file(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"gallery.{split}.json"


def image_info_file(root: Path) -> Path:
    return Path(root) / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"


def image_folder(root: Path) -> Path:
    return Path(root) / "COCO2017_unlabeled" / "unlabeled2017"


def load_circo(
    root: str | Path,
    split: str,
    *,
    resolve_images: bool = True,
    skip_missing: bool = False,
) -> CIRSplit:
    """Load a CIRCO split (``val``, ``test``, or any name in the same layout).

    The COCO image-info file is read when it is needed: to list the gallery (no
    ``gallery.<split>.json``) or to find image files (``resolve_images``).
    """
    root = Path(root)
    ann_path = annotation_file(root, split)
    records = read_records(ann_path)
    hidden = targets_hidden(split)
    queries: list[Query] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(records):
        query = _parse_record(as_record(raw, ann_path, i), ann_path, i, hidden)
        if query.qid in seen:
            raise DataError(
                f"duplicate id (first at record #{seen[query.qid]})",
                file=ann_path,
                record=f"#{i} (id {query.qid})",
                field="id",
            )
        seen[query.qid] = i
        queries.append(query)

    ext_path = gallery_file(root, split)
    info_path = image_info_file(root)
    has_ext = ext_path.is_file()
    files = read_image_info(info_path) if resolve_images or not has_ext else None
    gallery = read_gallery_ids(ext_path) if has_ext else list(files or {})
    if files is not None and has_ext:
        for image in gallery:
            if image not in files:
                raise DataError(f"image id {image} is not in {info_path}", file=ext_path)
    check_query_ids(queries, gallery, files if files is not None else gallery, ann_path)
    result = CIRSplit(benchmark="circo", split=split, queries=queries, gallery=gallery)
    warn_empty_captions(result, ann_path)
    if resolve_images and files is not None:
        folder = image_folder(root)

        def locate(image: str) -> tuple[Path, bool]:
            path = folder / files[image]
            return path, path.is_file()

        attach_images(
            result,
            locate,
            annotation_file=ann_path,
            gallery_file=ext_path if has_ext else info_path,
            skip_missing=skip_missing,
        )
    return result


def read_image_info(path: Path) -> dict[str, str]:
    """COCO image info: image id (decimal string) -> file name."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError("expected a COCO-style object with an 'images' list", file=path)
    files: dict[str, str] = {}
    for i, raw in enumerate(data["images"]):
        where = RecordRef(path, i)
        entry = as_record(raw, path, i)
        image = str(get_field(entry, "id", int, where))
        name = get_field(entry, "file_name", str, RecordRef(path, i, image))
        if image in files:
            raise DataError("duplicate image id", file=path, record=f"#{i} (id {image})")
        files[image] = name
    return files


def read_gallery_ids(path: Path) -> list[str]:
    """The dqecir gallery extension: a JSON list of distinct integer image ids."""
    ids = read_json_list(path)
    out: list[str] = []
    seen: set[str] = set()
    for i, value in enumerate(ids):
        if isinstance(value, bool) or not isinstance(value, int):
            raise DataError(
                f"image id must be an integer, got {value!r}", file=path, record=f"#{i}"
            )
        image = str(value)
        if image in seen:
            raise DataError(f"duplicate image id {image}", file=path, record=f"#{i}")
        seen.add(image)
        out.append(image)
    return out


def _parse_record(record: dict, file: Path, index: int, hidden: bool) -> Query:
    qid = get_field(record, "id", int, RecordRef(file, index))
    where = RecordRef(file, index, qid)
    reference = get_field(record, "reference_img_id", int, where)
    caption = get_caption(record, "relative_caption", where, allow_empty=hidden)
    get_field(record, "shared_concept", str, where, optional=True)
    target = get_field(record, "target_img_id", int, where, optional=hidden)
    gt: tuple[str, ...] = ()
    if target is not None:
        gt_ids = get_field(record, "gt_img_ids", list, where)
        for i, value in enumerate(gt_ids):
            if isinstance(value, bool) or not isinstance(value, int):
                raise where.error(f"item {i} is {value!r}, expected int", field="gt_img_ids")
        if target not in gt_ids:
            raise where.error(f"target_img_id {target} is not listed", field="gt_img_ids")
        gt = tuple(dict.fromkeys(str(v) for v in [target, *gt_ids]))
    kind, heldout = kind_and_heldout(record, where)
    return Query(
        qid=str(qid),
        reference=str(reference),
        texts=(caption,),
        target=str(target) if target is not None else None,
        gt=gt,
        kind=kind,
        heldout=heldout,
        **phrasing_fields(record, where),
    )


def write_submission(
    rankings: Rankings, subset_rankings: Rankings | None, out_dir: Path, name: str
) -> list[Path]:
    """The test server's file ``<name>.json``: query id -> ranked integer image ids."""
    return write_json_files(
        {f"{name}.json": {qid: [int(i) for i in ids] for qid, ids in rankings.items()}}, out_dir
    )


def _load(root: str | Path, split: str, group: None, **kw: bool) -> CIRSplit:
    return load_circo(root, split, **kw)


CIRCO = register_benchmark(
    Benchmark(
        name="circo",
        load=_load,
        # the official script reports Recall@5/10/25/50; recall@1 is added
        default_ks={"map": (5, 10, 25, 50), "recall": (1, 5, 10, 25, 50)},
        headline="map@10",
        write_submission=write_submission,
        predictions=PredictionsFormat(integer_ids=True),
        split_file=annotation_file,
    )
)
