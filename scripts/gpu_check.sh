#!/usr/bin/env bash
# GPU readiness check (issue 6): full-size BLIP-2 from transformers' default config, random
# weights; training steps at batch 128 (bf16 autocast, frozen ViT), a fixed-batch loss check,
# gallery embedding; prints samples/s, peak GPU memory and a JSON summary line.
# Meant to finish in under 8 minutes on one H100 / H200. Without CUDA (or with --tiny) it runs a
# tiny random BLIP-2 on the CPU in seconds (CI).
#
#   scripts/gpu_check.sh [--tiny] [--device cuda:0] [--json out.json] [--work DIR] [--batch N]
#
# PYTHON selects the interpreter (default: .venv/bin/python of this checkout, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
exec "$py" -m dqecir.gpu_check "$@"
