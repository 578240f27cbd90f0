"""Tensor parallelism measured: ``python -m inferlab.bench tp [--device cuda] [--out DIR]``.

Four measurements, TP=1 against TP=2, written to ``tp-<device>.json``:

1. **equality**: greedy tokens of the embedded tiny model (fp32) through ``LLM(...,
   tensor_parallel_size=2)`` against TP=1;
2. **all-reduce time against batch**: ``[batch, hidden]`` tensors summed over two ranks
   (gloo on CPU; NCCL on GPUs, timed as CUDA-graph replays because the host is slow);
3. **the sharded matmuls of a decode step against batch**: every layer's q/k/v, o, gate/up and
   down projections with their two all-reduces (attention itself left out), per rank, so the
   one question TP answers for latency is isolated: do half the weight bytes pay for 2 x layers
   all-reduces?;
4. **the engine**: decode latency at batch 1 and throughput on a reduced reference workload
   (random weights of the given shape), with the all-reduce bytes per token counted.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import time
from typing import Any

import torch

from inferlab import tp
from inferlab.engine.distributed import diagnose, free_port, init_process_group, rank_device

BATCHES = [1, 4, 16, 64, 256]


# --------------------------------------------------------------------------- spawned ranks
def spawn(fn, world_size: int, *args: Any) -> Any:
    """Run ``fn(rank, world_size, port, *args)`` in ``world_size`` fresh processes; rank 0's return value."""
    import multiprocessing as mp

    ctx, port = mp.get_context("spawn"), free_port()
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(fn, r, world_size, port, queue, args)) for r in range(world_size)]
    for p in procs:
        p.start()
    status, value = queue.get()
    for p in procs:
        p.join()
    if status == "error":
        raise RuntimeError(value)
    return value


