"""``text_pooled`` (the ``lite`` text cache also holding MiniLM's own sentence embedding): what
it adds to the cache fill, and what it saves a frozen pooling fusion per training step, each
against the way without it, alternating in one run.

1. the text-cache fill (MiniLM below its top 2 layers, WordNet hints, shortest first, batches
   of 256): the states only vs the states plus the sentence embedding (the top 2 layers run once
   more per text, as shipped);
2. one training step of the demo's image+text sum row (frozen MiniLM, batch 128: the query, an
   L_itc-like loss on it, backward, AdamW): the frozen top 2 layers run on the cached states vs
   the cached sentence embedding read.

    python benchmarks/pooled_text.py [--root data/fmnist-default/cirr] [--texts 2048]
        [--steps 30] [--threads 2] [--repeats 3]

Prints texts/s and seconds per step of each way (median of ``--repeats``) and their ratio, and
the largest difference between the two ways' queries.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import median_time, train_captions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("data/fmnist-default/cirr"))
    ap.add_argument("--texts", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from dqecir.models.backbones.lite import LiteBackbone

    kind = a.root.parent.name.split("-")[0]
    kw = dict(fusion="sum", text_layers=2, text_trainable=False, text_hints=kind)
    plain = LiteBackbone(**kw)
    pooled = LiteBackbone(**kw, text_pooled=True)
    pooled.load_state_dict(plain.state_dict(), strict=False)  # the same sum projections
    texts = sorted(train_captions(a.root, a.texts), key=len)

    def fill(bb: LiteBackbone) -> None:
        for i in range(0, len(texts), 256):  # the cache's batch size
            bb.text_features(texts[i : i + 256])

    fills = {"states only (text_pooled off)": median_time(lambda: fill(plain.eval()), a.repeats),
             "states + sentence embedding (on)": median_time(lambda: fill(pooled.eval()),
                                                              a.repeats)}  # fmt: skip

    gen = torch.Generator().manual_seed(0)
    batch = [texts[i] for i in torch.randperm(len(texts), generator=gen)[:128].tolist()]
    feats = pooled.text_features(batch)
    feats = {k: v.half().float() for k, v in feats.items() if k != "mask"} | {"mask": feats["mask"]}
    layers_only = {k: feats[k] for k in ("tokens", "mask")}  # what the model reads without it
    image = torch.randn(128, 16, 320, generator=gen)
    model = pooled.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def steps(text: dict[str, torch.Tensor]) -> None:
        for _ in range(a.steps):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                q, _ = model.encode_query(image, text)
                g = model.encode_gallery(image)[:, 0]
                logits = q.float() @ g.float().T / 0.07
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(q)))
            opt.zero_grad()
            loss.backward()
            opt.step()

    step = {"frozen top 2 layers run (before)": median_time(lambda: steps(layers_only),
                                                              a.repeats) / a.steps,
            "sentence embedding read (now)": median_time(lambda: steps(feats),
                                                           a.repeats) / a.steps}  # fmt: skip
    model.eval()
    with torch.no_grad():
        diff = float(
            (model.encode_query(image, feats)[0] - model.encode_query(image, layers_only)[0])
            .abs()
            .max()
        )

    print(f"{len(texts)} hinted train captions ({kind}), {a.threads} thread(s), "
          f"median of {a.repeats}")  # fmt: skip
    print("\n| text-cache fill | texts/s | ratio |\n|---|---|---|")
    base = next(iter(fills.values()))
    for name, t in fills.items():
        print(f"| {name} | {len(texts) / t:.0f} | {base / t:.2f} |")
    print("\n| frozen sum row, one step (batch 128) | s/step | ratio |\n|---|---|---|")
    base = next(iter(step.values()))
    for name, t in step.items():
        print(f"| {name} | {t:.4f} | {base / t:.2f} |")
    print(f"\nlargest query difference (bf16 fill, float16 cache): {diff:.1e}")


if __name__ == "__main__":
    main()
