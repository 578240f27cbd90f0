"""The engine's fast path on a GPU: paged attention as Triton kernels that read the block pool in place.

Three kernels over the one cache layout of :mod:`inferlab.attention.paged`
(``k_cache[num_blocks, block_size, kv_heads, head_dim]``, token slot ``s`` = block ``s // block_size``,
row ``s % block_size``):

- :func:`store_kv`: write this step's K/V at their slots (vLLM's ``reshape_and_cache``); slot -1 skips
  a token (CUDA-graph padding rows).
- :func:`paged_decode`: one query per sequence (PagedAttention, Kwon et al., SOSP 2023). Each program
  serves *all* query heads of one KV head (grouped-query attention, Ainslie et al. 2023, in the kernel:
  the K/V tile is read once for the whole group) over one slice of the context, so a few long
  sequences still fill every SM (split-K, "Flash-Decoding", Dao et al. 2023). The slices' partial
  softmaxes are merged by whichever program of the group finishes last (a counter per group), not
  by a second kernel; a context short enough for one slice skips the merge.
- :func:`paged_prefill`: prompts, prompt chunks and decode rows of a mixed step, packed, in one launch
  (``cu_seqlens_q``, as FlashAttention's varlen API): query ``j`` of a sequence with ``ctx`` cached
  tokens and ``n`` queries sits at position ``ctx - n + j`` and attends to keys ``0..ctx-n+j``, read
  through the block table (chunked prefill and prefix-cache hits need no special case).

Every softmax runs online in float32 (Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022).
The store and decode kernels launch with programmatic dependent launch on Hopper GPUs
(:mod:`inferlab.pdl`), so a decode step's chain of small kernels does not pay each launch in full.
On CPU tensors the kernels run in Triton's interpreter when ``TRITON_INTERPRET=1`` was set
before triton was imported (slow; for tests and CI).
"""

from __future__ import annotations

import math

import torch

from inferlab.attention.flash_triton import interpreting, triton_available
from inferlab.attention.metadata import AttentionMetadata
from inferlab.paging import cdiv
from inferlab.pdl import launch_options, pdl_launch, pdl_launch_then_wait, pdl_wait_previous

__all__ = ["attend", "paged_decode", "paged_prefill", "store_kv", "decode_splits"]

MAX_SPLITS = 32  # split-K slices at most
# keys per slice at least. On an H200 (data/results/decode-merge-h200.json) one 64-key tile per slice
# beat 128-1024 at every batch and context but one, and in the 8B step: at short contexts two
# slices in parallel and a merge beat one program walking both tiles after each other
MIN_SPLIT_TOKENS = 64

try:  # optional: kernel bodies refer to ``tl`` as a module global, as Triton requires
    import triton
    import triton.language as tl

    _jit = triton.jit
except ImportError:  # pragma: no cover - the launchers then raise a clear error
    tl = None

    def _jit(fn):
        return fn


