# Sourced by the qformer ablation scripts: the demo's final qformer recipe (qformer width 128 /
# 2 layers / 4 queries / image skip, MiniLM's top 2 layers trained, bf16, token dropout 0.1,
# WordNet hints for $KIND under their first rule, TRNS band [0.99, 1.0]) as `--set` arguments in
# the array `sets`.
SETS="model.backbone_kwargs.fusion=qformer model.backbone_kwargs.width=128
model.backbone_kwargs.num_layers=2 model.backbone_kwargs.num_queries=4
model.backbone_kwargs.image_skip=true model.backbone_kwargs.text_layers=2 train.amp=bf16
model.backbone_kwargs.token_dropout=0.1 model.backbone_kwargs.text_hints=$KIND
model.backbone_kwargs.hint_rule=1
trns.qlow=0.99 trns.qhigh=1.0"
sets=()
for s in $SETS; do sets+=(--set "$s"); done
