#!/usr/bin/env bash
# One lent-GPU call that records every benchmark in data/results/: roofline (notebook 01),
# continuous batching (notebook 03) and speculative decoding (notebook 05). Each script runs in its
# own folder under a time budget; after each, its JSON moves to $OUT and its logs are appended to
# $OUT/logs.txt (the device returns at most 8 files).
# Usage (repo root, on the GPU machine): bash scripts/gpu/record_all.sh
set -uo pipefail
root=$OUT
export SKIP_TESTS=1  # the test suites run in CI; here only the measurements
for spec in roofline:170 engine:195 speculative:200; do
    name=${spec%%:*}; budget=${spec##*:}
    mkdir -p "$root/$name"
    start=$(date +%s)
    OUT="$root/$name" timeout "$budget" bash "scripts/gpu/$name.sh" > "$root/$name/stdout.log" 2>&1
    echo "== $name: rc=$? in $(( $(date +%s) - start )) s" | tee -a "$root/logs.txt"
    mv "$root/$name"/*.json "$root/" 2>/dev/null
    for f in "$root/$name"/*; do echo "--- $f"; cat "$f"; done >> "$root/logs.txt"
    rm -rf "${root:?}/$name"
    tail -3 "$root/logs.txt"
done
ls -la "$root"
