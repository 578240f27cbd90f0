"""The paged KV cache and a reference paged attention, in plain, readable PyTorch.

PagedAttention (Kwon et al., "Efficient Memory Management for Large Language Model Serving
with PagedAttention", SOSP 2023) stores keys and values in fixed-size blocks and finds a
sequence's tokens through its *block table* (see :mod:`inferlab.paging`, the home of the
slot formula). There is ONE cache layout in inferlab: a single tensor
``[2, num_layers, num_blocks, block_size, num_kv_heads, head_dim]`` (K then V); layer ``i``'s
K cache is the view ``kv[0, i]``, shaped ``[num_blocks, block_size, num_kv_heads, head_dim]``,
and token slot ``s`` is ``k_cache.view(-1, num_kv_heads, head_dim)[s]``. The engine's pool
and the notebooks' caches are both :class:`PagedKVCache`.

This module is the correct reference every other backend is tested against: writes go
through a slot mapping (``index_copy_``), reads gather whole contexts through index tensors
(no Python loop over tokens), and the attention is a masked softmax in float32.
Grouped-query attention: query head ``h`` reads KV head ``h // (num_q_heads // num_kv_heads)``,
as in Llama and ``scaled_dot_product_attention(..., enable_gqa=True)``.

- :func:`paged_attention` is decode: one new query per sequence.
- :func:`paged_attention_prefill` is prefill and chunked prefill: several packed queries
  per sequence, each masked causally at its own position.
- :func:`attend` is the same reference as an engine backend (``attention_backend="reference"``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from inferlab.attention.metadata import AttentionMetadata
from inferlab.paging import slot_for

__all__ = [
    "PagedKVCache",
    "attend",
    "attend_masked",
    "block_tables_tensor",
    "gather_kv",
    "paged_attention",
    "paged_attention_prefill",
    "slot_mapping_tensor",
]


class PagedKVCache:
    """The block pool of every layer: one tensor ``[2, num_layers, num_blocks, block_size, kv_heads, head_dim]``.

    ``k_caches[i]`` / ``v_caches[i]`` are views of layer ``i``'s K and V blocks.
    """

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        self.num_layers, self.num_blocks, self.block_size = num_layers, num_blocks, block_size
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.kv = torch.zeros((2, num_layers, num_blocks, block_size, num_kv_heads, head_dim), dtype=dtype, device=device)
        self.k_caches = list(self.kv[0])
        self.v_caches = list(self.kv[1])

    @property
    def device(self) -> torch.device:
        return self.kv.device

    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def zero_(self) -> PagedKVCache:
        self.kv.zero_()
        return self

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor | Sequence[int]) -> None:
        """Store ``k``, ``v`` (``[num_tokens, num_kv_heads, head_dim]``) at their slots.

        Slots below 0 are skipped (padding tokens that own no slot), as in vLLM.
        """
        slots = torch.as_tensor(slot_mapping, dtype=torch.long, device=self.device)
        keep = slots >= 0
        if not bool(keep.all()):
            slots, k, v = slots[keep], k[keep], v[keep]
        write_slots(k, v, slots, self.k_caches[layer], self.v_caches[layer])

    def copy_blocks(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Copy-on-write: for each ``(src, dst)`` from ``BlockAllocator.append``, copy block src to dst in every layer."""
        pairs = list(pairs)
        if not pairs:
            return
        src = torch.tensor([s for s, _ in pairs], dtype=torch.long, device=self.device)
        dst = torch.tensor([d for _, d in pairs], dtype=torch.long, device=self.device)
        self.kv[:, :, dst] = self.kv[:, :, src]


