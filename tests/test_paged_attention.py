"""Paged attention equals contiguous attention (SDPA with repeated KV heads) for random block layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inferlab.attention import (
    PagedKVCache,
    block_tables_tensor,
    paged_attention,
    paged_attention_prefill,
    slot_mapping_tensor,
)
from inferlab.paging import BlockAllocator, cdiv

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def _random_layout(gen, lens, block_size, num_blocks):
    """Block tables drawn from a random permutation of the pool: scattered, non-contiguous."""
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables, i = [], 0
    for n in lens:
        k = cdiv(n, block_size)
        tables.append(perm[i : i + k])
        i += k
    return tables


def _fill(cache, tables, lens, gen, device, dtype):
    """Write random K/V for every token through slot mappings; return the contiguous copies."""
    ks, vs = [], []
    for table, n in zip(tables, lens, strict=True):
        k = torch.randn(n, cache.num_kv_heads, cache.head_dim, generator=gen).to(device, dtype)
        v = torch.randn(n, cache.num_kv_heads, cache.head_dim, generator=gen).to(device, dtype)
        cache.write(0, k, v, slot_mapping_tensor(table, 0, n, cache.block_size, device))
        ks.append(k)
        vs.append(v)
    return ks, vs


def _sdpa(q, k, v, q_start, scale):
    """Reference: q [Q, Hq, D] at positions q_start.., k/v [T, Hkv, D], KV heads repeated."""
    g = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(g, dim=1)
    v = v.repeat_interleave(g, dim=1)
    pos_q = torch.arange(q_start, q_start + q.shape[0], device=q.device)
    mask = torch.arange(k.shape[0], device=q.device)[None, :] <= pos_q[:, None]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).float(), k.transpose(0, 1).float(), v.transpose(0, 1).float(),
        attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed,block_size,hq,hkv", [(0, 4, 4, 4), (1, 16, 8, 2), (2, 3, 6, 1), (3, 8, 4, 2)])
def test_decode_matches_sdpa(device, seed, block_size, hq, hkv):
    gen = torch.Generator().manual_seed(seed)
    d, dtype = 16, torch.float32
    lens = torch.randint(1, 50, (5,), generator=gen).tolist()
    num_blocks = sum(cdiv(n, block_size) for n in lens) + 7
    cache = PagedKVCache(1, num_blocks, block_size, hkv, d, dtype, device)
    tables = _random_layout(gen, lens, block_size, num_blocks)
    ks, vs = _fill(cache, tables, lens, gen, device, dtype)
    q = torch.randn(len(lens), hq, d, generator=gen).to(device)
    scale = 0.3
    out = paged_attention(q, cache.k_caches[0], cache.v_caches[0], block_tables_tensor(tables, device),
                          torch.tensor(lens, device=device), scale)
    for i, n in enumerate(lens):
        ref = _sdpa(q[i : i + 1], ks[i], vs[i], n - 1, scale)[0]
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_chunked_prefill_matches_sdpa(device, seed):
    gen = torch.Generator().manual_seed(100 + seed)
    block_size, hq, hkv, d = [4, 8, 5, 16][seed], [4, 8, 6, 2][seed], [2, 2, 3, 1][seed], 8
    lens = torch.randint(1, 40, (4,), generator=gen).tolist()
    qlens = [int(torch.randint(1, n + 1, (1,), generator=gen)) for n in lens]  # chunk = last qlen tokens
    num_blocks = sum(cdiv(n, block_size) for n in lens) + 3
    cache = PagedKVCache(1, num_blocks, block_size, hkv, d, torch.float32, device)
    tables = _random_layout(gen, lens, block_size, num_blocks)
    ks, vs = _fill(cache, tables, lens, gen, device, torch.float32)
    q = torch.randn(sum(qlens), hq, d, generator=gen).to(device)
    out = paged_attention_prefill(q, cache.k_caches[0], cache.v_caches[0], block_tables_tensor(tables, device),
                                  torch.tensor(lens, device=device), torch.tensor(qlens, device=device))
    assert out.shape == q.shape
    start = 0
    for i, (n, m) in enumerate(zip(lens, qlens, strict=True)):
        ref = _sdpa(q[start : start + m], ks[i], vs[i], n - m, d ** -0.5)
        torch.testing.assert_close(out[start : start + m], ref, atol=1e-5, rtol=1e-5)
        start += m


def test_prefill_with_query_len_one_equals_decode():
    gen = torch.Generator().manual_seed(7)
    lens, bs = [5, 17, 9], 4
    cache = PagedKVCache(1, 20, bs, 2, 8)
    tables = _random_layout(gen, lens, bs, 20)
    _fill(cache, tables, lens, gen, "cpu", torch.float32)
    q = torch.randn(3, 4, 8, generator=gen)
    bt, cl = block_tables_tensor(tables), torch.tensor(lens)
    torch.testing.assert_close(
        paged_attention(q, cache.k_caches[0], cache.v_caches[0], bt, cl),
        paged_attention_prefill(q, cache.k_caches[0], cache.v_caches[0], bt, cl, torch.ones(3, dtype=torch.long)))


def test_bfloat16_close_to_float32():
    gen = torch.Generator().manual_seed(3)
    lens, bs = [33, 8], 8
    tables = _random_layout(gen, lens, bs, 12)
    c32 = PagedKVCache(1, 12, bs, 2, 16)
    ks, vs = _fill(c32, tables, lens, gen, "cpu", torch.float32)
    c16 = PagedKVCache(1, 12, bs, 2, 16, torch.bfloat16)
    for t, n, k, v in zip(tables, lens, ks, vs, strict=True):
        c16.write(0, k, v, slot_mapping_tensor(t, 0, n, bs))
    q = torch.randn(2, 4, 16, generator=gen)
    bt, cl = block_tables_tensor(tables), torch.tensor(lens)
    a = paged_attention(q, c32.k_caches[0], c32.v_caches[0], bt, cl)
    b = paged_attention(q.bfloat16(), c16.k_caches[0], c16.v_caches[0], bt, cl)
    assert b.dtype == torch.bfloat16
    torch.testing.assert_close(b.float(), a, atol=5e-2, rtol=5e-2)


def test_write_skips_negative_slots_and_copy_blocks_copies_every_layer():
    cache = PagedKVCache(2, 4, 2, 1, 3)
    k = torch.arange(9.0).view(3, 1, 3)
    cache.write(1, k, -k, torch.tensor([5, -1, 0]))
    flat = cache.k_caches[1].view(-1, 1, 3)
    assert torch.equal(flat[5], k[0]) and torch.equal(flat[0], k[2])
    assert flat[[1, 2, 3, 4, 6, 7]].abs().sum() == 0
    cache.copy_blocks([(2, 1), (0, 3)])
    for layer_cache in cache.k_caches + cache.v_caches:
        assert torch.equal(layer_cache[1], layer_cache[2]) and torch.equal(layer_cache[3], layer_cache[0])


def test_allocator_fork_cow_end_to_end():
    """Parallel sampling: fork, diverge with CoW copies, and attention still sees each branch's own tokens."""
    torch.manual_seed(0)
    bs, hkv, hq, d = 4, 2, 4, 8
    alloc = BlockAllocator(32, bs)
    cache = PagedKVCache(1, 32, bs, hkv, d)
    prompt = 10
    kv = {}  # seq -> (k list, v list), the contiguous truth
    k0, v0 = torch.randn(prompt, hkv, d), torch.randn(prompt, hkv, d)
    alloc.allocate("p", list(range(prompt)))
    cache.write(0, k0, v0, alloc.slot_mapping("p"))
    kv["p"] = (list(k0), list(v0))
    for child in ("c1", "c2"):
        alloc.fork("p", child)
        kv[child] = (list(kv["p"][0]), list(kv["p"][1]))
    for _step in range(7):
        for s in ("p", "c1", "c2"):
            cow = alloc.append(s, 0)
            if cow:
                cache.copy_blocks([cow])
            k, v = torch.randn(1, hkv, d), torch.randn(1, hkv, d)
            n = alloc.num_tokens(s)
            cache.write(0, k, v, alloc.slot_mapping(s, n - 1))
            kv[s][0].append(k[0])
            kv[s][1].append(v[0])
    assert alloc.stats["cow_copies"] == 2  # block 2 (tokens 8-9) was shared three ways
    seqs = ["p", "c1", "c2"]
    q = torch.randn(3, hq, d)
    out = paged_attention(q, cache.k_caches[0], cache.v_caches[0],
                          block_tables_tensor([alloc.block_table(s) for s in seqs]),
                          torch.tensor([alloc.num_tokens(s) for s in seqs]))
    for i, s in enumerate(seqs):
        k, v = torch.stack(kv[s][0]), torch.stack(kv[s][1])
        torch.testing.assert_close(out[i], _sdpa(q[i : i + 1], k, v, len(k) - 1, d ** -0.5)[0])


def test_tiny_model_with_paged_attention_gives_the_same_logits_and_tokens():
    il = pytest.importorskip("inferlab")
    from inferlab.attention import hf_paged_attention

    model, tok = il.load_model("tiny", dtype="float32")
    ids = tok("def add(a, b):\n    return", return_tensors="pt").input_ids.to(model.device)
    with torch.no_grad():
        ref = model(ids).logits
        greedy = model.generate(ids, max_new_tokens=8, do_sample=False)
        with hf_paged_attention(model, block_size=4):
            ours = model(ids).logits
            paged_greedy = model.generate(ids, max_new_tokens=8, do_sample=False)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(paged_greedy, greedy)
    assert model.config._attn_implementation != "inferlab_paged"  # restored
