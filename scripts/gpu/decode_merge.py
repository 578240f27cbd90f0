"""The paged decode kernel with its merge folded in, beside the two-kernel form it replaced.

    git show fa952f9:lib/inferlab/attention/paged_triton.py > /tmp/previous_paged_triton.py
    python scripts/gpu/decode_merge.py OUT_DIR [/tmp/previous_paged_triton.py]

For Llama-3-8B's attention (32 query heads, 8 KV heads, head dim 128, bf16, blocks of 16) at
batch 1 and 32 and contexts 128 to 8192: one CUDA graph of 32 decode calls, one per layer, each
on its own scattered blocks, timed as the median of 20 replays (below about 1500 tokens at batch
1 all 32 layers' K/V stay in L2 between replays; in a real step the weights evict them, hence the
step timings). The current kernel runs with :data:`MIN_SPLIT_TOKENS` at 64 to 1024 keys per
slice (the split count fixed at :func:`decode_splits`, as inside the engine's graphs); the
previous module (decode kernel + merge kernel, 64-key slices), when given, runs beside it in the
same process. Every output is checked against the float32 reference. Then the graphed
Llama-3-8B batch-1 engine step (bf16 and int4 linears, 128 tokens cached) is timed with each form
in its attention, alternated twice. Writes ``OUT_DIR/decode-merge-<gpu>.json``.
"""

from __future__ import annotations

import functools
import importlib.util
import statistics
import sys

import torch

from inferlab.attention import paged as ref
from inferlab.attention import paged_triton as pt
from inferlab.bench import save_result
from inferlab.device import time_cuda_graph

LAYERS, HQ, HKV, D, BS = 32, 32, 8, 128, 16
CONTEXTS, BATCHES = (128, 512, 2048, 8192), (1, 32)
MIN_SPLITS = (64, 128, 256, 512, 1024)


def load_previous(path: str):
    spec = importlib.util.spec_from_file_location("previous_paged_triton", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layers_of(batch: int, ctx: int, gen: torch.Generator):
    """Per layer: queries, context lengths and a shuffled block table into one shared pool."""
    per_seq = -(-(ctx + 1) // BS)
    blocks = LAYERS * batch * per_seq
    k = torch.randn(blocks, BS, HKV, D, generator=gen, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(blocks, BS, HKV, D, generator=gen, device="cuda", dtype=torch.bfloat16)
    order = torch.randperm(blocks, generator=gen, device="cuda").int()
    layers = []
    for i in range(LAYERS):
        table = order[i * batch * per_seq:(i + 1) * batch * per_seq].view(batch, per_seq)
        q = torch.randn(batch, HQ, D, generator=gen, device="cuda", dtype=torch.bfloat16)
        layers.append((q, table, torch.full((batch,), ctx, dtype=torch.int32, device="cuda")))
    return k, v, layers


def time_us(fn) -> float:
    return 1e6 * statistics.median(time_cuda_graph(fn, 20)) / LAYERS


def measure(batch: int, ctx: int, prev, gen: torch.Generator) -> dict:
    """One (batch, context) row: error against the reference and µs per layer of each kernel form."""
    k, v, layers = layers_of(batch, ctx, gen)
    splits = pt.decode_splits(batch, HKV)
    q0, t0, c0 = layers[0]
    blocks = t0.flatten().long()  # the reference on a float32 copy of layer 0's blocks only
    dense = torch.arange(len(blocks), device="cuda").view(t0.shape)
    want = ref.paged_attention(q0.float(), k[blocks].float(), v[blocks].float(), dense, c0.long())
    forms = {f"min{m}": functools.partial(pt.paged_decode, num_splits=splits, min_split_tokens=m) for m in MIN_SPLITS}
    if prev is not None:
        forms = {"previous": functools.partial(prev.paged_decode, num_splits=splits), **forms}
    row = {"batch": batch, "context": ctx, "num_splits": splits}
    for name, decode in forms.items():
        row[f"{name}_err"] = float((decode(q0, k, v, t0, c0).float() - want).abs().max())
        row[f"{name}_us"] = time_us(lambda decode=decode: [decode(q, k, v, t, c) for q, t, c in layers])
    return row


def engine_steps(prev) -> list[dict]:
    """The graphed Llama-3-8B batch-1 step (bf16 and int4 linears, 128 tokens cached) with each
    decode form swapped into the engine's attention backend, alternated twice in one process."""
    from inferlab.bench.quant import CONTEXT, EngineStep, make_variant
    from inferlab.configs import load_config
    from inferlab.device import capture_cuda_graph_output
    from inferlab.engine.model_runner import ModelRunner

    current, default = pt.paged_decode, pt.MIN_SPLIT_TOKENS
    forms = {f"min{m}": (current, m) for m in (64, 128, 256)}
    if prev is not None:
        forms = {"previous": (prev.paged_decode, default), **forms}
    runner = ModelRunner(load_config("llama-3-8b"), device="cuda", dtype="bfloat16", enforce_eager=True,
                         num_kv_blocks=16)
    rows = []
    for variant in ("bf16", "int4"):
        model = runner.model if variant == "bf16" else make_variant(runner.model, variant)
        step = EngineStep(runner, 1, CONTEXT, model)
        row, logits = {"variant": variant}, {}
        for rep in range(2):
            for name, (decode, min_split) in forms.items():
                pt.paged_decode, pt.MIN_SPLIT_TOKENS = decode, min_split  # attend() looks both up per call
                if rep == 0:
                    graph, out = capture_cuda_graph_output(step.step)
                    graph.replay()
                    logits[name] = out.float().clone()
                row.setdefault(f"{name}_us", []).append(1e6 * statistics.median(time_cuda_graph(step.step, 30)))
        pt.paged_decode, pt.MIN_SPLIT_TOKENS = current, default
        first = next(iter(logits.values()))
        row["logits_max_diff"] = max(float((x - first).abs().max() / first.abs().max()) for x in logits.values())
        rows.append(row)
        print(row, flush=True)
    return rows


def main(out_dir: str, previous: str | None) -> None:
    prev = load_previous(previous) if previous else None
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for batch in BATCHES:
        for ctx in CONTEXTS:
            rows.append(measure(batch, ctx, prev, gen))
            print({key: round(val, 2) if isinstance(val, float) else val for key, val in rows[-1].items()}, flush=True)
            torch.cuda.empty_cache()
    worst = max(val for row in rows for key, val in row.items() if key.endswith("_err"))
    assert worst < 0.05, f"a decode output is {worst} off the float32 reference"
    steps = engine_steps(prev)
    save_result("decode-merge", {
        "method": __doc__.split("\n\n")[2].replace("\n", " "),
        "previous": "fa952f9 paged_triton.py (decode kernel, then a merge kernel over 32 slices)" if prev else None,
        "default_min_split_tokens": pt.MIN_SPLIT_TOKENS, "rows": rows, "engine_steps": steps}, out_dir)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
