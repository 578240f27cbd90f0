"""Attention as the textbook writes it: the whole score matrix, in memory, at once.

``softmax(Q Kᵀ · scale) V`` computed literally: for every batch row and head, an
``[q_len, kv_len]`` matrix of scores is built, masked, normalized and multiplied by ``V``.
It is the slow, obvious reference the tiled kernels (:mod:`inferlab.attention.flash`,
:mod:`inferlab.attention.flash_triton`) are tested against, and the baseline whose memory
grows with ``q_len * kv_len`` (notebook 07 measures it).

Conventions shared by every attention function of this package (they are
``torch.nn.functional.scaled_dot_product_attention``'s):

- shapes ``q: [batch, heads, q_len, head_dim]``, ``k, v: [batch, kv_heads, kv_len, head_dim]``;
  grouped-query attention (Ainslie et al. 2023) when ``kv_heads`` divides ``heads``: query
  head ``h`` reads KV head ``h // (heads // kv_heads)`` (SDPA's ``enable_gqa=True``);
- ``scale`` defaults to ``1 / sqrt(head_dim)`` (Vaswani et al. 2017);
- ``causal``: ``False``; ``True`` or ``"top_left"`` is SDPA's ``is_causal=True``: query ``i``
  sees keys ``j <= i`` whatever the lengths; ``"bottom_right"`` aligns the last query with the
  last key, query ``i`` sees keys ``j <= i + (kv_len - q_len)``: what decoding and chunked
  prefill over a KV cache need, and FlashAttention's convention since version 2.1. The two
  agree when ``q_len == kv_len``. A query row that sees no key at all (bottom-right with
  ``q_len > kv_len``) outputs zeros, as FlashAttention does.
"""

from __future__ import annotations

import math

import torch

__all__ = ["attention_flops", "causal_offset", "check_shapes", "naive_attention", "visible_keys"]


def causal_offset(causal: bool | str, q_len: int, kv_len: int) -> int | None:
    """Query ``i`` sees keys ``j <= i + offset``; ``None`` when attention is not causal."""
    if causal is False or causal is None:
        return None
    if causal is True or causal == "top_left":
        return 0
    if causal == "bottom_right":
        return kv_len - q_len
    raise ValueError(f"causal must be False, True, 'top_left' or 'bottom_right', not {causal!r}")


def check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """Validate SDPA-layout shapes; return the GQA group size ``heads // kv_heads``."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be [batch, heads, seq_len, head_dim]")
    (b, h, _, d), (bk, hk, _, dk) = q.shape, k.shape
    if v.shape != k.shape or bk != b or dk != d:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if h % hk:
        raise ValueError(f"{h} query heads cannot share {hk} KV heads evenly")
    return h // hk


def visible_keys(q_len: int, kv_len: int, causal: bool | str = False, device=None) -> torch.Tensor | None:
    """The ``[q_len, kv_len]`` boolean mask of keys each query may see (``None``: all of them)."""
    offset = causal_offset(causal, q_len, kv_len)
    if offset is None:
        return None
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(kv_len, device=device)[None, :]
    return j <= i + offset


def attention_flops(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int,
                    causal: bool | str = False) -> float:
    """Matmul FLOPs of one attention forward: ``4·b·h·q_len·kv_len·d`` (QKᵀ and PV), counting
    only the visible (query, key) pairs when causal, as FlashAttention's papers report."""
    mask_pairs = q_len * kv_len
    offset = causal_offset(causal, q_len, kv_len)
    if offset is not None:  # pairs with j <= i + offset, clipped to [0, kv_len]
        mask_pairs = sum(min(kv_len, max(0, i + offset + 1)) for i in range(q_len))
    return 4.0 * batch * heads * mask_pairs * head_dim


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool | str = False,
                    scale: float | None = None) -> torch.Tensor:
    """``softmax(Q Kᵀ · scale) V`` with the full score matrix materialized.

    Peak extra memory is ``batch · heads · q_len · kv_len`` scores (in float32 for half
    inputs, as SDPA's math backend computes them) plus as many probabilities: quadratic in the
    sequence length, which is what FlashAttention (Dao et al. 2022) removes. Grouped-query
    KV heads are expanded by ``repeat_interleave``, another copy the tiled kernels avoid.
    """
    group = check_shapes(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = (q.to(work) @ k.to(work).transpose(-2, -1)) * scale
    mask = visible_keys(q.shape[-2], k.shape[-2], causal, device=q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if mask is not None and not bool(mask.any(-1).all()):  # a row with no visible key: NaN -> 0
        probs = probs.nan_to_num(0.0)
    return (probs @ v.to(work)).to(q.dtype)
