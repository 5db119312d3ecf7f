"""A TRNS training step with each distinct negative encoded once vs one encoding per slot.

    python benchmarks/trns_step.py [--config configs/lite_fmnist.yaml] [--steps 8] [--set K=V]

Builds the demo's full qformer row (``dqecir.demo``'s overrides; features cached first, not
timed), mines TRNS negatives once with the untrained model, then times forward + backward of the
same batches both ways, alternating, in one run. Prints the distinct share of the B x K negative
slots and the step time of each way with their ratio. The two ways give the same terms and
gradients (tests/test_objective.py); only the work differs.
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
    from dqecir.demo import QFORMER, TRAINED_TEXT
    from dqecir.train import Trainer

    base = load_config(a.config, a.set)
    cfg = load_config(a.config, [*QFORMER, *TRAINED_TEXT, *variant_overrides(base, "full"), *a.set])
    trainer = Trainer(cfg, Path(tempfile.mkdtemp(prefix="trns-step-")))
    trainer.mine()
    trainer.model.train()
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(trainer.queries), generator=gen)
    bs = cfg.train.batch_size
    times: dict[bool, list[float]] = {True: [], False: []}
    shares = []
    for i in range(a.steps + 1):  # the first round warms up and is not counted
        b = perm[(i * bs) % len(perm) :][:bs]
        for distinct in (True, False):
            batch = trainer.objective_batch(b, distinct_negatives=distinct)
            t0 = time.perf_counter()
            with trainer._autocast():
                loss = trainer.objective(trainer.model, batch)["loss"]
            loss.backward()
            trainer.model.zero_grad(set_to_none=True)
            if i:
                times[distinct].append(time.perf_counter() - t0)
            if distinct and i:
                shares.append(len(batch.negative_feats) / batch.negatives.numel())
    once, per_slot = statistics.median(times[True]), statistics.median(times[False])
    print(f"batch {bs}, K {cfg.trns.k}, {a.steps} steps each way (median)")
    print(f"distinct negatives per step: {100 * statistics.mean(shares):.1f} % of the slots")
    print("| negatives | step s | ratio |")
    print("|---|---|---|")
    print(f"| one encoding per slot | {per_slot:.2f} | 1.00 |")
    print(f"| each distinct image once | {once:.2f} | {once / per_slot:.2f} |")


if __name__ == "__main__":
    main()
