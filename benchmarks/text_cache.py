"""Text-cache fill of the ``lite`` backbone: the whole MiniLM tower (``text_layers: 0``) against
the states below the trained top layers (``text_layers: N``, the tower cut below them).

    python benchmarks/text_cache.py [--texts 3000] [--layers 2] [--repeats 3]

Captions are drawn from the fmnist phrasebook's words (4-14 words, seeded), read by
``text_features`` as the cache reads them (sorted chunks, bf16). The two ways alternate; prints
the median texts/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=3000)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import torch

    from dqecir.registry import create_backbone

    rng = random.Random(0)
    words = ("make it red please a pair of navy sneakers instead of the long coat swap it for "
             "an anorak same shade but keep the style with long sleeves in teal").split()  # fmt: skip
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 14))) for _ in range(a.texts)]
    ways = {
        "whole tower (text_layers 0)": create_backbone("lite", fusion="qformer").eval(),
        f"below the top {a.layers} (text_layers {a.layers})": create_backbone(
            "lite", fusion="qformer", text_layers=a.layers
        ).eval(),
    }
    rates: dict[str, list[float]] = {k: [] for k in ways}
    with torch.no_grad():
        for _ in range(a.repeats):
            for name, bb in ways.items():
                t0 = time.perf_counter()
                bb.text_features(texts)
                rates[name].append(a.texts / (time.perf_counter() - t0))
    print(f"{a.texts} captions, {a.repeats} repeats each way (median), {torch.get_num_threads()} "
          "threads")  # fmt: skip
    print("| cache fill | texts/s | ratio |")
    print("|---|---|---|")
    base = statistics.median(next(iter(rates.values())))
    for name, r in rates.items():
        print(f"| {name} | {statistics.median(r):.0f} | {statistics.median(r) / base:.2f} |")


if __name__ == "__main__":
    main()
