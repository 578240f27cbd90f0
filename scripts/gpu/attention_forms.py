"""What the decode-attention scripts share (decode_merge.py, decode_store.py, attention_ab.py).

- Llama-3-8B's attention shape and :func:`layers_of`: 32 layers of queries and scattered block
  tables into one bf16 pool; :func:`layer0_reference`, the float32 answer for layer 0 over a copy of
  its blocks only; :func:`time_us`, µs per layer of one CUDA graph of all 32.
- :func:`load_module`: a paged_triton.py from another commit (``git show COMMIT:path > FILE``; keep
  the file untracked but not ignored so that ``run`` carries it); :func:`attend_of` turns its
  ``attend`` into one that also stores the step's K/V, as every version of the engine's layer did.
- :func:`engine_step_forms`: the graphed Llama-3-8B batch-1 engine step with each ``attend`` form
  swapped into every layer, alternated ``reps`` times in one process, and the logits compared.
"""

from __future__ import annotations

import importlib.util
import inspect
import statistics

import torch

from inferlab.attention import paged as ref
from inferlab.attention import paged_triton as pt
from inferlab.device import capture_cuda_graph_output, time_cuda_graph

LAYERS, HQ, HKV, D, BS = 32, 32, 8, 128, 16


def load_module(path: str, name: str = "other_paged_triton"):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layers_of(batch: int, ctx: int, gen: torch.Generator):
    """``(k_pool, v_pool, [(q, block_table, context_lens)] * LAYERS)``, each layer on its own blocks."""
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


def layer0_reference(k: torch.Tensor, v: torch.Tensor, layers) -> torch.Tensor:
    """The float32 decode answer of layer 0, on a copy of its blocks only (the pool can be 30 GB)."""
    q0, t0, c0 = layers[0]
    blocks = t0.flatten().long()
    dense = torch.arange(len(blocks), device=k.device).view(t0.shape)
    return ref.paged_attention(q0.float(), k[blocks].float(), v[blocks].float(), dense, c0.long())


def time_us(fn) -> float:
    """µs per layer of ``fn`` (all ``LAYERS`` layers) captured as one CUDA graph: median of 20 replays."""
    return 1e6 * statistics.median(time_cuda_graph(fn, 20)) / LAYERS


def attend_of(module):
    """``module.attend`` as the engine layer calls it: versions whose decode kernel does not store
    the step's K/V (before 1e8b7af) get the ``store_kv`` that the layer used to run first."""
    if "new_kv" in inspect.signature(module.paged_decode).parameters:
        return module.attend

    def store_then_attend(q, k, v, meta, k_cache, v_cache, scale):
        module.store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        return module.attend(q, k, v, meta, k_cache, v_cache, scale)

    return store_then_attend


def store_then_decode(min_split_tokens: int | None = None):
    """The working tree's kernels as two launches (``store_kv``, then ``paged_decode`` with its
    merge inside): the form of cf51feb, with ``min_split_tokens`` keys per slice at least."""
    def attend(q, k, v, meta, k_cache, v_cache, scale):
        pt.store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        return pt.paged_decode(q, k_cache, v_cache, meta.block_tables, meta.context_lens, scale, meta.num_splits,
                               min_split_tokens=min_split_tokens)

    return attend


def engine_step_forms(forms: dict, reps: int) -> list[dict]:
    """Per linear format (bf16, int4): µs of the graphed 8B batch-1 step with each ``attend`` of
    ``forms`` in every layer (``reps`` medians of 30 replays each, forms alternated), and the
    largest difference of a form's logits from the first form's, relative to the largest logit."""
    from inferlab.attention.layer import Attention
    from inferlab.bench.quant import CONTEXT, EngineStep, make_variant
    from inferlab.configs import load_config
    from inferlab.engine.model_runner import ModelRunner

    runner = ModelRunner(load_config("llama-3-8b"), device="cuda", dtype="bfloat16", enforce_eager=True,
                         num_kv_blocks=16)
    rows = []
    for variant in ("bf16", "int4"):
        model = runner.model if variant == "bf16" else make_variant(runner.model, variant)
        attention = [m for m in model.modules() if isinstance(m, Attention)]
        assert len(attention) == LAYERS and all(m.tables for m in attention)
        step = EngineStep(runner, 1, CONTEXT, model)
        row, logits = {"variant": variant}, {}
        for rep in range(reps):
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
