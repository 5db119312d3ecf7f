"""Writing an embedded benchmark: the JSON files of the CIRR and CIRCO layouts (each val / test
split once per phrasing variant, ``val`` / ``val-unseen`` / ``val-newforms`` / ``val-newwords``),
the images (rendered once into the CIRR folders, linked into the CIRCO one), the attribute
lexicon of the train phrasing and ``meta.json``."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import yaml
from PIL import Image
from tqdm import tqdm

from dqecir.data.synthetic.phrasing import VARIANTS, Phrasing
from dqecir.data.synthetic.plan import (
    CIRCO_SPLIT,
    CIRR_DIR,
    CIRR_SPLIT,
    IMAGE_SIZE,
    SPLITS,
    BenchmarkDefinition,
    ImageSpec,
)
from dqecir.data.synthetic.queries import QuerySpec
from dqecir.errors import DataError

GENERATOR = "dqecir make-benchmark"
PNG_COMPRESS_LEVEL = 1
LAYOUTS = ("cirr", "circo")
"""The layout folders a benchmark writes under its output folder."""


def _json_lines(obj: object, expand: Collection[str] = ()) -> str:
    """One list item or one top-level key per line (keys in ``expand`` hold dicts written one
    entry per line too): readable and diffable, and each line goes through json's C encoder
    (``indent`` would switch json to its slow pure-Python encoder)."""
    dump = json.dumps
    if isinstance(obj, list):
        lines = [dump(v, ensure_ascii=False) for v in obj]
        return "[\n" + ",\n".join(lines) + "\n]" if lines else "[]"
    if isinstance(obj, dict):
        lines = [
            f"{dump(k)}: {_json_lines(v) if k in expand else dump(v, ensure_ascii=False)}"
            for k, v in obj.items()
        ]
        return "{\n" + ",\n".join(lines) + "\n}" if lines else "{}"
    return dump(obj, ensure_ascii=False)


def write_json(path: Path, obj: object, expand: Collection[str] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_json_lines(obj, expand) + "\n", encoding="utf-8")


def circo_file_name(image_id: int) -> str:
    return f"{image_id:012d}.png"


def variant_split(layout: dict[str, str], split: str, variant: str) -> str:
    """File name of a split in one phrasing variant: ``test1`` (seen) or ``test1-unseen``."""
    return layout[split] if variant == "seen" else f"{layout[split]}-{variant}"


def _caption_fields(q: QuerySpec, variant: str) -> tuple[str, dict]:
    caps = q.captions[variant]
    extra: dict = {"mentions": list(caps[0].mentions)}
    if len(caps) > 1:
        extra["caption_variants"] = [c.text for c in caps]
        extra["variant_mentions"] = [list(c.mentions) for c in caps]
    return caps[0].text, extra


def cirr_record(q: QuerySpec, hard_only: bool, variant: str = "seen") -> dict:
    gt = [q.target] if hard_only else q.gt
    caption, extra = _caption_fields(q, variant)
    return {
        "pairid": q.pairid,
        "reference": q.reference.name,
        "target_hard": q.target.name,
        "target_soft": {im.name: 1.0 for im in gt},
        "caption": caption,
        "img_set": {
            "id": q.pairid,
            "members": [im.name for im in q.members],
            "reference_rank": q.members.index(q.reference),
            "target_rank": q.members.index(q.target),
        },
        "kind": q.kind,
        "heldout": q.heldout,
        "phrasing": variant,
        **extra,
    }


def circo_record(q: QuerySpec, hard_only: bool, variant: str = "seen") -> dict:
    gt = [q.target] if hard_only else q.gt
    caption, extra = _caption_fields(q, variant)
    return {
        "id": q.pairid,
        "reference_img_id": q.reference.id,
        "target_img_id": q.target.id,
        "relative_caption": caption,
        "shared_concept": q.shared_concept,
        "gt_img_ids": [im.id for im in gt],
        "kind": q.kind,
        "heldout": q.heldout,
        "phrasing": variant,
        **extra,
    }


def write_annotations(
    root: Path,
    images: Sequence[ImageSpec],
    queries: dict[str, list[QuerySpec]],
    hard_only_train: bool,
    lexicon: dict | None = None,
) -> None:
    """Every JSON file of both layouts (the images are written by :func:`write_images`): each
    val / test split once per phrasing variant (``val``, ``val-unseen``, ...), and the train
    phrasing's attribute lexicon as ``lexicon.yaml`` in each layout."""
    cirr, circo = root / "cirr", root / "circo"
    for split in SPLITS:
        hard_only = hard_only_train and split == "train"
        split_images = [im for im in images if im.split == split]
        variants = ["seen"] if split == "train" else list(VARIANTS)
        for v in variants:
            cs = variant_split(CIRR_SPLIT, split, v)
            write_json(
                cirr / "image_splits" / f"split.rc2.{cs}.json",
                {im.name: f"./{CIRR_DIR[split]}/{im.name}.png" for im in split_images},
            )
            write_json(
                cirr / "captions" / f"cap.rc2.{cs}.json",
                [cirr_record(q, hard_only, v) for q in queries[split]],
            )
            ann, co = circo / "annotations", variant_split(CIRCO_SPLIT, split, v)
            write_json(ann / f"{co}.json", [circo_record(q, hard_only, v) for q in queries[split]])
            write_json(ann / f"gallery.{co}.json", [im.id for im in split_images])
    info = [
        {
            "id": im.id,
            "file_name": circo_file_name(im.id),
            "width": IMAGE_SIZE,
            "height": IMAGE_SIZE,
        }
        for im in images
    ]
    write_json(
        circo / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json",
        {"images": info},
    )
    if lexicon is not None:
        text = LEXICON_HEADER + yaml.safe_dump(lexicon, sort_keys=False, allow_unicode=True)
        for layout in (cirr, circo):
            (layout / "lexicon.yaml").write_text(text, encoding="utf-8")