@_jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:  # fp32 inputs: exact products, no TF32
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@_jit
def _load_tile(KC, VC, table_ptr, n, n_ok, d, d_ok, kvh, skb, sks, skh, svb, svs, svh, BLOCK_SIZE: tl.constexpr):
    """The keys and values of positions ``n`` (found through the block table), zeros where not ``n_ok``."""
    block = tl.load(table_ptr + n // BLOCK_SIZE, mask=n_ok, other=0).to(tl.int64)  # no int32 overflow in offsets
    row = n % BLOCK_SIZE
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(KC + block[:, None] * skb + row[:, None] * sks + kvh * skh + d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(VC + block[:, None] * svb + row[:, None] * svs + kvh * svh + d[None, :], mask=kv_mask, other=0.0)
    return k, v


@_jit
def _fold_tile(q, k, v, keep, m_i, l_i, acc, scale, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """One tile of keys and values folded into the online softmax (m, l, acc) of the queries ``q``."""
    if UPCAST:  # the interpreter has no bf16 matmul
        k, v = k.to(tl.float32), v.to(tl.float32)
    s = tl.where(keep, _dot(q, tl.trans(k), IEEE) * scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
    return m_new, l_i, acc




@_jit
def _attend_tile(q, KC, VC, table_ptr, n, n_ok, keep, d, d_ok, kvh, m_i, l_i, acc, scale,
                 skb, sks, skh, svb, svs, svh, BLOCK_SIZE: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """One tile of keys ``n`` (found through the block table) folded into the online softmax (m, l, acc)."""
    k, v = _load_tile(KC, VC, table_ptr, n, n_ok, d, d_ok, kvh, skb, sks, skh, svb, svs, svh, BLOCK_SIZE)
    return _fold_tile(q, k, v, keep, m_i, l_i, acc, scale, IEEE, UPCAST)


@_jit
def _store_kernel(K, V, KC, VC, Slots, skt, svt, skc_slot, svc_slot, ROW: tl.constexpr, BLOCK: tl.constexpr,
                  PDL: tl.constexpr):
    pdl_launch_then_wait(PDL)
    t = tl.program_id(0)
    slot = tl.load(Slots + t)
    offs = tl.arange(0, BLOCK)
    ok = offs < tl.where(slot >= 0, ROW, 0)
    k = tl.load(K + t * skt + offs, mask=ok)
    v = tl.load(V + t * svt + offs, mask=ok)
    tl.store(KC + slot * skc_slot + offs, k.to(KC.dtype.element_ty), mask=ok)
    tl.store(VC + slot * svc_slot + offs, v.to(VC.dtype.element_ty), mask=ok)


@_jit
def _decode_kernel(Q, KC, VC, Tables, Lens, Out, OPart, MPart, Counters, KNew, VNew, Slots, scale, num_splits,
                   min_split, num_kv_heads, sqb, sqh, skb, sks, skh, svb, svs, svh, stb, sutb, suth, sob, soh, sos,
                   smb, smh, sknb, sknh, svnb, svnh, NEW_KV: tl.constexpr, GROUP: tl.constexpr,
                   BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, MERGE_CHUNK: tl.constexpr, IEEE: tl.constexpr,
                   UPCAST: tl.constexpr, PDL: tl.constexpr):
    """Program (sequence, KV head, split): every query head of the group over one slice of the context.

    The slices are sized from the context on the device (a CUDA graph fixes only their number), at
    least ``min_split`` keys each; past the context a slice does nothing, and a context of one slice
    is written out directly. Slices that share a context each store a partial softmax and count in;
    the last to arrive merges them, so no second kernel runs. With ``NEW_KV`` the step's own key and
    value (position ``ctx - 1``) come from ``KNew``/``VNew``: the slice that holds that position writes
    them to their cache slot (``Slots``; -1 writes nothing) and folds them in from registers, so no
    store kernel runs before this one and nothing waits for the write. The rest of the cache was
    then written by earlier steps, so under PDL each program reads its first tile of it (and the
    lengths and block table, fixed before the step) before it waits for the kernel before it.
    """
    if NEW_KV:  # the cache holds earlier steps' keys only: its first tile is read before the wait
        pdl_launch(PDL)
    else:
        pdl_launch_then_wait(PDL)
    b, kvh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ctx = tl.load(Lens + b)
    per_split = tl.cdiv(tl.maximum(tl.cdiv(ctx, num_splits), min_split), BLOCK_N) * BLOCK_N
    busy = tl.cdiv(ctx, per_split)  # slices that hold keys (0 for a padding row)
    lo = split * per_split
    hi = tl.minimum(lo + per_split, ctx)  # an empty range past the context
    if NEW_KV:
        holds_new = split == busy - 1  # False for a padding row (busy 0)
        hi = tl.where(holds_new, hi - 1, hi)  # the new key is folded in from registers below
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    heads = kvh * GROUP + g
    g_ok, d_ok = g < GROUP, d < HEAD_DIM
    gd_ok = g_ok[:, None] & d_ok[None, :]
    table = Tables + b * stb
    n = lo + tl.arange(0, BLOCK_N)
    k, v = _load_tile(KC, VC, table, n, n < hi, d, d_ok, kvh, skb, sks, skh, svb, svs, svh, BLOCK_SIZE)
    if NEW_KV:
        pdl_wait_previous(PDL)  # the queries and the new K/V come from the kernels before
        k_new, v_new = _store_new_kv(KNew + b * sknb + kvh * sknh, VNew + b * svnb + kvh * svnh, Slots + b, KC, VC,
                                     kvh, d, tl.where(holds_new, HEAD_DIM, 0), skb, sks, skh, svb, svs, svh,
                                     BLOCK_SIZE)
    q = tl.load(Q + b * sqb + heads[:, None] * sqh + d[None, :], mask=gd_ok, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    m_i, l_i, acc = _fold_tile(q, k, v, (n < hi)[None, :], m_i, l_i, acc, scale, IEEE, UPCAST)
    for start in range(lo + BLOCK_N, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        m_i, l_i, acc = _attend_tile(q, KC, VC, table, n, n < hi, (n < hi)[None, :], d, d_ok, kvh, m_i, l_i,
                                     acc, scale, skb, sks, skh, svb, svs, svh, BLOCK_SIZE, IEEE, UPCAST)
    if NEW_KV:
        if holds_new:
            m_i, l_i, acc = _attend_one(q, k_new, v_new, m_i, l_i, acc, scale, VC, UPCAST)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    out_ptrs = Out + b * sutb + heads[:, None] * suth + d[None, :]
    if busy <= 1:
        if split == 0:  # the only slice (or a padding row's zeros): no merge
            tl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=gd_ok)
    elif split < busy:
        m_ptrs = MPart + b * smb + heads * smh
        o_ptrs = OPart + b * sob + heads[:, None] * soh + d[None, :]
        tl.store(o_ptrs + split * sos, out, mask=gd_ok)
        tl.store(m_ptrs + split * 2, m_i, mask=g_ok)
        tl.store(m_ptrs + split * 2 + 1, l_i, mask=g_ok)
        tl.debug_barrier()  # every thread's partial is written before the counter moves
        counter = Counters + b * num_kv_heads + kvh
        if tl.atomic_add(counter, 1, sem="acq_rel") == busy - 1:
            _merge_splits(o_ptrs, m_ptrs, out_ptrs, busy, sos, g_ok, d_ok, BLOCK_G, BLOCK_D, BLOCK_S, MERGE_CHUNK)
            tl.atomic_xchg(counter, 0)  # the next call and CUDA-graph replays start at 0


@_jit
def _store_new_kv(KNew, VNew, Slot, KC, VC, kvh, d, width, skb, sks, skh, svb, svs, svh, BLOCK_SIZE: tl.constexpr):
    """Load one KV head's new key and value (elements ``d < width``: 0 loads nothing), write them to
    the cache slot (unless it is -1), and return them as the cache holds them (its dtype), in float32."""
    k = tl.load(KNew + d, mask=d < width, other=0.0).to(KC.dtype.element_ty)
    v = tl.load(VNew + d, mask=d < width, other=0.0).to(VC.dtype.element_ty)
    slot = tl.load(Slot).to(tl.int64)
    block, row = slot // BLOCK_SIZE, slot % BLOCK_SIZE
    written = d < tl.where(slot >= 0, width, 0)
    tl.store(KC + block * skb + row * sks + kvh * skh + d, k, mask=written)
    tl.store(VC + block * svb + row * svs + kvh * svh + d, v, mask=written)
    return k.to(tl.float32), v.to(tl.float32)


@_jit
def _attend_one(q, k, v, m_i, l_i, acc, scale, VC, UPCAST: tl.constexpr):
    """One key ``k`` and value ``v`` ``[D]`` folded into the online softmax of the queries ``q`` ``[G, D]``,
    rounded as :func:`_attend_tile` rounds (the probability to the cache's dtype before it meets v)."""
    s = tl.sum(q.to(tl.float32) * k[None, :], 1) * scale
    m_new = tl.maximum(m_i, s)
    alpha = tl.exp(m_i - m_new)  # m_new is finite: s is
    p = tl.exp(s - m_new)
    p_v = p if UPCAST else p.to(VC.dtype.element_ty).to(tl.float32)
    return m_new, l_i * alpha + p, acc * alpha[:, None] + p_v[:, None] * v[None, :]


@_jit
def _merge_splits(o_ptrs, m_ptrs, out_ptrs, busy, sos, g_ok, d_ok, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_S: tl.constexpr, CHUNK: tl.constexpr):
    """Merge ``busy`` partial softmaxes of a head group, each weighted by exp(m - max m) * l.

    ``CHUNK`` slices' outputs are loaded at once (the loads overlap rather than queue), through L2
    (``.cg``): the other programs wrote them, and this SM's L1 may hold stale lines.
    """
    s = tl.arange(0, BLOCK_S)
    m_s = tl.load(m_ptrs[:, None] + s[None, :] * 2, mask=g_ok[:, None] & (s < busy)[None, :], other=float("-inf"),
                  cache_modifier=".cg")
    m_max = tl.max(m_s, 1)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)  # a padding head of the group: no key anywhere
    c = tl.arange(0, CHUNK)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    total = tl.zeros([BLOCK_G], tl.float32)
    for first in range(0, busy, CHUNK):
        gc_ok = g_ok[:, None] & (first + c < busy)[None, :]
        at = m_ptrs[:, None] + (first + c)[None, :] * 2
        m_c = tl.load(at, mask=gc_ok, other=float("-inf"), cache_modifier=".cg")
        l_c = tl.load(at + 1, mask=gc_ok, other=0.0, cache_modifier=".cg")
        w = tl.where(l_c > 0.0, tl.exp(m_c - m_max[:, None]) * l_c, 0.0)  # [G, CHUNK]
        o = tl.load(o_ptrs[:, None, :] + (first + c)[None, :, None] * sos, mask=gc_ok[:, :, None] & d_ok[None, None, :],
                    other=0.0, cache_modifier=".cg")  # [G, CHUNK, D]
        acc += tl.sum(o * w[:, :, None], 1)
        total += tl.sum(w, 1)
    out = acc / tl.where(total == 0.0, 1.0, total)[:, None]
    tl.store(out_ptrs, out.to(out_ptrs.dtype.element_ty), mask=g_ok[:, None] & d_ok[None, :])


@_jit
def _prefill_kernel(Q, KC, VC, Out, Tables, QStarts, QLens, Lens, scale, sqt, sqh, skb, sks, skh, svb, svs, svh, stb,
                    sot, soh, GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
                    UPCAST: tl.constexpr):
    """Program (query tile, sequence, head): causal attention of the tile over the sequence's cached keys."""
    mb, seq, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q_start = tl.load(QStarts + seq)
    q_len = tl.load(QLens + seq)
    if mb * BLOCK_M < q_len:
        first_pos = tl.load(Lens + seq) - q_len
        m_idx = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        d = tl.arange(0, BLOCK_D)
        m_ok, d_ok = m_idx < q_len, d < HEAD_DIM
        pos = first_pos + m_idx
        q = tl.load(Q + (q_start + m_idx[:, None]) * sqt + h * sqh + d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        hi = tl.minimum(first_pos + (mb + 1) * BLOCK_M, first_pos + q_len)  # the tile's last position + 1
        for start in range(0, hi, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            n_ok = n < hi
            keep = (n[None, :] <= pos[:, None]) & n_ok[None, :]
            m_i, l_i, acc = _attend_tile(q, KC, VC, Tables + seq * stb, n, n_ok, keep, d, d_ok, h // GROUP, m_i, l_i,
                                         acc, scale, skb, sks, skh, svb, svs, svh, BLOCK_SIZE, IEEE, UPCAST)
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(Out + (q_start + m_idx[:, None]) * sot + h * soh + d[None, :], out.to(Out.dtype.element_ty),
                 mask=m_ok[:, None] & d_ok[None, :])


# --------------------------------------------------------------------------- launchers
def _check(t: torch.Tensor) -> None:
    if not triton_available():
        raise ImportError("the triton attention backend needs the triton package: pip install triton")
    if not t.is_cuda and not interpreting():
        raise RuntimeError("CPU tensors run through Triton's interpreter: set TRITON_INTERPRET=1 "
                           "before triton is first imported")


def _pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << (max(n, 1) - 1).bit_length())


def _ieee(t: torch.Tensor) -> bool:
    """fp32 inputs: exact fp32 dot products (no TF32), so greedy output matches an fp32 reference."""
    return t.dtype in (torch.float32, torch.float64)


def _upcast(t: torch.Tensor) -> bool:
    return not t.is_cuda and t.dtype in (torch.bfloat16, torch.float16)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write ``k``/``v`` ``[tokens, kv_heads, head_dim]`` to their cache slots; slot -1 is skipped."""
    if k.shape[0] == 0:
        return
    _check(k)
    k, v = k.contiguous(), v.contiguous()
    row = k.shape[1] * k.shape[2]
    _store_kernel[(k.shape[0],)](k, v, k_cache, v_cache, slot_mapping, k.stride(0), v.stride(0),
                                   k_cache.stride(1), v_cache.stride(1), ROW=row, BLOCK=_pow2(row),
                                   **launch_options(k))


def decode_splits(num_seqs: int, num_kv_heads: int, max_context: int | None = None, sms: int = 132) -> int:
    """How many context slices per (sequence, KV head): enough programs to fill the GPU twice over.

    With a fixed count (what a CUDA graph needs) the kernel still sizes the slices from each context
    (at least :data:`MIN_SPLIT_TOKENS` keys), and slices past a short context exit at once.
    """
    splits = max(1, min(MAX_SPLITS, cdiv(2 * sms, max(1, num_seqs * num_kv_heads))))
    if max_context is not None:
        splits = min(splits, max(1, cdiv(max_context, MIN_SPLIT_TOKENS)))
    return splits


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 context_lens: torch.Tensor, scale: float | None = None, num_splits: int | None = None,
                 out: torch.Tensor | None = None, min_split_tokens: int | None = None,
                 new_kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Decode attention, the same contract as :func:`inferlab.attention.paged.paged_attention`.

    q ``[seqs, q_heads, d]``; caches ``[blocks, block_size, kv_heads, d]``; block_tables ``[seqs, max_blocks]``
    (int32 or int64, entries past a context are not read); context_lens ``[seqs]``. A sequence with
    context 0 (a padding row) gets zeros. Split-K over at most ``num_splits`` slices (default:
    :func:`decode_splits`) of at least ``min_split_tokens`` keys (default :data:`MIN_SPLIT_TOKENS`).
    ``new_kv = (k, v, slots)`` (``[seqs, kv_heads, d]`` twice, ``[seqs]``): each sequence's newest
    key and value (position ``context_lens - 1``) are taken from ``k``/``v`` and written to ``slots``
    by this kernel, as :func:`store_kv` followed by this call would, in one launch.
    """
    _check(q)
    b, hq, d = q.shape
    _, block_size, hkv, _ = k_cache.shape
    group = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    splits = num_splits or decode_splits(b, hkv, None if q.is_cuda else int(context_lens.max()))
    if not 1 <= splits <= MAX_SPLITS:
        raise ValueError(f"num_splits={splits}: the decode kernel takes 1 to {MAX_SPLITS} slices")
    min_split = MIN_SPLIT_TOKENS if min_split_tokens is None else min_split_tokens
    if min_split < 1:
        raise ValueError(f"min_split_tokens={min_split}: a slice needs at least one key")
    out = torch.empty_like(q) if out is None else out
    if b == 0:
        return out
    block_d = _pow2(d)
    o_part = torch.empty(b, hq, splits, block_d, dtype=torch.float32, device=q.device)
    m_part = torch.empty(b, hq, splits, 2, dtype=torch.float32, device=q.device)
    counters = _split_counters(q.device, b * hkv)
    k_new, v_new, slots = _new_kv(new_kv, b, hkv, d) if new_kv is not None else (q, q, context_lens)
    cfg = {"num_warps": 4, "num_stages": 2, "BLOCK_N": 64} if q.is_cuda else {"BLOCK_N": 16}
    _decode_kernel[(b, hkv, splits)](
        q, k_cache, v_cache, block_tables, context_lens, out, o_part, m_part, counters, k_new, v_new, slots, scale,
        splits, min_split, hkv, q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        block_tables.stride(0), out.stride(0), out.stride(1), *o_part.stride()[:3], *m_part.stride()[:2],
        *k_new.stride()[:2], *v_new.stride()[:2], NEW_KV=new_kv is not None, GROUP=group,
        BLOCK_SIZE=block_size, HEAD_DIM=d, BLOCK_G=_pow2(group), BLOCK_D=block_d, BLOCK_S=MAX_SPLITS, MERGE_CHUNK=8,
        IEEE=_ieee(q), UPCAST=_upcast(q), **cfg, **launch_options(q))
    return out


def _new_kv(new_kv, seqs: int, kv_heads: int, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    k, v, slots = new_kv
    if k.shape != (seqs, kv_heads, d) or v.shape != k.shape or slots.shape != (seqs,):
        raise ValueError(f"new_kv: k and v must be [seqs, kv_heads, head_dim] = {[seqs, kv_heads, d]} and slots "
                         f"[{seqs}], got {list(k.shape)}, {list(v.shape)}, {list(slots.shape)}")
    return (k if k.stride(-1) == 1 else k.contiguous()), (v if v.stride(-1) == 1 else v.contiguous()), slots


_COUNTERS: dict[str, torch.Tensor] = {}


def _split_counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 counters, one per (sequence, KV head), made once per device and shared by every
    layer (decode kernels run one at a time; the last slice of each group resets its counter)."""
    key = str(device)
    if key not in _COUNTERS or _COUNTERS[key].numel() < n:
        # memory taken from a CUDA graph's pool must not outlive the graph
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"paged_decode needs {n} split counters inside CUDA-graph capture but has "
                               f"{_COUNTERS[key].numel() if key in _COUNTERS else 0}: run it once eagerly "
                               "with this batch size before capturing (the counters are made then)")
        _COUNTERS[key] = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
    return _COUNTERS[key]


def paged_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                  cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor, max_query_len: int,
                  scale: float | None = None, query_lens: torch.Tensor | None = None) -> torch.Tensor:
    """Varlen prefill / chunked prefill in one launch; the contract of ``paged_attention_prefill``.

    q ``[tokens, q_heads, d]``; the queries of sequence b are rows ``cu_seqlens_q[b]`` onwards, its last
    ``query_lens[b]`` (default ``cu_seqlens_q[b+1] - cu_seqlens_q[b]``: packed) of ``context_lens[b]``
    cached tokens. Rows no sequence claims (tokens without a cache) are left for the caller.
    """
    _check(q)
    t, hq, d = q.shape
    _, block_size, hkv, _ = k_cache.shape
    out = torch.empty_like(q)
    if t == 0:
        return out
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    cfg = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2} if q.is_cuda else {"BLOCK_M": 16, "BLOCK_N": 32}
    if q.is_cuda and _ieee(q):
        cfg.update(BLOCK_M=32, BLOCK_N=32)
    starts = cu_seqlens_q[:len(context_lens)]
    lens = query_lens if query_lens is not None else cu_seqlens_q[1:] - starts
    grid = (cdiv(max_query_len, cfg["BLOCK_M"]), len(context_lens), hq)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, block_tables, starts, lens, context_lens, scale, q.stride(0), q.stride(1),
        *k_cache.stride()[:3], *v_cache.stride()[:3], block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=hq // hkv, BLOCK_SIZE=block_size, HEAD_DIM=d, BLOCK_D=_pow2(d), IEEE=_ieee(q), UPCAST=_upcast(q), **cfg)
    return out


# --------------------------------------------------------------------------- the engine backend
def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
           k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The ``triton`` backend: store the step's K/V, then read the blocks in place.

    A step of decode rows only runs :func:`paged_decode`, which stores each row's K/V itself (the
    CUDA-graphed case: one kernel per layer); any other step runs :func:`store_kv`, then one
    :func:`paged_prefill` over every cached sequence. Chunks that own no cache (a reference
    forward, static batching's padding) attend to their own K/V through SDPA.
    """
    if meta.is_decode:
        return paged_decode(q, k_cache, v_cache, meta.block_tables, meta.context_lens, scale, meta.num_splits,
                            new_kv=(k, v, meta.slot_mapping))
    store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
    out = torch.empty_like(q)
    if meta.context_lens is not None:
        out = paged_prefill(q, k_cache, v_cache, meta.block_tables, meta.query_starts, meta.context_lens,
                            meta.max_query_len, scale, meta.query_lens)
    for start, end in meta.uncached:
        qs, ks, vs = (x[start:end].transpose(0, 1)[None] for x in (q, k, v))
        o = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
        out[start:end] = o[0].transpose(0, 1)
    return out
