"""The paged decode kernel with its merge folded in, beside the two-kernel form it replaced.

    git show fa952f9:lib/inferlab/attention/paged_triton.py > scripts/gpu/_previous_paged_triton.py
    python scripts/gpu/decode_merge.py OUT_DIR [scripts/gpu/_previous_paged_triton.py]

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
import sys

import torch
from attention_forms import (
    HKV,
    attend_of,
    engine_step_forms,
    layer0_reference,
    layers_of,
    load_module,
    store_then_decode,
    time_us,
)

from inferlab.attention import paged_triton as pt
from inferlab.bench import save_result

CONTEXTS, BATCHES = (128, 512, 2048, 8192), (1, 32)
MIN_SPLITS = (64, 128, 256, 512, 1024)


def measure(batch: int, ctx: int, prev, gen: torch.Generator) -> dict:
    """One (batch, context) row: error against the reference and µs per layer of each kernel form."""
    k, v, layers = layers_of(batch, ctx, gen)
    splits = pt.decode_splits(batch, HKV)
    q0, t0, c0 = layers[0]
    want = layer0_reference(k, v, layers)
    forms = {f"min{m}": functools.partial(pt.paged_decode, num_splits=splits, min_split_tokens=m) for m in MIN_SPLITS}
    if prev is not None:
        forms = {"previous": functools.partial(prev.paged_decode, num_splits=splits), **forms}
    row = {"batch": batch, "context": ctx, "num_splits": splits}
    for name, decode in forms.items():
        row[f"{name}_err"] = float((decode(q0, k, v, t0, c0).float() - want).abs().max())
        row[f"{name}_us"] = time_us(lambda decode=decode: [decode(q, k, v, t, c) for q, t, c in layers])
    return row


def main(out_dir: str, previous: str | None) -> None:
    prev = load_module(previous) if previous else None
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for batch in BATCHES:
        for ctx in CONTEXTS:
            rows.append(measure(batch, ctx, prev, gen))
            print({key: round(val, 2) if isinstance(val, float) else val for key, val in rows[-1].items()}, flush=True)
            torch.cuda.empty_cache()
    worst = max(val for row in rows for key, val in row.items() if key.endswith("_err"))
    assert worst < 0.05, f"a decode output is {worst} off the float32 reference"
    forms = {f"min{m}": store_then_decode(m) for m in (64, 128, 256)}
    if prev is not None:
        forms = {"previous": attend_of(prev), **forms}
    save_result("decode-merge", {
        "method": __doc__.split("\n\n")[2].replace("\n", " "),
        "previous": "fa952f9 paged_triton.py (decode kernel, then a merge kernel over 32 slices)" if prev else None,
        "default_min_split_tokens": pt.MIN_SPLIT_TOKENS, "rows": rows,
        "engine_steps": engine_step_forms(forms, reps=2)}, out_dir)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
