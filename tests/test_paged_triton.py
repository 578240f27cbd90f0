"""The Triton paged-attention kernels (inferlab.attention.paged_triton) against the reference.

The reference is `inferlab.attention.paged`: gather, explicit masks, float32 matmuls. Every case
draws a random, scattered block layout from a shuffled pool, random context lengths (the largest
one exactly the case's maximum) and, for prefill, random query lengths, so chunked prefill over
cached context is covered. On CUDA: GQA ratios 1-8, contexts 1-8192, block sizes 16 and 32, fp32
(exact: no TF32) and bf16 (within bf16 tolerance). Without CUDA the same checks run at small sizes
in Triton's CPU interpreter, in a subprocess with TRITON_INTERPRET=1 (it must be set before triton
is imported), so a kernel change cannot land untested.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inferlab.attention import paged as ref
from inferlab.paging import cdiv

LIB = str(Path(__file__).resolve().parents[1] / "lib")
HAS_CUDA = torch.cuda.is_available()
try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def random_case(seed: int, num_seqs: int, group: int, max_ctx: int, block_size: int, kv_heads: int = 2,
                head_dim: int = 64, dtype=torch.float32, device="cpu"):
    """Caches, scattered block tables, context and query lengths, decode and prefill queries."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    ctx = [max_ctx] + [rng.randint(1, max_ctx) for _ in range(num_seqs - 1)]
    num_blocks = sum(cdiv(n, block_size) for n in ctx) + 5
    pool = list(range(num_blocks))
    rng.shuffle(pool)
    tables, at = [], 0
    for n in ctx:
        tables.append(pool[at:at + cdiv(n, block_size)])
        at += cdiv(n, block_size)
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache, v_cache = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(2))
    qlens = [rng.randint(1, min(n, 24)) for n in ctx]
    heads = kv_heads * group
    q_dec = torch.randn(num_seqs, heads, head_dim, generator=gen).to(device, dtype)
    q_pre = torch.randn(sum(qlens), heads, head_dim, generator=gen).to(device, dtype)
    return k_cache, v_cache, tables, torch.tensor(ctx), torch.tensor(qlens), q_dec, q_pre


def check_case(seed: int, num_seqs: int, group: int, max_ctx: int, block_size: int, dtype=torch.float32,
               device="cpu", head_dim: int = 64) -> dict:
    """Largest error of decode, prefill and the K/V store against the reference, in units of the tolerance."""
    from inferlab.attention import paged_triton as pt

    kc, vc, tables, ctx, qlens, q_dec, q_pre = random_case(seed, num_seqs, group, max_ctx, block_size,
                                                            head_dim=head_dim, dtype=dtype, device=device)
    bt = ref.block_tables_tensor(tables, device)
    ctx_d, qlens_d = ctx.to(device), qlens.to(device)
    bt32, ctx32 = bt.clamp_min(0).int(), ctx_d.int()
    errors = {}
    want = ref.paged_attention(q_dec.float(), kc.float(), vc.float(), bt, ctx_d)
    errors["decode"] = _err(pt.paged_decode(q_dec, kc, vc, bt32, ctx32), want)
    # short slices: most contexts span several, so the last program of each group merges them
    merged = pt.paged_decode(q_dec, kc, vc, bt32, ctx32, num_splits=7, min_split_tokens=1)
    errors["decode"] = max(errors["decode"], _err(merged, want))
    errors["counters_reset"] = int(pt._COUNTERS[str(q_dec.device)].abs().sum()) == 0
    errors["decode_new_kv"], errors["new_kv_stored_exactly"] = _decode_with_new_kv(q_dec, kc, vc, tables, ctx, bt,
                                                                                   device, dtype)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), qlens.cumsum(0)]).to(device).int()
    got = pt.paged_prefill(q_pre, kc, vc, bt32, cu, ctx32, int(qlens.max()))
    want = ref.paged_attention_prefill(q_pre.float(), kc.float(), vc.float(), bt, ctx_d, qlens_d)
    errors["prefill"] = _err(got, want)
    errors["store_exact"] = _store_is_exact(kc, vc, device, dtype)
    return {"case": [seed, num_seqs, group, max_ctx, block_size, str(dtype)], "errors": errors,
            "ok": max(errors["decode"], errors["decode_new_kv"], errors["prefill"]) <= TOL[dtype]
            and errors["store_exact"] and errors["counters_reset"] and errors["new_kv_stored_exactly"]}


