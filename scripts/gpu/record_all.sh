#!/usr/bin/env bash
# One lent-GPU call that records every benchmark in data/results/: roofline (notebook 01),
# continuous batching (notebook 03) and speculative decoding (notebook 05). Each script writes
# into its own folder; everything comes back as one tar (the device returns at most 8 files).
# Usage (from the repo root, on the GPU machine): bash scripts/gpu/record_all.sh
set -uo pipefail
root=$OUT
for name in roofline engine speculative; do
    mkdir -p "$root/$name"
    start=$(date +%s)
    OUT="$root/$name" timeout "${BUDGET:-200}" bash "scripts/gpu/$name.sh" > "$root/$name/stdout.log" 2>&1
    echo "$name: rc=$? in $(( $(date +%s) - start )) s"
    tail -4 "$root/$name/stdout.log"
done
cd "$root" && tar cf results.tar roofline engine speculative && rm -rf roofline engine speculative
ls -la "$root"
