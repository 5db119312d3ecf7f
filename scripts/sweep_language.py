"""The val measurements behind the language recipe (docs/method.md, "Words people type").

Each run trains one model on the train split (train phrasing only) and scores it on val in
every phrasing (seen, unseen, new forms only, new words only); a JSON line per run goes to
``OUT/summary.jsonl`` (finished runs are skipped when the sweep is started again).

    .venv/bin/python scripts/sweep_language.py --out runs/lang [--only NAME ...] [--list]

Runs use configs/lite_fmnist.yaml (or --config) with the demo's qformer / combiner sizes and
the baseline+mask loss unless a run says otherwise. About 2-4 min per run on the 2-core VM.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dqecir.ablate import variant_overrides
from dqecir.config import load_config
from dqecir.demo import FULL_BAND, QFORMER
from dqecir.evaluate import evaluate_checkpoint
from dqecir.train import train

COMBINER = ["model.backbone_kwargs.fusion=combiner"]
HINTS = "model.backbone_kwargs.text_hints=fmnist"
ITC = "train.init_from={itc}"  # the checkpoint given by --itc
# a continuation as the demo's DQE-CIR row first made it (4 epochs, TRNS from the first one)
CONTINUE = ["train.epochs=4", "trns.warmup_epochs=0"]
BB = "model.backbone_kwargs"
TOP1 = [f"{BB}.text_layers=1", "train.amp=bf16", f"{BB}.token_dropout=0.1"]
TOP2 = [f"{BB}.text_layers=2", "train.amp=bf16", f"{BB}.token_dropout=0.1"]
NODROP = [f"{BB}.dropout=0.0", f"{BB}.text_dropout=0.0"]
RUNS: dict[str, tuple[str, list[str]]] = {
    # name: (loss variant, overrides). The runs recorded in docs/method.md ("Words people type"),
    # in the order they were made; the first group on the benchmark before its colour words
    # followed the survey's frequency (the same runs' names without "z").
    "qf_p1": ("baseline+mask", [*QFORMER, "data.caption_variants=1"]),
    "qf_p8": ("baseline+mask", [*QFORMER]),
    "qf_p8_drop10": ("baseline+mask", [*QFORMER, f"{BB}.token_dropout=0.1"]),
    "qf_p8_tskip": ("baseline+mask", [*QFORMER, f"{BB}.text_skip=true"]),
    "qf_p8_top1": ("baseline+mask", [*QFORMER, f"{BB}.text_layers=1"]),
    "qf_p8_top1_bf16": ("baseline+mask", [*QFORMER, f"{BB}.text_layers=1", "train.amp=bf16"]),
    "qf_p8_top2_bf16": ("baseline+mask", [*QFORMER, f"{BB}.text_layers=2", "train.amp=bf16"]),
    "cb_p1": ("baseline+mask", [*COMBINER, "data.caption_variants=1"]),
    "cb_p8": ("baseline+mask", [*COMBINER]),
    # on the benchmark as it is now (colour words by survey frequency)
    "qz_p1_frozen": ("baseline+mask", [*QFORMER, "data.caption_variants=1"]),
    "qz_top1": ("baseline+mask", [*QFORMER, *TOP1]),
    "qz_top2": ("baseline+mask", [*QFORMER, *TOP2]),
    "qz_top1_full": ("full", [*QFORMER, *TOP1]),
    "cz_top1": ("baseline+mask", [*COMBINER, *TOP1]),
    "qz_top1_p4": ("baseline+mask", [*QFORMER, *TOP1, "data.caption_variants=4"]),
    "qz_top2_e15": ("baseline+mask", [*QFORMER, *TOP2, "train.epochs=15"]),
    "qz_top1_lrp1e4": ("baseline+mask", [*QFORMER, *TOP1, "train.lr_pretrained=1e-4"]),
    "qz_top2_lrp1e4": ("baseline+mask", [*QFORMER, *TOP2, "train.lr_pretrained=1e-4"]),
    "qz_top1_aw": ("+AW", [*QFORMER, *TOP1]),
    "qz_top1_aw_htext": ("+AW", [*QFORMER, *TOP1, f"{BB}.h_from=text"]),
    "qz_top2_lrp3e4": ("baseline+mask", [*QFORMER, *TOP2, "train.lr_pretrained=3e-4"]),
    "qz_top2_aw": ("+AW", [*QFORMER, *TOP2]),
    "qz_top2_aw_htext": ("+AW", [*QFORMER, *TOP2, f"{BB}.h_from=text"]),
    # the value term of L_attr (loss.attr_value), against qz_top2_aw
    "qz_top2_aw_value05": ("+AW", [*QFORMER, *TOP2, "loss.attr_value=0.5"]),
    "qz_top2_aw_value2": ("+AW", [*QFORMER, *TOP2, "loss.attr_value=2.0"]),
    # L_kl's soft targets sharper (tau_soft 0.05 -> 0.02), against the qformer ablation's full
    # seed-0 run (the same config with tau_soft 0.05) scored on val
    "qz_top2_full_tsoft02": ("full", [*QFORMER, *TOP2, "loss.tau_soft=0.02"]),
    # WordNet hints for garment words (model.backbone_kwargs.text_hints), against qz_top2
    "qz_top2_hints": ("baseline+mask", [*QFORMER, *TOP2, f"{BB}.text_hints=fmnist"]),
    # the negatives encoded without gradient (trns.negative_grad), against the demo's full row
    # (the same config with negative_grad true) scored on val
    "qz_top2_full_hints_nograd": (
        "full",
        [*QFORMER, *TOP2, f"{BB}.text_hints=fmnist", *FULL_BAND, "trns.negative_grad=false"],
    ),
    # the relevance held fixed in L_kl / L_rank (trns.relevance_grad), against the demo's full
    # row scored on val: does TRNS pull alpha away from L_attr's labels on new words?
    "qz_top2_full_hints_relfixed": (
        "full",
        [*QFORMER, *TOP2, f"{BB}.text_hints=fmnist", *FULL_BAND, "trns.relevance_grad=false"],
    ),
    # The demo's DQE-CIR row continues the L_itc row's best checkpoint (train.init_from; --itc
    # names it) instead of 10 epochs from scratch: 4 epochs (the demo's), 3, a lower lr, and the
    # control that continues it for 4 epochs without DQE-CIR
    "qz_cont_full_e4": ("full", [*QFORMER, *TOP2, HINTS, *FULL_BAND, *CONTINUE, ITC]),
    "qz_cont_full_e3": (
        "full",
        [*QFORMER, *TOP2, HINTS, *FULL_BAND, *CONTINUE, "train.epochs=3", ITC],
    ),
    "qz_cont_full_e4_lr5e4": (
        "full",
        [*QFORMER, *TOP2, HINTS, *FULL_BAND, *CONTINUE, "train.lr=5e-4", ITC],
    ),
    "qz_cont_itc_e4": ("baseline+mask", [*QFORMER, *TOP2, HINTS, "train.epochs=4", ITC]),
    # can the continuation keep more of the from-scratch row's unseen score? MiniLM's trained
    # layers at a lower lr, or more token dropout, while TRNS trains
    "qz_cont_full_e4_lrp3e4": (
        "full",
        [*QFORMER, *TOP2, HINTS, *FULL_BAND, *CONTINUE, "train.lr_pretrained=3e-4", ITC],
    ),
    "qz_cont_full_e4_drop20": (
        "full",
        [*QFORMER, *TOP2, HINTS, *FULL_BAND, *CONTINUE, f"{BB}.token_dropout=0.2", ITC],
    ),
    # the other way to a shorter DQE-CIR row: from scratch, 6 epochs instead of 10
    "qz_top2_full_hints_e6": ("full", [*QFORMER, *TOP2, HINTS, *FULL_BAND, "train.epochs=6"]),
    # no dropout in the fusion and MiniLM's trained layers (about 10 % of a qformer step,
    # benchmarks/train_step.py): the L_itc row in 10 and 8 epochs against qz_top2_hints, then
    # DQE-CIR continuing such a row (--itc) for 4 and 3 epochs against qz_cont_full_e4 / _e3
    "qz_top2_hints_nodrop": ("baseline+mask", [*QFORMER, *TOP2, HINTS, *NODROP]),
    "qz_top2_hints_nodrop_e8": (
        "baseline+mask",
        [*QFORMER, *TOP2, HINTS, *NODROP, "train.epochs=8"],
    ),
    "qz_cont_full_e4_nodrop": (
        "full",
        [*QFORMER, *TOP2, HINTS, *FULL_BAND, *CONTINUE, *NODROP, ITC],
    ),
    "qz_cont_full_e3_nodrop": (
        "full",
        [*QFORMER, *TOP2, HINTS, *FULL_BAND, *CONTINUE, *NODROP, "train.epochs=3", ITC],
    ),
    # the same, continuing the 10-epoch no-dropout row (--itc its best.safetensors)
    "qz_cont_full_e3_nodrop_from10": (
        "full",
        [*QFORMER, *TOP2, HINTS, *FULL_BAND, *CONTINUE, *NODROP, "train.epochs=3", ITC],
    ),
    "qz_cont_full_e2_nodrop": (
        "full",
        [*QFORMER, *TOP2, HINTS, *FULL_BAND, *CONTINUE, *NODROP, "train.epochs=2", ITC],
    ),
    "qz_top2_hints_nodrop_e7": (
        "baseline+mask",
        [*QFORMER, *TOP2, HINTS, *NODROP, "train.epochs=7"],
    ),
    # token dropout re-tuned without module dropout: the demo's L_itc row (8 epochs, 0.1)
    # with none and with 0.2
    "qz_top2_hints_nodrop_e8_td0": (
        "baseline+mask",
        [*QFORMER, *TOP2, HINTS, *NODROP, "train.epochs=8", f"{BB}.token_dropout=0.0"],
    ),
    "qz_top2_hints_nodrop_e8_td2": (
        "baseline+mask",
        [*QFORMER, *TOP2, HINTS, *NODROP, "train.epochs=8", f"{BB}.token_dropout=0.2"],
    ),
    # the control: the same continuation (3 epochs) with the baseline loss
    "qz_cont_itc_e3_nodrop": (
        "baseline+mask",
        [*QFORMER, *TOP2, HINTS, *NODROP, "train.epochs=3", ITC],
    ),
}
# Every run above read its hints under the first rule (dqecir.data.hints); the runs below name
# theirs.
RULE1, RULE2 = f"{BB}.hint_rule=1", f"{BB}.hint_rule=2"
for _variant, _sets in RUNS.values():
    if any("text_hints=" in x for x in _sets):
        _sets.append(RULE1)
RUNS.update({
    # the second hint rule (a hint after every garment span but the bare class name, and a
    # word's first WordNet sense that reaches a class): the demo's L_itc row, then DQE-CIR
    # continuing it (--itc its best.safetensors)
    "qz_top2_hints2_nodrop_e8": (
        "baseline+mask",
        [*QFORMER, *TOP2, HINTS, RULE2, *NODROP, "train.epochs=8"],
    ),
    "qz_top2_hints2_nodrop_e8_td0": (
        "baseline+mask",
        [*QFORMER, *TOP2, HINTS, RULE2, *NODROP, "train.epochs=8", f"{BB}.token_dropout=0.0"],
    ),
    "qz_cont_full_e3_nodrop_hints2": (
        "full",
        [*QFORMER, *TOP2, HINTS, RULE2, *FULL_BAND, *CONTINUE, *NODROP, "train.epochs=3", ITC],
    ),
    # DQE-CIR without token dropout, continuing qz_top2_hints_nodrop_e8_td0 (first rule)
    "qz_cont_full_e3_nodrop_td0": (
        "full",
        [*QFORMER, *TOP2, HINTS, RULE1, *FULL_BAND, *CONTINUE, *NODROP, "train.epochs=3",
         f"{BB}.token_dropout=0.0", ITC],
    ),
    # the same without token dropout (--itc qz_top2_hints2_nodrop_e8_td0's best.safetensors)
    "qz_cont_full_e3_nodrop_hints2_td0": (
        "full",
        [*QFORMER, *TOP2, HINTS, RULE2, *FULL_BAND, *CONTINUE, *NODROP, "train.epochs=3",
         f"{BB}.token_dropout=0.0", ITC],
    ),
    # the same with L_attr weighted 2.0 instead of 0.5: does the relevance hold on new words?
    "qz_cont_full_e3_nodrop_hints2_td0_wattr2": (
        "full",
        [*QFORMER, *TOP2, HINTS, RULE2, *FULL_BAND, *CONTINUE, *NODROP, "train.epochs=3",
         f"{BB}.token_dropout=0.0", "loss.w_attr=2.0", ITC],
    ),
    "qz_cont_full_e3_nodrop_hints2_td0_wattr1": (
        "full",
        [*QFORMER, *TOP2, HINTS, RULE2, *FULL_BAND, *CONTINUE, *NODROP, "train.epochs=3",
         f"{BB}.token_dropout=0.0", "loss.w_attr=1.0", ITC],
    ),
    # L2-SP on MiniLM's trained top layers (train.anchor_decay: decay toward the shipped
    # weights instead of zero): the demo's L_itc row, then its DQE-CIR row continuing it
    # (--itc the matching L_itc run's best.safetensors)
    **{
        f"qz_top2_hints2_e8_td0_anchor{r}": (
            "baseline+mask",
            [*QFORMER, *TOP2, HINTS, RULE2, *NODROP, "train.epochs=8",
             f"{BB}.token_dropout=0.0", f"train.anchor_decay={r}"],
        )
        for r in (1, 3, 10)
    },
    **{
        f"qz_cont_full_e3_hints2_td0_wattr1_anchor{r}": (
            "full",
            [*QFORMER, *TOP2, HINTS, RULE2, *FULL_BAND, *CONTINUE, *NODROP, "train.epochs=3",
             f"{BB}.token_dropout=0.0", "loss.w_attr=1.0", f"train.anchor_decay={r}", ITC],
        )
        for r in (1, 3, 10)
    },
    # three trained MiniLM layers instead of two (the demo's L_itc row, then its DQE-CIR row
    # continuing it, --itc the first's best.safetensors); a later override wins
    "qz_top3_hints2_e8_td0": (
        "baseline+mask",
        [*QFORMER, *TOP2, HINTS, RULE2, *NODROP, "train.epochs=8",
         f"{BB}.token_dropout=0.0", f"{BB}.text_layers=3"],
    ),
    "qz_cont_full_e3_top3_hints2_td0_wattr1": (
        "full",
        [*QFORMER, *TOP2, HINTS, RULE2, *FULL_BAND, *CONTINUE, *NODROP, "train.epochs=3",
         f"{BB}.token_dropout=0.0", "loss.w_attr=1.0", f"{BB}.text_layers=3", ITC],
    ),
})  # fmt: skip
KEYS = ["map@10", "recall@10", "recall_subset@1", "color/map@10", "shape/map@10", "both/map@10",
        "attr_acc"]  # fmt: skip


def table(summary: Path) -> str:
    """Markdown: per run, val mAP@10 in each phrasing (seen / unseen / new forms / new words),
    unseen / seen, the per-kind unseen mAP@10 and the training time."""
    head = ("| run | seen | unseen | new forms | new words | kept | unseen color / shape / both "
            "| attr acc seen / unseen | train s |")  # fmt: skip
    lines = [head, "|---" * 9 + "|"]
    for line in summary.read_text().splitlines():
        r = json.loads(line)
        m = r["metrics"]
        f = [m.get(p + "map@10") for p in ("", "unseen:", "newforms:", "newwords:")]
        kinds = " / ".join(f"{m.get(f'unseen:{k}/map@10', float('nan')):.1f}"
                           for k in ("color", "shape", "both"))  # fmt: skip
        acc = f"{m['attr_acc']:.1f} / {m['unseen:attr_acc']:.1f}" if "attr_acc" in m else "–"
        cells = [f"{x:.1f}" for x in f] + [f"{f[1] / f[0]:.2f}", kinds, acc]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/lang")
    ap.add_argument("--config", default="configs/lite_fmnist.yaml")
    ap.add_argument("--only", nargs="+", help="run only these names")
    ap.add_argument("--set", action="append", default=[], help="override for every run")
    ap.add_argument("--list", action="store_true", help="print the runs and exit")
    ap.add_argument(
        "--itc",
        default="demo/runs/lite-qformer-l-itc/best.safetensors",
        help="the checkpoint the qz_cont_* runs start from (the demo's L_itc row; the recorded "
        "qz_cont_* lines name theirs in train.init_from: a835cb6's 10-epoch row with dropout for "
        "sweep-cont.jsonl, the no-dropout rows for sweep-nodrop.jsonl)",
    )
    ap.add_argument("--table", action="store_true", help="print OUT/summary.jsonl as markdown")
    args = ap.parse_args()
    if args.table:
        print(table(Path(args.out) / "summary.jsonl"))
        return
    if args.list:
        for name, (variant, sets) in RUNS.items():
            print(name, variant, " ".join(sets))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = out / "summary.jsonl"
    done = set()
    if summary.exists():
        done = {json.loads(line)["name"] for line in summary.read_text().splitlines() if line}
    for name, (variant, sets) in RUNS.items():
        if (args.only and name not in args.only) or name in done:
            continue
        sets = [x.replace("{itc}", args.itc) for x in sets]
        base = load_config(args.config, [*args.set, *sets])
        cfg = load_config(args.config, [*args.set, *variant_overrides(base, variant), *sets])
        t0 = time.perf_counter()
        ckpt = train(cfg, out / name)
        t_train = time.perf_counter() - t0
        metrics, _ = evaluate_checkpoint(
            ckpt, cfg.data.benchmark, Path(cfg.data.root), cfg.data.val_split, device="cpu"
        )
        rec = {
            "name": name,
            "variant": variant,
            "overrides": [*args.set, *sets],
            "train_seconds": round(t_train, 1),
            "metrics": metrics,
        }
        with open(summary, "a") as f:
            f.write(json.dumps(rec) + "\n")
        short = {}
        for p in ("", "unseen:", "newforms:", "newwords:"):
            short[p or "seen"] = {k: round(metrics[p + k], 1) for k in KEYS if p + k in metrics}
        print(name, f"{t_train:.0f}s", json.dumps(short), flush=True)


if __name__ == "__main__":
    main()
