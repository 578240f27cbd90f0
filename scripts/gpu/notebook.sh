#!/usr/bin/env bash
# Execute notebooks on the lent H200, so their live cells run on CUDA (the CI builds run them on a
# CPU). Usage (repo root, on the GPU machine): bash scripts/gpu/notebook.sh notebooks/src/06_quantization.py ...
# Carry the notebook wheels: carry=[".whl/nb"] (ipykernel, nbclient, jupytext, plotly, ipywidgets and
# their dependencies, plus accelerate and gguf: about 31 MB; bitsandbytes does not fit beside them in the
# 64 MiB transfer, so its cells say it is not installed). Writes $OUT/NAME-h200.ipynb (executed, not
# committed: the stored notebooks are the CPU builds) and $OUT/NAME-h200.log (every cell's text output).
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/nb/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD/lib:/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
for src in "$@"; do
    name=$(basename "$src" .py)
    start=$(date +%s)
    echo "# $src executed on $(head -1 "$OUT/gpu.txt"), $(date -u '+%Y-%m-%d %H:%M UTC')" > "$OUT/$name-h200.log"
    python3 - "$src" "$OUT/$name-h200.ipynb" <<'PY' 2>&1 | grep -v "Warning\|IPKernelApp" | tee -a "$OUT/$name-h200.log"
import sys
from pathlib import Path
from inferlab.tools.notebooks import clean, execute, read_source, with_header, write

src, out = Path(sys.argv[1]), Path(sys.argv[2])
nb = with_header(read_source(src), src.stem)
try:
    execute(nb, cwd=Path("notebooks").resolve())
finally:
    write(clean(nb), out)
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            text = o.get("text") or o.get("data", {}).get("text/markdown") or o.get("traceback")
            if text:
                print(f"--- cell {i}\n" + ("".join(text) if isinstance(text, list) else text).rstrip())
PY
    echo "$name: $(( $(date +%s) - start )) s"
done
