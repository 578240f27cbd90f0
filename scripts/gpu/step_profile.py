"""Where one CUDA-graphed decode step of the engine spends its time, kernel by kernel.

    python scripts/gpu/step_profile.py [--shape llama-3-8b] [--variants bf16,int4] [--out FILE]

Builds :class:`inferlab.bench.quant.EngineStep` at batch 1 (random weights, 128 tokens cached),
times it as a CUDA graph, then replays it under the PyTorch profiler and prints each kernel's time
per step beside the step's own time: the difference is the gaps between kernels. (The step is
timed first: while the profiler traces, every launch is slower.) Used to find
how much of a step lies outside the linear layers, the part no weight format shrinks.
The step is timed with programmatic dependent launch (:mod:`inferlab.pdl`) on and off
(``INFERLAB_PDL=0``), and the two steps' logits are compared: they must be identical. The kernel
table is taken with PDL off: with it on, a kernel's time includes the wait for the one before.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

from inferlab.bench.quant import CONTEXT, EngineStep, make_variant
from inferlab.configs import load_config
from inferlab.device import capture_cuda_graph, capture_cuda_graph_output, time_cuda_graph
from inferlab.engine.model_runner import ModelRunner


def kernel_table(step, replays: int = 5) -> list[tuple[str, float, float]]:
    """``(kernel name, launches per step, µs per step)`` for the graphed ``step``, slowest first."""
    graph = capture_cuda_graph(step)
    graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    totals = collections.defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type.name == "CUDA":
            totals[event.name[:90]][0] += 1
            totals[event.name[:90]][1] += event.device_time_total
    rows = [(name, n / replays, us / replays) for name, (n, us) in totals.items()]
    return sorted(rows, key=lambda r: -r[2])


def graphed_logits(step) -> torch.Tensor:
    """The logits of one replay of a fresh CUDA graph of ``step`` (launch options are fixed at capture)."""
    graph, out = capture_cuda_graph_output(step)
    graph.replay()
    torch.cuda.synchronize()
    return out.clone()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-3-8b")
    ap.add_argument("--variants", default="bf16,int4")
    ap.add_argument("--out", default=None, help="write the tables as JSON here")
    args = ap.parse_args()
    runner = ModelRunner(load_config(args.shape), device="cuda", dtype="bfloat16", enforce_eager=True,
                         num_kv_blocks=16)
    out = {}
    for variant in args.variants.split(","):
        model = runner.model if variant == "bf16" else make_variant(runner.model, variant)
        step = EngineStep(runner, 1, CONTEXT, model)
        serial = {}
        for pdl in ("0", "1"):  # PDL off, then on (what the rest of the run uses)
            os.environ["INFERLAB_PDL"] = pdl
            serial[pdl] = (graphed_logits(step.step), 1e6 * statistics.median(time_cuda_graph(step.step, 30)))
        step_us = serial["1"][1]  # before profiling: CUPTI slows launches
        same = bool(torch.equal(serial["0"][0], serial["1"][0]))
        os.environ["INFERLAB_PDL"] = "0"
        rows = kernel_table(step.step)
        os.environ["INFERLAB_PDL"] = "1"
        kernel_us = sum(r[2] for r in rows)
        print(f"== {args.shape} {variant}: step {step_us:.0f} µs with PDL, {serial['0'][1]:.0f} µs without; "
              f"kernels (without PDL) {kernel_us:.0f} µs ({sum(r[1] for r in rows):.0f} launches)")
        for name, n, us in rows[:20]:
            print(f"  {us:8.1f} µs  {n:5.0f}×  {name}")
        print(f"   logits identical with and without PDL: {same}")
        out[variant] = {"step_us": step_us, "step_us_without_pdl": serial["0"][1], "pdl_logits_identical": same,
                        "kernel_us": kernel_us, "kernels": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
