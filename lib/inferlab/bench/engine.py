"""``python -m inferlab.bench engine``: the engine's speed beside transformers, in one process.

On the reference workload (DESIGN.md: a Llama-3.2-1B-shaped model with random bf16 weights,
256 requests, prompts uniform 64-1024, outputs uniform 64-512, seed 0, every request to its own
length, EOS ignored):

- ``inferlab``: our ``LLMEngine`` (256 sequences, 8,192 batched tokens, Triton paged attention,
  CUDA-graphed decode): output tokens/s, TTFT and TPOT p50/p99, peak memory;
- ``hf_static``: transformers ``generate`` on left-padded static batches of 32;
- ``hf_continuous``: transformers continuous batching (``generate_batch``). It takes one
  ``max_new_tokens`` for all requests, so every request asks for the workload's mean output
  length (same total output tokens); the JSON says what was run.

Plus batch-1 decode tokens/s (a 128-token prompt) of inferlab (graphed and eager), of ``generate``
(plain, and with the static cache, which transformers compiles), and the memory-bandwidth bound;
bytes and FLOPs of a decode step at batch 1 and 256 with the achieved fraction of each roof; and
the top GPU kernels of an eager and a graphed decode step (``torch.profiler``). On a CPU the same
run uses the embedded ``tiny`` model and small sizes (a smoke test, not a record).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from inferlab.bench.workloads import NullTokenizer, Request, run_engine, synthetic_requests
from inferlab.device import synchronize, time_fn
from inferlab.engine.llm_engine import LLMEngine
from inferlab.engine.model_runner import ChunkInput, ModelRunner
from inferlab.paging import cdiv

GPU = {"model": "llama-3.2-1b", "dtype": "bfloat16", "n": 256, "prompt_len": (64, 1024), "output_len": (64, 512),
       "max_num_seqs": 256, "max_num_batched_tokens": 8192, "static_batch": 32, "batch1_prompt": 128,
       "batch1_tokens": 256, "block_size": 16}
CPU = {"model": "tiny", "dtype": "float32", "n": 12, "prompt_len": (8, 64), "output_len": (4, 24),
       "max_num_seqs": 8, "max_num_batched_tokens": 256, "static_batch": 4, "batch1_prompt": 16,
       "batch1_tokens": 12, "block_size": 16}


# ------------------------------------------------------------------ ours
def build_runner(sizes: dict, device: str, kv_fraction: float = 0.45) -> ModelRunner:
    """Our runner on ``sizes["model"]`` (a shipped config name: random weights built on the device)."""
    from inferlab.configs import as_dict, known_models

    model = sizes["model"]
    model = as_dict(model) if model.lower() in known_models() else model
    blocks = None
    if device.startswith("cuda"):
        blocks = _kv_blocks(model, sizes, kv_fraction)
    else:
        blocks = 1024
    return ModelRunner(model, device=device, dtype=sizes["dtype"], block_size=sizes["block_size"],
                       num_kv_blocks=blocks, max_num_seqs=sizes["max_num_seqs"])


def _kv_blocks(config: dict, sizes: dict, fraction: float) -> int:
    from inferlab.device import torch_dtype
    from inferlab.kvcache import kv_bytes_per_block

    free, _ = torch.cuda.mem_get_info()
    return int(free * fraction) // kv_bytes_per_block(config, torch_dtype(sizes["dtype"]), sizes["block_size"])


def run_inferlab(runner: ModelRunner, requests: list[Request], sizes: dict) -> dict[str, Any]:
    """The whole workload through ``LLMEngine``; latencies in seconds, peak memory in GB."""
    def engine() -> LLMEngine:
        return LLMEngine(runner, NullTokenizer(), max_num_seqs=sizes["max_num_seqs"],
                         max_num_batched_tokens=sizes["max_num_batched_tokens"])

    run_engine(engine(), requests[:8], realtime=False)  # warm-up: kernels compiled, graphs warm
    if runner.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    res = run_engine(engine(), requests, name="inferlab", realtime=False)
    s = res.summary()
    out = {"output_tok_s": s["throughput_tok_s"], "wall_s": s["wall_s"], "output_tokens": s["output_tokens"],
           "steps": s["steps"]}
    for key in ("ttft", "tpot"):
        for q in ("p50", "p99"):
            if f"{key}_{q}_ms" in s:
                out[f"{key}_{q}_s"] = s[f"{key}_{q}_ms"] / 1000
    if runner.device.startswith("cuda"):
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def batch1_inferlab(runner: ModelRunner, sizes: dict, graphed: bool = True) -> float:
    """Decode tokens/s of one request through the engine (scheduler and sampler included)."""
    from inferlab.engine.sampling_params import SamplingParams

    keep = runner.graphs
    runner.graphs = keep if graphed else None
    try:
        eng = LLMEngine(runner, NullTokenizer(), max_num_seqs=1)
        ids = list(range(1, sizes["batch1_prompt"] + 1))
        n = sizes["batch1_tokens"] if graphed else max(8, sizes["batch1_tokens"] // 8)
        eng.add_request("b1", ids, SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True))
        out = []
        while eng.has_unfinished_requests():
            out += eng.step()
        return 1.0 / out[0].metrics.tpot(len(out[0].outputs[0].token_ids))
    finally:
        runner.graphs = keep


def decode_chunks(runner: ModelRunner, batch: int, context: int) -> list[ChunkInput]:
    """A decode step of ``batch`` sequences with ``context`` tokens each, on distinct blocks."""
    per = cdiv(context, runner.block_size)
    if batch * per > runner.num_blocks:
        raise ValueError(f"{batch} x {context} tokens need {batch * per} KV blocks; the pool has {runner.num_blocks}: "
                         f"build the runner with num_kv_blocks >= {batch * per}")
    return [ChunkInput([1], context - 1, list(range(i * per, (i + 1) * per))) for i in range(batch)]


def decode_step_seconds(runner: ModelRunner, batch: int, context: int, graphed: bool, repeats: int = 10) -> float:
    """Best wall time of one ``execute`` of a decode step (input preparation included)."""
    chunks = decode_chunks(runner, batch, context)
    keep = runner.graphs
    runner.graphs = keep if graphed else None
    try:
        return min(time_fn(lambda: runner.execute(chunks), runner.device, repeats=repeats, warmup=2))
    finally:
        runner.graphs = keep


def profile_step(runner: ModelRunner, batch: int, context: int, graphed: bool, top: int = 8) -> list[dict]:
    """The top GPU kernels (self device time, ms per step) of a decode step, eager or graphed."""
    from torch.profiler import ProfilerActivity, profile

    chunks = decode_chunks(runner, batch, context)
    keep = runner.graphs
    runner.graphs = keep if graphed else None
    try:
        runner.execute(chunks)
        synchronize(runner.device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                runner.execute(chunks)
            synchronize(runner.device)
    finally:
        runner.graphs = keep
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if t > 0:
            rows.append({"name": e.key[:80], "ms_per_step": round(t / 3 / 1000, 4), "calls_per_step": e.count // 3})
    return sorted(rows, key=lambda r: -r["ms_per_step"])[:top]


# ------------------------------------------------------------------ bounds
def roofline_numbers(runner: ModelRunner, sizes: dict, bandwidth: float, peak_flops: float,
                     contexts: dict[int, int]) -> dict[str, Any]:
    """Bytes and FLOPs of a decode step at each batch size (``{batch: context}``), the bound, what we reach."""
    from inferlab.roofline import decode_cost, step_time_bound

    rows = {}
    for batch, context in contexts.items():
        cost = decode_cost(_shape(sizes), batch, context, weight_dtype=sizes["dtype"], kv_dtype=sizes["dtype"])
        bound = step_time_bound(cost, peak_flops, bandwidth)
        row = {"context": context, "bytes": cost["bytes"], "flops": cost["flops"], "bound_s": bound}
        try:
            for graphed in ((True, False) if runner.graphs is not None else (False,)):
                seconds = decode_step_seconds(runner, batch, context, graphed)
                key = "graphed" if graphed else "eager"
                row[f"{key}_s"] = seconds
                row[f"{key}_fraction_of_bandwidth"] = cost["bytes"] / seconds / bandwidth
                row[f"{key}_fraction_of_flops"] = cost["flops"] / seconds / peak_flops
        except ValueError as err:  # the pool cannot hold this batch x context
            row["error"] = str(err)
        rows[str(batch)] = row
    return rows


def _shape(sizes: dict):
    from inferlab.configs import as_dict, known_models

    return as_dict(sizes["model"]) if sizes["model"].lower() in known_models() else sizes["model"]


def machine_roofs(device: str) -> dict[str, float]:
    """Measured copy bandwidth and bf16 matmul throughput (the two roofs)."""
    from inferlab.roofline import measure_copy_bandwidth, measure_matmul_flops

    big = device.startswith("cuda")
    bw = measure_copy_bandwidth(device, nbytes=(1 << 31) if big else (1 << 26))["bytes_per_s"]
    flops = measure_matmul_flops(device, "bfloat16" if big else "float32", n=8192 if big else 512)
    return {"bandwidth_bytes_s": bw, "peak_flops": flops.get("flops_per_s", flops.get("flops", 0.0))}


# ------------------------------------------------------------------ the peers
def run_peers(sizes: dict, device: str, requests: list[Request], deadline: float, save,
              static_n: int | None = None) -> dict[str, Any]:
    """transformers: static batches, continuous batching, batch-1 generate (plain, static cache + compile).

    ``static_n``: run the static batches on the first ``static_n`` requests only (whole batches of
    the same workload; its throughput is per batch), when the full run would not fit the time budget.
    """
    from inferlab.bench.peers import hf_generate_batch1, hf_generate_continuous, hf_generate_static
    from inferlab.bench.roofline import build_model

    peer, _ = build_model(_shape(sizes), device, sizes["dtype"])
    out: dict[str, Any] = {}
    jobs = [
        ("hf_batch1", lambda: {"tok_s": hf_generate_batch1(peer, sizes["batch1_prompt"], 64)["tokens_per_s"]}),
        ("hf_static", lambda: _tok_s(hf_generate_static(peer, requests[:static_n], sizes["static_batch"]),
                                     {"batch_size": sizes["static_batch"], "padding": "left",
                                      "requests": len(requests[:static_n])})),
        ("hf_continuous", lambda: _tok_s(hf_generate_continuous(peer, requests), {
            "api": "generate_batch", "requests": len(requests), "max_new_tokens": round(sum(r.max_tokens for r in requests) / len(requests)),
            "note": "one max_new_tokens for every request (generate_batch has no per-request length)"})),
        ("hf_batch1_static_compile", lambda: {"tok_s": hf_generate_batch1(
            peer, sizes["batch1_prompt"], 64, cache_implementation="static")["tokens_per_s"]}),
    ]
    for name, job in jobs:
        if time.perf_counter() > deadline:
            out[name] = {"skipped": "time budget of this run spent"}
            continue
        try:
            out[name] = job()
        except Exception as err:  # a peer's API change must not lose our numbers
            out[name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        print(name, json.dumps(out[name]), flush=True)
        save(out)
    return out


def _tok_s(res, extra: dict) -> dict[str, Any]:
    return {"output_tok_s": round(res.throughput, 2), "wall_s": round(res.wall_s, 3),
            "output_tokens": res.output_tokens, **extra}


# ------------------------------------------------------------------ the run
def measure_ours(runner: ModelRunner, sizes: dict, requests: list[Request], payload: dict, save) -> None:
    """Everything measured on our runner, saved after each part."""
    from inferlab.roofline import decode_tokens_per_s_bound

    payload["systems"]["inferlab"] = run_inferlab(runner, requests, sizes)
    save()
    b1 = payload["batch1"]
    b1["inferlab_tok_s"] = batch1_inferlab(runner, sizes, graphed=runner.graphs is not None)
    b1["inferlab_eager_tok_s"] = batch1_inferlab(runner, sizes, graphed=False)
    roofs = payload["roofs"] = machine_roofs(runner.device)
    context = sizes["batch1_prompt"] + sizes["batch1_tokens"] // 2
    b1["bound_tok_s"] = decode_tokens_per_s_bound(_shape(sizes), 1, context, roofs["bandwidth_bytes_s"],
                                                  weight_dtype=sizes["dtype"], kv_dtype=sizes["dtype"])
    b1["bound_context"] = context
    save()
    mean_ctx = round(sum(len(r.prompt_token_ids) + r.max_tokens / 2 for r in requests) / len(requests))
    big = min(sizes["max_num_seqs"], 256)
    payload["decode_step"] = roofline_numbers(runner, sizes, roofs["bandwidth_bytes_s"], roofs["peak_flops"],
                                              {1: context, big: mean_ctx})
    save()
    payload["profile"] = {}
    for name, batch, graphed in (("batch1_eager", 1, False), ("batch1_graphed", 1, True), (f"batch{big}_graphed", big, True)):
        if graphed and runner.graphs is None:
            continue
        try:
            payload["profile"][name] = profile_step(runner, batch, mean_ctx if batch > 1 else context, graphed)
        except Exception as err:  # the profiler is a diagnostic: never lose the run over it
            payload["profile"][name] = [{"error": f"{type(err).__name__}: {str(err)[:200]}"}]
    save()


def _versions() -> dict[str, str]:
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inferlab.bench engine", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--n", type=int, default=None, help="number of requests (default: 256 GPU, 12 CPU)")
    parser.add_argument("--budget-s", type=float, default=1e9, help="skip the peers left when this many seconds are spent")
    parser.add_argument("--skip-peers", action="store_true", help="measure only inferlab")
    parser.add_argument("--static-n", type=int, default=None, help="run transformers' static batches on this many requests")
    parser.add_argument("--out", default=None, help="output folder (default data/results)")
    args = parser.parse_args(argv)
    from inferlab.bench import save_result
    from inferlab.device import pick_device

    start = time.perf_counter()
    device = pick_device(args.device)
    sizes = dict(GPU if device.startswith("cuda") else CPU)
    sizes["n"] = args.n or sizes["n"]
    runner = build_runner(sizes, device)
    requests = synthetic_requests(sizes["n"], sizes["prompt_len"], sizes["output_len"], runner.config.vocab_size, seed=0)
    payload: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None, "date": time.strftime("%Y-%m-%d"),
        "versions": _versions(), "systems": {}, "batch1": {},
        "workload": {**{k: v for k, v in sizes.items()}, "output_tokens": sum(r.max_tokens for r in requests),
                     "seed": 0, "ignore_eos": True, "attention_backend": runner.attention_backend,
                     "cuda_graphs": runner.graphs is not None}}
    save = lambda: save_result("engine", payload, args.out)  # noqa: E731
    measure_ours(runner, sizes, requests, payload, save)
    del runner
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    if not args.skip_peers:
        def save_peers(out: dict) -> None:
            for key in ("hf_static", "hf_continuous"):
                if key in out:
                    payload["systems"][key] = out[key]
            payload["batch1"]["hf_tok_s"] = out.get("hf_batch1", {}).get("tok_s")
            payload["batch1"]["hf_static_compile_tok_s"] = out.get("hf_batch1_static_compile", {}).get("tok_s")
            payload["peers"] = out
            _ratios(payload)
            save()

        run_peers(sizes, device, requests, start + args.budget_s, save_peers, args.static_n)
    path = save()
    print(json.dumps({k: payload[k] for k in ("systems", "batch1", "ratios") if k in payload}, indent=1))
    print(f"wrote {path}")
    return 0


def _ratios(payload: dict) -> None:
    ours = payload["systems"].get("inferlab", {}).get("output_tok_s")
    out = {}
    for peer in ("hf_static", "hf_continuous"):
        theirs = payload["systems"].get(peer, {}).get("output_tok_s")
        if ours and theirs:
            out[f"inferlab_over_{peer}"] = round(ours / theirs, 2)
    b1 = payload["batch1"]
    if b1.get("inferlab_tok_s") and b1.get("bound_tok_s"):
        out["batch1_fraction_of_bound"] = round(b1["inferlab_tok_s"] / b1["bound_tok_s"], 3)
    payload["ratios"] = out


# ------------------------------------------------------------------ for the notebooks (live runs)
def decode_modes(model: Any = "tiny", device: str | None = None, batch: int = 1, context: int = 128,
                 dtype: str | None = None) -> dict[str, Any]:
    """One decode step of our engine, eager and (on CUDA) replayed as a CUDA graph, beside the bandwidth bound.

    Notebook 01's live roofline: what launch overhead costs, and how much of it a graph removes.
    Returns seconds per step and tokens/s for each mode, plus the bound from the measured copy bandwidth.
    """
    from inferlab.configs import as_dict, known_models
    from inferlab.device import pick_device
    from inferlab.roofline import decode_tokens_per_s_bound, measure_copy_bandwidth

    device = pick_device(device)
    if isinstance(model, str) and model.lower() in known_models():
        model = as_dict(model)  # a shipped config: random weights of that shape
    on_cuda = device.startswith("cuda")
    dtype = dtype or ("bfloat16" if on_cuda else "float32")
    runner = ModelRunner(model, device=device, dtype=dtype, block_size=16, max_num_seqs=max(batch, 1),
                         num_kv_blocks=batch * cdiv(context, 16) + 1)
    out: dict[str, Any] = {"device": device, "batch": batch, "context": context, "dtype": dtype}
    for graphed in (False, True) if runner.graphs is not None else (False,):
        seconds = decode_step_seconds(runner, batch, context, graphed)
        out["graphed" if graphed else "eager"] = {"s_per_step": seconds, "tok_s": batch / seconds}
    bandwidth = measure_copy_bandwidth(device, nbytes=(1 << 30) if on_cuda else (1 << 26))["bytes_per_s"]
    shape = model if isinstance(model, dict) else json.loads((runner.checkpoint / "config.json").read_text())
    out["bound_tok_s"] = decode_tokens_per_s_bound(shape, batch, context, bandwidth, weight_dtype=dtype, kv_dtype=dtype)
    out["bandwidth_bytes_s"] = bandwidth
    return out


def live_run(device: str | None = None, n: int | None = None) -> dict[str, Any]:
    """A small live run of the benchmark's inferlab part (notebook 03 draws it beside the H200 record)."""
    from inferlab.device import pick_device

    device = pick_device(device)
    sizes = dict(GPU if device.startswith("cuda") else CPU)
    if n:
        sizes["n"] = n
    runner = build_runner(sizes, device)
    requests = synthetic_requests(sizes["n"], sizes["prompt_len"], sizes["output_len"], runner.config.vocab_size, seed=0)
    return {"device": device, "model": sizes["model"], "requests": len(requests),
            "inferlab": run_inferlab(runner, requests, sizes),
            "batch1_tok_s": batch1_inferlab(runner, sizes, graphed=runner.graphs is not None)}
