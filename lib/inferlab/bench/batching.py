"""``python -m inferlab.bench batching``: static vs continuous batching on the same requests.

Runs, in one process and on identical requests (greedy, ``ignore_eos`` so every request
produces exactly its ``max_tokens``):

- ``continuous``: our engine, iteration-level scheduling, paged KV, chunked prefill;
- ``static``: the same engine and kernels with the static policy (pad to the longest
  prompt, wait for the longest output, then refill) — only scheduling differs;
- ``hf_generate_static``: the peer's static batching, left-padded ``generate`` batches;
- ``hf_generate_per_prompt``: the peer, one request at a time (on a GPU only a subset,
  its throughput does not depend on how many are run).

Also an online sweep: Poisson arrivals at a few rates, TTFT/TPOT p50/p99, static vs
continuous. CPU: the embedded ``tiny`` model (fp32). CUDA: a Llama-3.2-1B-shaped model
with random bf16 weights and the design's reference workload (256 requests, prompts
64–1024, outputs 64–512, seed 0).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from inferlab.bench.peers import hf_generate_per_prompt, hf_generate_static
from inferlab.bench.workloads import NullTokenizer, Request, run_engine, synthetic_requests
from inferlab.engine.llm_engine import LLMEngine
from inferlab.engine.model_runner import ModelRunner

BLOCK_SIZE = 16
CPU_SIZES = {"n": 48, "prompt_len": (8, 128), "output_len": (8, 96), "batch": 16, "peer_n": 48,
             "rates": [4.0, 8.0, 16.0], "online_n": 32}
GPU_SIZES = {"n": 256, "prompt_len": (64, 1024), "output_len": (64, 512), "batch": 64, "peer_n": 4,
             "rates": [16.0, 64.0], "online_n": 64}


def setup(device: str) -> tuple[ModelRunner, Any, Any, dict]:
    """(our runner, tokenizer, the transformers peer model, sizes) for the device."""
    from inferlab.bench.roofline import build_model

    if device.startswith("cuda"):
        from inferlab.configs import as_dict

        config = as_dict("llama-3.2-1b")
        peer, _ = build_model(config, device, "bfloat16")
        # Random weights of the same shape, built on the GPU (timing does not depend on values).
        runner = ModelRunner(config, device=device, dtype=torch.bfloat16, block_size=BLOCK_SIZE,
                             num_kv_blocks=_gpu_blocks(config, torch.bfloat16))
        return runner, NullTokenizer(), peer, GPU_SIZES
    peer, _ = build_model("tiny", device, "float32")
    runner = ModelRunner(peer, device=device, dtype=torch.float32, block_size=BLOCK_SIZE, num_kv_blocks=2048)
    return runner, NullTokenizer(), peer, CPU_SIZES


def _gpu_blocks(config: dict, dtype: torch.dtype) -> int:
    """Half the free GPU memory in KV blocks: the rest is left for the peer's own cache."""
    from inferlab.kvcache import kv_bytes_per_block

    free, _ = torch.cuda.mem_get_info()
    return int(free * 0.5) // kv_bytes_per_block(config, dtype, BLOCK_SIZE)


def engine(runner: ModelRunner, tok, policy: str, batch: int) -> LLMEngine:
    runner.kv_cache.zero_()
    return LLMEngine(runner, tok, max_num_seqs=batch, max_num_batched_tokens=2048 if policy == "continuous" else 1 << 20,
                     enable_chunked_prefill=policy == "continuous", policy=policy)


def offline(runner, tok, peer, sizes, requests: list[Request], save=lambda results: None) -> dict[str, Any]:
    """Ours (static, continuous), then the peers; ``save(results)`` after each, so a run cut
    short by a time limit still leaves what it measured."""
    results: dict[str, Any] = {}
    run_engine(engine(runner, tok, "continuous", sizes["batch"]), requests[:4], realtime=False)  # warm-up
    for policy in ("static", "continuous"):
        res = run_engine(engine(runner, tok, policy, sizes["batch"]), requests, name=policy, realtime=False)
        _keep(results, policy, res.summary(), save)
    _keep(results, "hf_generate_static", hf_generate_static(peer, requests, sizes["batch"]).summary(), save)
    subset = requests[: sizes["peer_n"]]
    per = hf_generate_per_prompt(peer, subset)
    _keep(results, "hf_generate_per_prompt", {**per.summary(), "requests": len(subset)}, save)
    return results


def _keep(results: dict, name: str, summary: dict, save) -> None:
    results[name] = summary
    print(json.dumps(summary), flush=True)
    save(results)


def online(runner, tok, sizes, vocab: int) -> list[dict[str, Any]]:
    rows = []
    for rate in sizes["rates"]:
        reqs = synthetic_requests(sizes["online_n"], sizes["prompt_len"], sizes["output_len"], vocab, seed=1, rate=rate)
        for policy in ("static", "continuous"):
            res = run_engine(engine(runner, tok, policy, sizes["batch"]), reqs, name=policy)
            rows.append({"rate": rate, **res.summary()})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inferlab.bench batching", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--n", type=int, default=None, help="number of requests (default: 48 CPU, 256 GPU)")
    parser.add_argument("--no-online", action="store_true", help="skip the arrival-rate sweep")
    parser.add_argument("--out", default=None, help="output folder (default data/results)")
    args = parser.parse_args(argv)
    from inferlab.bench import save_result
    from inferlab.device import pick_device

    device = pick_device(args.device)
    if device == "cpu":
        torch.set_num_threads(1)  # tiny matmuls: thread sync costs more than it saves (and shared CPUs stay fair)
    runner, tok, peer, sizes = setup(device)
    sizes = {**sizes, "n": args.n or sizes["n"]}
    vocab = runner.config.vocab_size
    requests = synthetic_requests(sizes["n"], sizes["prompt_len"], sizes["output_len"], vocab, seed=0)
    payload: dict[str, Any] = {"device": device, "model": "llama-3.2-1b (random bf16)" if device.startswith("cuda") else "tiny (fp32)",
                               "workload": {k: v for k, v in sizes.items() if k != "rates"}}

    def save_offline(results: dict) -> None:
        payload["offline"] = results
        if "static" in results and "continuous" in results:
            ratio = results["continuous"]["throughput_tok_s"] / results["static"]["throughput_tok_s"]
            payload["speedup_continuous_over_static"] = round(ratio, 3)
        save_result("batching", payload, args.out)

    offline(runner, tok, peer, sizes, requests, save_offline)
    path = save_result("batching", payload, args.out)
    if not args.no_online:
        payload["online"] = online(runner, tok, sizes, vocab)
        path = save_result("batching", payload, args.out)
    print(f"wrote {path}")
    return 0
