#!/usr/bin/env bash
# The session's last device call, kind "nvidia-h200-x2" (2026-11-30): what the first calls left unmeasured.
# 1. the engine at TP=1 vs TP=2 on a Llama-3.2-1B shape (random bf16), reduced reference workload (bench tp, engine section);
# 2. greedy TP=2 == TP=1 over NCCL (bench tp, equality section);
# 3. transformers continuous batching (generate_batch) on GPU 0 on the full reference workload of bench engine.
# Writes $OUT/tp/tp-*.json, $OUT/tpeq/tp-*.json, $OUT/engine/hf_continuous.json and logs; merged into data/results by hand.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/lib HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT/tp" "$OUT/tpeq" "$OUT/engine"
nvidia-smi --query-gpu=name --format=csv,noheader
echo "== TP engine"; timeout "${T_ENGINE:-190}" python3 -m inferlab.bench tp --device cuda --skip equality all_reduce matmuls \
    --requests 32 --out "$OUT/tp" 2>&1 | grep -v -i warn | tail -25
echo "== TP equality"; timeout "${T_EQ:-70}" python3 -m inferlab.bench tp --device cuda --skip all_reduce matmuls engine \
    --out "$OUT/tpeq" 2>&1 | grep -v -i warn | tail -8
echo "== HF continuous"; CUDA_VISIBLE_DEVICES=0 timeout "${T_HF:-140}" python3 - "$OUT/engine/hf_continuous.json" <<'PY' 2>&1 | grep -v -i warn | tail -8
import json, sys, time
import torch
from inferlab.bench.engine import GPU, _shape, _tok_s
from inferlab.bench.peers import hf_generate_continuous
from inferlab.bench.roofline import build_model
from inferlab.bench.workloads import synthetic_requests
from inferlab.configs import as_dict
sizes = dict(GPU)
vocab = as_dict(sizes["model"])["vocab_size"]
requests = synthetic_requests(sizes["n"], sizes["prompt_len"], sizes["output_len"], vocab, seed=0)
peer, _ = build_model(_shape(sizes), "cuda", sizes["dtype"])
t = time.perf_counter()
res = hf_generate_continuous(peer, requests)
out = _tok_s(res, {"api": "generate_batch", "requests": len(requests),
                   "max_new_tokens": round(sum(r.max_tokens for r in requests) / len(requests)),
                   "note": "one max_new_tokens for every request (generate_batch has no per-request length)",
                   "gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d")})
print(json.dumps(out))
open(sys.argv[1], "w").write(json.dumps(out, indent=1))
PY
ls -R "$OUT"
