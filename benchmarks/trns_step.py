"""A TRNS training step: each distinct negative encoded once vs one encoding per slot, with and
without gradient through the negatives' encoding, against the step without negatives.

    python benchmarks/trns_step.py [--config configs/lite_fmnist.yaml] [--steps 8] [--set K=V]

Builds the demo's full qformer row (``dqecir.demo``'s overrides; features cached first, not
timed), mines TRNS negatives once with the untrained model, then times forward + backward of the
same batches each way, alternating, in one run. Prints the distinct share of the B x K negative
slots and the step time of each way with its ratio to one encoding per slot. The first two ways
give the same terms and gradients, the third the same terms without the negatives' share of the
gallery encoding's gradient (tests/test_objective.py).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", type=Path, default=Path("configs/lite_fmnist.yaml"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    import torch

    from dqecir.ablate import variant_overrides
    from dqecir.config import load_config
    from dqecir.demo import QFORMER
    from dqecir.train import Trainer

    # the demo's trained-text recipe as benchmarks/results/trns-step.md recorded it (dropout 0.1,
    # no cached sentence embedding), not the demo's current one
    trained_text = ["model.backbone_kwargs.text_layers=2", "train.amp=bf16",
                    "model.backbone_kwargs.token_dropout=0.1"]  # fmt: skip

    base = load_config(a.config, a.set)
    cfg = load_config(a.config, [*QFORMER, *trained_text, *variant_overrides(base, "full"), *a.set])
    trainer = Trainer(cfg, Path(tempfile.mkdtemp(prefix="trns-step-")))
    trainer.mine()
    trainer.model.train()
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(trainer.queries), generator=gen)
    bs = cfg.train.batch_size
    # (label, negatives in the step, distinct images once, gradient through their encoding)
    ways = [("one encoding per slot", True, False, True),
            ("each distinct image once", True, True, True),
            ("distinct, encoded without gradient (`trns.negative_grad: false`)", True, True, False),
            ("no negatives (the baseline+mask step)", False, True, True)]  # fmt: skip
    times: dict[str, list[float]] = {w[0]: [] for w in ways}
    shares = []
    for i in range(a.steps + 1):  # the first round warms up and is not counted
        b = perm[(i * bs) % len(perm) :][:bs]
        for label, negatives, distinct, grad in ways:
            batch = trainer.objective_batch(b, distinct_negatives=distinct)
            if not negatives:
                batch.negatives = batch.negative_feats = batch.negative_index = None
            trainer.objective.negative_grad = grad
            t0 = time.perf_counter()
            with trainer._autocast():
                loss = trainer.objective(trainer.model, batch)["loss"]
            loss.backward()
            trainer.model.zero_grad(set_to_none=True)
            if i:
                times[label].append(time.perf_counter() - t0)
            if negatives and distinct and grad and i:
                shares.append(len(batch.negative_feats) / batch.negatives.numel())
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med[ways[0][0]]
    print(f"batch {bs}, K {cfg.trns.k}, {a.steps} steps each way (median)")
    print(f"distinct negatives per step: {100 * statistics.mean(shares):.1f} % of the slots")
    print("| negatives | step s | ratio |")
    print("|---|---|---|")
    for label, *_ in ways:
        print(f"| {label} | {med[label]:.2f} | {med[label] / base:.2f} |")


if __name__ == "__main__":
    main()
