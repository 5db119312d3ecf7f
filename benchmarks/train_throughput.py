"""Training throughput of `lite` with the frozen-feature cache vs without it.

    python benchmarks/train_throughput.py --root data/fmnist-default/cirr [--steps 8] [--batch 64]

Each mode runs in its own subprocess (so its peak RSS is its own):
- ``cached``: frozen image / text features read from the on-disk cache (built first, not timed);
  a step runs only the trainable fusion (forward, backward, AdamW);
- ``uncached``: every step decodes and preprocesses the images from disk and runs both frozen
  towers before the fusion, as a loop without the cache would.
Prints samples/s of each, the ratio, and peak resident memory of each process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch


def _setup(root: Path, fusion: str, n_queries: int):
    from dqecir.data.formats import load_benchmark
    from dqecir.data.pipeline import query_texts
    from dqecir.models.cir import CIRModel
    from dqecir.registry import create_backbone

    split = load_benchmark("cirr", root, "train")[0]
    qs = split.queries[:n_queries]
    model = CIRModel(create_backbone("lite", fusion=fusion))
    texts = [query_texts(q, train=False)[0] for q in qs]
    return split, qs, model, texts


def run_mode(mode: str, root: Path, fusion: str, steps: int, batch: int, threads: int) -> dict:
    from dqecir.data.features import IMAGE_FIELD, FeatureCache
    from dqecir.data.images import load_tensor
    from dqecir.losses import ITCLoss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    split, qs, model, texts = _setup(root, fusion, steps * batch)
    bb = model.backbone
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    itc = ITCLoss()
    if mode == "cached":
        cache = FeatureCache(root / ".dqecir-cache")
        ids = sorted({q.reference for q in qs} | {q.target for q in qs})
        img = cache.image_features(bb, ids, split.image_paths, progress=False).get(ids)
        row = {i: r for r, i in enumerate(ids)}
        images = img[IMAGE_FIELD]
        tt = cache.text_features(bb, texts, progress=False).get(texts)

    def batch_inputs(b: list[int]):
        bq = [qs[i] for i in b]
        if mode == "cached":
            ref = images[[row[q.reference] for q in bq]]
            tgt = images[[row[q.target] for q in bq]]
            tf = {k: v[b] for k, v in tt.items()}
            return ref, tgt, tf
        pre = bb.preprocess
        ref = bb.image_features(
            torch.stack([load_tensor(split.image_paths[q.reference], pre) for q in bq])
        )
        tgt = bb.image_features(
            torch.stack([load_tensor(split.image_paths[q.target], pre) for q in bq])
        )
        tf = bb.text_features([texts[i] for i in b])
        return ref, tgt, tf

    def step(b: list[int]) -> None:
        ref, tgt, tf = batch_inputs(b)
        q = model.query(ref.float(), tf)["q_star"]
        loss = itc(model.score(q, model.gallery(tgt.float())), model.temperature())["itc"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(list(range(batch)))  # warm-up
    t0 = time.perf_counter()
    for s in range(steps):
        step(list(range(s * batch, (s + 1) * batch)))
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "samples_per_s": steps * batch / dt, "peak_rss_mb": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", type=Path, default=Path("data/fmnist-default/cirr"))
    ap.add_argument("--fusion", default="combiner")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.mode:
        print(json.dumps(run_mode(a.mode, a.root, a.fusion, a.steps, a.batch, a.threads)))
        return
    if not a.root.exists():
        sys.exit(f"{a.root} does not exist: dqecir make-benchmark fmnist --out {a.root.parent}")
    res = {}
    for mode in ("cached", "uncached"):
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--root", str(a.root), "--fusion", a.fusion,
             "--steps", str(a.steps), "--batch", str(a.batch), "--threads", str(a.threads)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    c, u = res["cached"], res["uncached"]
    print(f"| lite {a.fusion}, batch {a.batch}, {a.threads} threads | samples/s | peak RSS MB |")
    print("|---|---|---|")
    print(f"| with feature cache | {c['samples_per_s']:.0f} | {c['peak_rss_mb']:.0f} |")
    print(f"| without (towers every step) | {u['samples_per_s']:.1f} | {u['peak_rss_mb']:.0f} |")
    print(f"| ratio cached / uncached | {c['samples_per_s'] / u['samples_per_s']:.0f}x | |")


if __name__ == "__main__":
    main()
