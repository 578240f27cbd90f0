#!/usr/bin/env bash
# The engine at TP=1 against TP=2 on the two-H200 machine (issue 12, notebook 08); kind "nvidia-h200-x2".
# Random bf16 weights of the Llama-3.2-1B shape: decode step at batch 1, throughput on the reduced reference
# workload (64 requests, prompts 64-1024, outputs 64-128), all-reduce bytes per token counted, KV bytes per rank.
# Four steps, each its own process under its own timeout, so a step that finishes is recorded even if a later
# one hangs:  e1, e2: enforce_eager (no CUDA graphs) at TP=1, TP=2;  g1, g2: CUDA-graphed decode at TP=1, TP=2.
# Each writes $OUT/<step>/tp-h200.json. Progress lines (one per phase: build engine, warm-up, batch-1 decode,
# workload, shutdown), the runner's logs (graph capture per batch, in every rank) and NCCL warnings go to
# $OUT/run.log. INFERLAB_DIAGNOSE: every rank writes its Python stacks every S seconds, and when its step's
# timeout fires (SIGUSR1 to the process group, KILL 10 s later), to $OUT/stacks-rank0.txt / stacks-rank1.txt.
# 2026-11-30, first run: e1, e2, g1 finished in 20-35 s each; g2 measured everything in 11 s, then hung at shutdown
# (rank 0 in destroy_process_group: NCCL's teardown is collective and waits for the CUDA graphs that captured its
# all-reduces; engine/distributed.py now frees the graphs and leaves the group in every rank together). Limits below
# are for the fixed code (about 2 minutes in all).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/lib HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast here
export NCCL_DEBUG=${NCCL_DEBUG:-WARN} INFERLAB_DIAGNOSE=${INFERLAB_DIAGNOSE:-45} INFERLAB_DIAGNOSE_DIR=$OUT
LOG=$OUT/run.log
{ date -u; nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.device_count(), 'GPUs')"
} 2>&1 | tee -a "$LOG"

step() {  # name, limit in seconds, then the bench's extra arguments
    local name=$1 limit=$2 rc
    shift 2
    mkdir -p "$OUT/$name"
    echo "== $name: bench tp $*, limit ${limit} s, $(date -u +%T)" | tee -a "$LOG"
    timeout -s USR1 -k 10 "$limit" python3 -m inferlab.bench tp --device cuda --skip equality all_reduce matmuls \
        --requests "${REQUESTS:-64}" --out "$OUT/$name" "$@" >>"$LOG" 2>&1
    rc=$?
    echo "== $name: exit $rc at $(date -u +%T); GPU memory used: $(nvidia-smi --query-gpu=memory.used \
        --format=csv,noheader | tr '\n' ' ')" | tee -a "$LOG"
    grep -h "^\[tp " "$LOG" | tail -1
}

step e1 "${T_E1:-45}" --eager --tp 1
step e2 "${T_E2:-60}" --eager --tp 2
step g1 "${T_G1:-40}" --tp 1
step g2 "${T_G2:-60}" --tp 2

python3 - "$OUT" <<'PY'
import json, pathlib, sys
from inferlab.bench.tp import summary
for step in ("e1", "e2", "g1", "g2"):
    f = pathlib.Path(sys.argv[1]) / step / "tp-h200.json"
    print(f"-- {step}:", summary(json.loads(f.read_text())).splitlines()[1:] if f.is_file() else "no result")
PY
ls -la "$OUT" "$OUT"/*/
