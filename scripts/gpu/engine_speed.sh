#!/usr/bin/env bash
# Engine speed on the lent H200 (issue 10). Usage (repo root, on the GPU machine):
#   bash scripts/gpu/engine_speed.sh probe    # GPU tests (kernels, sampler, engine == generate) + inferlab-only timing
#   bash scripts/gpu/engine_speed.sh record   # python -m inferlab.bench engine: inferlab and the transformers peers
# Writes under $OUT: tests.log, engine-h200.json (copy it to data/results/), bench.log. Needs pytest only for
# `probe` (wheels in .whl/speed, carried with carry=[".whl"]).
set -uo pipefail
mode=${1:-probe}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$PWD/lib
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import sys, torch, transformers, triton; print(sys.version.split()[0], torch.__version__, transformers.__version__, triton.__version__)" | tee -a "$OUT/gpu.txt"
if [ "$mode" = probe ]; then
    if ! python3 -c "import pytest" 2>/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/speed/*.whl
        export PYTHONPATH=$PWD/lib:/tmp/site
    fi
    start=$(date +%s)
    timeout 150 python3 -m pytest -q -p no:cacheprovider -x -m gpu tests/test_paged_triton.py tests/test_sampling.py 2>&1 | tail -25 | tee "$OUT/tests.log"
    echo "tests: $(( $(date +%s) - start )) s" | tee -a "$OUT/tests.log"
    timeout 130 python3 -m inferlab.bench engine --device cuda --skip-peers --out "$OUT" 2>&1 | tail -60 | tee "$OUT/bench.log"
else
    start=$(date +%s)
    timeout 60 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_sampling.py tests/test_paged_triton.py \
        -k "fused or greedy or graphed or sample or splits" 2>&1 | tail -6 | tee "$OUT/tests.log"
    echo "tests: $(( $(date +%s) - start )) s" | tee -a "$OUT/tests.log"
    timeout ${BUDGET:-420} python3 -m inferlab.bench engine --device cuda --budget-s ${PEER_BUDGET:-300} --static-n ${STATIC_N:-256} --out "$OUT" 2>&1 \
        | tail -80 | tee "$OUT/bench.log"
fi
ls -la "$OUT"
