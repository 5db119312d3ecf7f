#!/usr/bin/env bash
# TRNS on the fmnist variant whose train split lists only the hard target (as FashionIQ):
# baseline vs TRNS without / with the false-negative guard (dup_threshold on s_img(t, c)), val
# split, seed 0. Writes runs/sweep-hard/summary.txt. Needs: dqecir make-benchmark fmnist
# --out data/fmnist-hard --hard-only-train (same seed as data/fmnist-default: same images,
# so the feature cache of the default benchmark is shared).
set -u
OUT=${1:-runs/sweep-hard}
mkdir -p "$OUT"
COMMON=(--set data.root=data/fmnist-hard/cirr --set data.cache_dir=data/fmnist-default/cirr/.dqecir-cache --set train.num_threads=1)
run() { name=$1; variant=$2; shift 2; sets=(); for s in "$@"; do sets+=(--set "$s"); done
  .venv/bin/dqecir ablate --config configs/lite_fmnist.yaml --seeds 0 --split val \
    --variants "$variant" --out "$OUT/$name" "${COMMON[@]}" "${sets[@]}" > "$OUT/$name.log" 2>&1
  .venv/bin/python -c "import json,sys;d=json.load(open('$OUT/$name/ablation.json'))['variants']['$variant'];print('$name', {k: round(d[k]['mean'],1) for k in ['map@10','recall@1','recall@10','recall_subset@1','color/map@10','shape/map@10','both/map@10']})" | tee -a "$OUT/summary.txt"
}
run base baseline+mask
run trns_noguard +TRNS trns.dup_threshold=0.0
run trns_guard95 +TRNS trns.dup_threshold=0.95
run trns_guard90 +TRNS trns.dup_threshold=0.9
# the upper zone bound as the guard: leave out the top 2-3 % of candidates (per query)
run trns_q90_98 +TRNS trns.qlow=0.90 trns.qhigh=0.98
run trns_q85_97 +TRNS trns.qlow=0.85 trns.qhigh=0.97
