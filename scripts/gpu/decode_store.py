"""The decode kernel that writes the step's K/V itself, beside a store kernel followed by decode.

    git show fa952f9:lib/inferlab/attention/paged_triton.py > scripts/gpu/_previous_paged_triton.py
    python scripts/gpu/decode_store.py OUT_DIR [scripts/gpu/_previous_paged_triton.py]

Per layer (Llama-3-8B's attention as in scripts/gpu/decode_merge.py: one CUDA graph of 32 layers,
median of 20 replays): ``store_kv`` then ``paged_decode``, against ``paged_decode(new_kv=...)``,
each checked against the float32 reference over caches written by ``write_slots`` (and the caches
compared bit for bit). Then the graphed Llama-3-8B batch-1 engine step (bf16 and int4 linears,
128 tokens cached) with three attention forms swapped into every layer, alternated twice in one
process: ``previous`` (store, decode, merge: three kernels, as of fa952f9, when given), ``merged``
(store, then decode with the merge inside: two) and ``fused`` (the backend as it is: one).
Writes ``OUT_DIR/decode-store-<gpu>.json``.
"""

from __future__ import annotations

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
from inferlab.attention.paged import write_slots
from inferlab.bench import save_result


def measure(batch: int, ctx: int, gen: torch.Generator) -> dict:
    """Both forms on the same caches: error against the reference, caches identical, µs per layer."""
    k_cache, v_cache, layers = layers_of(batch, ctx, gen)
    block_size = k_cache.shape[1]
    news = []
    for _, table, lens in layers:
        last = (lens.long() - 1)
        slots = table.long().gather(1, (last // block_size)[:, None])[:, 0] * block_size + last % block_size
        k, v = (torch.randn(batch, *k_cache.shape[2:], generator=gen, device="cuda", dtype=k_cache.dtype)
                for _ in range(2))
        news.append((k, v, slots))
    q0, t0, c0 = layers[0]
    k0, v0, s0 = news[0]
    want_k, want_v = k_cache.clone(), v_cache.clone()
    write_slots(k0, v0, s0, want_k, want_v)
    want = layer0_reference(want_k, want_v, layers)
    splits = pt.decode_splits(batch, HKV)
    got_k, got_v = k_cache.clone(), v_cache.clone()
    got = pt.paged_decode(q0, got_k, got_v, t0, c0, num_splits=splits, new_kv=(k0, v0, s0))
    row = {"batch": batch, "context": ctx, "num_splits": splits,
           "fused_err": float((got.float() - want).abs().max()),
           "fused_cache_identical": bool(torch.equal(got_k, want_k) and torch.equal(got_v, want_v))}
    del got_k, got_v, want_k, want_v

    def separate():
        for (q, t, c), (k, v, s) in zip(layers, news, strict=True):
            pt.store_kv(k, v, k_cache, v_cache, s)
            pt.paged_decode(q, k_cache, v_cache, t, c, num_splits=splits)

    def fused():
        for (q, t, c), new in zip(layers, news, strict=True):
            pt.paged_decode(q, k_cache, v_cache, t, c, num_splits=splits, new_kv=new)

    row["separate_us"], row["fused_us"] = time_us(separate), time_us(fused)
    return row


def main(out_dir: str, previous: str | None) -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for batch in (1, 32):
        for ctx in (128, 2048, 8192):
            rows.append(measure(batch, ctx, gen))
            print({key: round(val, 3) if isinstance(val, float) else val for key, val in rows[-1].items()}, flush=True)
            torch.cuda.empty_cache()
    assert all(r["fused_cache_identical"] and r["fused_err"] < 0.05 for r in rows), rows
    forms = {"merged": store_then_decode(), "fused": pt.attend}
    if previous:
        forms = {"previous": attend_of(load_module(previous)), **forms}
    save_result("decode-store", {"method": __doc__.split("\n\n")[2].replace("\n", " "), "rows": rows,
                                 "engine_steps": engine_step_forms(forms, reps=2)}, out_dir)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
