"""The tensor-core int4 one-row kernel (inferlab/quant/gemv_int4.cu) against the Triton one and cuBLAS bf16.

    python scripts/gpu/quant_cuda.py OUT_DIR

Builds the library with nvcc, checks it on every Llama-3-8B and Llama-3.2-1B layer shape (bf16 and
fp16 activations, 4 and 8 groups per warp, programmatic dependent launch on and off) against the
fp32 dequantized reference, times each layer as the sweep does (``quant_sweep.sweep_shape``: a CUDA
graph over enough weight copies that they do not sit in L2) beside the tuned Triton tile and cuBLAS
bf16, then times the graphed 8B batch-1 engine step (``bench.quant.EngineStep``) in bf16, in int4
with the Triton kernel and in int4 with this one. Writes OUT_DIR/quant-cuda-<gpu>.json.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from quant_sweep import MODELS, buffers, copies_for, graph_us, layer_shapes, reference  # noqa: E402

from inferlab.bench import save_result  # noqa: E402
from inferlab.device import capture_cuda_graph_output, time_cuda_graph  # noqa: E402
from inferlab.quant import cuda_gemv, kernels  # noqa: E402

GROUP = 128


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref).abs().max() / ref.abs().max())


def check_and_time(model: str, layer: str, N: int, K: int) -> list[dict]:
    rows, base = [], {"model": model, "layer": layer, "N": N, "K": K}
    x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
    ws = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * N * K))]
    rows.append({**base, "kernel": "cublas-bf16", "us": graph_us([lambda w=w: F.linear(x, w) for w in ws])})
    del ws
    bufs = [buffers("int4", N, K) for _ in range(copies_for(N * K // 2))]
    ref = reference("int4", x, *bufs[0])
    tile = kernels.choose_tile("int4", 1, N, K)
    triton_us = graph_us([lambda b=b: kernels.launch(x, *b, N, K, GROUP, tile) for b in bufs])
    rows.append({**base, "kernel": "triton", "tile": list(tile), "us": triton_us,
                 "rel_err": rel_err(kernels.launch(x, *bufs[0], N, K, GROUP, tile), ref)})
    for gs in cuda_gemv.GROUPS_PER_WARP:
        if cuda_gemv.groups_per_warp(N, K, GROUP, gs) is None:
            continue
        row = {**base, "kernel": "cuda", "groups_per_warp": gs}
        outs = {}
        for flag in ("0", "1"):
            os.environ["INFERLAB_PDL"] = flag
            outs[flag] = cuda_gemv.gemv_int4(x, *bufs[0], N, K, gs)
        row["rel_err"] = rel_err(outs["1"], ref)
        row["pdl_identical"] = bool(torch.equal(outs["0"], outs["1"]))
        graph, out = capture_cuda_graph_output(lambda g=gs, b=bufs[0]: cuda_gemv.gemv_int4(x, *b, N, K, g))
        graph.replay()
        row["graph_identical"] = bool(torch.equal(out, outs["1"]))
        xh = x.half()
        row["rel_err_fp16"] = rel_err(cuda_gemv.gemv_int4(xh, *bufs[0], N, K, gs), reference("int4", xh, *bufs[0]))
        row["us"] = graph_us([lambda b=b, g=gs: cuda_gemv.gemv_int4(x, *b, N, K, g) for b in bufs])
        row["GBps"] = (N * K // 2 + N * K // GROUP * 3) / row["us"] / 1e3
        row["vs_triton"] = triton_us / row["us"]
        rows.append(row)
    del bufs
    torch.cuda.empty_cache()
    return rows


def layer_by_layer(step) -> dict:
    """One eager step of the int4 model; every int4 layer's CUDA output against the Triton kernel's
    on the same input, with the input's layout."""
    from inferlab.quant.linear import Int4Linear

    worst, seen = {"rel": 0.0}, []

    def hook(module, inputs, output):
        x2 = inputs[0].reshape(-1, module.in_features)
        N, K = module.out_features, module.in_features
        other = kernels.launch(x2.contiguous(), module.qweight, module.scales, module.zeros, N, K, GROUP,
                               kernels.choose_tile("int4", 1, N, K))
        rel = rel_err(output.reshape(1, N), other.float())
        seen.append(rel)
        if rel >= worst["rel"]:
            worst.update(rel=rel, N=N, K=K, x_stride=list(inputs[0].stride()), x_shape=list(inputs[0].shape),
                         x_align=inputs[0].data_ptr() % 16, x_contiguous=inputs[0].is_contiguous(),
                         w_stride=list(module.qweight.stride()), s_stride=list(module.scales.stride()),
                         z_stride=list(module.zeros.stride()), s_dtype=str(module.scales.dtype))
    os.environ["INFERLAB_QUANT_CUDA"] = "1"
    handles = [m.register_forward_hook(hook) for m in step.model.modules() if isinstance(m, Int4Linear)]
    step.step()
    torch.cuda.synchronize()
    for h in handles:
        h.remove()
    print("layer by layer:", len(seen), "layers, worst", worst, flush=True)
    return {"layer_by_layer_worst": worst, "layers": len(seen)}