LEXICON_HEADER = (
    "# Attribute lexicon of this benchmark's TRAIN phrasing (attribute -> value -> words), written\n"
    "# by dqecir make-benchmark. It holds no held-out word: the L_attr labels of a model trained\n"
    "# here come from it (config data.lexicon: benchmark).\n"
)


def _link(src: Path, dst: Path, hard: bool) -> bool:
    """Hard-link ``dst`` to ``src`` (or a relative symlink); returns whether it is hard."""
    if hard:
        try:
            os.link(src, dst)
            return True
        except OSError:
            pass
    os.symlink(os.path.relpath(src, dst.parent), dst)
    return False


def write_images(
    root: Path,
    images: Sequence[ImageSpec],
    render: Callable[[ImageSpec], Image.Image],
    *,
    desc: str,
    progress: bool = True,
) -> str:
    """Render every image once into the CIRR folders and link it into the CIRCO folder.
    Returns the link mode used ("hardlink" or "symlink")."""
    for d in CIRR_DIR.values():
        (root / "cirr" / d).mkdir(parents=True, exist_ok=True)
    coco = root / "circo" / "COCO2017_unlabeled" / "unlabeled2017"
    coco.mkdir(parents=True, exist_ok=True)
    hard = True
    for im in tqdm(images, desc=desc, unit="img", disable=not progress):
        path = root / "cirr" / CIRR_DIR[im.split] / f"{im.name}.png"
        img = render(im)
        if img.size != (IMAGE_SIZE, IMAGE_SIZE) or img.mode != "RGB":
            raise DataError(f"renderer gave {img.mode} {img.size}", record=im.name)
        img.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        hard = _link(path, coco / circo_file_name(im.id), hard)
    return "hardlink" if hard else "symlink"


def meta_document(
    definition: BenchmarkDefinition,
    images: Sequence[ImageSpec],
    heldout: frozenset[tuple[str, str]],
    *,
    seed: int,
    size: str,
    hard_only_train: bool,
    phrasing: Phrasing,
    train_variants: int,
) -> dict:
    return {
        "generator": GENERATOR,
        "benchmark": definition.name,
        "seed": seed,
        "size": size,
        "hard_only_train": hard_only_train,
        "image_size": [IMAGE_SIZE, IMAGE_SIZE],
        "splits": {
            s: {"cirr": CIRR_SPLIT[s], "cirr_dir": CIRR_DIR[s], "circo": CIRCO_SPLIT[s]}
            for s in SPLITS
        },
        "vocab": {k: list(v) for k, v in definition.vocab.items()},
        "phrasing": phrasing_document(phrasing, train_variants),
        "kind_mix": definition.kind_mix,
        "heldout_combinations": sorted([c, s] for c, s in heldout),
        "settings": definition.settings(),
        "images": {
            im.name: {
                "id": im.id,
                "split": im.split,
                **im.attrs,
                "instance": im.instance,
                **im.extra,
            }
            for im in images
        },
    }


def phrasing_document(phrasing: Phrasing, train_variants: int) -> dict:
    """What meta.json says of the phrasing: the variants, the counts and both sides' words and
    forms (so a check can confirm that no held-out word or form reaches a train caption)."""
    sides = {}
    for name, side in phrasing.sides.items():
        sides[name] = {
            "words": {a: {v: list(w) for v, w in vals.items()} for a, vals in side.words.items()},
            "forms": {k: [f.text for f in v] for k, v in side.forms.items()},
            "prefix": list(side.prefix) + list(side.polite_prefix),
            "suffix": list(side.suffix),
            "join": list(side.join),
            "things": list(side.things),
            "comparatives": {d: list(w) for d, w in side.comparatives.items()},
            "resize": {d: list(w) for d, w in side.resize.items()},
        }
    return {
        "variants": {v: {"forms": f, "words": w} for v, (f, w) in VARIANTS.items()},
        "train_variants": train_variants,
        "params": dataclasses.asdict(phrasing.params),
        "summary": phrasing.summary(),
        "sides": sides,
    }