def _decode_with_new_kv(q, k_cache, v_cache, tables, ctx, bt, device, dtype) -> tuple[float, bool]:
    """``paged_decode(new_kv=...)``, which writes each sequence's newest K/V itself, against the
    reference over caches written by ``write_slots``: the largest error (one slice and many), and
    whether the kernel left the caches bit-identical to them."""
    from inferlab.attention import paged_triton as pt
    from inferlab.attention.paged import write_slots

    bs = k_cache.shape[1]
    last = [n - 1 for n in ctx.tolist()]  # each sequence's newest position
    slots = torch.tensor([t[p // bs] * bs + p % bs for t, p in zip(tables, last, strict=True)]).to(device)
    k, v = (torch.randn(len(tables), *k_cache.shape[2:]).to(device, dtype) for _ in range(2))
    want_k, want_v = k_cache.clone(), v_cache.clone()
    write_slots(k, v, slots, want_k, want_v)
    want = ref.paged_attention(q.float(), want_k.float(), want_v.float(), bt, ctx.to(device))
    worst, exact = 0.0, True
    for splits, min_split in ((None, None), (7, 1)):
        got_k, got_v = k_cache.clone(), v_cache.clone()
        out = pt.paged_decode(q, got_k, got_v, bt.clamp_min(0).int(), ctx.to(device).int(), num_splits=splits,
                              min_split_tokens=min_split, new_kv=(k, v, slots))
        worst = max(worst, _err(out, want))
        exact = exact and torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
    return worst, exact


def _err(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute error relative to the output's scale (attention outputs are O(1) here)."""
    return float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1.0))


def _store_is_exact(k_cache: torch.Tensor, v_cache: torch.Tensor, device, dtype) -> bool:
    from inferlab.attention.paged import write_slots
    from inferlab.attention.paged_triton import store_kv

    slots_total = k_cache.shape[0] * k_cache.shape[1]
    n = min(37, slots_total)
    slots = torch.randperm(slots_total)[:n]
    slots[::5] = -1  # padding rows own no slot
    k = torch.randn(n, *k_cache.shape[2:]).to(device, dtype)
    v = torch.randn(n, *k_cache.shape[2:]).to(device, dtype)
    got_k, got_v, want_k, want_v = k_cache.clone(), v_cache.clone(), k_cache.clone(), v_cache.clone()
    store_kv(k, v, got_k, got_v, slots.to(device))
    keep = slots >= 0
    write_slots(k[keep.to(device)], v[keep.to(device)], slots[keep].to(device), want_k, want_v)
    return bool(torch.equal(got_k, want_k) and torch.equal(got_v, want_v))


def check_fused(device, dtype) -> dict:
    """The fused kernels (RMSNorm, residual add + RMSNorm, q/k rotary, SiLU-and-multiply) against
    the model's PyTorch expressions."""
    from inferlab.engine.fused_triton import check_against_pytorch

    checks = check_against_pytorch(device, dtype)
    return {"case": ["fused", str(dtype)], "ok": len(checks) == 4 and all(checks.values()), "checks": checks}


# ------------------------------------------------------------------ CUDA
cuda = pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and triton")
GPU_CASES = [(s, n, g, ctx, bs) for s, (n, g, ctx) in enumerate(
    [(3, 1, 1, ), (5, 2, 17), (4, 4, 300), (2, 8, 8192), (8, 1, 2048), (16, 8, 1000), (1, 4, 8192), (64, 2, 700)])
    for bs in (16, 32)]


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", GPU_CASES, ids=[f"n{c[1]}-g{c[2]}-ctx{c[3]}-bs{c[4]}" for c in GPU_CASES])
def test_kernels_match_reference_on_cuda(case, dtype):
    result = check_case(*case, dtype=dtype, device="cuda")
    assert result["ok"], result


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_elementwise_kernels_match_pytorch_on_cuda(dtype):
    from inferlab.engine.fused_triton import fused_ok

    assert check_fused("cuda", dtype)["ok"] and fused_ok("cuda")


@cuda
@pytest.mark.gpu
def test_decode_splits_give_the_same_answer():
    from inferlab.attention import paged_triton as pt

    kc, vc, tables, ctx, _, q, _ = random_case(0, 3, 4, 3000, 16, device="cuda")
    bt = ref.block_tables_tensor(tables, "cuda").clamp_min(0).int()
    ctx[1] = 0  # a padding row: zeros
    outs = [pt.paged_decode(q, kc, vc, bt, ctx.cuda().int(), num_splits=s, min_split_tokens=m)
            for s in (1, 7, 32) for m in (1, 64, 256, 4096)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-5, rtol=1e-5)
    assert not outs[0][1].any()
    assert not pt._COUNTERS["cuda:0"].any()


@cuda
@pytest.mark.gpu
def test_decode_that_stores_the_new_kv_replays_as_store_then_decode():
    """The graphed one-kernel decode step (K/V written by the decode kernel) against store_kv followed
    by paged_decode, eagerly, over replays with new keys, values, slots and a padding row."""
    from inferlab.attention import paged_triton as pt
    from inferlab.device import capture_cuda_graph_output

    kc, vc, tables, ctx, _, q, _ = random_case(2, 4, 4, 700, 16, dtype=torch.bfloat16, device="cuda")
    bt = ref.block_tables_tensor(tables, "cuda").clamp_min(0).int()
    k_in, v_in = (torch.zeros(4, *kc.shape[2:], dtype=kc.dtype, device="cuda") for _ in range(2))
    q_in, ctx_in = q.clone(), ctx.cuda().int()
    slots_in = torch.full((4,), -1, dtype=torch.long, device="cuda")  # the warm-up run before capture writes nothing
    graph_k, graph_v = kc.clone(), vc.clone()
    graph, out = capture_cuda_graph_output(lambda: pt.paged_decode(q_in, graph_k, graph_v, bt, ctx_in, num_splits=32,
                                                                    new_kv=(k_in, v_in, slots_in)))
    for step in range(3):
        lens = torch.minimum(ctx, torch.tensor([5 + 300 * step, 1, 64 * (step + 1), 700]))
        lens[3] = 0 if step == 1 else lens[3]  # a padding row: context 0, slot -1
        slots = [t[(n - 1) // 16] * 16 + (n - 1) % 16 if n else -1 for t, n in zip(tables, lens.tolist(), strict=True)]
        for x in (q_in, k_in, v_in):
            x.copy_(torch.randn_like(x))
        ctx_in.copy_(lens)
        slots_in.copy_(torch.tensor(slots))
        graph.replay()
        pt.store_kv(k_in, v_in, kc, vc, slots_in)
        want = pt.paged_decode(q_in, kc, vc, bt, ctx_in, num_splits=32)
        torch.testing.assert_close(out, want, atol=2e-2, rtol=2e-2)
        assert torch.equal(graph_k, kc) and torch.equal(graph_v, vc)
        if step == 1:
            assert not out[3].any()


@cuda
@pytest.mark.gpu
def test_decode_merges_again_on_every_graph_replay():
    """The split counters are reset by the program that merges, so each replay (new queries, longer
    contexts, one slice or many) gives the eager answer."""
    from inferlab.attention import paged_triton as pt
    from inferlab.device import capture_cuda_graph_output

    kc, vc, tables, ctx, _, q, _ = random_case(1, 4, 4, 3000, 16, device="cuda")
    bt = ref.block_tables_tensor(tables, "cuda").clamp_min(0).int()
    q_in, ctx_in = q.clone(), (ctx // 2).cuda().int()
    graph, out = capture_cuda_graph_output(lambda: pt.paged_decode(q_in, kc, vc, bt, ctx_in, num_splits=32))
    for step in range(4):
        q_in.copy_(torch.randn_like(q))
        ctx_in.copy_(torch.minimum(torch.tensor([3000, 1, 200, 1500 + step]), ctx) if step % 2 else ctx // (step + 2))
        graph.replay()
        want = pt.paged_decode(q_in, kc, vc, bt, ctx_in, num_splits=32)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        assert not pt._COUNTERS["cuda:0"].any()


# ------------------------------------------------------------------ CPU: Triton's interpreter
CPU_CASES = [(0, 3, 1, 1, 16), (1, 2, 2, 40, 16), (2, 2, 4, 70, 32), (3, 2, 8, 100, 32), (4, 1, 3, 33, 16)]

_INTERPRETER_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
from test_paged_triton import CPU_CASES, check_case
out = [check_case(*c, dtype=dt, head_dim=16) for c in CPU_CASES for dt in (torch.float32, torch.bfloat16)]
from test_paged_triton import check_fused
out.append(check_fused("cpu", torch.float32))
print(json.dumps(out))
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install triton)")
@pytest.mark.slow
def test_kernels_match_reference_in_the_cpu_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": LIB + os.pathsep + str(Path(__file__).parent)}
    done = subprocess.run([sys.executable, "-c", _INTERPRETER_SCRIPT, LIB], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 2 * len(CPU_CASES) + 1
    for r in results:
        assert r["ok"], r


_RUNNER_SCRIPT = r"""
import json, torch
from inferlab.engine.model_runner import ChunkInput, ModelRunner
ids = list(range(5, 45))
table = list(range(19, 7, -1))  # scattered, reversed blocks
out = {}
for backend in ("sdpa", "triton"):
    r = ModelRunner("tiny", device="cpu", dtype=torch.float32, block_size=4, num_kv_blocks=20, attention_backend=backend)
    got = [r.execute([ChunkInput(ids[:30], 0, table)])[0], r.execute([ChunkInput(ids[30:37], 30, table)])[0]]
    got += [r.execute([ChunkInput([ids[p]], p, table), ChunkInput([7], 0, None, False)])[0] for p in range(37, 40)]
    got += [r.execute([ChunkInput([ids[p - 40]], p, table)])[0] for p in range(40, 43)]  # decode only: one kernel
    out[backend] = torch.stack(got).tolist()
diff = (torch.tensor(out["sdpa"]) - torch.tensor(out["triton"])).abs().max().item()
print(json.dumps({"max_diff": diff}))
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install triton)")
@pytest.mark.slow
def test_engine_runner_on_the_triton_backend_in_the_interpreter():
    """The engine's model (prefill, a later chunk, decodes beside an uncached chunk) gives the SDPA backend's logits."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": LIB}
    done = subprocess.run([sys.executable, "-c", _RUNNER_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["max_diff"] <= 1e-4


def test_auto_backend_resolves_by_device():
    from inferlab.attention.backends import resolve_backend

    assert resolve_backend("auto", "cpu") == "sdpa"
    assert resolve_backend("reference", "cuda") == "reference"
    assert resolve_backend("auto", "cuda") == ("triton" if HAS_TRITON else "sdpa")


def test_graph_buckets_cover_every_batch_size():
    from inferlab.engine.model_runner import graph_batch_sizes

    for max_batch in (1, 3, 8, 20, 64, 256):
        sizes = graph_batch_sizes(max_batch)
        assert sizes == sorted(set(sizes)) and sizes[-1] == max_batch
        assert all(any(b >= n for b in sizes) for n in range(1, max_batch + 1))


# ------------------------------------------------------------------ the engine on CUDA
@cuda
@pytest.mark.gpu
def test_engine_greedy_equals_generate_on_cuda_fp32():
    """Triton backend + CUDA-graphed decode, fp32: the same tokens as transformers ``generate``."""
    import inferlab as il
    from inferlab import LLM, SamplingParams

    model, tok = il.load_model("tiny", device="cuda", dtype="float32")
    llm = LLM("tiny", device="cuda", dtype="float32", block_size=16, num_kv_blocks=64, max_num_seqs=8)
    assert llm.engine.runner.attention_backend == "triton" and llm.engine.runner.graphs is not None
    prompts = ["def f(x):", "import os\nimport sys\n\nclass A:\n    def run(self", "x = [", "for i in range(10):\n   "]
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=40))
    for p, o in zip(prompts, outs, strict=True):
        ids = tok(p, return_tensors="pt").input_ids.cuda()
        ref = model.generate(ids, max_new_tokens=40, do_sample=False, pad_token_id=1)[0, ids.shape[1]:].tolist()
        ref = ref[: ref.index(0) + 1] if 0 in ref else ref  # generate pads after EOS (id 0)
        assert o.outputs[0].token_ids == ref, p


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_graphed_decode_equals_eager_and_the_reference_backend(dtype):
    """The same decode steps: CUDA graphs ~ eager ~ the reference backend (within the dtype's tolerance;
    a graph bucket pads the batch, so its matmuls may reduce in another order)."""
    from inferlab.engine.model_runner import ChunkInput, ModelRunner

    ids = list(range(3, 60))
    tables = [list(range(10, 14)), list(range(20, 24)), list(range(30, 34))]
    logits = {}
    for name, kw in (("graphed", {}), ("eager", {"enforce_eager": True}), ("reference", {"attention_backend": "reference"})):
        r = ModelRunner("tiny", device="cuda", dtype=dtype, block_size=16, num_kv_blocks=40, max_num_seqs=4, **kw)
        r.execute([ChunkInput(ids[:50 + i], 0, t) for i, t in enumerate(tables)])
        steps = [r.execute([ChunkInput([ids[50 + i + s]], 50 + i + s, t) for i, t in enumerate(tables)]).clone()
                 for s in range(4)]
        logits[name] = torch.stack(steps).float()
    # fp32: exact arithmetic up to sum order; bf16: a few units in the last place of the largest logit
    tol = 1e-4 if dtype == "float32" else 0.03 * logits["reference"].abs().max().item()
    assert (logits["graphed"] - logits["eager"]).abs().max().item() <= tol
    assert (logits["graphed"] - logits["reference"]).abs().max().item() <= tol