def engine_steps(preferred: dict) -> list[dict]:
    from inferlab.bench.quant import CONTEXT, EngineStep, make_variant
    from inferlab.configs import load_config
    from inferlab.engine.model_runner import ModelRunner

    runner = ModelRunner(load_config("llama-3-8b"), device="cuda", dtype="bfloat16", enforce_eager=True,
                         num_kv_blocks=16)
    steps = {"bf16": EngineStep(runner, 1, CONTEXT, runner.model)}
    steps["int4"] = EngineStep(runner, 1, CONTEXT, make_variant(runner.model, "int4"))
    kernels.set_tuned_rows({f"cuda-int4/{n}/{k}": gs for (n, k), gs in preferred.items()})
    rows = [layer_by_layer(steps["int4"])]
    eager = {}
    for kernel in ("triton", "cuda"):
        os.environ["INFERLAB_QUANT_CUDA"] = "1" if kernel == "cuda" else "0"
        eager[kernel] = steps["int4"].step().float().clone()
    eager["bf16"] = steps["bf16"].step().float().clone()
    diff = {f"eager_{a}_vs_{b}": float((eager[a] - eager[b]).abs().max() / eager[b].abs().max())
            for a, b in (("cuda", "triton"), ("triton", "bf16"), ("cuda", "bf16"))}
    print("eager logits:", diff, flush=True)
    rows.append(diff)
    logits = {}
    for rep in range(2):
        for name, kernel in (("bf16", "cublas"), ("int4", "triton"), ("int4", "cuda")):
            os.environ["INFERLAB_QUANT_CUDA"] = "1" if kernel == "cuda" else "0"
            step = steps[name]
            graph, out = capture_cuda_graph_output(step.step)
            graph.replay()
            torch.cuda.synchronize()
            logits[(name, kernel)] = out.float().clone()
            us = 1e6 * statistics.median(time_cuda_graph(step.step, 30))
            rows.append({"variant": name, "kernel": kernel, "rep": rep, "step_us": us})
            print(f"step {name:5s} {kernel:7s} rep {rep}: {us:7.0f} µs", flush=True)
    a, b = logits[("int4", "triton")], logits[("int4", "cuda")]
    rows.append({"graphed_logits_rel_diff_cuda_vs_triton": float((a - b).abs().max() / a.abs().max()),
                 "argmax_same": bool(torch.equal(a.argmax(-1), b.argmax(-1)))})
    return rows


def main(out_dir: str) -> None:
    t0 = time.time()
    ok = cuda_gemv.available()
    print(f"built/loaded in {time.time() - t0:.1f} s: {ok} {cuda_gemv.unavailable_reason()}", flush=True)
    if not ok:
        raise SystemExit(1)
    layers = []
    for model in MODELS:
        for layer, (N, K) in layer_shapes(model).items():
            rows = check_and_time(model, layer, N, K)
            layers += rows
            for r in rows:
                print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
    preferred = {}
    for model in MODELS:
        for layer, (N, K) in layer_shapes(model).items():
            mine = [r for r in layers if r["model"] == model and r["layer"] == layer and r["kernel"] == "cuda"]
            if mine:
                preferred[(N, K)] = min(mine, key=lambda r: r["us"])["groups_per_warp"]
    steps = engine_steps(preferred)
    result = {"layers": layers, "preferred_groups_per_warp": {f"{n}x{k}": g for (n, k), g in preferred.items()},
              "steps": steps}
    path = save_result("quant-cuda", result, out_dir=Path(out_dir))
    print("wrote", path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/results")
