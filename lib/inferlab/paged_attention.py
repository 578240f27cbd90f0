"""A paged KV cache and a reference paged attention, in plain PyTorch.

PagedAttention (Kwon et al., "Efficient Memory Management for Large Language Model Serving
with PagedAttention", SOSP 2023) stores each layer's keys and values in fixed-size blocks,
``[num_blocks, block_size, num_kv_heads, head_dim]``, and finds a sequence's tokens through
its *block table* (see :mod:`inferlab.paging`). Token ``i`` of a sequence lives in *slot*
``block_table[i // block_size] * block_size + i % block_size`` of the flattened cache.

This module is the correct, readable reference the engine runs on any device: writes go
through a slot mapping (``index_copy_``), reads gather whole contexts through index
tensors (no Python loop over tokens), and the attention itself is a masked softmax in
float32. Grouped-query attention is supported: query head ``h`` reads KV head
``h // (num_q_heads // num_kv_heads)``, as in Llama and
``torch.nn.functional.scaled_dot_product_attention(..., enable_gqa=True)``.

- :func:`paged_attention` is decode: one new query per sequence.
- :func:`paged_attention_prefill` is prefill and chunked prefill: several queries per
  sequence, packed, each masked causally at its own position in the sequence.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

__all__ = [
    "PagedKVCache",
    "block_tables_tensor",
    "gather_kv",
    "hf_paged_attention",
    "paged_attention",
    "paged_attention_prefill",
    "slot_mapping_tensor",
]


class PagedKVCache:
    """Per-layer K and V block pools shaped ``[num_blocks, block_size, num_kv_heads, head_dim]``."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.num_layers, self.num_blocks, self.block_size = num_layers, num_blocks, block_size
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.k_caches = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_caches = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @property
    def device(self) -> torch.device:
        return self.k_caches[0].device

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k_caches + self.v_caches)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor | Sequence[int]) -> None:
        """Store ``k``, ``v`` (``[num_tokens, num_kv_heads, head_dim]``) at their slots.

        Slots below 0 are skipped (padding tokens that own no slot), as in vLLM.
        """
        slots = torch.as_tensor(slot_mapping, dtype=torch.long, device=self.device)
        keep = slots >= 0
        if not bool(keep.all()):
            slots, k, v = slots[keep], k[keep], v[keep]
        kc, vc = self.k_caches[layer], self.v_caches[layer]
        kc.view(-1, *kc.shape[2:]).index_copy_(0, slots, k.to(kc.dtype))
        vc.view(-1, *vc.shape[2:]).index_copy_(0, slots, v.to(vc.dtype))

    def copy_blocks(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Copy-on-write: for each ``(src, dst)`` from ``BlockAllocator.append``, copy block src to dst in every layer."""
        pairs = list(pairs)
        if not pairs:
            return
        src = torch.tensor([s for s, _ in pairs], dtype=torch.long, device=self.device)
        dst = torch.tensor([d for _, d in pairs], dtype=torch.long, device=self.device)
        for cache in self.k_caches + self.v_caches:
            cache[dst] = cache[src]


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
    table = torch.as_tensor(list(block_table), dtype=torch.long)
    return (table[pos // block_size] * block_size + pos % block_size).to(device)


def gather_kv(cache: torch.Tensor, block_tables: torch.Tensor, max_len: int) -> torch.Tensor:
    """Gather positions ``0..max_len-1`` of every sequence: ``[num_seqs, max_len, kv_heads, head_dim]``.

    Positions past a sequence's blocks read block 0 (garbage); callers mask them out.
    """
    block_size = cache.shape[1]
    pos = torch.arange(max_len, device=cache.device)
    blocks = block_tables[:, pos // block_size].clamp_min(0)  # [B, T]
    slots = blocks * block_size + pos % block_size
    flat = cache.view(-1, *cache.shape[2:])
    return flat.index_select(0, slots.reshape(-1)).view(*slots.shape, *cache.shape[2:])


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
            scale: float) -> torch.Tensor:
    """q ``[B, Q, Hq, D]``, k/v ``[B, T, Hkv, D]``, allowed ``[B, Q, T]`` -> ``[B, Q, Hq, D]``."""
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
    return _attend(q[:, None], k, v, allowed[:, None], scale)[:, 0]


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
    return _attend(padded, k, v, allowed, scale)[seq_of, j]


# ------------------------------------------------------------------ inside a Hugging Face model
def _hf_paged_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                        block_size: int = 4, **kwargs):
    """A transformers attention function that routes every layer through a paged cache.

    transformers hands it the layer's queries ``[B, Hq, Tq, D]`` and full keys/values
    ``[B, Hkv, Tk, D]`` (its own cache already appended). We scatter the keys/values into
    a fresh block pool under a random block layout, then attend with
    :func:`paged_attention_prefill`, so the model's logits show whether the paging is exact.
    Unpadded batches only (the attention mask is not consulted: causality comes from positions).
    """
    b, hq, tq, d = query.shape
    hkv, tk = key.shape[1], key.shape[2]
    per_seq = -(-tk // block_size)
    pool = per_seq * b + 3
    cache = PagedKVCache(1, pool, block_size, hkv, d, dtype=key.dtype, device=key.device)
    gen = torch.Generator().manual_seed(getattr(module, "layer_idx", 0) or 0)
    perm = torch.randperm(pool, generator=gen).tolist()
    tables = [perm[i * per_seq : (i + 1) * per_seq] for i in range(b)]
    for i, table in enumerate(tables):
        cache.write(0, key[i].transpose(0, 1), value[i].transpose(0, 1),
                    slot_mapping_tensor(table, 0, tk, block_size, key.device))
    q = query.transpose(1, 2).reshape(b * tq, hq, d)
    lens = torch.full((b,), tk, device=query.device)
    out = paged_attention_prefill(q, cache.k_caches[0], cache.v_caches[0], block_tables_tensor(tables, key.device),
                                  lens, torch.full((b,), tq, device=query.device), scaling)
    return out.view(b, tq, hq, d), None


class hf_paged_attention:
    """Context manager: run a transformers model with our paged attention in every layer.

    >>> with hf_paged_attention(model, block_size=4):   # doctest: +SKIP
    ...     logits = model(input_ids).logits
    """

    NAME = "inferlab_paged"

    def __init__(self, model, block_size: int = 4):
        from functools import partial

        from transformers import AttentionInterface

        self.model, self.previous = model, model.config._attn_implementation
        AttentionInterface.register(self.NAME, partial(_hf_paged_attention, block_size=block_size))

    def __enter__(self):
        self.model.set_attn_implementation(self.NAME)
        return self.model

    def __exit__(self, *exc):
        self.model.set_attn_implementation(self.previous)
        return False
