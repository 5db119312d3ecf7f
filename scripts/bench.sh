#!/usr/bin/env bash
# `make bench`: every benchmark in benchmarks/, short versions, numbers and ratios on stdout.
set -euo pipefail
PY=.venv/bin/python
DATA=${DATA:-data}
[ -d "$DATA/fmnist-default/cirr" ] || .venv/bin/dqecir make-benchmark fmnist --out "$DATA/fmnist-default"
echo "== training throughput (feature cache vs none)"
$PY benchmarks/train_throughput.py --root "$DATA/fmnist-default/cirr"
echo "== TRNS cost share of an epoch"
$PY benchmarks/trns_cost.py --set "data.root=$DATA/fmnist-default/cirr"
echo "== TRNS step: distinct negatives encoded once vs per slot, with and without gradient"
$PY benchmarks/trns_step.py --steps 4 --set "data.root=$DATA/fmnist-default/cirr"
echo "== text-cache fill: whole MiniLM tower vs the layers below the trained ones"
$PY benchmarks/text_cache.py --texts 1000 --repeats 2
echo "== feature-cache fill: channels-last image tower, text cache shortest first (vs before)"
$PY benchmarks/feature_fill.py --root "$DATA/fmnist-default/cirr" --images 256 --texts 1024 --repeats 2
echo "== training step of the demo's qformer rows (attention kernel, dropout) and TRNS mining (bf16)"
$PY benchmarks/train_step.py --root "$DATA/fmnist-default/cirr" --steps 4 --repeats 1
echo "== text_pooled: the cache fill with MiniLM's sentence embedding, and a frozen sum step reading it"
$PY benchmarks/pooled_text.py --root "$DATA/fmnist-default/cirr" --texts 1024 --steps 20 --repeats 2
echo "== search engines"
OMP_WAIT_POLICY=PASSIVE $PY benchmarks/search.py --quick --out benchmarks/results/search-quick.md
