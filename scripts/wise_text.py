"""Weight-space interpolation of the trained MiniLM top layers with MiniLM's own (WiSE-FT on the
text side only): for each ``alpha``, the lite model's ``text_top`` becomes
``alpha * trained + (1 - alpha) * shipped`` and the val splits are scored again.

    .venv/bin/python scripts/wise_text.py CHECKPOINT [--root data/fmnist-default]
        [--alphas 1,0.9,0.8,0.7,0.5] [--splits val,val-unseen,val-newforms,val-newwords]

Prints one markdown row per alpha (mAP@10 per split, kept = unseen / seen, and the attribute
relevance accuracy where the model has one). Val splits only: this chooses a recipe.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from dqecir.data.formats import load_benchmark
from dqecir.data.pipeline import build_features
from dqecir.evaluate import embed_gallery, rank_split, score_split
from dqecir.models.backbones.lite import load_minilm
from dqecir.models.cir import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--root", type=Path, default=Path("data/fmnist-default"))
    ap.add_argument("--alphas", default="1,0.9,0.8,0.7,0.5")
    ap.add_argument("--splits", default="val,val-unseen,val-newforms,val-newwords")
    a = ap.parse_args()
    dev = torch.device("cpu")
    model, _ = load_model(a.checkpoint, dev)
    bb = model.backbone
    top = getattr(bb, "text_top", None)
    if top is None or len(top) == 0:
        raise SystemExit(f"{a.checkpoint}: no trained MiniLM top layers (text_layers 0)")
    _, tower = load_minilm()
    shipped = tower.encoder.layer[len(tower.encoder.layer) - len(top) :]
    trained = copy.deepcopy(top.state_dict())
    ref = shipped.state_dict()
    cirr = a.root / "cirr"
    names = a.splits.split(",")
    splits = [load_benchmark("cirr", cirr, s)[0] for s in names]
    table = build_features(bb, splits, train=False, cache_dir=cirr / ".dqecir-cache", device=dev)
    galleries: dict[tuple, torch.Tensor] = {}
    for s in splits:  # image side only: the text layers do not change it
        key = tuple(s.gallery)
        if key not in galleries:
            galleries[key] = embed_gallery(model, table.images[table.image_rows(s.gallery)], dev)
    print("| alpha | " + " | ".join(names) + " | kept | relevance (val-unseen) |")
    print("|---|" + "---|" * (len(names) + 2))
    for alpha in [float(x) for x in a.alphas.split(",")]:
        mixed = {
            k: (alpha * v.float() + (1 - alpha) * ref[k].float()).to(v.dtype)
            if v.is_floating_point()
            else v
            for k, v in trained.items()
        }
        top.load_state_dict(mixed)
        cells, maps, rel = [], {}, "–"
        for name, s in zip(names, splits, strict=True):
            r = rank_split(model, s, table, dev, gallery_emb=galleries[tuple(s.gallery)])
            m = score_split(r, model.attributes)
            maps[name] = m["map@10"]
            cells.append(f"{m['map@10']:.1f}")
            if name == "val-unseen" and "attr_acc" in m:
                rel = f"{m['attr_acc']:.1f} %"
        kept = maps.get("val-unseen", float("nan")) / maps.get("val", float("nan"))
        print(f"| {alpha:g} | " + " | ".join(cells) + f" | {kept:.3f} | {rel} |", flush=True)


if __name__ == "__main__":
    main()
