#!/usr/bin/env bash
# Continuous vs static batching on the lent H200 (issue 5, notebook 03): our engine with both
# policies, transformers generate (static batches, and one prompt at a time on a subset) as the
# peer, on a Llama-3.2-1B-shaped model with random bf16 weights and the reference workload
# (256 requests, prompts 64-1024, outputs 64-512, seed 0), then a short Poisson-arrival sweep.
# Writes $OUT/batching-h200.json (copy it to data/results/) plus a log; the offline part is
# saved after every measurement, so a cut-short run still leaves a result. Budget: about 190 s
# (fits record_all.sh's 200 s per script).
set -euo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/lib HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, transformers.__version__)" | tee -a "$OUT/gpu.txt"
# correctness on the GPU first (tiny model, greedy engine == generate), a few seconds
timeout 35 python3 - <<'PY' 2>&1 | tee "$OUT/engine_check.log" || true
import torch, inferlab as il
from inferlab import LLM, SamplingParams
m, t = il.load_model("tiny", device="cuda", dtype="float32")
llm = LLM("tiny", device="cuda", dtype="float32", num_kv_blocks=12, block_size=8)
prompts = ["def f(x):", "import os\nimport sys\n\nclass A:\n    def run(self", "x = [", "for i in range(10):\n   "]
outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=32))
same = 0
for p, o in zip(prompts, outs):
    ids = t(p, return_tensors="pt").input_ids.cuda()
    ref = m.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=1)[0, ids.shape[1]:].tolist()
    ref = ref[: ref.index(0) + 1] if 0 in ref else ref
    same += o.outputs[0].token_ids == ref
print(f"cuda fp32: engine == generate for {same}/{len(prompts)} prompts; preemptions:",
      sum(len(r.preempted) for r in llm.engine.trace))
PY
timeout 150 python3 -m inferlab.bench batching --device cuda --out "$OUT" 2>&1 | tee "$OUT/batching.log" || true
ls -la "$OUT"
