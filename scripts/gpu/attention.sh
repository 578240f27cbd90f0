#!/usr/bin/env bash
# FlashAttention on the lent H200 (issue 12, notebook 07). First the GPU tests of our kernels
# (the Triton kernel in bf16/fp16/fp32/fp64 and the PyTorch loop in bf16 against float64 SDPA;
# compiles spread over 8 pytest workers), then `python -m inferlab.bench attention`: peak memory
# and time vs length (1k-32k tokens, one Llama-3.2-1B layer: 32 query heads, 8 KV heads, head
# dim 64, causal, bf16) for naive, SDPA's math/flash/efficient/cuDNN backends, FlexAttention,
# ours (PyTorch loop, Triton), plus a few Triton launch configurations at 8k. About 2 minutes.
# Writes $OUT/attention-h200.json (copy it to data/results/), the logs and the versions.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/lib HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__)" | tee -a "$OUT/gpu.txt"
[ -n "${SKIP_TESTS:-}" ] || timeout 60 python3 -m pytest -q -p no:cacheprovider -n 8 -k cuda \
    tests/test_flash_attention.py 2>&1 | tail -12 | tee "$OUT/tests.log"
timeout "${BENCH_TIMEOUT:-110}" python3 -m inferlab.bench attention --device cuda --out "$OUT" 2>&1 \
    | grep -v -i warn | tee "$OUT/bench.log"
ls -la "$OUT"
