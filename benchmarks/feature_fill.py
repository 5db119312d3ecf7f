"""Filling the frozen-feature cache of the ``lite`` backbone: two layout choices, each against
the way it was done before, alternating in one run.

1. image tower (EfficientNet-Lite0, 112 px, ``blocks``): pixels in row-major (NCHW) layout vs
   channels-last, as :func:`dqecir.models.backbones.lite.efficientnet_tokens` now passes them;
2. text tower (MiniLM below its top 2 layers, WordNet hints): the cache's batches of 256 in the
   order the texts come vs shortest first, as :meth:`dqecir.data.features.FeatureCache.
   text_features` now fills them.

    python benchmarks/feature_fill.py [--root data/fmnist-default/cirr] [--images 512]
        [--texts 2048] [--threads 2] [--repeats 3]

Prints images/s and texts/s of each way (median of ``--repeats``) and their ratio, and the
largest difference between the two ways' features.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import median_time, train_captions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("data/fmnist-default/cirr"))
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--texts", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from dqecir.data.images import load_tensor
    from dqecir.models.backbones.lite import LiteBackbone, efficientnet_tokens

    kind = a.root.parent.name.split("-")[0]
    bb = LiteBackbone(fusion="image_only", text_layers=2, text_hints=kind).eval()
    net = bb.image_tower

    paths = sorted((a.root / "train").rglob("*.png"))[: a.images]
    if not paths:
        raise SystemExit(f"no PNG images under {a.root / 'train'} (build the benchmark first)")
    pixels = torch.stack([load_tensor(p, bb.preprocess) for p in paths])

    @torch.no_grad()
    def row_major() -> torch.Tensor:  # the stage as computed before: NCHW all through
        out = []
        for x in pixels.split(64):
            x = net._swish(net._bn0(net._conv_stem(x)))
            for block in net._blocks:
                x = block(x)
            out.append(x.flatten(2).transpose(1, 2))
        return torch.cat(out)

    @torch.no_grad()
    def channels_last() -> torch.Tensor:
        return torch.cat([efficientnet_tokens(net, x, "blocks") for x in pixels.split(64)])

    img = {name: median_time(fn, a.repeats) for name, fn in
           [("row-major (before)", row_major), ("channels-last (now)", channels_last)]}  # fmt: skip
    img_diff = float((row_major() - channels_last()).abs().max())

    texts = train_captions(a.root, a.texts)

    def fill(order: list[str]) -> None:
        for i in range(0, len(order), 256):  # the cache's batch size
            bb.text_features(order[i : i + 256])

    txt = {"as they come (before)": median_time(lambda: fill(texts), a.repeats),
           "shortest first (now)": median_time(lambda: fill(sorted(texts, key=len)),
                                                a.repeats)}  # fmt: skip
    one = bb.text_features(texts[:256])
    again = {t: i for i, t in enumerate(sorted(texts[:256], key=len))}
    other = bb.text_features(sorted(texts[:256], key=len))
    idx = torch.tensor([again[t] for t in texts[:256]])
    txt_diff = float((one["tokens"] - other["tokens"][idx]).abs().max())

    print(f"{len(paths)} images, {len(texts)} hinted train captions ({kind}), {a.threads} "
          f"thread(s), median of {a.repeats}")  # fmt: skip
    print("\n| image tower input | images/s | ratio |\n|---|---|---|")
    base = next(iter(img.values()))
    for name, t in img.items():
        print(f"| {name} | {len(paths) / t:.0f} | {base / t:.2f} |")
    print(f"\nlargest feature difference: {img_diff:.1e}")
    print("\n| text-cache fill order | texts/s | ratio |\n|---|---|---|")
    base = next(iter(txt.values()))
    for name, t in txt.items():
        print(f"| {name} | {len(texts) / t:.0f} | {base / t:.2f} |")
    print(f"\nlargest state difference, the same texts in the two orders: {txt_diff:.1e}")


if __name__ == "__main__":
    main()
