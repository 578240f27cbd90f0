"""Sweep the int8/int4 dequantize-matmul tiles on this GPU; write the results and the tuned table.

    python scripts/gpu/quant_sweep.py OUT_DIR [--quick]

For every linear-layer shape of the Llama-3-8B and Llama-3.2-1B decoders (q/k/v fused, o,
gate/up fused, down, LM head), every tile in ``TILES`` at 1 row (batch-1 decode) and 32 rows:
checks the result against the fp32 reference, then times it as a CUDA graph over enough weight
copies that the weights do not sit in L2 (a model's layers do not either), beside cuBLAS bf16
on the same shape. Writes OUT/quant-sweep-<gpu>.json (every timing) and OUT/tuned.json (rows
for lib/inferlab/quant/tuned.json: the fastest tile per shape, and per format and row count the
tile closest to the fastest on average). Kernels are compiled first in parallel processes,
since one Triton compile takes seconds on a slow host.
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from inferlab.bench import save_result
from inferlab.configs import load_config
from inferlab.device import time_cuda_graph
from inferlab.engine.config import ModelConfig
from inferlab.quant import kernels, rtn
from inferlab.quant.kernels import Tile
from inferlab.quant.linear import Int4Linear

GROUP = 128
MODELS = ("llama-3-8b", "llama-3.2-1b")  # configs in data/configs


def layer_shapes(name: str) -> dict[str, tuple[int, int]]:
    """``(N, K)`` of each linear layer of the engine's model for config ``name`` (q/k/v and gate/up fused)."""
    c = ModelConfig.from_dict({k: v for k, v in load_config(name).items() if k != "name"})
    h, q, kv = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    return {"qkv": (q + 2 * kv, h), "o": (h, q), "gate_up": (2 * c.intermediate_size, h),
            "down": (h, c.intermediate_size), "lm_head": (c.vocab_size, h)}

GEMV = {"int8": [(8, 1024), (16, 512), (16, 1024), (32, 256), (32, 512), (64, 256), (64, 512)],
        "int4": [(bn, bk) for bn in (4, 8, 16, 32) for bk in (512, 1024, 2048)] + [(bn, 4096) for bn in (2, 4, 8, 16)]}
DOT = [(32, 128), (64, 128), (64, 256), (128, 128), (32, 256), (32, 512), (64, 512)]


def tiles(fmt: str, rows: int) -> list[Tile]:
    """Candidate tiles of one format for one row (gemv, and int8's dot) or for 32 rows (dot)."""
    # the gemv kernels' K loops are plain ``range``s, which Triton does not software-pipeline (only
    # ``tl.range(..., num_stages=)`` loops without a ``tl.dot``), so their stages are 1: stages 2-4 timed
    # the same in the recorded sweep, and a pipelined int4 loop lost (see inferlab.quant.kernels)
    if rows == 1 and fmt == "int4":  # split: programs sharing each row block's K
        out = [Tile("gemv", 1, bn, bk, w, 1, sp) for (bn, bk), w, sp in itertools.product(GEMV[fmt], (2, 4, 8), (1, 2, 4, 8))]
    elif rows == 1:
        out = [Tile("gemv", 1, bn, bk, w, 1) for (bn, bk), w in itertools.product(GEMV[fmt], (4, 8))]
        out += [Tile("dot", 16, bn, bk, 4, s) for (bn, bk), s in itertools.product(DOT, (3, 4))]
    else:
        out = [Tile("dot", 32, bn, bk, w, s) for (bn, bk), w, s in itertools.product(DOT, (4, 8), (3, 4))]
    if rows > 1 and fmt == "int4":  # W xᵀ: weight rows fill the MMA's large side; split K fills the GPU
        out = [Tile("dot", 32, bn, bk, w, 3, sp) for bn, bk, w, sp in itertools.product((64, 128, 256), (128, 256),
                                                                                          (4, 8), (1, 2, 4, 8))]
    return sorted(set(out))


