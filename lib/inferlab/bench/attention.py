"""``python -m inferlab.bench attention``: peak memory and time of attention vs sequence length.

One process, the same inputs for every variant: the textbook version that materializes the
scores (``naive``), PyTorch SDPA forced onto each of its backends (``sdpa-math``,
``sdpa-flash``, ``sdpa-efficient``, ``sdpa-cudnn``; a backend the machine lacks is recorded as
unavailable), FlexAttention (compiled; slow to compile on a CPU, so opt-in there) and ours:
the tiled PyTorch loop (``ours-torch``) and the Triton kernel (``ours-triton``, CUDA only: on a
CPU it would run in Triton's interpreter, which measures nothing).

Peak memory is the extra memory one call needs beyond its inputs (workspace plus output): on
CUDA ``torch.cuda.max_memory_allocated``, on the CPU the allocator's events in the PyTorch
profiler. Time on CUDA is one call replayed as a CUDA graph (the lent GPU's host is slow: an
eager launch would be timed instead of the kernel), else :func:`inferlab.device.time_fn`.
Throughput counts ``4 · batch · heads · q_len · kv_len · head_dim`` FLOPs, halved-ish for
causal attention (only visible pairs), as FlashAttention's papers do.

The shape is one layer of Llama-3.2-1B: 32 query heads, 8 KV heads, head dim 64, batch 1,
causal (a prefill); bfloat16 on CUDA (float16 where a GPU lacks it), float32 on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from inferlab.attention.naive import attention_flops

VARIANTS = ["naive", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flex", "ours-torch", "ours-triton"]


class Unavailable(RuntimeError):
    """This variant does not run on this machine (missing backend or package)."""


def defaults(device: str) -> dict[str, Any]:
    """Sizes per device: seconds on a 2-core CPU, up to 32k tokens on an H200."""
    from inferlab.device import dtype_name, torch_dtype

    if device.startswith("cuda"):  # bfloat16 where the GPU has it, float16 on older ones (a T4)
        return {"lengths": [1024, 2048, 4096, 8192, 16384, 32768], "batch": 1, "heads": 32, "kv_heads": 8,
                "head_dim": 64, "dtype": dtype_name(torch_dtype(None, device)), "causal": True, "repeats": 5, "block": 1024,
                "variants": ["sdpa-flash", "ours-triton", "naive", "sdpa-math", "sdpa-efficient", "sdpa-cudnn",
                             "ours-torch", "flex"], "budget_s": 10.0, "triton_sweep_len": 8192,
                "triton_configs": [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 64, 8, 2), (128, 32, 4, 4)]}
    # One CPU thread: on a shared 2-core box (CI, Binder) threads waiting on each other make a
    # run 10-100x slower and its timings meaningless; 8 query heads keep a sweep to seconds.
    return {"lengths": [256, 512, 1024, 2048, 4096], "batch": 1, "heads": 8, "kv_heads": 2, "head_dim": 64,
            "dtype": "float32", "causal": True, "repeats": 3, "block": 256, "threads": 1,
            "variants": ["naive", "sdpa-math", "sdpa-flash", "ours-torch"], "budget_s": 60.0}


def _sdpa(backend_name: str, causal: bool, group: int) -> Callable:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": getattr(SDPBackend, "CUDNN_ATTENTION", None)}
    if backend[backend_name] is None:
        raise Unavailable("this torch has no cuDNN attention backend")

    def fn(q, k, v):
        with sdpa_kernel(backend[backend_name]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                                    enable_gqa=group > 1)
    return fn


def _flex(causal: bool, q_len: int, kv_len: int, device: str) -> Callable:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    mask = None
    if causal:
        mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, q_len, kv_len, device=device)
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: compiled(q, k, v, block_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def make_variant(name: str, opts: dict[str, Any], q_len: int, device: str) -> Callable:
    """``fn(q, k, v) -> out`` for a variant, or :class:`Unavailable`."""
    from inferlab.attention.flash import flash_attention
    from inferlab.attention.naive import naive_attention

    causal = opts["causal"]
    if name == "naive":
        return lambda q, k, v: naive_attention(q, k, v, causal=causal)
    if name.startswith("sdpa-"):
        return _sdpa(name.removeprefix("sdpa-"), causal, opts["heads"] // opts["kv_heads"])
    if name == "flex":
        return _flex(causal, q_len, q_len, device)
    if name == "ours-torch":
        return lambda q, k, v: flash_attention(q, k, v, causal=causal, block_q=opts["block"], block_k=opts["block"])
    if name == "ours-triton":
        from inferlab.attention.flash_triton import flash_attention_triton, triton_available

        if not device.startswith("cuda") or not triton_available():
            raise Unavailable("the Triton kernel is timed on CUDA only (on a CPU it runs in an interpreter)")
        return lambda q, k, v: flash_attention_triton(q, k, v, causal=causal)
    raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")


@contextlib.contextmanager
def _stderr_silenced():
    """Recent profilers log two lines per use straight to the process's stderr (fd 2): noise here."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_extra_bytes(fn: Callable[[], Any], device: str) -> int:
    """The most memory one call of ``fn`` holds at once beyond what existed before it (workspace + output)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return int(peak)
    from torch.profiler import ProfilerActivity, profile

    with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:  # allocations are positive, frees negative, in time order
        live += e.nbytes()
        peak = max(peak, live)
    return int(peak)


def time_call(fn: Callable[[], Any], device: str, repeats: int, graph: bool = True) -> tuple[list[float], str]:
    """Seconds per call: a CUDA-graph replay on CUDA (falls back to eager), :func:`time_fn` elsewhere."""
    from inferlab.device import time_cuda_graph, time_fn

    if device.startswith("cuda") and graph:
        try:
            return time_cuda_graph(fn, repeats), "cuda graph"
        except Exception:  # noqa: BLE001 - some kernels refuse capture; time them eagerly
            torch.cuda.synchronize()
    return time_fn(fn, device, repeats=repeats, warmup=1), "eager"


def _inputs(opts: dict[str, Any], length: int, device: str):
    from inferlab.device import torch_dtype

    g = torch.Generator(device=device).manual_seed(0)
    dtype = torch_dtype(opts["dtype"])
    b, h, hk, d = opts["batch"], opts["heads"], opts["kv_heads"], opts["head_dim"]
    q = torch.randn(b, h, length, d, generator=g, device=device, dtype=dtype)
    k = torch.randn(b, hk, length, d, generator=g, device=device, dtype=dtype)
    v = torch.randn(b, hk, length, d, generator=g, device=device, dtype=dtype)
    return q, k, v


def _no_backend(err: Exception) -> bool:
    return "No viable backend" in str(err) or "No available kernel" in str(err)


def _first_call(name: str, fn: Callable, q, k, v):
    """Run once (compiles, autotunes); an SDPA backend that refuses grouped KV heads gets them expanded."""
    try:
        return fn(q, k, v), k, v, False
    except RuntimeError as err:
        if not name.startswith("sdpa-"):
            raise
        if q.shape[1] == k.shape[1]:
            raise (Unavailable(f"SDPA's {name[5:]} backend does not run here") if _no_backend(err) else err) from err
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    try:
        return fn(q, k, v), k, v, True
    except RuntimeError as err:
        if _no_backend(err):
            raise Unavailable(f"SDPA's {name[5:]} backend does not run here") from err
        raise


def measure_one(name: str, opts: dict[str, Any], length: int, device: str, reference=None) -> dict[str, Any]:
    """One variant at one length: peak extra memory, times, TFLOP/s, and its error against ``reference``."""
    row: dict[str, Any] = {"variant": name, "seq_len": length}
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # what an earlier variant left cached (or an out-of-memory) must not count
    q, k, v = _inputs(opts, length, device)
    try:
        fn = make_variant(name, opts, length, device)
        out, k, v, row["kv_heads_expanded"] = _first_call(name, fn, q, k, v)
        row["max_abs_err"] = None if reference is None else float((out.float() - reference.float()).abs().max())
        del out
        row["peak_bytes"] = peak_extra_bytes(lambda: fn(q, k, v), device)
        # a graph keeps its own copy of the workspace: no graph for calls that fill a third of the GPU
        graph = device.startswith("cuda") and row["peak_bytes"] < torch.cuda.mem_get_info()[1] / 3
        seconds, row["timing"] = time_call(lambda: fn(q, k, v), device, opts["repeats"], graph)
    except Unavailable as err:
        return {**row, "unavailable": str(err)}
    except (torch.cuda.OutOfMemoryError, MemoryError) as err:
        return {**row, "error": f"out of memory: {str(err)[:160]}"}
    except Exception as err:  # noqa: BLE001 - a backend that refuses these inputs is a result too
        return {**row, "error": f"{type(err).__name__}: {str(err)[:300]}"}
    flops = attention_flops(opts["batch"], opts["heads"], length, length, opts["head_dim"], opts["causal"])
    best = min(seconds)
    return {**row, "seconds": seconds, "seconds_min": best, "tflops": flops / best / 1e12, "flops": flops}


def triton_config_sweep(opts: dict[str, Any], length: int, device: str, configs: list[tuple[int, ...]]) -> list[dict]:
    """TFLOP/s of the Triton kernel at one length for a few (BLOCK_M, BLOCK_N, warps, stages) launches."""
    from inferlab.attention.flash_triton import flash_attention_triton

    q, k, v = _inputs(opts, length, device)
    flops = attention_flops(opts["batch"], opts["heads"], length, length, opts["head_dim"], opts["causal"])
    out = []
    for bm, bn, warps, stages in configs:
        def call(bm=bm, bn=bn, warps=warps, stages=stages):
            return flash_attention_triton(q, k, v, causal=opts["causal"], block_m=bm, block_n=bn,
                                          num_warps=warps, num_stages=stages)
        row = {"seq_len": length, "block_m": bm, "block_n": bn, "num_warps": warps, "num_stages": stages}
        try:
            call()
            seconds, _ = time_call(call, device, opts["repeats"])
            out.append({**row, "seconds_min": min(seconds), "tflops": flops / min(seconds) / 1e12})
        except Exception as err:  # noqa: BLE001 - a launch that does not fit (registers, shared memory)
            out.append({**row, "error": f"{type(err).__name__}: {str(err)[:200]}"})
    return out


def _reference(opts: dict[str, Any], length: int, device: str):
    """SDPA's default choice of backend, to check every variant's output against."""
    q, k, v = _inputs(opts, length, device)
    group = opts["heads"] // opts["kv_heads"]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=opts["causal"], enable_gqa=group > 1)


def run(device: str | None = None, progress: bool = True, checkpoint=None, **overrides: Any) -> dict[str, Any]:
    """The whole sweep; returns the payload :func:`main` saves. ``overrides`` replace :func:`defaults`.

    A variant whose accumulated time passes ``budget_s`` skips its longer lengths (recorded as
    skipped); ``checkpoint(payload)`` is called after every variant so a time limit loses little.
    ``threads`` sets torch's CPU threads for the run only.
    """
    from inferlab.device import pick_device

    device = pick_device(device)
    opts = {**defaults(device), **{k: v for k, v in overrides.items() if v is not None}}
    from inferlab.device import cpu_threads

    with cpu_threads(opts.get("threads")):
        return _sweep(device, opts, print if progress else (lambda *a, **k: None), checkpoint)


def _sweep(device: str, opts: dict[str, Any], say, checkpoint) -> dict[str, Any]:
    payload: dict[str, Any] = {"device": device, "options": opts, "rows": [],
                               "cpu_threads": torch.get_num_threads()}
    if opts.get("triton_configs") and device.startswith("cuda") and "ours-triton" in opts["variants"]:
        payload["triton_configs"] = triton_config_sweep(opts, opts["triton_sweep_len"], device,
                                                        opts["triton_configs"])
        for row in payload["triton_configs"]:
            say(f"triton {row['block_m']}x{row['block_n']} w{row['num_warps']} s{row['num_stages']}: "
                + (f"{row['tflops']:.1f} TFLOP/s" if "tflops" in row else row["error"]))
    refs = {}
    for name in opts["variants"]:
        started = time.perf_counter()
        for length in opts["lengths"]:
            if time.perf_counter() - started > opts["budget_s"]:
                payload["rows"].append({"variant": name, "seq_len": length, "skipped": "over the time budget"})
                continue
            if length not in refs:
                refs[length] = _reference(opts, length, device).cpu()
            row = measure_one(name, opts, length, device, refs[length].to(device))
            payload["rows"].append(row)
            say(format_row(row))
            if "unavailable" in row:
                break
        payload["summary"] = summarize(payload)
        if checkpoint:
            checkpoint(payload)
    return payload


def format_row(row: dict[str, Any]) -> str:
    """One printed line per measurement."""
    head = f"{row['variant']:>15} {row['seq_len']:>6}"
    if "seconds_min" not in row:
        return f"{head}  {row.get('unavailable') or row.get('error') or row.get('skipped')}"
    return (f"{head}  {row['seconds_min'] * 1e3:9.3f} ms  {row['tflops']:7.2f} TFLOP/s  "
            f"peak {row['peak_bytes'] / 2**20:10.1f} MiB  err {row['max_abs_err']:.1e}")


def summarize(payload: dict[str, Any]) -> dict[str, Any]:
    """Our Triton kernel's and our PyTorch loop's throughput as a fraction of SDPA-flash's, per length."""
    by = {(r["variant"], r["seq_len"]): r for r in payload["rows"] if "tflops" in r}
    out: dict[str, Any] = {}
    for ours in ("ours-triton", "ours-torch"):
        fractions = {n: by[(ours, n)]["tflops"] / by[("sdpa-flash", n)]["tflops"]
                     for (v, n) in by if v == ours and ("sdpa-flash", n) in by}
        if fractions:
            longest = max(fractions)
            out[f"{ours}_fraction_of_sdpa_flash"] = fractions
            out[f"{ours}_fraction_of_sdpa_flash_at_longest"] = {"seq_len": longest, "fraction": fractions[longest]}
    return out


