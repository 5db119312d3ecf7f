"""What the three benchmark loaders share: strict JSON reading, field checks with messages
that name the file / record / field, id consistency checks and image resolution with counted
skips (never a silent drop)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dqecir.data.types import CIRSplit, Query
from dqecir.errors import DataError

log = logging.getLogger(__name__)

Locator = Callable[[str], tuple[Path, bool]]
"""Maps an image id to (the path it should have, whether that file exists)."""


def read_json(path: Path, *, error: type[DataError] = DataError, pairs_hook: Any = None) -> Any:
    """Parse a JSON file; a missing file or malformed JSON is ``error`` naming the file, as is
    JSON Python cannot hold (nested thousands deep, integers of thousands of digits)."""
    if not path.is_file():
        raise error("file not found", file=path)
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=pairs_hook)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError are too
        raise error(f"malformed JSON: {json_problem(e)}", file=path) from e


def json_problem(e: BaseException) -> str:
    """What is wrong with a JSON text ``json.loads`` refused, in a user's words."""
    if isinstance(e, RecursionError):
        return "nested too deeply to read"
    if "integer string conversion" in str(e):
        return f"a number has too many digits (more than {sys.get_int_max_str_digits()})"
    return str(e)


def read_json_list(path: Path) -> list:
    """A JSON file whose top level must be a list (every annotation file of the benchmarks)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"expected a JSON list at the top level, got {_type_name(data)}", file=path)
    return data


def read_records(path: Path) -> list:
    """An annotation file: a JSON list with at least one record (an empty one would only
    fail later, far from the file)."""
    records = read_json_list(path)
    if not records:
        raise DataError("the annotation list is empty: no queries", file=path)
    return records


def get_caption(record: Mapping, name: str, where: RecordRef, *, allow_empty: bool) -> str:
    """A required caption, stripped. An empty one is an error naming file, record and field,
    except where ``allow_empty`` (test splits: the evaluation server wants a ranking for every
    query, and CIRR's test1 holds one empty caption); it is then read as the empty text."""
    caption = get_field(record, name, str, where).strip()
    if not caption and not allow_empty:
        raise where.error(
            "caption is empty (only a test split, whose every query goes to the evaluation "
            "server, may hold one)",
            field=name,
        )
    return caption


def warn_empty_captions(split: CIRSplit, file: Path) -> None:
    """Log the queries of a test split kept with an empty caption (never silent)."""
    empty = [q.qid for q in split.queries if not any(t.strip() for t in q.texts)]
    if empty:
        log.warning(
            "%s: %d quer%s with an empty caption (first: id %s), ranked from the reference "
            "image and the empty text", file, len(empty), "y" if len(empty) == 1 else "ies",
            empty[0],
        )  # fmt: skip


_JSON_NAMES = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}


