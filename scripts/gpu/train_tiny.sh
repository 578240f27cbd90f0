#!/usr/bin/env bash
# Train the embedded default models on the lent GPU; results come back under $OUT.
# The corpus is the CPython 3.11.7 standard library, packed by scripts/pack_stdlib.sh into .corpus/ (carry it).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/lib
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
python3 -c "import torch,transformers,tokenizers,sys;print(sys.version, torch.__version__, transformers.__version__, tokenizers.__version__)" | tee -a $OUT/gpu.txt
mkdir -p /tmp/corpus && tar xJf .corpus/stdlib-3.11.7.tar.xz -C /tmp/corpus
python3 -m inferlab.tools.train_tiny train --out /tmp/models --stdlib /tmp/corpus/python3.11 2>&1 | tee $OUT/train.log
cd /tmp/models && tar cf $OUT/tiny.tar tiny && tar cf $OUT/rest.tar tiny-draft README.md training.json
ls -la $OUT
