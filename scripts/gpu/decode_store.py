"""The decode kernel that writes the step's K/V itself, beside a store kernel followed by decode.

    git show fa952f9:lib/inferlab/attention/paged_triton.py > /tmp/previous_paged_triton.py
    python scripts/gpu/decode_store.py OUT_DIR [/tmp/previous_paged_triton.py]

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

import statistics
import sys

import torch
from decode_merge import HKV, LAYERS, layers_of, load_previous, time_us

from inferlab.attention import paged as ref
from inferlab.attention import paged_triton as pt
from inferlab.attention.paged import write_slots
from inferlab.bench import save_result
from inferlab.device import capture_cuda_graph_output, time_cuda_graph


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
    blocks = t0.flatten().long()
    dense = torch.arange(len(blocks), device="cuda").view(t0.shape)
    want = ref.paged_attention(q0.float(), want_k[blocks].float(), want_v[blocks].float(), dense, c0.long())
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


def engine_steps(prev) -> list[dict]:
    from inferlab.attention.layer import Attention
    from inferlab.bench.quant import CONTEXT, EngineStep, make_variant
    from inferlab.configs import load_config
    from inferlab.engine.model_runner import ModelRunner

    def merged(q, k, v, meta, k_cache, v_cache, scale):
        pt.store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        return pt.paged_decode(q, k_cache, v_cache, meta.block_tables, meta.context_lens, scale, meta.num_splits)

    forms = {"merged": merged, "fused": pt.attend}
    if prev is not None:
        def previous(q, k, v, meta, k_cache, v_cache, scale):
            prev.store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
            return prev.attend(q, k, v, meta, k_cache, v_cache, scale)

        forms = {"previous": previous, **forms}
    runner = ModelRunner(load_config("llama-3-8b"), device="cuda", dtype="bfloat16", enforce_eager=True,
                         num_kv_blocks=16)
    rows = []
    for variant in ("bf16", "int4"):
        model = runner.model if variant == "bf16" else make_variant(runner.model, variant)
        attention = [m for m in model.modules() if isinstance(m, Attention)]
        assert len(attention) == LAYERS and all(m.tables for m in attention)
        step = EngineStep(runner, 1, CONTEXT, model)
        row, logits = {"variant": variant}, {}
        for rep in range(2):
            for name, attend in forms.items():
                for m in attention:
                    m.attend = attend
                if rep == 0:
                    graph, out = capture_cuda_graph_output(step.step)
                    graph.replay()
                    logits[name] = out.float().clone()
                row.setdefault(f"{name}_us", []).append(1e6 * statistics.median(time_cuda_graph(step.step, 30)))
        for m in attention:
            m.attend = pt.attend
        first = next(iter(logits.values()))
        row["logits_max_diff"] = max(float((x - first).abs().max() / first.abs().max()) for x in logits.values())
        rows.append(row)
        print(row, flush=True)
    return rows


def main(out_dir: str, previous: str | None) -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for batch in (1, 32):
        for ctx in (128, 2048, 8192):
            rows.append(measure(batch, ctx, gen))
            print({key: round(val, 3) if isinstance(val, float) else val for key, val in rows[-1].items()}, flush=True)
            torch.cuda.empty_cache()
    assert all(r["fused_cache_identical"] and r["fused_err"] < 0.05 for r in rows), rows
    steps = engine_steps(load_previous(previous) if previous else None)
    save_result("decode-store", {"method": __doc__.split("\n\n")[2].replace("\n", " "), "rows": rows,
                                 "engine_steps": steps}, out_dir)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
