#!/usr/bin/env bash
# Tensor parallelism on the lent two-H200 machine (issue 12, notebook 08); kind "nvidia-h200-x2".
# 1. the TP equality test over NCCL (tests/test_tp.py -k nccl: greedy TP=2 == TP=1 on the tiny model in
#    fp32, KV cache per rank halved as kvcache.kv_cache_bytes(..., tp_size=2) says, all-reduce bytes metered);
# 2. python -m inferlab.bench tp --device cuda: NCCL all-reduce time vs batch (CUDA-graph replays), the
#    sharded projections of a Llama-3.2-1B decode step vs batch at TP=1 and TP=2, and the engine at TP=1 vs
#    TP=2 on random bf16 weights of that shape (decode step at batch 1; throughput on a reduced reference
#    workload: 64 requests, prompts 64-1024, outputs 64-128; all-reduce bytes per token measured).
# Writes $OUT/tp-h200.json (copy it to data/results/) and the logs. On 2026-11-30 a 200 s call finished the
# all-reduce and projection sections only (the test and the engine need the longer limits below: ~8 minutes).
# The engine section alone, eager and CUDA-graphed, each TP size in its own process and timeout: scripts/gpu/tp_engine.sh
# (recorded 2026-11-30; the earlier engine runs hung at NCCL teardown, fixed in engine/distributed.py).
# TP_ROOT: where lib/ and tests/ are (a clean snapshot carried in .whl/tp, else the working tree).
set -uo pipefail
ROOT=${TP_ROOT:-$PWD}
export PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT/lib HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast here
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
nvidia-smi topo -m 2>&1 | head -6 | tee -a "$OUT/gpu.txt"
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.device_count(), 'GPUs', 'nccl', torch.cuda.nccl.version())" | tee -a "$OUT/gpu.txt"
(cd "$ROOT" && timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -p no:cacheprovider tests/test_tp.py -k nccl 2>&1 \
    | tail -6 | tee "$OUT/tests.log")
timeout "${BENCH_TIMEOUT:-400}" python3 -m inferlab.bench tp --device cuda --skip equality --out "$OUT" 2>&1 \
    | grep --line-buffered -v -i warn | tee "$OUT/bench.log"
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1]); f = out / "tp-h200.json"
if f.is_file():
    d = json.loads(f.read_text())
    d["equality_test"] = {"test": "tests/test_tp.py -k nccl", "log_tail": (out / "tests.log").read_text().strip().splitlines()[-1:]}
    f.write_text(json.dumps(d, indent=2) + "\n")
PY
ls -la "$OUT"
