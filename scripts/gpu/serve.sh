#!/bin/bash
# Serving load test on the lent H200: a Llama-3.2-1B-shaped model with random bf16 weights behind
# python -m inferlab.serve, 256 requests at 64 and 256 concurrent streaming clients.
# Carry: .whl/serve (fastapi, uvicorn, pydantic, prometheus-client, httpx and their pure-Python deps).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/serve/*.whl
export PYTHONPATH=/tmp/site:$PWD/lib HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 140 python3 -m inferlab.bench serve --device cuda --random-weights llama-3.2-1b \
  --requests 256 --concurrency 64 256 --out "$OUT" || { echo "bench exit $?"; cat /tmp/inferlab-serve-bench.log | tail -40; }
cp /tmp/inferlab-serve-bench.log "$OUT/serve-server.log" 2>/dev/null || true