def buffers(fmt: str, N: int, K: int, device="cuda") -> tuple:
    """Random packed weights of one layer: (qweight, scales, zeros or None)."""
    if fmt == "int8":
        q = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=device)
        return q, (torch.rand(N, device=device) * 0.01 + 1e-3).half(), None
    q = torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, device=device)  # codes in kernel order
    s = (torch.rand(N, K // GROUP, device=device) * 0.01 + 1e-3).half()
    return q, s, torch.randint(0, 16, (N, K // GROUP), dtype=torch.uint8, device=device)


def reference(fmt: str, x: torch.Tensor, q, s, z) -> torch.Tensor:
    if fmt == "int8":
        return x.float() @ rtn.dequantize_int8_absmax(q, s).T
    return x.float() @ Int4Linear(q, s, z).dequantize().T


# ------------------------------------------------------------------ compile in parallel
def _compile(jobs: list) -> int:
    torch.cuda.set_device(0)
    for fmt, rows, tile in jobs:
        K = max(4096, tile.split * tile.bk)  # every program gets a K step (kernels.fits): its first loads are unmasked
        q, s, z = buffers(fmt, 256, K)  # N = 256: every stride a multiple of 16, as in the real shapes
        x = torch.randn(rows, K, device="cuda", dtype=torch.bfloat16)
        kernels.launch(x, q, s, z, 256, K, GROUP if z is not None else 1, tile)
    torch.cuda.synchronize()
    return len(jobs)


def compile_all(jobs: list, procs: int = 14) -> float:
    t0 = time.time()
    chunks = [jobs[i::procs] for i in range(procs)]
    with mp.get_context("spawn").Pool(procs) as pool:
        pool.map(_compile, [c for c in chunks if c])
    return time.time() - t0


# ------------------------------------------------------------------ timing
def graph_us(calls: list, replays: int = 5) -> float:
    """Microseconds per call, median of ``replays`` replays of one CUDA graph of all ``calls``."""
    seconds = time_cuda_graph(lambda: [c() for c in calls], replays)
    return 1e6 * statistics.median(seconds) / len(calls)


def copies_for(nbytes: int, l2_multiple: int = 256 << 20) -> int:
    return max(2, min(64, math.ceil(l2_multiple / nbytes)))


def sweep_shape(model: str, layer: str, N: int, K: int, rows: int, out: list) -> None:
    x = torch.randn(rows, K, device="cuda", dtype=torch.bfloat16)
    n_bf16 = copies_for(2 * N * K)
    ws = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) for _ in range(n_bf16)]
    us = graph_us([lambda w=w: F.linear(x, w) for w in ws])
    base = {"model": model, "layer": layer, "N": N, "K": K, "rows": rows}
    out.append({**base, "fmt": "bf16", "tile": "cublas", "us": us, "GBps": 2 * N * K / us / 1e3})
    del ws
    for fmt in ("int8", "int4"):
        nbytes = N * K if fmt == "int8" else N * K // 2
        bufs = [buffers(fmt, N, K) for _ in range(copies_for(nbytes))]
        ref = reference(fmt, x, *bufs[0])
        group = GROUP if fmt == "int4" else 1
        for tile in tiles(fmt, rows):
            if not kernels.fits(tile, K, group):
                continue
            row = {**base, "fmt": fmt, "tile": list(tile)}
            try:
                got = kernels.launch(x, *bufs[0], N, K, group, tile).float()
                row["rel_err"] = float((got - ref).abs().max() / ref.abs().max())
                row["us"] = graph_us([lambda b=b, g=group, t=tile: kernels.launch(x, *b, N, K, g, t) for b in bufs])
                row["GBps"] = nbytes / row["us"] / 1e3
                again = kernels.launch(x, *bufs[0], N, K, group, tile).float()  # after the replays: split counters reset
                row["rel_err"] = max(row["rel_err"], float((again - ref).abs().max() / ref.abs().max()))
            except Exception as err:  # a tile that does not compile or fit is recorded, not fatal
                row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
            out.append(row)
        del bufs, ref
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ the tuned table
def table(rows: list) -> dict:
    """Fastest correct tile per (format, rows, N, K), and per (format, rows) the best on average."""
    good = [r for r in rows if r["fmt"] != "bf16" and "us" in r and r["rel_err"] < 1e-2]
    best, keys = {}, {}
    for r in good:
        key = f"{r['fmt']}/{r['rows']}/{r['N']}/{r['K']}"
        if key not in best or r["us"] < best[key]["us"]:
            best[key] = r
    tuned = {k: r["tile"] for k, r in best.items()}
    for r in good:  # slowdown of each tile against the best of its shape
        keys.setdefault((r["fmt"], r["rows"], tuple(r["tile"])), []).append(
            math.log(r["us"] / best[f"{r['fmt']}/{r['rows']}/{r['N']}/{r['K']}"]["us"]))
    shapes: dict = {}  # (format, rows) -> the shapes swept: a tile must have run on all of them
    for r in good:
        shapes.setdefault((r["fmt"], r["rows"]), set()).add((r["N"], r["K"]))
    for (fmt, nrows), swept in shapes.items():
        cands = [(statistics.fmean(v), t) for (f, m, t), v in keys.items() if (f, m) == (fmt, nrows) and len(v) == len(swept)]
        if cands:
            tile = list(min(cands)[1])
            for bucket in ((1,) if nrows == 1 else (16, 32, 64)):
                tuned[f"{fmt}/{bucket}"] = tile
    return tuned


def main(argv: list[str]) -> int:
    out_dir = Path(argv[0])
    quick = "--quick" in argv
    jobs = [(fmt, rows, t) for rows in (1, 32) for fmt in ("int8", "int4") for t in tiles(fmt, rows)]
    print(f"{len(jobs)} kernels to compile", flush=True)
    print(f"compiled in {compile_all(jobs):.0f} s", flush=True)
    rows: list = []
    t0 = time.time()
    for model in MODELS:
        for (layer, (N, K)), r in itertools.product(layer_shapes(model).items(), (1, 32)):
            if quick and model != "llama-3-8b":
                continue
            sweep_shape(model, layer, N, K, r, rows)
            print(f"{model} {layer} rows={r}: {time.time() - t0:.0f} s", flush=True)
            tuned = save(out_dir, rows)  # after every shape: a timeout keeps what was measured
    summarize(rows, tuned)
    return 0


def save(out_dir: Path, rows: list) -> dict:
    """The sweep as ``quant-sweep-<gpu>.json`` (:func:`inferlab.bench.save_result`) and its table as tuned.json."""
    tuned = table(rows)
    save_result("quant-sweep", {"triton": getattr(kernels.triton, "__version__", None), "group": GROUP,
                                "method": "CUDA graph of one launch per weight copy (copies >= 256 MB in all), "
                                          "median of 5 replays; the one-row kernels launch with programmatic "
                                          "dependent launch (inferlab.pdl)", "tuned": tuned, "rows": rows}, out_dir)
    cuda_rows = {k: v for k, v in kernels._gpu_rows().items() if k.startswith("cuda-int4/")}  # quant_cuda.py's
    (out_dir / "tuned.json").write_text(json.dumps({torch.cuda.get_device_name(): {**tuned, **cuda_rows}}, indent=1))
    return tuned


def summarize(rows: list, tuned: dict) -> None:
    """Per shape and row count: bf16 µs, best int8 / int4 µs, their GB/s and speedups."""
    for (model, layer, r), grp in itertools.groupby(rows, key=lambda q: (q["model"], q["layer"], q["rows"])):
        grp = list(grp)
        bf = next(q for q in grp if q["fmt"] == "bf16")
        line = f"{model:13s} {layer:8s} rows={r:<3d} bf16 {bf['us']:8.1f} us {bf['GBps']:6.0f} GB/s"
        for fmt in ("int8", "int4"):
            ok = [q for q in grp if q["fmt"] == fmt and "us" in q and q["rel_err"] < 1e-2]
            if ok:
                b = min(ok, key=lambda q: q["us"])
                line += f" | {fmt} {b['us']:8.1f} us {b['GBps']:6.0f} GB/s x{bf['us'] / b['us']:.2f} {b['tile']}"
        print(line, flush=True)
    print("defaults:", {k: v for k, v in tuned.items() if k.count("/") == 1})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