def _type_name(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    return _JSON_NAMES.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class RecordRef:
    """Where a record lives, so that every error can name file, record index and id."""

    file: Path
    index: int
    rid: object | None = None

    def label(self) -> str:
        return f"#{self.index}" if self.rid is None else f"#{self.index} (id {self.rid})"

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(message, file=self.file, record=self.label(), field=field)


def as_record(obj: object, file: Path, index: int) -> dict:
    if not isinstance(obj, dict):
        raise DataError(
            f"expected a JSON object, got {_type_name(obj)}", file=file, record=f"#{index}"
        )
    return obj


def get_field(
    record: Mapping,
    name: str,
    kind: type | tuple[type, ...],
    where: RecordRef,
    *,
    optional: bool = False,
    label: str | None = None,
) -> Any:
    """``record[name]`` checked against ``kind`` (a bool is never accepted as an int).

    A missing field is an error unless ``optional`` (then ``None`` is returned). ``label``
    names the field in errors when it is nested (``"img_set.members"``).
    """
    label = label or name
    if name not in record:
        if optional:
            return None
        raise where.error("missing field", field=label)
    value = record[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        expected = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
        raise where.error(f"expected {expected}, got {_type_name(value)}", field=label)
    return value


def get_str_list(
    record: Mapping, name: str, where: RecordRef, *, label: str | None = None
) -> list[str]:
    """A required field holding a list of strings."""
    values = get_field(record, name, list, where, label=label)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise where.error(
                f"item {i} is {_type_name(value)}, expected string", field=label or name
            )
    return values


def kind_and_heldout(record: Mapping, where: RecordRef) -> tuple[str | None, bool | None]:
    """The optional ``kind`` / ``heldout`` fields the embedded benchmarks add to records."""
    kind = get_field(record, "kind", str, where, optional=True)
    heldout = get_field(record, "heldout", bool, where, optional=True)
    return kind, heldout


def phrasing_fields(record: Mapping, where: RecordRef) -> dict:
    """The optional ``caption_variants`` / ``mentions`` fields of the embedded benchmarks, as
    :class:`Query` keyword arguments."""
    out: dict = {}
    if "caption_variants" in record:
        variants = get_str_list(record, "caption_variants", where)
        if not variants or any(not v.strip() for v in variants):
            raise where.error(
                "caption_variants must be non-empty strings", field="caption_variants"
            )
        out["variants"] = tuple(v.strip() for v in variants)
    if "mentions" in record:
        out["mentions"] = tuple(get_str_list(record, "mentions", where))
    return out


def targets_hidden(split: str) -> bool:
    """Test splits of the official benchmarks publish no targets (CIRR ``test1``, CIRCO
    ``test``, FashionIQ ``test``); every other split must carry them."""
    return split.startswith("test")


def check_query_ids(
    queries: Iterable[Query], gallery: Iterable[str], known: Iterable[str], file: Path
) -> None:
    """Every target / ground truth must be in the gallery (else it could never be retrieved);
    every reference and member must be a known image of the split."""
    gallery_set = set(gallery)
    known_set = set(known) | gallery_set
    for q in queries:
        for image in q.gt or ((q.target,) if q.target is not None else ()):
            if image not in gallery_set:
                raise DataError(
                    f"target image {image!r} is not in the split's gallery",
                    file=file,
                    record=f"id {q.qid}",
                )
        for image in (q.reference, *q.members):
            if image not in known_set:
                raise DataError(
                    f"image {image!r} is not an image of the split", file=file, record=f"id {q.qid}"
                )


def _query_images(q: Query) -> list[str]:
    images = [q.reference, *q.members, *q.gt]
    if q.target is not None:
        images.append(q.target)
    return images


def attach_images(
    split: CIRSplit,
    locate: Locator,
    *,
    annotation_file: Path,
    gallery_file: Path,
    skip_missing: bool,
) -> CIRSplit:
    """Fill ``split.image_paths`` for every image the split uses, checking that each exists.

    A missing image is a :class:`DataError` naming its path and a record that uses it (or the
    gallery file, for an image only the gallery lists). With ``skip_missing`` the queries that
    use a missing image are dropped, missing gallery images are removed from the gallery, each
    is listed in ``split.skipped`` and a warning logs the counts.
    """
    users: dict[str, str] = {}
    for q in split.queries:
        for image in _query_images(q):
            users.setdefault(image, f"id {q.qid}")
    paths: dict[str, Path] = {}
    missing: dict[str, Path] = {}
    for image in dict.fromkeys([*users, *split.gallery]):
        path, found = locate(image)
        (paths if found else missing)[image] = path
    if missing and not skip_missing:
        image, path = next(iter(missing.items()))
        if image in users:
            raise DataError(f"image not found: {path}", file=annotation_file, record=users[image])
        raise DataError(f"gallery image not found: {path}", file=gallery_file, record=image)
    split.image_paths = paths
    if missing:
        _drop_missing(split, missing)
    return split


def _drop_missing(split: CIRSplit, missing: Mapping[str, Path]) -> None:
    kept: list[Query] = []
    dropped_queries = 0
    for q in split.queries:
        gone = [image for image in _query_images(q) if image in missing]
        if gone:
            dropped_queries += 1
            split.skipped.append(f"query {q.qid}: image {gone[0]} missing ({missing[gone[0]]})")
        else:
            kept.append(q)
    gallery_missing = [image for image in split.gallery if image in missing]
    for image in gallery_missing:
        split.skipped.append(f"gallery image {image} missing ({missing[image]})")
    split.queries = kept
    split.gallery = [image for image in split.gallery if image not in missing]
    log.warning(
        "%s %s: skipped %d queries and %d gallery images whose image files are missing "
        "(%d missing files); see CIRSplit.skipped",
        split.benchmark,
        split.split,
        dropped_queries,
        len(gallery_missing),
        len(missing),
    )
