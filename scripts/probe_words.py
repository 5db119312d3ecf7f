"""How far MiniLM carries a colour or garment word it was never trained on to its class.

For the benchmark's held-out split (seed 0) each word is embedded in a short caption ("make it
<word>", mean-pooled MiniLM states) and a classifier trained on the TRAIN words predicts the
class of the HELD-OUT words: a linear probe on the frozen tower, and the same with the top
N MiniLM layers fine-tuned on the train words. Held-out accuracy bounds what any fusion on this
text tower can make of a new word (docs/method.md, "Words people type").

    .venv/bin/python scripts/probe_words.py [--benchmark fmnist] [--finetune 0 2 6]
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from dqecir.data.synthetic.phrasing import Phrasing
from dqecir.models.backbones.lite import load_minilm


def words_of(ph: Phrasing, attr: str) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    classes = list(ph.sides["train"].words[attr])
    words, labels, side = [], [], []
    for name in ("train", "heldout"):
        for value, ws in ph.sides[name].words[attr].items():
            for w in ws:
                words.append(w)
                labels.append(classes.index(value))
                side.append(name)
    return words, np.array(labels), np.array(side), classes


def pooled(model, enc) -> torch.Tensor:
    h = model(**enc).last_hidden_state
    m = enc["attention_mask"][..., None]
    return (h * m).sum(1) / m.sum(1)


def probe(tok, model, words, labels, side, n_classes: int, layers: int, seed: int = 0) -> float:
    """Held-out accuracy of a softmax classifier on pooled states, the top ``layers`` MiniLM
    layers trained with it (0: frozen tower, a linear probe)."""
    torch.manual_seed(seed)
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(False)
    head = torch.nn.Linear(m.config.hidden_size, n_classes)
    params = list(head.parameters())
    for layer in m.encoder.layer[len(m.encoder.layer) - layers :]:
        for p in layer.parameters():
            p.requires_grad_(True)
            params.append(p)
    enc = tok([f"make it {w}" for w in words], padding=True, return_tensors="pt")
    y = torch.tensor(labels)
    train = np.flatnonzero(side == "train")
    held = np.flatnonzero(side == "heldout")
    opt = torch.optim.AdamW(params, lr=1e-4 if layers else 1e-2)
    rng = np.random.default_rng(seed)
    for _ in range(30):
        m.train(layers > 0)
        order = rng.permutation(train)
        for i in range(0, len(order), 32):
            b = order[i : i + 32]
            e = pooled(m, {k: v[b] for k, v in enc.items()})
            loss = torch.nn.functional.cross_entropy(head(e), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    with torch.no_grad():
        pred = head(pooled(m, enc)).argmax(1).numpy()
    return float((pred[held] == labels[held]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="fmnist")
    ap.add_argument("--seed", type=int, default=0, help="the benchmark seed (its split)")
    ap.add_argument("--finetune", type=int, nargs="+", default=[0, 2, 6])
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok, model = load_minilm()
    model.eval()
    ph = Phrasing(args.benchmark, args.seed)
    for attr in ("color", "shape"):
        words, labels, side, classes = words_of(ph, attr)
        for layers in args.finetune:
            acc = probe(tok, model, words, labels, side, len(classes), layers)
            print(
                f"{args.benchmark} {attr}: {int((side == 'train').sum())} train / "
                f"{int((side == 'heldout').sum())} held-out words, {len(classes)} classes, "
                f"top {layers} layers trained: held-out accuracy {100 * acc:.1f} %",
                flush=True,
            )


if __name__ == "__main__":
    main()
