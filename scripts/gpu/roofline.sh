#!/usr/bin/env bash
# Roofline on the lent H200 (issue 3, notebook 01): copy bandwidth, bf16 matmul peak, prefill at
# 128..8192 tokens, decode ms/step vs batch 1..256 with a KV cache, and transformers generate
# (batch 1, dynamic cache; then static cache, which transformers compiles on CUDA) as the peer, on a
# Llama-3.2-1B-shaped model with random bf16 weights (no download). The JSON is written before the
# compile step too, so a slow compile cannot lose the main results.
# Writes $OUT/roofline-h200.json (copy it to data/results/) plus a log. About 1-3 minutes (compiling is the slow part).
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/lib HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, transformers.__version__)" | tee -a "$OUT/gpu.txt"
timeout 170 python3 -m inferlab.bench roofline --device cuda --static-generate --out "$OUT" 2>&1 | tee "$OUT/roofline.log"
ls -la "$OUT"
