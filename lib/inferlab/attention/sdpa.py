"""The SDPA backend: gather each context's slots, then ``torch.nn.functional.scaled_dot_product_attention``.

Like vLLM's prefill/decode split: *decode* rows (one new token each) are batched into a
padded ``[rows, max_context]`` gather with a length mask and one SDPA call; *prefill* chunks
run per sequence, causal over their own fresh K/V when they start at position 0, masked
over gathered context otherwise (chunked prefill, prefix-cache hits, recompute after
preemption). A kernel backend (FlashAttention, FlashInfer paged decode) reads the blocks
in place instead of gathering.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from inferlab.attention.metadata import AttentionMetadata


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
           k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Attention of this step's queries ``[tokens, heads, d]``; this step's K/V are already stored."""
    k_flat = k_cache.view(-1, *k_cache.shape[2:])
    v_flat = v_cache.view(-1, *v_cache.shape[2:])
    out = torch.empty_like(q)
    if meta.decode_tokens is not None:
        qd = q.index_select(0, meta.decode_tokens).unsqueeze(2)  # [rows, heads, 1, d]
        kd = k_flat[meta.decode_slots].transpose(1, 2)  # [rows, kv_heads, ctx, d]
        vd = v_flat[meta.decode_slots].transpose(1, 2)
        od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask, scale=scale, enable_gqa=True)
        out.index_copy_(0, meta.decode_tokens, od.squeeze(2))
    for start, end, slots, mask in meta.prefills:
        qs = q[start:end].transpose(0, 1)[None]  # [1, heads, n, d]
        if slots is None:
            ks, vs = k[start:end].transpose(0, 1)[None], v[start:end].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
        else:
            ks, vs = k_flat[slots].transpose(0, 1)[None], v_flat[slots].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask[None, None], scale=scale, enable_gqa=True)
        out[start:end] = o[0].transpose(0, 1)
    return out
