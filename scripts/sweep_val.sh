#!/usr/bin/env bash
# Reproduces the val measurements behind the method choices in docs/method.md (fmnist default
# size, seed 0, val split; each line is one `dqecir ablate` run of one variant).
# Usage: bash scripts/sweep_val.sh [OUT=runs/sweep]   (about 2-3 min per run on 2 cores)
# Note: the runs were made with the configs as they stood while choosing (combiner fusion;
# AW gate / zone tau [-8, -0.5] / margin 2 tau before the choices below); the overrides set
# each measured setting explicitly, so they reproduce against the current config too.
set -u
OUT=${1:-runs/sweep}
mkdir -p "$OUT"
run() { name=$1; variant=$2; shift 2; sets=(); for s in "$@"; do sets+=(--set "$s"); done
  .venv/bin/dqecir ablate --config configs/lite_fmnist.yaml --seeds 0 --split val \
    --variants "$variant" --out "$OUT/$name" --set train.num_threads=1 "${sets[@]}" > "$OUT/$name.log" 2>&1
  .venv/bin/python -c "import json,sys;d=json.load(open('$OUT/$name/ablation.json'))['variants']['$variant'];print('$name', {k: round(d[k]['mean'],1) for k in ['map@10','recall@1','recall@10','recall_subset@1','color/map@10','shape/map@10','both/map@10']})" | tee -a "$OUT/summary.txt"
}
Z="trns.zone=tau trns.zlow=-8.0 trns.zhigh=-0.5 loss.rank_margin=2.0"
AWG="model.attribute_weights=gate loss.attr_nce=1.0"
run base baseline+mask
run base_nomask baseline
run trns_z8 +TRNS $Z
run trns_z4 +TRNS $Z trns.zlow=-4.0
run trns_z3q +TRNS $Z trns.zlow=-3.0 trns.zhigh=-0.25
run trns_quant90 +TRNS trns.zone=quantile trns.qlow=0.90 trns.qhigh=0.99 loss.rank_margin=2.0
run trns_q95 +TRNS trns.zone=quantile trns.qlow=0.95 trns.qhigh=0.995 loss.rank_margin=2.0
run trns_q97 +TRNS trns.zone=quantile trns.qlow=0.97 trns.qhigh=0.998 loss.rank_margin=2.0
run trns_inb +TRNS $Z loss.kl_inbatch=true
run trns_rank +TRNS $Z loss.w_rank=2.0 loss.rank_margin=4.0
run trns_rankonly +TRNS $Z loss.w_kl=0.0 loss.w_rank=1.0 loss.rank_margin=4.0
run aw_gate +AW $AWG
run aw_gate_nonce +AW model.attribute_weights=gate loss.attr_nce=0.0
run aw_sub +AW model.attribute_weights=subspace loss.attr_nce=1.0
run aw_sub_nonce +AW model.attribute_weights=subspace loss.attr_nce=0.0
run full_m2 full loss.rank_margin=2.0
run full_m6 full loss.rank_margin=6.0
