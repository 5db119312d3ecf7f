"""Measure the ``lite`` backbone's costs, to choose its sizes (docs/method.md "Backbone sizes").

1. image decoding + preprocessing, then the frozen image tower (EfficientNet-Lite0): images/s
   and cached bytes per image for each input size and feature stage;
2. frozen text tower (MiniLM-L6): texts/s at the cached token length;
3. trainable fusions: forward + backward seconds per batch of 128 on cached-shape features,
   and their trainable parameter counts;
4. optionally (``--probe DIR ...``) a quality proxy per input size and stage on embedded
   benchmarks: 1-NN and linear-probe accuracy of color and shape with pooled features.

Usage: ``python benchmarks/backbone_sizes.py [--threads 2] [--repeats 5] [--out results.json]
[--probe BENCHMARK_DIR ...]``
Timings are the best of ``--repeats`` runs after one warm-up run: the VM's cores are shared
with other jobs, and the minimum is the estimate least disturbed by them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dqecir.data.images import Preprocess, load_tensor
from dqecir.models.backbones.lite import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CombinerFusion,
    QFormerFusion,
    efficientnet_tokens,
    load_efficientnet_lite0,
    load_minilm,
)


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def image_tower(sizes: list[int], batch: int, repeats: int) -> list[dict]:
    rows = []
    for size in sizes:
        net = load_efficientnet_lite0(size).eval()
        x = torch.randn(batch, 3, size, size)
        for stage in ("head", "blocks"):
            with torch.inference_mode():
                tokens = efficientnet_tokens(net, x[:1], stage)
                sec = best_seconds(partial(efficientnet_tokens, net, x, stage), repeats)
            n, c = tokens.shape[1:]
            rows.append(
                dict(
                    image_size=size, stage=stage, tokens=n, channels=c,
                    images_per_s=round(batch / sec, 1), kib_per_image_fp16=round(n * c * 2 / 1024, 1),
                )
            )  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def image_decode(size: int, repeats: int) -> list[dict]:
    """Decode + target-pad + resize + normalise (:func:`load_tensor`) per image, for a small
    PNG (Fashion-MNIST-like) and a photo-sized JPEG (FashionIQ / CIRR-like)."""
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (w, h) in {"png_28x28": (28, 28), "jpeg_600x800": (600, 800)}.items():
            path = Path(tmp) / (name + (".png" if name.startswith("png") else ".jpg"))
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
            pre = Preprocess(image_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
            sec = best_seconds(
                lambda p=path, pre=pre: [load_tensor(p, pre) for _ in range(20)], repeats
            )
            rows.append(dict(image=name, image_size=size, images_per_s=round(20 / sec, 1)))
            print(rows[-1], flush=True)
    return rows


def text_tower(max_len: int, batch: int, repeats: int) -> dict:
    tok, model = load_minilm()
    model.eval()
    texts = ["is red with a round collar and has longer sleeves than the reference"] * batch
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    with torch.inference_mode():
        sec = best_seconds(lambda: model(**enc), repeats)
    row = dict(
        max_text_len=max_len, texts_per_s=round(batch / sec, 1),
        kib_per_text_fp16=round(max_len * model.config.hidden_size * 2 / 1024, 1),
    )  # fmt: skip
    print(row, flush=True)
    return row


def fusion_step(name: str, fusion: torch.nn.Module, n_img: int, c_img: int, repeats: int) -> dict:
    b, length = 128, 32
    img = torch.randn(b, n_img, c_img)
    txt = torch.randn(b, length, 384)
    # caption lengths 4..16 tokens ([CLS] and [SEP] included), padded to 32 as in the cache
    mask = torch.arange(length)[None].expand(b, -1) < torch.randint(4, 17, (b, 1))
    opt = torch.optim.AdamW(fusion.parameters(), lr=1e-4)
    fusion.train()

    def step() -> None:
        q, h = fusion.query(img, txt, mask)
        g = fusion.gallery(img)
        logits = q @ g.mean(1).T / 0.07
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(b)) + 1e-3 * h.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sec = best_seconds(step, repeats)
    params = sum(p.numel() for p in fusion.parameters())
    row = dict(fusion=name, params=params, seconds_per_batch128=round(sec, 4))
    print(row, flush=True)
    return row


def fusions(n_img: int, c_img: int, repeats: int) -> list[dict]:
    d = 256
    variants = {
        "qformer (8 queries, 2 layers, width 256)": QFormerFusion(
            c_img, 384, n_img, d, 256, 8, 2, 4, 0.1
        ),
        "qformer (8 queries, 2 layers, width 128)": QFormerFusion(
            c_img, 384, n_img, d, 128, 8, 2, 4, 0.1
        ),
        "qformer (8 queries, 1 layer, width 128)": QFormerFusion(
            c_img, 384, n_img, d, 128, 8, 1, 4, 0.1
        ),
        "qformer (16 queries, 4 layers, width 256)": QFormerFusion(
            c_img, 384, n_img, d, 256, 16, 4, 4, 0.1
        ),
        "combiner (hidden 512)": CombinerFusion(c_img, 384, d, 512, 0.1),
    }
    return [fusion_step(k, v, n_img, c_img, repeats) for k, v in variants.items()]


def ridge_probe(z: torch.Tensor, labels: list[str], lam: float = 1e-2) -> float:
    """Held-out accuracy of a ridge classifier (one-vs-all) trained on the even rows and
    tested on the odd ones: is the attribute linearly readable from the features?"""
    classes = sorted(set(labels))
    y = torch.nn.functional.one_hot(torch.tensor([classes.index(c) for c in labels]), len(classes))
    x = torch.cat([z, torch.ones(len(z), 1)], dim=1).double()
    xtr, ytr, xte, yte = x[0::2], y[0::2].double(), x[1::2], y[1::2]
    w = xtr.T @ torch.linalg.solve(xtr @ xtr.T + lam * torch.eye(len(xtr), dtype=x.dtype), ytr)
    return round(float(((xte @ w).argmax(1) == yte.argmax(1)).double().mean()), 3)


def probe(root: Path, sizes: list[int], limit: int = 600) -> list[dict]:
    """Quality proxy for the image stage: leave-one-out 1-NN accuracy of each image's color and
    shape (from an embedded benchmark's meta.json) with mean-pooled, normalised features, and
    the held-out accuracy of a linear (ridge) read-out of each."""
    meta = json.loads((root / "meta.json").read_text())
    files = {p.stem: p for p in (root / "cirr").rglob("*.png")}
    items = [(i, a) for i, a in meta["images"].items() if i in files][:limit]
    rows = []
    for size in sizes:
        net = load_efficientnet_lite0(size).eval()
        pre = Preprocess(image_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        pixels = torch.stack([load_tensor(files[i], pre) for i, _ in items])
        for stage in ("head", "blocks"):
            with torch.inference_mode():
                feats = torch.cat([efficientnet_tokens(net, x, stage) for x in pixels.split(64)])
            z = torch.nn.functional.normalize(feats.mean(1), dim=-1)
            sim = z @ z.T
            sim.fill_diagonal_(-2.0)
            nn_idx = sim.argmax(1).tolist()
            row = dict(benchmark=meta["benchmark"], image_size=size, stage=stage, n=len(items))
            for attr in ("color", "shape"):
                labels = [a[attr] for _, a in items]
                hits = sum(labels[j] == labels[k] for j, k in enumerate(nn_idx))
                row[f"1nn_{attr}"] = round(hits / len(items), 3)
                row[f"ridge_{attr}"] = ridge_probe(z, labels)
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 112, 128, 160, 224])
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument(
        "--probe",
        type=Path,
        nargs="*",
        default=[],
        help="embedded benchmark folders (dqecir make-benchmark) for the 1-NN quality proxy",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {
        "threads": args.threads,
        "torch": torch.__version__,
        "image_decode": image_decode(112, args.repeats),
        "image_tower": image_tower(args.sizes, 64, args.repeats),
        "text_tower": text_tower(32, 256, args.repeats),
        "fusions_blocks_112px": fusions(16, 320, args.repeats),
        "probe": [r for root in args.probe for r in probe(root, args.sizes)],
    }
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
