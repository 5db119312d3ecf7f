"""GPU readiness check: full-size BLIP-2 training steps and gallery embedding, random weights.

``python -m dqecir.gpu_check`` (or ``scripts/gpu_check.sh``) builds ``blip2`` from
``transformers``' default ``Blip2Config`` (ViT-g/14 at 224 px + the BERT-base Q-Former, with the
Q-Former text input the retrieval path needs; random weights, written to a work folder with a
small WordPiece vocabulary, since none can be downloaded), then

1. times training steps at batch 128 (bf16 autocast, frozen bf16 ViT run inside the step,
   Q-Former + projections + attribute weights trained with AdamW on ``L_itc``), reporting
   samples/s end to end and for the trainable head alone (what ``dqecir train`` runs on cached
   ViT features);
2. trains a fixed tiny batch for a few steps (dropout off) and checks that the loss goes down;
3. embeds a gallery (images/s);
4. prints the peak GPU memory and one JSON summary line (also written to ``--json``).

Without CUDA (or with ``--tiny``) the same code runs a tiny random BLIP-2 on the CPU in
seconds (float32 Q-Former, bf16 ViT), so CI covers the script. Exit status 1 when the loss did
not go down.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

TEXTS = (
    "make it red", "change the color to blue", "a round shape with long sleeves",
    "same but green and bigger", "make the collar white", "has a v-neck and short sleeves",
    "change it to a star shape", "more yellow and smaller",
)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    tiny: bool
    batch: int
    steps: int
    warmup: int
    fixed_batch: int
    fixed_steps: int
    fixed_lr: float
    gallery: int
    gallery_batch: int
    lr: float = 2e-5


FULL = Settings(tiny=False, batch=128, steps=10, warmup=2, fixed_batch=8, fixed_steps=15,
                fixed_lr=1e-4, gallery=2048, gallery_batch=256)  # fmt: skip
TINY = Settings(tiny=True, batch=8, steps=3, warmup=1, fixed_batch=4, fixed_steps=12,
                fixed_lr=1e-3, gallery=32, gallery_batch=16)  # fmt: skip


@dataclass
class Report:
    device: str
    tiny: bool
    params_total: int = 0
    params_trainable: int = 0
    build_seconds: float = 0.0
    batch: int = 0
    train_samples_per_s: float = 0.0
    head_samples_per_s: float = 0.0
    vit_seconds_per_step: float = 0.0
    fixed_batch_losses: list[float] = field(default_factory=list)
    loss_went_down: bool = False
    gallery_images_per_s: float = 0.0
    peak_gpu_memory_gib: float | None = None
    peak_rss_gib: float = 0.0
    total_seconds: float = 0.0


TINY_BLIP2 = {
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "image_size": 28, "patch_size": 14},
    "qformer_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "max_position_embeddings": 64,
                       "cross_attention_frequency": 1},
    "num_query_tokens": 4,
    "image_text_hidden_size": 16,
}  # fmt: skip


def blip2_config(tiny: bool, vocab_size: int | None = None) -> Any:
    """transformers' default ``Blip2Config`` (ViT-g/14 + BERT-base Q-Former) or the tiny one,
    with the Q-Former text input of the retrieval model and a usable ViT initialisation (see
    :func:`write_random_blip2`); ``vocab_size`` (default BERT's 30522) for the Q-Former."""
    from transformers import Blip2Config

    sizes = TINY_BLIP2 if tiny else {"vision_config": {}, "qformer_config": {}}
    qformer = {**sizes["qformer_config"], "use_qformer_text_input": True}
    if vocab_size is not None:
        qformer["vocab_size"] = vocab_size
    return Blip2Config(
        **{k: v for k, v in sizes.items() if not k.endswith("_config")},
        vision_config={**sizes["vision_config"], "initializer_range": 0.02},
        qformer_config=qformer,
    )


def write_random_blip2(out: Path, tiny: bool, seed: int = 0) -> Path:
    """A random ``Blip2ForImageTextRetrieval`` folder: transformers' default (full) size, or
    :data:`TINY_BLIP2`; the small vocabulary of
    :func:`~dqecir.models.backbones.blip2.write_tiny_vocab`; weights stored in bfloat16 (half
    the bytes; the backbone loads them as float32).

    The ViT is initialised with std 0.02: the default vision ``initializer_range`` (1e-10, a
    placeholder for pretrained weights) makes every image give the same tokens, and no
    image-dependent loss could then go down.
    """
    from transformers import AutoTokenizer, Blip2ForImageTextRetrieval

    from dqecir.models.backbones.blip2 import write_tiny_vocab

    out.mkdir(parents=True, exist_ok=True)
    write_tiny_vocab(out / "vocab.txt")
    tok_cfg = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    config = blip2_config(tiny, vocab_size=len(tokenizer) if tiny else None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Blip2ForImageTextRetrieval(config)
        with torch.no_grad():
            model.query_tokens.normal_(0.0, 0.02)
    model.to(torch.bfloat16).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def build(work: Path, tiny: bool, device: torch.device) -> Any:
    """The CIR model (blip2 backbone + gate attribute weights) on ``device``."""
    from dqecir.models.cir import CIRModel
    from dqecir.registry import create_backbone

    folder = write_random_blip2(work / "blip2", tiny)
    backbone = create_backbone("blip2", model_dir=str(folder), vision_dtype="bfloat16")
    return CIRModel(backbone, attribute_weights="gate").to(device)


def _autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA (the recipe); none on the CPU, as ``train.amp=auto`` does (bf16
    rounding would flatten the tiny random model's scores)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(model: Any, n: int, device: torch.device, seed: int) -> dict[str, Any]:
    """A fixed synthetic batch: reference and target pixels, texts (tokenized)."""
    bb = model.backbone
    g = torch.Generator().manual_seed(seed)
    size = bb.preprocess.image_size
    texts = [TEXTS[i % len(TEXTS)] for i in range(n)]
    return {
        "ref": torch.randn(n, 3, size, size, generator=g).to(device),
        "tgt": torch.randn(n, 3, size, size, generator=g).to(device),
        "text": {k: v.to(device) for k, v in bb.text_features(texts).items()},
    }


def _step(model: Any, opt: torch.optim.Optimizer, batch: dict[str, Any], device: torch.device):
    """One training step; returns (loss, seconds in the frozen ViT)."""
    from dqecir.losses import ITCLoss
    from dqecir.similarity import similarity

    bb = model.backbone
    t0 = time.perf_counter()
    with torch.no_grad():
        ref, tgt = bb.image_features(batch["ref"]), bb.image_features(batch["tgt"])
    _sync(device)
    vit = time.perf_counter() - t0
    with _autocast(device):
        q = model.query(ref, batch["text"])["q_star"].float()
        scores = similarity(q, model.gallery(tgt).float())
        loss = ITCLoss()(scores, model.temperature())["itc"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach()), vit


def _optimizer(model: Any, lr: float) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.05)


def measure_training(model: Any, s: Settings, device: torch.device, r: Report) -> None:
    opt = _optimizer(model, s.lr)
    batch = _batch(model, s.batch, device, seed=1)
    model.train()
    for _ in range(s.warmup):
        _step(model, opt, batch, device)
    _sync(device)
    t0, vit = time.perf_counter(), 0.0
    for _ in range(s.steps):
        vit += _step(model, opt, batch, device)[1]
    _sync(device)
    seconds = time.perf_counter() - t0
    r.batch = s.batch
    r.train_samples_per_s = s.batch * s.steps / seconds
    r.head_samples_per_s = s.batch * s.steps / max(seconds - vit, 1e-9)
    r.vit_seconds_per_step = vit / s.steps


def measure_fixed_batch(model: Any, s: Settings, device: torch.device, r: Report) -> None:
    opt = _optimizer(model, s.fixed_lr)
    batch = _batch(model, s.fixed_batch, device, seed=2)
    model.eval()  # dropout off: the loss of a fixed batch is then a clean trend
    r.fixed_batch_losses = [_step(model, opt, batch, device)[0] for _ in range(s.fixed_steps)]
    first, last = r.fixed_batch_losses[0], r.fixed_batch_losses[-1]
    r.loss_went_down = last < first - 1e-3


@torch.inference_mode()
def measure_gallery(model: Any, s: Settings, device: torch.device, r: Report) -> None:
    model.eval()
    bb = model.backbone
    size = bb.preprocess.image_size
    pixels = torch.randn(s.gallery_batch, 3, size, size, generator=torch.Generator().manual_seed(3))
    pixels = pixels.to(device)
    with _autocast(device):
        model.gallery(bb.image_features(pixels))  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        done = 0
        while done < s.gallery:
            model.gallery(bb.image_features(pixels)).float()
            done += s.gallery_batch
        _sync(device)
    r.gallery_images_per_s = done / (time.perf_counter() - t0)


def run(settings: Settings, work: Path, device: torch.device) -> Report:
    start = time.perf_counter()
    r = Report(device=str(device), tiny=settings.tiny)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = build(work, settings.tiny, device)
    r.build_seconds = time.perf_counter() - start
    r.params_total = sum(p.numel() for p in model.parameters())
    r.params_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _say(f"built blip2 ({r.params_total / 1e6:.1f} M parameters, "
         f"{r.params_trainable / 1e6:.1f} M trained) in {r.build_seconds:.1f} s")  # fmt: skip
    measure_training(model, settings, device, r)
    _say(f"training, batch {r.batch}: {r.train_samples_per_s:.1f} samples/s with the frozen ViT "
         f"in the step, {r.head_samples_per_s:.1f} samples/s for the trained head alone")  # fmt: skip
    measure_fixed_batch(model, settings, device, r)
    losses = " ".join(f"{x:.4f}" for x in r.fixed_batch_losses)
    _say(f"fixed batch of {settings.fixed_batch}, loss per step: {losses}")
    measure_gallery(model, settings, device, r)
    _say(f"gallery embedding: {r.gallery_images_per_s:.1f} images/s")
    if device.type == "cuda":
        r.peak_gpu_memory_gib = torch.cuda.max_memory_allocated(device) / 2**30
        _say(f"peak GPU memory: {r.peak_gpu_memory_gib:.2f} GiB")
    r.peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    r.total_seconds = time.perf_counter() - start
    return r


def _say(msg: str) -> None:
    print(f"[gpu_check] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny random BLIP-2 (default without CUDA)")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--work", help="folder for the random model (default: a temporary one)")
    p.add_argument("--json", help="also write the summary JSON here")
    p.add_argument("--batch", type=int, help="training batch (default 128; tiny: 8)")
    p.add_argument("--steps", type=int, help="timed training steps (default 10; tiny: 3)")
    args = p.parse_args(argv)
    from dqecir.device import resolve_device

    device = resolve_device(args.device)
    tiny = args.tiny or device.type != "cuda"
    s = replace(
        TINY if tiny else FULL,
        **{k: v for k, v in (("batch", args.batch), ("steps", args.steps)) if v},
    )
    _say(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
         f"{'tiny' if tiny else 'full-size'} BLIP-2")  # fmt: skip
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dqecir-gpu-check-"))
    try:
        report = run(s, work, device)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    line = json.dumps(asdict(report))
    print(line, flush=True)
    if args.json:
        Path(args.json).write_text(line + "\n", encoding="utf-8")
    if not report.loss_went_down:
        _say("FAILED: the loss did not go down on the fixed batch")
        return 1
    _say(f"done in {report.total_seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
