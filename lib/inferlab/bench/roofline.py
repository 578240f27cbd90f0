"""``python -m inferlab.bench roofline``: prefill vs decode against the device's roofline.

Measures, in one process: the device's copy bandwidth and matmul throughput (the two
roofs), prefill time at a few prompt lengths, decode time per step with a KV cache at a
few batch sizes (ours: a plain cached step loop), and transformers ``generate`` at batch 1
(the peer). Each measured decode step is paired with its memory-bandwidth bound,
(weights + KV bytes) / measured bandwidth.

On a CUDA GPU the model is Llama-3.2-1B-shaped with random bf16 weights built from
data/configs/llama-3.2-1b.json (no download: timing does not depend on the values);
on CPU it is the embedded ``tiny`` model in fp32.
"""

from __future__ import annotations

import argparse
from typing import Any

from inferlab import roofline as rl
from inferlab.bench.peers import hf_generate_batch1
from inferlab.configs import param_count


def build_model(name: Any, device: str, dtype: str):
    """An embedded model, a local folder or hub id (real weights), or a Llama with random weights
    from a shipped config name or dict, created directly on ``device`` in ``dtype`` (no download)."""
    from inferlab.configs import as_dict, known_models
    from inferlab.hub import EMBEDDED_MODELS, load_model, random_init

    if isinstance(name, str) and (name in EMBEDDED_MODELS or name.lower() not in known_models()):
        model, _ = load_model(name, device=device, dtype=dtype)  # embedded, a local folder or a hub id
        return model, model.config.to_dict()
    raw = as_dict(name)
    return random_init(raw, device, dtype), raw


def defaults(device: str) -> dict[str, Any]:
    """Sizes per device: small on CPU (finishes in seconds), the reference 1B shape on CUDA."""
    if device.startswith("cuda"):
        return {"model": "llama-3.2-1b", "dtype": "bfloat16", "batch_sizes": [1, 2, 4, 8, 16, 32, 64, 128, 256],
                "context": 1024, "steps": 24, "prompt_lens": [128, 512, 2048, 8192], "copy_bytes": 1 << 31,
                "matmul_n": 8192, "generate_tokens": 128}
    # One CPU thread: the tiny model's matmuls are too small to gain from more, and on a busy
    # machine (CI, a shared laptop) OpenMP threads waiting on each other make steps 10x slower.
    return {"model": "tiny", "dtype": "float32", "batch_sizes": [1, 2, 4, 8, 16, 32, 64],
            "context": 256, "steps": 10, "prompt_lens": [16, 64, 256, 1024], "copy_bytes": 1 << 27,
            "matmul_n": 1024, "generate_tokens": 32, "threads": 1}


def run(device: str | None = None, progress: bool = True, checkpoint=None, **overrides: Any) -> dict[str, Any]:
    """Run the whole benchmark and return the payload (what :func:`main` saves as JSON).

    ``overrides`` replace entries of :func:`defaults` (``threads`` sets torch's CPU threads for
    the run only; ``static_generate=True`` adds transformers ``generate`` with a static cache,
    compiled on CUDA). ``checkpoint(payload)`` is called before that slow, optional step."""
    from inferlab.device import cpu_threads, pick_device

    device = pick_device(device)
    opts = {**defaults(device), **{k: v for k, v in overrides.items() if v is not None}}
    with cpu_threads(opts.get("threads")):
        return _run(device, opts, print if progress else (lambda *a, **k: None), checkpoint)


