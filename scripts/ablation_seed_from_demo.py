"""Take a demo row's finished run as one seed of an ablation, instead of training it again.

    .venv/bin/python scripts/ablation_seed_from_demo.py --demo DEMO_OUT --out ABLATION_OUT \
        --config configs/lite_fmnist.yaml --seed 0 --set K=V ... \
        --row "lite qformer (L_itc)=baseline+mask" --row "lite qformer, DQE-CIR (full)=full"

The demo trains its qformer rows with exactly the config that ``dqecir ablate`` builds for seed 0
of a variant when given the demo's overrides (``--set``). For each ``--row NAME=VARIANT`` this
checks that the demo run's saved ``config.yaml`` trains what the ablation would
(``dqecir.config.training_differences``), then copies the run (checkpoints, config,
log) into the ablation's layout and writes its ``test_metrics.json`` from the demo's
``results.json``: ``dqecir ablate`` then reads that run as done and trains only the other seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from dqecir.ablate import run_dir, variant_overrides
from dqecir.config import load_config, training_differences
from dqecir.demo import run_slug
from dqecir.files import write_json_atomic
from dqecir.train import resolve_headline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, required=True, help="the demo's --out directory")
    ap.add_argument("--out", type=Path, required=True, help="the ablation's --out directory")
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="the ablation's overrides")
    ap.add_argument("--row", action="append", required=True, help="DEMO ROW NAME=VARIANT")
    a = ap.parse_args()
    results = json.loads((a.demo / "results.json").read_text())["metrics"]
    base = resolve_headline(load_config(a.config, a.set))
    failed = False
    for spec in a.row:
        name, _, variant = spec.rpartition("=")
        if name not in results:
            sys.exit(f"row {name!r} not in {a.demo / 'results.json'} (rows: {sorted(results)})")
        src = a.demo / "runs" / run_slug(name)
        want = load_config(
            a.config, [*a.set, *variant_overrides(base, variant), f"train.seed={a.seed}"]
        )
        diff = training_differences(want, load_config(src / "config.yaml"))
        if diff:
            print(f"{name}: config differs from the ablation's {variant} seed {a.seed} in {diff}")
            failed = True
            continue
        dst = run_dir(a.out, variant, a.seed)
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, dst / f.name)
        write_json_atomic(dst / "test_metrics.json", results[name])
        print(f"{name} -> {dst}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