def _rank_main(fn, rank: int, size: int, port: int, queue, args) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        out = fn(rank, size, port, *args)
        if rank == 0:
            queue.put(("ok", out))
    except Exception as err:
        queue.put(("error", f"rank {rank}: {type(err).__name__}: {err}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _timed(fn, device: str, repeats: int, inner: int) -> list[float]:
    """Seconds per call of ``fn`` (``inner`` calls per sample): CUDA-graph replays on a GPU, a loop elsewhere."""
    import torch.distributed as dist

    from inferlab.device import synchronize

    def run():
        for _ in range(inner):
            fn()

    if device.startswith("cuda"):
        run = _graphed(run) or run
    run()
    times = []
    for _ in range(repeats):
        if dist.is_initialized():
            dist.barrier()
        synchronize(device)
        t0 = time.perf_counter()
        run()
        synchronize(device)
        times.append((time.perf_counter() - t0) / inner)
    return times


def _graphed(run):
    """``run`` captured as one CUDA graph (its replay), or None where capture fails (then it runs eagerly)."""
    run()  # warm up outside the capture (NCCL sets up its communicator here)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            run()
    except RuntimeError as err:
        print(f"CUDA graph capture failed, timing eagerly: {err}", flush=True)
        return None
    return graph.replay


def _all_reduce_rank(rank, size, port, device, hidden, dtype, batches, repeats, inner):
    init_process_group(rank, size, port, device)
    dev = rank_device(device, rank)
    rows = []
    for b in batches:
        x = torch.ones(b, hidden, dtype=dtype, device=dev)
        times = _timed(lambda x=x: tp.all_reduce(x), device, repeats, inner)
        rows.append({"batch": b, "bytes": x.numel() * x.element_size(), "seconds": times})
    return rows


def time_all_reduce(device: str = "cpu", hidden: int = 2048, dtype=torch.bfloat16, batches=BATCHES,
                    world_size: int = 2, repeats: int = 5, inner: int = 20) -> list[dict[str, Any]]:
    """Seconds per all-reduce of a ``[batch, hidden]`` tensor over ``world_size`` ranks, per batch."""
    return spawn(_all_reduce_rank, world_size, device, hidden, dtype, list(batches), repeats, inner)


# --------------------------------------------------------------------------- the sharded matmuls of a step
def _matmul_rank(rank, size, port, device, config, dtype, batches, repeats, inner):
    from inferlab.engine.models import MODEL_CLASSES

    if size > 1:
        init_process_group(rank, size, port, device)
    dev = rank_device(device, rank)
    torch.manual_seed(0)
    with torch.device(dev):
        layers = MODEL_CLASSES[config.model_type](config).model.layers.to(dtype)
    if size > 1:
        for layer in layers:
            tp.shard_attention(layer.self_attn, config, rank, size, copy=False)
            tp.shard_mlp(layer.mlp, config, rank, size, copy=False)

    def step(x):
        for layer in layers:
            a, m = layer.self_attn, layer.mlp
            q = a.qkv_proj(x)[:, : a.num_heads * config.head_dim]  # attention itself left out
            x = x + a.o_proj(q)
            x = x + m.down_proj(m.act_and_mul(m.gate_up_proj(x)))
        return x

    rows = []
    with torch.inference_mode():
        for b in batches:
            x = torch.randn(b, config.hidden_size, dtype=dtype, device=dev) * 0.01
            times = _timed(lambda x=x: step(x), device, repeats, inner)
            rows.append({"batch": b, "seconds": times})
    return rows


def time_sharded_matmuls(config, tp_size: int, device: str = "cpu", dtype=torch.bfloat16, batches=BATCHES,
                         repeats: int = 5, inner: int = 5) -> list[dict[str, Any]]:
    """Seconds of one decode step's projections and all-reduces (no attention), per batch, at ``tp_size``."""
    return spawn(_matmul_rank, tp_size, device, config, dtype, list(batches), repeats, inner)


# --------------------------------------------------------------------------- the engine
def check_equality(device: str = "cpu", max_tokens: int = 24) -> dict[str, Any]:
    """Greedy tokens of the tiny model (fp32) at TP=1 and TP=2 on ``device``: equal or not."""
    from inferlab import LLM, SamplingParams

    prompts = ["def add(a, b):", "import os\n", "class Foo:", "for i in range(", "    return self."]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    settings = dict(device=device, dtype="float32", num_kv_blocks=64, enforce_eager=True, attention_backend="sdpa")
    ref = [o.outputs[0].token_ids for o in LLM("tiny", **settings).generate(prompts, params)]
    llm = LLM("tiny", tensor_parallel_size=2, **settings)
    try:
        got = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    finally:
        llm.engine.runner.shutdown()
    return {"prompts": len(prompts), "max_tokens": max_tokens, "equal": got == ref,
            "equal_prompts": sum(a == b for a, b in zip(got, ref, strict=True))}


_START = time.perf_counter()


def _log(message: str) -> None:
    """A timestamped progress line, flushed at once: a run that hangs shows how far it got."""
    print(f"[tp {time.strftime('%H:%M:%S')} +{time.perf_counter() - _START:7.1f} s] {message}", flush=True)


@contextlib.contextmanager
def _phase(tag: str, name: str, seconds: dict[str, float]):
    """Log the start and end of one phase of an engine run; its duration goes into ``seconds``."""
    _log(f"{tag}: {name} ...")
    t0 = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - t0, 3)
    _log(f"{tag}: {name} done in {seconds[name]:.1f} s")


def engine_run(model, tp_size: int, device: str, dtype, requests, decode_tokens: int = 64,
               **settings: Any) -> dict[str, Any]:
    """Batch-1 decode step time, all-reduce bytes per token and workload throughput of the engine at ``tp_size``."""
    from inferlab.bench.workloads import NullTokenizer, run_engine
    from inferlab.engine.llm import build_engine

    tag, phases = f"TP={tp_size}{' eager' if settings.get('enforce_eager') else ''}", {}
    with _phase(tag, "build engine", phases):
        engine = build_engine(model, NullTokenizer(), device=device, dtype=dtype, tensor_parallel_size=tp_size,
                              **settings)
    runner = engine.runner
    try:
        with _phase(tag, "warm-up", phases):
            run_engine(engine, requests[:2], realtime=False)
        with _phase(tag, "batch-1 decode", phases):
            steps, metered = _batch1_decode(engine, tp_size, decode_tokens)
        with _phase(tag, "workload", phases):
            result = run_engine(engine, requests, realtime=False)
        tokens = 128 + decode_tokens - 1  # every token through the model once: prompt, then the decodes
        row = {"tp": tp_size, "decode_step_ms": [1e3 * t for t in steps],
               "decode_step_ms_median": 1e3 * statistics.median(steps),
               "all_reduce_calls": metered[0], "all_reduce_bytes_per_token": metered[1] / tokens,
               "throughput_tok_s": result.output_tokens / result.wall_s, "wall_s": result.wall_s,
               "output_tokens": result.output_tokens, "kv_blocks": runner.num_blocks,
               "cuda_graphs": runner.graphs is not None, "settings": {k: str(v) for k, v in settings.items()},
               "phase_seconds": phases, "kv_cache_bytes_per_rank": runner.kv_cache.nbytes()}
    finally:
        if tp_size > 1:
            with _phase(tag, "shutdown", phases):
                runner.shutdown()
    return row


def _batch1_decode(engine, tp_size: int, decode_tokens: int) -> tuple[list[float], tuple[int, int]]:
    """One request (a 128-token prompt, ``decode_tokens`` outputs): its decode steps' seconds and the all-reduces counted.

    A decode step's time is the interval from one decode step's start to the next's: schedule,
    forward, sampling. (A step record ends when the forward is launched; with CUDA graphs the GPU
    work then finishes inside the sampling, after the record's end.) The meter counts eager
    all-reduces as they are called and those inside replayed CUDA graphs as captured
    (:func:`inferlab.tp.count_replayed`).
    """
    from inferlab.bench.workloads import Request, run_engine

    runner = engine.runner
    if tp_size > 1:
        runner.call("meter_start", reply=True)
    run_engine(engine, [Request(list(range(1, 129)), decode_tokens)], realtime=False)
    starts = [s.start for s in engine.trace if all(kind == "decode" for _, kind, _ in s.entries)]
    steps = [b - a for a, b in itertools.pairwise(starts)]
    metered = runner.call("meter_stop", reply=True)[0] if tp_size > 1 else (0, 0)
    return steps, tuple(metered)


def _engine_runs(cfg, device, dtype, reqs, cap, settings, sizes=(1, 2)) -> dict[str, Any]:
    """The engine at each TP size in ``sizes``; a size that fails with CUDA graphs is run again with enforce_eager.

    A failure is recorded under ``failed_<size>_<mode>`` beside the runs that finished.
    """
    runs: dict[str, Any] = {}
    attempts = [settings] if settings.get("enforce_eager") else [settings, {**settings, "enforce_eager": True}]
    for t in sizes:
        for attempt in attempts:
            try:
                runs[str(t)] = engine_run(cfg, t, device, dtype, reqs, **cap, **attempt)
                break
            except Exception as err:
                mode = "eager" if attempt.get("enforce_eager") else "default"
                runs[f"failed_{t}_{mode}"] = f"{type(err).__name__}: {err}"
                _log(f"TP={t} ({mode}) failed: {runs[f'failed_{t}_{mode}']}")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return runs


# --------------------------------------------------------------------------- the CLI
def _args(argv):
    ap = argparse.ArgumentParser(prog="python -m inferlab.bench tp", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cpu (gloo) or cuda (NCCL, needs 2 GPUs); default: cuda if 2 GPUs")
    ap.add_argument("--model", default=None, help="a config name in data/configs (default llama-3.2-1b on GPUs, tiny on CPU)")
    ap.add_argument("--requests", type=int, default=64, help="requests of the reduced reference workload")
    ap.add_argument("--output-len", type=int, nargs=2, default=[64, 128], help="output lengths, uniform (inclusive)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["equality", "all_reduce", "matmuls", "engine"])
    ap.add_argument("--eager", action="store_true", help="engine: enforce_eager (no CUDA graphs)")
    ap.add_argument("--tp", type=int, nargs="+", default=[1, 2], help="engine: the TP sizes to run (default 1 2)")
    ap.add_argument("--out", default=None, help="folder for tp-<device>.json (default data/results)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from inferlab.bench import save_result
    from inferlab.bench.workloads import synthetic_requests
    from inferlab.configs import load_config
    from inferlab.engine.config import ModelConfig

    a = _args(argv)
    diagnose("rank 0")  # behind INFERLAB_DIAGNOSE: stack dumps of every rank if a section hangs
    device = a.device or ("cuda" if torch.cuda.device_count() >= 2 else "cpu")
    gpu = device.startswith("cuda")
    name = a.model or ("llama-3.2-1b" if gpu else "tiny")
    cfg = {k: v for k, v in load_config(name).items() if k != "name"}
    config, dtype = ModelConfig.from_dict(cfg), torch.bfloat16 if gpu else torch.float32
    payload: dict[str, Any] = {"device": device, "model": name, "dtype": str(dtype).replace("torch.", ""),
                               "computed_all_reduce_bytes_per_token": tp.all_reduce_bytes_per_token(config, dtype)}

    def save(key, value):
        payload[key] = value
        _log(f"{key}: done")
        return save_result("tp", payload, a.out)

    _log(f"device {device}, model {name}, sections: "
         f"{[k for k in ('equality', 'all_reduce', 'matmuls', 'engine') if k not in a.skip]}")

    if "equality" not in a.skip:
        save("equality", check_equality(device))
    if "all_reduce" not in a.skip:
        save("all_reduce", time_all_reduce(device, config.hidden_size, dtype, repeats=5, inner=20 if gpu else 5))
    if "matmuls" not in a.skip:
        save("matmuls", {str(t): time_sharded_matmuls(config, t, device, dtype, inner=5 if gpu else 1,
                                                       batches=BATCHES if gpu else [1, 16, 64]) for t in (1, 2)})
    if "engine" not in a.skip:
        reqs = synthetic_requests(a.requests, (64, 1024) if gpu else (16, 64), tuple(a.output_len), config.vocab_size)
        settings = {"enforce_eager": True} if a.eager else {}
        cap = {"max_num_seqs": 64, "max_num_batched_tokens": 2048, "num_kv_blocks": 8192} if gpu else {"num_kv_blocks": 256}
        runs = _engine_runs(cfg, device, dtype, reqs, cap, settings, sizes=a.tp)
        save("engine", {"requests": a.requests, "prompt_len": [64, 1024] if gpu else [16, 64],
                        "output_len": a.output_len, "eager": a.eager, "runs": runs})
    path = save_result("tp", payload, a.out)
    print(summary(payload))
    print(f"wrote {path}")
    return 0


def summary(payload: dict[str, Any]) -> str:
    """A short table of a result file."""
    lines = [f"tp on {payload['device']}, {payload['model']} ({payload['dtype']}): "
             f"all-reduce payload {payload['computed_all_reduce_bytes_per_token']:,} B/token computed"]
    if "equality" in payload:
        lines.append(f"greedy TP=2 == TP=1: {payload['equality']['equal']}")
    for row in payload.get("all_reduce", []):
        lines.append(f"all-reduce batch {row['batch']:>4} ({row['bytes']:>9,} B): {1e6 * min(row['seconds']):8.1f} us")
    for t, rows in payload.get("matmuls", {}).items():
        lines += [f"projections TP={t} batch {r['batch']:>4}: {1e3 * min(r['seconds']):8.3f} ms" for r in rows]
    for t, r in payload.get("engine", {}).get("runs", {}).items():
        if not isinstance(r, dict):
            lines.append(f"engine {t}: {r}")
            continue
        lines.append(f"engine TP={t}{'' if r.get('cuda_graphs') else ' (eager)'}: decode step at batch 1 "
                     f"{r['decode_step_ms_median']:.2f} ms, {r['throughput_tok_s']:.0f} tok/s, all-reduce "
                     f"{r['all_reduce_bytes_per_token']:,.0f} B/token measured, KV {r['kv_cache_bytes_per_rank']:,} B/rank")
    return "\n".join(lines)
