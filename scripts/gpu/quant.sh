#!/usr/bin/env bash
# Quantization on the lent H200 (issue 15, notebook 06). Carry the wheels: carry=[".whl/quant"]
# (bitsandbytes 0.50.2, accelerate, gguf, psutil, pyyaml: ~43 MB; the machine has no network).
# 0. scripts/gpu/quant_sweep.py: every candidate tile of the int8/int4 kernels on every layer shape
#    (checked, then timed as CUDA graphs beside cuBLAS bf16); its table becomes lib/inferlab/quant/tuned.json
#    for the steps below (copy $OUT/tuned.json there and commit it with $OUT/quant-sweep-h200.json);
# 1. correctness on CUDA: the Triton int8/int4 dequantize-matmul against the reference, the graphable
#    decode step (EngineStep) against the engine, the quantize swap on the tiny model (~40 s);
# 2. `python -m inferlab.bench quant`: CUDA-graphed decode of Llama-3-8B- and Llama-3.2-1B-shaped
#    engine models (random bf16 weights) at batch 1 and 32 in bf16, our int8 and int4, bitsandbytes
#    NF4 and LLM.int8(); then the quality table on the tiny model (bytes, perplexity, generate tok/s).
# Writes $OUT/quant-h200.json (copy it to data/results/) and logs. Budget: about 5 minutes (312 s on 2026-11-30, SWEEP_TIMEOUT=170;
# the sweep and the checks took 93 s).
# Separately (the 8-file limit on $OUT): python3 scripts/gpu/step_profile.py --out $OUT/quant-step-profile-h200.json
# (about 20 s) splits one graphed 8B decode step into linear layers, other kernels and gaps, and
# python3 scripts/gpu/quant_ncu.py $OUT (about 20 s) records Nsight Compute's counters of the int4
# one-row kernel per 8B layer ($OUT/quant-ncu-h200.json; why it is latency-bound; with
# INFERLAB_NCU_KERNEL=cuda the tensor-core kernel's, $OUT/quant-ncu-cuda-h200.json), and
# python3 scripts/gpu/quant_cuda.py $OUT (about 40 s) checks and times that kernel (gemv_int4.cu)
# per layer and in the 8B step beside the Triton one ($OUT/quant-cuda-h200.json; copy its
# preferred_groups_per_warp into lib/inferlab/quant/tuned.json as "cuda-int4/N/K" rows).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/quant/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD/lib:/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import sys, torch, triton, transformers, bitsandbytes as b; print(sys.version.split()[0], torch.__version__, triton.__version__, transformers.__version__, 'bnb', b.__version__)" | tee -a "$OUT/gpu.txt"
start=$(date +%s)
timeout "${SWEEP_TIMEOUT:-240}" python3 scripts/gpu/quant_sweep.py "$OUT" 2>&1 | grep -v Warning > "$OUT/sweep.log"
tail -25 "$OUT/sweep.log"
[ -s "$OUT/tuned.json" ] && cp "$OUT/tuned.json" lib/inferlab/quant/tuned.json
echo "sweep: $(( $(date +%s) - start )) s"
timeout 60 python3 -m pytest -q -p no:cacheprovider -x tests/test_quant_bench.py -k "cuda or engine_step" 2>&1 | tail -5 | tee "$OUT/checks.log"
echo "checks: $(( $(date +%s) - start )) s" | tee -a "$OUT/checks.log"
timeout 170 python3 -m inferlab.bench quant --device cuda --no-quality --out "$OUT" 2>&1 | grep -v "Warning\|MatMul8bitLt" | tee "$OUT/decode.log"
echo "decode: $(( $(date +%s) - start )) s"
cp "$OUT/quant-h200.json" "$OUT/quant-h200-decode.json" 2>/dev/null
timeout 80 python3 -m inferlab.bench quant --device cuda --shapes "" --quick --methods full,int8,int4,nf4,bnb-int8,bnb-nf4 --out "$OUT/quality" 2>&1 | grep -v "Warning\|MatMul8bitLt" | tee "$OUT/quality.log"
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
main = json.loads((out / "quant-h200-decode.json").read_text()) if (out / "quant-h200-decode.json").is_file() else {"decode": []}
q = out / "quality" / "quant-h200.json"
if q.is_file():
    main["quality"] = json.loads(q.read_text())["quality"]
(out / "quant-h200.json").write_text(json.dumps(main, indent=2))
for r in main["decode"]:
    print(f"{r['shape']:14s} {r['variant']:9s} b={r.get('batch', '-')!s:3s} {r.get('tok_s', 0):9.1f} tok/s  {r.get('weight_bytes', 0) / 1e9:6.2f} GB  {r.get('error', '')}")
PY
rm -rf "$OUT/quality" "$OUT/quant-h200-decode.json"
echo "total: $(( $(date +%s) - start )) s"
ls -la "$OUT"