def ratios(payload: dict[str, Any], baseline: str = "naive", variants: list[str] | None = None) -> list[dict]:
    """Speed-up (baseline time / time) and memory saving (baseline peak / peak) of each variant over
    ``baseline``, at every length where both were measured."""
    by = {(r["variant"], r["seq_len"]): r for r in payload["rows"] if "seconds_min" in r}
    names = variants or [v for v in dict.fromkeys(r["variant"] for r in payload["rows"]) if v != baseline]
    out = []
    for name in names:
        for (v, n), row in by.items():
            base = by.get((baseline, n))
            if v == name and base is not None:
                out.append({"variant": name, "seq_len": n, "speedup": base["seconds_min"] / row["seconds_min"],
                            "memory_saving": base["peak_bytes"] / max(row["peak_bytes"], 1)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inferlab.bench attention", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--variants", type=lambda s: VARIANTS if s == "all" else s.split(","), default=None,
                        help=f"comma-separated, or 'all': {','.join(VARIANTS)}")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--budget-s", type=float, default=None, help="seconds per variant before skipping lengths")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--out", default=None, help="folder for the JSON (default data/results)")
    args = parser.parse_args(argv)
    from inferlab.bench import save_result

    quick = {"lengths": [32, 64], "heads": 4, "kv_heads": 2, "head_dim": 32, "repeats": 2, "block": 16,
             "triton_configs": []} if args.quick else {}
    given = {"lengths": args.lengths, "variants": args.variants, "dtype": args.dtype, "repeats": args.repeats,
             "budget_s": args.budget_s}

    def checkpoint(partial):
        save_result("attention", partial, out_dir=args.out)

    payload = run(args.device, checkpoint=checkpoint, **{**quick, **{k: v for k, v in given.items() if v is not None}})
    print(f"wrote {save_result('attention', payload, out_dir=args.out)}")
    for key, value in payload["summary"].items():
        if key.endswith("_at_longest"):
            print(f"{key}: {value['fraction']:.2f} at {value['seq_len']} tokens")
    return 0
