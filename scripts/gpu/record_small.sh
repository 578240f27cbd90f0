#!/usr/bin/env bash
# A smaller second pass for the lent H200 when record_all.sh runs out of time: speculative decoding
# (--quick sweep) and continuous batching (32 requests, no arrival sweep). JSON lands in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/lib HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
timeout 125 python3 -m inferlab.bench speculative --device cuda --quick --max-new-tokens 32 --out "$OUT" > "$OUT/speculative.log" 2>&1
echo "speculative rc=$?"; tail -25 "$OUT/speculative.log"
timeout 125 python3 -m inferlab.bench batching --device cuda --n 32 --no-online --out "$OUT" > "$OUT/batching.log" 2>&1
echo "batching rc=$?"; tail -25 "$OUT/batching.log"
ls -la "$OUT"