def write_slots(k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor) -> None:
    """Store rows of ``k``/``v`` at cache slots ``slots`` (vLLM's ``reshape_and_cache``)."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slots, k.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slots, v.to(v_cache.dtype))


def block_tables_tensor(tables: Sequence[Sequence[int]], device: str | torch.device = "cpu",
                        pad: int = -1) -> torch.Tensor:
    """Pad ragged block tables into a ``[num_seqs, max_blocks]`` long tensor (``pad`` = no block)."""
    width = max((len(t) for t in tables), default=0)
    out = torch.full((len(tables), max(width, 1)), pad, dtype=torch.long)
    for i, t in enumerate(tables):
        out[i, : len(t)] = torch.as_tensor(list(t), dtype=torch.long)
    return out.to(device)


def slot_mapping_tensor(block_table: Sequence[int], start: int, end: int, block_size: int,
                        device: str | torch.device = "cpu") -> torch.Tensor:
    """Slots of positions ``start..end-1`` of one sequence, vectorized."""
    pos = torch.arange(start, end, dtype=torch.long)
    return slot_for(torch.as_tensor(list(block_table), dtype=torch.long), pos, block_size).to(device)


def gather_kv(cache: torch.Tensor, block_tables: torch.Tensor, max_len: int) -> torch.Tensor:
    """Gather positions ``0..max_len-1`` of every sequence: ``[num_seqs, max_len, kv_heads, head_dim]``.

    Positions past a sequence's blocks read block 0 (garbage); callers mask them out.
    """
    pos = torch.arange(max_len, device=cache.device)
    slots = slot_for(block_tables.clamp_min(0), pos, cache.shape[1])  # [B, T]
    flat = cache.view(-1, *cache.shape[2:])
    return flat.index_select(0, slots.reshape(-1)).view(*slots.shape, *cache.shape[2:])


def attend_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                  scale: float) -> torch.Tensor:
    """q ``[B, Q, Hq, D]``, k/v ``[B, T, Hkv, D]``, allowed ``[B, Q, T]`` -> ``[B, Q, Hq, D]``, in float32."""
    b, nq, hq, d = q.shape
    hkv = k.shape[2]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of KV heads ({hkv})")
    g = hq // hkv
    # Group query heads by the KV head they read: [B, Hkv, G*Q, D] against [B, Hkv, T, D].
    qg = q.reshape(b, nq, hkv, g, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, g * nq, d).float()
    kt = k.permute(0, 2, 3, 1).float()  # [B, Hkv, D, T]
    scores = torch.matmul(qg, kt) * scale  # [B, Hkv, G*Q, T]
    mask = allowed[:, None, None].expand(b, 1, g, nq, allowed.shape[-1]).reshape(b, 1, g * nq, -1)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key (padding) -> 0
    out = torch.matmul(probs, v.permute(0, 2, 1, 3).float())  # [B, Hkv, G*Q, D]
    return out.reshape(b, hkv, g, nq, d).permute(0, 3, 1, 2, 4).reshape(b, nq, hq, d).to(q.dtype)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, context_lens: torch.Tensor,
                    scale: float | None = None) -> torch.Tensor:
    """Decode attention: one query per sequence over its whole cached context.

    q: ``[num_seqs, num_q_heads, head_dim]`` (the newest token, whose K/V is already written);
    k_cache, v_cache: ``[num_blocks, block_size, num_kv_heads, head_dim]``;
    block_tables: ``[num_seqs, max_blocks]`` (padded with -1); context_lens: ``[num_seqs]``
    tokens per sequence including the new one. Returns ``[num_seqs, num_q_heads, head_dim]``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    context_lens = torch.as_tensor(context_lens, device=q.device)
    max_len = int(context_lens.max()) if context_lens.numel() else 0
    k = gather_kv(k_cache, block_tables, max_len)
    v = gather_kv(v_cache, block_tables, max_len)
    allowed = torch.arange(max_len, device=q.device)[None, :] < context_lens[:, None]  # [B, T]
    return attend_masked(q[:, None], k, v, allowed[:, None], scale)[:, 0]


def paged_attention_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, context_lens: torch.Tensor,
                            query_lens: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Prefill / chunked-prefill attention with queries of all sequences packed together.

    q: ``[sum(query_lens), num_q_heads, head_dim]``, sequence by sequence; the queries of
    sequence b are its last ``query_lens[b]`` tokens out of ``context_lens[b]`` (whose K/V,
    including the queries' own, are already in the cache). Query j of sequence b sits at
    position ``p = context_lens[b] - query_lens[b] + j`` and sees keys ``0..p`` (causal
    relative to its position, so earlier chunks and prefix-cache hits are attended to).
    Returns the same shape as q.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    dev = q.device
    context_lens = torch.as_tensor(context_lens, device=dev)
    query_lens = torch.as_tensor(query_lens, device=dev)
    b = len(query_lens)
    max_q, max_len = int(query_lens.max()), int(context_lens.max())
    # Scatter the packed queries into [B, max_q] rows: row index of each packed query.
    seq_of = torch.repeat_interleave(torch.arange(b, device=dev), query_lens)
    starts = torch.cumsum(query_lens, 0) - query_lens
    j = torch.arange(q.shape[0], device=dev) - starts[seq_of]
    padded = q.new_zeros(b, max_q, *q.shape[1:])
    padded[seq_of, j] = q
    qpos = (context_lens - query_lens)[:, None] + torch.arange(max_q, device=dev)[None, :]  # [B, Q]
    t = torch.arange(max_len, device=dev)
    allowed = (t[None, None, :] <= qpos[:, :, None]) & (t[None, None, :] < context_lens[:, None, None])
    k = gather_kv(k_cache, block_tables, max_len)
    v = gather_kv(v_cache, block_tables, max_len)
    return attend_masked(padded, k, v, allowed, scale)[seq_of, j]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
           k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The reference backend: the engine's step through :func:`attend_masked` (float32, explicit masks).

    Reads the same slots as every backend (``meta``), after this step's K/V were stored.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    k_flat, v_flat = k_cache.view(-1, *k_cache.shape[2:]), v_cache.view(-1, *v_cache.shape[2:])
    out = torch.empty_like(q)
    if meta.decode_tokens is not None:
        qd = q.index_select(0, meta.decode_tokens)[:, None]  # [rows, 1, heads, d]
        allowed = meta.decode_mask[:, 0]  # [rows, 1, max_ctx]
        od = attend_masked(qd, k_flat[meta.decode_slots], v_flat[meta.decode_slots], allowed, scale)
        out.index_copy_(0, meta.decode_tokens, od[:, 0])
    for start, end, slots, mask in meta.prefills:
        if slots is None:
            n = end - start
            ks, vs = k[start:end], v[start:end]
            mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        else:
            ks, vs = k_flat[slots], v_flat[slots]
        out[start:end] = attend_masked(q[None, start:end], ks[None], vs[None], mask[None], scale)[0]
    return out
