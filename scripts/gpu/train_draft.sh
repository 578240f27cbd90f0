#!/usr/bin/env bash
# Retrain only the draft on the lent GPU, distilled from the committed target (data/models/tiny),
# with on-policy text. Same corpus as train_tiny.sh (carry .corpus).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/lib
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
mkdir -p /tmp/corpus /tmp/models && tar xJf .corpus/stdlib-3.11.7.tar.xz -C /tmp/corpus && cp -r data/models/* /tmp/models/
python3 -m inferlab.tools.train_tiny train --out /tmp/models --stdlib /tmp/corpus/python3.11 --reuse-target /tmp/models/tiny 2>&1 | tee $OUT/train_draft.log
cd /tmp/models && tar cf $OUT/models.tar tiny-draft README.md training.json
