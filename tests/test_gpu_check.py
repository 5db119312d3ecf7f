"""scripts/gpu_check.sh: the full-size configuration is BLIP-2's, and the script runs end to end
at tiny size on the CPU (what CI can cover; the full size needs a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch

from dqecir.gpu_check import FULL, blip2_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def test_full_size_is_vit_g_and_bert_base_qformer():
    from transformers import Blip2ForImageTextRetrieval

    cfg = blip2_config(tiny=False)
    v, q = cfg.vision_config, cfg.qformer_config
    assert (v.hidden_size, v.num_hidden_layers, v.image_size, v.patch_size) == (1408, 39, 224, 14)
    assert (q.hidden_size, q.num_hidden_layers, q.vocab_size) == (768, 12, 30522)
    assert q.use_qformer_text_input and cfg.num_query_tokens == 32
    assert v.initializer_range == 0.02  # not the 1e-10 placeholder: images must differ
    with torch.device("meta"):  # shapes only, no memory
        model = Blip2ForImageTextRetrieval(cfg)
    assert sum(p.numel() for p in model.parameters()) > 1.1e9
    assert FULL.batch == 128 and not FULL.tiny


def test_script_runs_at_tiny_size_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(
        ["bash", str(SCRIPT), "--tiny", "--json", str(out), "--work", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["tiny"] and report["device"] == "cpu" and report["loss_went_down"]
    assert report["train_samples_per_s"] > 0 and report["gallery_images_per_s"] > 0
    assert report["fixed_batch_losses"][-1] < report["fixed_batch_losses"][0]
    assert "samples/s" in res.stdout and "gallery embedding" in res.stdout
