"""``python -m inferlab.bench serve --concurrency N [N ...] --requests M``: a load test of the server.

An asyncio client keeps ``N`` streaming requests in flight against ``/v1/completions``
until ``M`` are done, as vLLM's ``benchmark_serving`` does, and reports per concurrency:

- TTFT (time to first token): sending the request to the first streamed token;
- ITL (inter-token latency): the gaps between streamed tokens, all tokens of all requests;
- TPOT: per request, (end-to-end - TTFT) / (output tokens - 1);
- end-to-end latency, each as p50 / p99 (and the mean), and the output-token and request throughputs.

Unlike the widely copied tutorial's ``benchmark_inference`` (sequential calls, tokens over
the sum of latencies, p99 of ten samples), requests overlap here, so the numbers say what
a server under load does. Each request asks for ``logprobs=0`` so that every token is
streamed as it is sampled, even when its text is held back, and ``ignore_eos`` so that it
produces exactly its output length.

Without ``--url`` the server is started here (``inferlab.serve.launch.ServerProcess``):
the embedded ``tiny`` model on the CPU, a Llama-3.2-1B-shaped model with random bf16
weights on CUDA.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from inferlab.bench.workloads import Request, synthetic_requests
from inferlab.stats import percentile

CPU = {"model": "tiny", "requests": 64, "concurrency": [1, 8, 32, 64], "prompt_len": (16, 96), "output_len": (16, 48),
       "server_args": ["--dtype", "float32", "--max-num-seqs", "128", "--num-kv-blocks", "1024"]}
GPU = {"model": "tiny", "random_weights": "llama-3.2-1b", "requests": 256, "concurrency": [64, 256],
       "prompt_len": (64, 512), "output_len": (32, 128),
       "server_args": ["--dtype", "bfloat16", "--max-num-seqs", "256", "--max-num-batched-tokens", "4096"]}


@dataclass
class RequestTiming:
    """What the client saw of one request."""

    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    e2e: float = 0.0
    output_tokens: int = 0
    error: str | None = None


async def one_request(client, url: str, model: str, req: Request) -> RequestTiming:
    """Send one streaming completion and time its tokens as they arrive."""
    body = {"model": model, "prompt": req.prompt_token_ids, "max_tokens": req.max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "logprobs": 0}
    timing, start = RequestTiming(), time.perf_counter()
    last = start
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                timing.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return timing
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                tokens = sum(len((c.get("logprobs") or {}).get("tokens", [])) for c in json.loads(line[6:])["choices"])
                if not tokens:
                    continue
                now = time.perf_counter()
                if timing.ttft is None:
                    timing.ttft = now - start
                else:
                    timing.itl.append(now - last)
                last, timing.output_tokens = now, timing.output_tokens + tokens
    except Exception as err:  # noqa: BLE001 — a lost request is a result, not a crash
        timing.error = f"{type(err).__name__}: {err}"
    timing.e2e = time.perf_counter() - start
    return timing


async def run_load(url: str, model: str, requests: list[Request], concurrency: int) -> tuple[list[RequestTiming], float]:
    """All ``requests``, at most ``concurrency`` in flight; returns their timings and the wall time."""
    import httpx

    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:

        async def gated(req: Request) -> RequestTiming:
            async with gate:
                return await one_request(client, url, model, req)

        start = time.perf_counter()
        timings = await asyncio.gather(*(gated(r) for r in requests))
        return list(timings), time.perf_counter() - start


def summarize(timings: list[RequestTiming], wall: float, concurrency: int) -> dict[str, Any]:
    """p50/p99/mean of TTFT, ITL, TPOT and end-to-end (milliseconds), throughputs, failures."""
    ok = [t for t in timings if t.error is None and t.ttft is not None]
    ms = lambda xs, q: 1000 * percentile(xs, q) if xs else None  # noqa: E731
    mean = lambda xs: 1000 * sum(xs) / len(xs) if xs else None  # noqa: E731
    series = {"ttft": [t.ttft for t in ok], "itl": [x for t in ok for x in t.itl], "e2e": [t.e2e for t in ok],
              "tpot": [(t.e2e - t.ttft) / (t.output_tokens - 1) for t in ok if t.output_tokens > 1]}
    out: dict[str, Any] = {"concurrency": concurrency, "requests": len(timings), "completed": len(ok),
                           "failed": len(timings) - len(ok), "wall_s": wall,
                           "output_tokens": sum(t.output_tokens for t in ok)}
    for name, xs in series.items():
        out.update({f"{name}_p50_ms": ms(xs, 50), f"{name}_p99_ms": ms(xs, 99), f"{name}_mean_ms": mean(xs)})
    out["output_throughput_tok_s"] = out["output_tokens"] / wall if wall else None
    out["request_throughput_req_s"] = len(ok) / wall if wall else None
    out["errors"] = sorted({t.error for t in timings if t.error})[:5]
    return out


def benchmark(url: str, model: str, requests: list[Request], concurrencies: list[int]) -> list[dict[str, Any]]:
    """One load run per concurrency (after a short warm-up), in order."""
    _run(run_load(url, model, requests[:2], 2))
    runs = []
    for n in concurrencies:
        timings, wall = _run(run_load(url, model, requests, n))
        runs.append(summarize(timings, wall, n))
    return runs


def _run(coro):
    """``asyncio.run``, also from inside a running loop (a Jupyter cell): then in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def format_runs(runs: list[dict[str, Any]]) -> str:
    head = f"{'conc':>5} {'done':>6} {'TTFT p50/p99 ms':>18} {'ITL p50/p99 ms':>16} {'E2E p50/p99 s':>15} {'tok/s':>8}"
    rows = [head]
    for r in runs:
        f = lambda v, s=1.0: "-" if v is None else f"{v * s:.0f}" if v * s >= 10 else f"{v * s:.1f}"  # noqa: E731
        rows.append(f"{r['concurrency']:>5} {r['completed']:>3}/{r['requests']:<2} "
                    f"{f(r['ttft_p50_ms']) + '/' + f(r['ttft_p99_ms']):>18} {f(r['itl_p50_ms']) + '/' + f(r['itl_p99_ms']):>16} "
                    f"{f(r['e2e_p50_ms'], 1e-3) + '/' + f(r['e2e_p99_ms'], 1e-3):>15} {r['output_throughput_tok_s']:>8.1f}")
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m inferlab.bench serve", description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="an already running server (default: start one here)")
    ap.add_argument("--model", default=None, help="model name to send / to serve (default: tiny)")
    ap.add_argument("--random-weights", default=None, help="serve random weights of this shipped config")
    ap.add_argument("--device", default=None)
    ap.add_argument("--concurrency", type=int, nargs="+", default=None)
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--prompt-len", type=int, nargs=2, default=None)
    ap.add_argument("--output-len", type=int, nargs=2, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server-arg", action="append", default=[], help="extra server option (repeatable)")
    ap.add_argument("--out", default=None, help="results folder (default data/results)")
    ap.add_argument("--no-save", action="store_true")
    return ap.parse_args(argv)


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    base = GPU if cuda else CPU
    return {"device": "cuda" if cuda else "cpu", "model": args.model or base["model"],
            "random_weights": args.random_weights or base.get("random_weights"),
            "requests": args.requests or base["requests"], "concurrency": args.concurrency or base["concurrency"],
            "prompt_len": tuple(args.prompt_len or base["prompt_len"]),
            "output_len": tuple(args.output_len or base["output_len"]),
            "server_args": [*base["server_args"], "--device", "cuda" if cuda else "cpu", *args.server_arg]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = _plan(args)
    requests = synthetic_requests(plan["requests"], plan["prompt_len"], plan["output_len"], 4096, seed=args.seed)
    name = plan["random_weights"] or plan["model"]
    if args.url:
        runs = benchmark(args.url.rstrip("/"), name, requests, plan["concurrency"])
    else:
        from inferlab.serve.launch import ServerProcess

        extra = ["--random-weights", plan["random_weights"]] if plan["random_weights"] else []
        with ServerProcess(plan["model"], args=[*extra, *plan["server_args"]], name="bench") as server:
            runs = benchmark(server.url, name, requests, plan["concurrency"])
    print(format_runs(runs))
    if not args.no_save:
        from inferlab.bench import save_result

        payload = {"workload": {k: plan[k] for k in ("model", "random_weights", "requests", "prompt_len",
                                                     "output_len", "server_args")} | {"seed": args.seed},
                   "runs": runs}
        print("saved", save_result("serve", payload, args.out))
    return 0 if all(r["failed"] == 0 for r in runs) else 1
