"""Nsight Compute counters of the int4 one-row gemv on each Llama-3-8B layer (issue 15, notebook 06).

    python scripts/gpu/quant_ncu.py [OUT_DIR]

Runs itself under ``ncu`` with ``--clock-control none`` (the lent GPU's clocks are left alone):
one cold launch per layer with its tuned tile, L2 flushed before each, PDL off so that each
kernel's time is its own. Records per layer the time, DRAM throughput against peak, registers per
thread, warps per scheduler (active, and eligible to issue), the share of cycles that issue an
instruction, and for each stall reason the average number of warps stalled on it per issued
instruction. Writes OUT_DIR/quant-ncu-<gpu>.json (default data/results/). About 15 s.

Why: the int4 kernel reads its bytes more slowly than cuBLAS reads bf16, and these counters say
whether it waits on memory, on issue, or on too few warps to hide either. With
``INFERLAB_NCU_KERNEL=cuda`` it profiles the tensor-core kernel (``inferlab.quant.cuda_gemv``, its
preferred groups per warp) instead and writes quant-ncu-cuda-<gpu>.json.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

LAYERS = ("qkv", "o", "gate_up", "down", "lm_head")
METRICS = {
    "us": "gpu__time_duration.sum",
    "dram_pct_of_peak": "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "dram_bytes": "dram__bytes_read.sum",
    "registers_per_thread": "launch__registers_per_thread",
    "programs": "launch__grid_size",
    "warps_active_per_scheduler": "smsp__warps_active.avg.per_cycle_active",
    "warps_eligible_per_scheduler": "smsp__warps_eligible.avg.per_cycle_active",
    "issue_active_pct": "smsp__issue_active.avg.pct_of_peak_sustained_active",
    "warp_instructions": "smsp__inst_executed.sum",
}
STALLS = r"regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio"  # one metric per stall reason
CUDA_KERNEL = os.environ.get("INFERLAB_NCU_KERNEL") == "cuda"  # profile gemv_int4.cu instead of the Triton kernel
STALL_PREFIX, STALL_SUFFIX = "smsp__average_warps_issue_stalled_", "_per_issue_active.ratio"


def launch_layers() -> None:
    """The child under ncu: warm every layer's kernel up, then one profiled cold launch per layer."""
    import quant_sweep as qs
    import torch

    from inferlab.quant import cuda_gemv, kernels

    shapes, runs = qs.layer_shapes("llama-3-8b"), []
    for layer in LAYERS:
        N, K = shapes[layer]
        tile = kernels._tile_for("int4", 1, N, K, qs.GROUP)  # what the engine would launch
        bufs, x = qs.buffers("int4", N, K), torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
        if CUDA_KERNEL:  # the tensor-core kernel of inferlab.quant.cuda_gemv instead
            gs = kernels._cuda_groups(N, K, qs.GROUP)  # what the engine would launch
            tile = ("cuda", gs)
            launch = lambda x=x, b=bufs, N=N, K=K, gs=gs: cuda_gemv.gemv_int4(x, *b, N, K, gs)  # noqa: E731
        else:
            launch = lambda x=x, b=bufs, N=N, K=K, t=tile: kernels.launch(x, *b, N, K, qs.GROUP, t)  # noqa: E731
        for _ in range(3):
            launch()
        runs.append((layer, launch, N, K, tile))
    flush = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")  # several times the L2
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for _, launch, *_ in runs:
        flush.zero_()
        launch()
        torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print("LAYERS " + json.dumps([{"layer": r[0], "N": r[2], "K": r[3], "tile": list(r[4])} for r in runs]), flush=True)


def parse(stdout: str) -> list[dict]:
    """ncu's ``--csv --page raw`` rows (a header, a units row, one row per kernel) joined to the layers."""
    layers = json.loads(next(line[7:] for line in stdout.splitlines() if line.startswith("LAYERS ")))
    rows = list(csv.reader(line for line in stdout.splitlines() if line.startswith('"')))
    header, data = rows[0], rows[2:]
    if len(data) != len(layers):
        raise RuntimeError(f"ncu reported {len(data)} kernels for {len(layers)} layers:\n{stdout[-2000:]}")
    out = []
    for layer, row in zip(layers, data, strict=False):
        value = dict(zip(header, row, strict=False))

        def num(metric, value=value):
            return float(value[metric].replace(",", ""))

        rec = {**layer, **{k: num(m) for k, m in METRICS.items()}}
        rec["us"] /= 1e3  # ncu reports ns
        rec["stalls_per_issue"] = {m[len(STALL_PREFIX):-len(STALL_SUFFIX)]: num(m) for m in header
                                   if m.startswith(STALL_PREFIX) and m.endswith(STALL_SUFFIX)}
        rec["instructions_per_code"] = rec["warp_instructions"] * 32 / (layer["N"] * layer["K"])
        out.append(rec)
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--launch"]:
        launch_layers()
        return 0
    from inferlab.bench import save_result

    ncu = shutil.which("ncu") or "/usr/local/cuda/bin/ncu"
    metrics = ",".join(list(METRICS.values()) + [STALLS])
    cmd = [ncu, "--clock-control", "none", "--profile-from-start", "off", "-k", "regex:gemv_int4",
           "--metrics", metrics, "--csv", "--page", "raw", sys.executable, __file__, "--launch"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "INFERLAB_PDL": "0"})
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:])
        return done.returncode
    layers = parse(done.stdout)
    for r in layers:
        top = sorted(r["stalls_per_issue"].items(), key=lambda kv: -kv[1])[:3]
        print(f"{r['layer']:8s} {r['us']:6.1f} µs  DRAM {r['dram_pct_of_peak']:4.0f}% of peak  "
              f"{r['registers_per_thread']:.0f} registers  warps/scheduler {r['warps_active_per_scheduler']:.2f} active, "
              f"{r['warps_eligible_per_scheduler']:.2f} eligible  issuing {r['issue_active_pct']:.0f}% of cycles  "
              f"stalls per issue: " + ", ".join(f"{k} {v:.2f}" for k, v in top))
    path = save_result("quant-ncu-cuda" if CUDA_KERNEL else "quant-ncu", {
        "method": "ncu --clock-control none, metrics of the raw page; one cold launch per layer (L2 flushed, PDL off) "
                  "of the int4 one-row gemv with its tuned tile (lib/inferlab/quant/tuned.json), groups of 128, "
                  "random codes", "layers": layers}, argv[0] if argv else None)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
