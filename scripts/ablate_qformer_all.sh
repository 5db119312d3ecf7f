#!/usr/bin/env bash
# Issue 11: the whole qformer ablation (baseline | baseline+mask | +AW | +TRNS | full, seeds
# 0 1 2) on the demo's final recipe (the same --set list as scripts/ablate_qformer_hints.sh), in
# one folder OUT, so that one ablation.json holds all five variants.
# Finished runs of the same recipe made before (e.g. by ablate_qformer_hints.sh, or a partial
# `dqecir ablate` of some variants) are hard-linked into OUT/runs first: each FROM folder's
# runs/<variant>-seed<N> that OUT lacks. `dqecir ablate` then reads a linked run back only if its
# config.yaml trains exactly what the ablation would (otherwise it stops with the keys that
# differ), and trains every run still missing. Full runs about 13 min, the others about 5-13 min
# on the 2-core VM.
# Usage: [SEEDS="0 1"] bash scripts/ablate_qformer_all.sh KIND OUT [FROM ...]
set -eu
KIND=$1
OUT=$2
shift 2
mkdir -p "$OUT/runs"
for from in "$@"; do
  for run in "$from"/runs/*-seed*; do
    [ -f "$run/test_metrics.json" ] || continue
    name=$(basename "$run")
    if [ ! -e "$OUT/runs/$name" ]; then
      cp -al "$run" "$OUT/runs/$name"
      echo "taken: $run"
    fi
  done
done
# shellcheck source=scripts/qformer_hints_recipe.sh
source "$(dirname "$0")/qformer_hints_recipe.sh"
# shellcheck disable=SC2086  # SEEDS is a list of numbers
.venv/bin/dqecir ablate --config "configs/lite_$KIND.yaml" --seeds ${SEEDS:-0 1 2} \
  --variants baseline baseline+mask +AW +TRNS full --out "$OUT" "${sets[@]}"
