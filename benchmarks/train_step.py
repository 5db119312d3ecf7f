"""One training step of the demo's two qformer rows, and one TRNS mining, each against the way
before, alternating in one run.

1. the trained MiniLM layers' attention: PyTorch's default kernel (the CPU flash kernel when no
   dropout applies; with dropout it picks the math kernel itself) vs the math kernel that
   :func:`dqecir.models.backbones.lite._text_top_attention` now picks on a CPU with gradients
   on, with and without dropout;
2. dropout 0.1 (the fusion's ``dropout`` and MiniLM's own, ``text_dropout``) vs none, in the
   same step (a recipe choice, measured on val in docs/method.md);
3. TRNS mining (the DQE-CIR row): the pool and the queries embedded in float32 vs under the
   training autocast (``train.amp=bf16``), as :meth:`dqecir.mining.NegativeMiner.mine` now does.

    python benchmarks/train_step.py [--root data/fmnist-default/cirr] [--steps 12]
        [--repeats 3] [--threads 2] [--mine 1]

Prints the median seconds per step of each way (``--repeats`` rounds of ``--steps`` steps, the
ways alternating) and the ratio to the way before, then the mining seconds. The DQE-CIR row
starts from an untrained model (what a step costs does not depend on the weights): its negatives
come from one mining of that model.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _trainer(root: Path, row: str, dropout: float, out: Path):  # noqa: ANN202
    from dqecir import demo
    from dqecir.ablate import variant_overrides
    from dqecir.config import load_config
    from dqecir.train import Trainer

    m = {x.name: x for x in demo.MODELS}[row]
    config = demo.CONFIG_DIR / "lite_fmnist.yaml"
    base = [f"data.root={root}", *demo.demo_hints("fmnist", config)]
    drop = [
        f"model.backbone_kwargs.dropout={dropout}",
        f"model.backbone_kwargs.text_dropout={dropout}",
    ]
    sets = [*base, *m.overrides, *drop]
    cfg = load_config(
        config, [*base, *variant_overrides(load_config(config, base), m.variant), *sets]
    )
    tr = Trainer(cfg, out)
    if tr.objective.uses_negatives:
        tr.mine()
    tr.model.train()
    return tr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("data/fmnist-default/cirr"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mine", type=int, default=1, help="minings per way (0: skip)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from dqecir.models.backbones import lite

    chosen = lite._text_top_attention

    def default_kernel(
        device: torch.device, trained: bool = True
    ) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    rows = {"L_itc": "lite qformer (L_itc)", "DQE-CIR": "lite qformer, DQE-CIR (full)"}
    ways = [  # name, attention choice, dropout
        ("before: default attention, dropout 0.1", default_kernel, 0.1),
        ("math attention, dropout 0.1", chosen, 0.1),
        ("default attention, no dropout", default_kernel, 0.0),
        ("math attention, no dropout", chosen, 0.0),
    ]
    tmp = Path(tempfile.mkdtemp(prefix="train-step-"))
    print(f"threads {a.threads}, {a.steps} steps x {a.repeats} rounds per way, batch 128")
    for short, row in rows.items():
        trainers = {d: _trainer(a.root, row, d, tmp / f"{short}-{d}") for d in (0.1, 0.0)}
        perm = torch.randperm(
            len(trainers[0.1].queries), generator=torch.Generator().manual_seed(0)
        )
        times: dict[str, list[float]] = {w[0]: [] for w in ways}
        for r in range(a.repeats + 1):  # round 0 warms up
            for name, kernel, d in ways:
                tr = trainers[d]
                lite._text_top_attention = kernel
                gen = torch.Generator().manual_seed(r)
                t0 = time.perf_counter()
                for i in range(a.steps):
                    tr._step(perm[slice(*tr.batches[i % len(tr.batches)])], gen)
                if r:
                    times[name].append((time.perf_counter() - t0) / a.steps)
        lite._text_top_attention = chosen
        base = statistics.median(times[ways[0][0]])
        for name, *_ in ways:
            t = statistics.median(times[name])
            print(f"{short:8s} {name:40s} {t:.3f} s/step  {base / t:.2f}x")
        if short == "DQE-CIR" and a.mine:
            tr = trainers[0.1]
            tau = tr._tau()
            for label, amp in (("before: float32", None), ("train autocast (bf16)", tr.amp)):
                ts = []
                for _ in range(a.mine):
                    t0 = time.perf_counter()
                    tr.miner.mine(tr.model, tau, 0, amp=amp)
                    ts.append(time.perf_counter() - t0)
                print(f"mining   {label:40s} {statistics.median(ts):.1f} s per mining")


if __name__ == "__main__":
    main()
