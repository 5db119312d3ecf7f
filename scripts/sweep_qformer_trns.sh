#!/usr/bin/env bash
# Reproduces the val measurements behind the qformer's TRNS settings (docs/method.md, "TRNS
# settings on the qformer"; docs/results/qformer_trns/): full DQE-CIR on the demo's qformer
# recipe (fmnist default size), one setting per run, seed 0 unless given, scored on val every
# epoch (the table reads the best epoch) and on test1 at the end.
# Usage: bash scripts/sweep_qformer_trns.sh [OUT=runs/qformer_trns] [SEED=0]
#   (about 40 min per run with two runs side by side, 1 thread each, on the 2-core VM)
# Then: python scripts/val_of_runs.py NAME=OUT/NAME/runs/full-seedS ... --jsonl FILE
set -u
OUT=${1:-runs/qformer_trns}
SEED=${2:-0}
mkdir -p "$OUT"
QF="model.backbone_kwargs.fusion=qformer model.backbone_kwargs.width=128
model.backbone_kwargs.num_layers=2 model.backbone_kwargs.num_queries=4
model.backbone_kwargs.image_skip=true model.backbone_kwargs.text_layers=2 train.amp=bf16
model.backbone_kwargs.token_dropout=0.1 train.num_threads=1"
run() { name=$1; shift; sets=(); for s in $QF "$@"; do sets+=(--set "$s"); done
  .venv/bin/dqecir ablate --config configs/lite_fmnist.yaml --seeds "$SEED" --variants full \
    --out "$OUT/$name" "${sets[@]}" > "$OUT/$name.log" 2>&1
}
run band97_998                                   # as configured (the combiner's choice)
run tsoft02 loss.tau_soft=0.02 &                 # L_kl's soft targets sharper
run rankonly loss.w_kl=0.0 &                     # L_rank alone
wait
run band97_100 trns.qhigh=1.0 &                  # no upper guard
run band99_100 trns.qlow=0.99 trns.qhigh=1.0 &   # the top 1 %, no upper guard
wait
