#!/usr/bin/env bash
# Speculative decoding on the lent H200: the embedded pair (tiny target, tiny-draft), batch size 1,
# plain target vs ours vs transformers assisted generation and prompt lookup, k and temperature sweeps.
# Random-weight models would accept nothing, so the embedded (trained) pair is the meaningful one; on a
# GPU its cost ratio c differs from the CPU's (both models are launch-bound there). < 4 minutes.
# Writes $OUT/speculative-h200.json (copy it to data/results/), plus the log and the versions.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/lib HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
python3 -c "import torch,transformers,sys;print(sys.version, torch.__version__, transformers.__version__)" | tee -a $OUT/gpu.txt
# correctness first (greedy identity, exact sampling rule), on the CPU side of this machine: ~1 minute
[ -n "${SKIP_TESTS:-}" ] || timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_speculative.py tests/test_speculative_distribution.py 2>&1 | tail -5 | tee $OUT/tests.log
# the benchmark, on the GPU
timeout 200 python3 -m inferlab.bench speculative --device cuda --ks 1,2,4,8 --temperatures 0,0.7,1.0 \
    --prompts 3 --reps 2 --max-new-tokens 64 --out $OUT 2>&1 | grep -v Warning | tee $OUT/bench.log
ls -la $OUT