def _run(device: str, opts: dict[str, Any], say, checkpoint=None) -> dict[str, Any]:
    import torch

    from inferlab.units import format_bytes

    model, cfg = build_model(opts["model"], device, opts["dtype"])
    wdtype = opts["dtype"]

    copy = rl.measure_copy_bandwidth(device, opts["copy_bytes"])
    mm = rl.measure_matmul_flops(device, n=opts["matmul_n"])
    bw, peak = copy["bytes_per_s"], mm["flops_per_s"]
    say(f"copy bandwidth {bw / 1e9:,.1f} GB/s; matmul {peak / 1e12:,.2f} TFLOP/s ({mm['dtype']})")

    prefill = []
    for length in opts["prompt_lens"]:
        seconds = rl.measure_prefill(model, length)
        cost = rl.prefill_cost(cfg, length, weight_dtype=wdtype, kv_dtype=wdtype)
        prefill.append({"prompt_len": length, "batch_size": 1, "seconds": seconds,
                        "tokens_per_s": length / seconds, **cost, "achieved_flops_per_s": cost["flops"] / seconds,
                        "bound_seconds": rl.step_time_bound(cost, peak, bw)})
        say(f"prefill {length:>5} tokens: {seconds * 1e3:8.2f} ms  intensity {cost['intensity']:8.1f} FLOP/B")

    decode = []
    for batch in opts["batch_sizes"]:
        m = rl.measure_decode(model, batch, opts["context"], steps=opts["steps"])
        cost = rl.decode_cost(cfg, batch, m["context"], weight_dtype=wdtype, kv_dtype=wdtype)
        bound = rl.step_time_bound(cost, peak, bw)
        decode.append({**m, **cost, "bound_seconds": bound, "bound_tokens_per_s": batch / bound,
                       "achieved_bytes_per_s": cost["bytes"] / m["seconds_per_step"],
                       "achieved_flops_per_s": cost["flops"] / m["seconds_per_step"]})
        say(f"decode batch {batch:>4}: {m['seconds_per_step'] * 1e3:8.2f} ms/step {m['tokens_per_s']:10,.0f} tok/s"
            f"  (bound {batch / bound:10,.0f} tok/s)")

    gen = hf_generate_batch1(model, prompt_len=min(128, opts["context"]), new_tokens=opts["generate_tokens"])
    weights = rl.weights_read_per_step(cfg) * rl.weight_bytes_per_param(wdtype)
    say(f"transformers generate, batch 1: {gen['tokens_per_s']:,.1f} tok/s; weights {format_bytes(weights, 'GB')}, "
        f"batch-1 bound {bw / weights:,.0f} tok/s")
    payload = {
        "model": str(cfg.get("name") or opts["model"]) if isinstance(opts["model"], dict) else opts["model"],
        "dtype": wdtype, "device": device, "random_weights": opts["model"] not in ("tiny", "tiny-draft"),
        "params": param_count(cfg), "weight_bytes_per_step": weights,
        "copy_bandwidth": copy, "matmul": mm, "ridge_point": peak / bw,
        "batch1_bound_tokens_per_s": bw / weights, "prefill": prefill, "decode": decode,
        "generate": {**gen, "peer": f"transformers {_version('transformers')} generate, greedy, batch 1"},
        "options": opts, "cpu_threads": torch.get_num_threads(),
    }
    if opts.get("static_generate"):
        if checkpoint:
            checkpoint(payload)
        try:  # compiling can fail on some stacks; the rest of the run still counts
            static = hf_generate_batch1(model, prompt_len=min(128, opts["context"]),
                                         new_tokens=opts["generate_tokens"], cache_implementation="static", warmup=2)
            payload["generate_static"] = {**static, "peer": "transformers generate, static cache"
                                          + (" + torch.compile (auto)" if device.startswith("cuda") else "")}
            say(f"transformers generate, static cache, batch 1: {static['tokens_per_s']:,.1f} tok/s")
        except Exception as err:  # noqa: BLE001
            payload["generate_static"] = {"error": f"{type(err).__name__}: {err}"[:500]}
            say(f"static-cache generate failed: {payload['generate_static']['error']}")
    return payload


def _version(pkg: str) -> str:
    try:
        from importlib.metadata import version

        return version(pkg)
    except Exception:  # noqa: BLE001
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inferlab.bench roofline", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: best available)")
    parser.add_argument("--model", default=None, help="'tiny', or a config name for random weights (GPU default llama-3.2-1b)")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--context", type=int, default=None, help="tokens in the cache during decode")
    parser.add_argument("--steps", type=int, default=None, help="timed decode steps per batch size")
    parser.add_argument("--prompt-lens", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--static-generate", action="store_true",
                        help="also time generate with a static cache (compiled on CUDA; slow to warm up)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--out", default=None, help="folder for the JSON (default data/results)")
    args = parser.parse_args(argv)
    from inferlab.bench import save_result

    quick = {"batch_sizes": [1, 2], "context": 8, "steps": 2, "prompt_lens": [8], "copy_bytes": 1 << 20,
             "matmul_n": 64, "generate_tokens": 2} if args.quick else {}
    given = {"model": args.model, "batch_sizes": args.batch_sizes, "context": args.context, "steps": args.steps,
             "prompt_lens": args.prompt_lens, "static_generate": args.static_generate or None}

    def checkpoint(partial):
        print(f"wrote {save_result('roofline', partial, out_dir=args.out)} (before the static-cache step)")

    payload = run(args.device, checkpoint=checkpoint, **{**quick, **{k: v for k, v in given.items() if v is not None}})
    path = save_result("roofline", payload, out_dir=args.out)
    print(f"wrote {path}")
    return 0
