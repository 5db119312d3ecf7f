"""Helpers shared by test_formats.py and test_scoring.py: tiny fixture trees in the official
layouts of FashionIQ, CIRR and CIRCO, and the location of the real official annotation files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "official-annotations"


def official_root() -> Path:
    """The real annotation files; their absence fails the test (they ship with the repo's CI)."""
    if not (OFFICIAL / "README.md").is_file():
        pytest.fail(
            f"official annotation files not found at {OFFICIAL}: the repository must be checked "
            "out at <X>/main with the shared files at <X>/shared/official-annotations"
        )
    return OFFICIAL


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_image(path: Path, shade: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else path.suffix[1:].upper()
    Image.new("RGB", (4, 4), (shade % 256, 40, 90)).save(path, format=fmt)
    return path


# ---- FashionIQ ------------------------------------------------------------------------------


def fiq_ids(category: str, n: int = 6) -> list[str]:
    return [f"{category[:2].upper()}{i:03d}" for i in range(n)]


def make_fashioniq(
    root: Path, category: str = "dress", split: str = "val", *, images: bool = True
) -> Path:
    """6 images (ids ``DR000``..; odd ones .jpg, even ones .png), 3 queries: i -> i + 1."""
    ids = fiq_ids(category)
    records = []
    for i in range(3):
        record = {"candidate": ids[i], "captions": [f" caption {i}a ", f"caption {i}b"]}
        if not split.startswith("test"):
            record["target"] = ids[i + 1]
        records.append(record)
    write_json(root / "captions" / f"cap.{category}.{split}.json", records)
    write_json(root / "image_splits" / f"split.{category}.{split}.json", ids)
    if images:
        for i, image in enumerate(ids):
            write_image(root / "images" / f"{image}.{'jpg' if i % 2 else 'png'}", i)
    return root


# ---- CIRR ------------------------------------------------------------------------------------


def cirr_name(split: str, i: int) -> str:
    return f"{split}-{i}-0-img0"


def make_cirr(
    root: Path, split: str = "val", *, images: bool = True, targets: bool = True, extra=None
) -> Path:
    """8 images, 3 queries (pairid 100 + i): reference i, hard target i + 1, soft targets
    i + 1 (1.0), i + 2 (1.0), i + 3 (0.5), i + 4 (-1.0); members i .. i + 5."""
    names = [cirr_name(split, i) for i in range(8)]
    records = []
    for i in range(3):
        record = {
            "pairid": 100 + i,
            "reference": names[i],
            "caption": f" change {i} ",
            "img_set": {
                "id": i,
                "members": names[i : i + 6],
                "reference_rank": 0,
                "target_rank": 1,
            },
        }
        if targets:
            record["target_hard"] = names[i + 1]
            record["target_soft"] = {
                names[i + 1]: 1.0,
                names[i + 2]: 1.0,
                names[i + 3]: 0.5,
                names[i + 4]: -1.0,
            }
        if extra:
            record.update(extra(i))
        records.append(record)
    write_json(root / "captions" / f"cap.rc2.{split}.json", records)
    write_json(
        root / "image_splits" / f"split.rc2.{split}.json",
        {n: f"./{split}/{n}.png" for n in names},
    )
    if images:
        for i, n in enumerate(names):
            write_image(root / split / f"{n}.png", i)
    return root


# ---- CIRCO -----------------------------------------------------------------------------------

CIRCO_IDS = list(range(10, 18))


def make_circo(
    root: Path,
    split: str = "val",
    *,
    images: bool = True,
    gallery: list[int] | None = None,
    image_info: bool = True,
    targets: bool = True,
) -> Path:
    """Image ids 10..17, 3 queries (id i): reference 10 + i, target 11 + i, gt
    [11 + i, 12 + i]; optional dqecir gallery extension ``gallery.<split>.json``."""
    records = []
    for i in range(3):
        record = {
            "id": i,
            "reference_img_id": 10 + i,
            "relative_caption": f" has {i} more ",
            "shared_concept": "a thing",
        }
        if targets:
            record.update({"target_img_id": 11 + i, "gt_img_ids": [11 + i, 12 + i]})
        records.append(record)
    write_json(root / "annotations" / f"{split}.json", records)
    if gallery is not None:
        write_json(root / "annotations" / f"gallery.{split}.json", gallery)
    if image_info:
        info = {"images": [{"id": j, "file_name": f"{j:012d}.jpg"} for j in CIRCO_IDS]}
        write_json(
            root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json", info
        )
    if images:
        for j in CIRCO_IDS:
            write_image(root / "COCO2017_unlabeled" / "unlabeled2017" / f"{j:012d}.jpg", j)
    return root
