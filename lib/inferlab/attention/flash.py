"""FlashAttention's forward pass, in plain PyTorch, tile by tile.

FlashAttention (Dao, Fu, Ermon, Rudra and Ré, "FlashAttention: Fast and Memory-Efficient Exact
Attention with IO-Awareness", NeurIPS 2022) computes exactly ``softmax(Q Kᵀ · scale) V``
without ever holding the ``[q_len, kv_len]`` score matrix. Queries are cut into tiles of
``block_q`` rows and keys/values into tiles of ``block_k`` rows; a query tile stays in fast
memory (on a GPU: the SM's registers and shared memory) while the key/value tiles stream past
it. The softmax is computed *online* (Milakov and Gimelshein 2018): each query row keeps a
running maximum ``m``, a running sum ``l`` of ``exp(score - m)`` and an unnormalized output
``acc``; when a new tile raises the maximum to ``m'``, the old sum and output are rescaled by
``exp(m - m')`` so that every term is relative to the same maximum. After the last tile,
``acc / l`` is the exact attention output. Extra memory: ``O(q_len · head_dim)`` instead of
``O(q_len · kv_len)``.

The loop order here is FlashAttention-2's (Dao, "FlashAttention-2: Faster Attention with
Better Parallelism and Work Partitioning", 2023): query tiles outside, key/value tiles inside,
so each query tile is independent (one GPU thread block each) and divides by ``l`` once at the
end; causal attention skips the key tiles entirely above the diagonal and masks only the
tiles it crosses, about halving the work.

The backward pass (not implemented here: forward only) needs ``P = softmax(S)`` again for
``dV = Pᵀ dO`` and ``dS = P ∘ (dP - rowsum(dO ∘ O))``. Storing ``P`` would bring the quadratic
memory back, so FlashAttention stores only the output ``O`` and one number per query row, the
log-sum-exp ``L = m + log l`` (returned by ``return_lse=True``), and *recomputes* each score
tile ``S = Q Kᵀ`` in the backward pass, getting ``P = exp(S - L)`` exactly without a second
pass over the row. Recomputing costs FLOPs, which are cheap; it saves reading and writing
``P`` from slow memory, which is not: the backward runs faster than a standard one, not just
leaner (Dao et al. 2022, section 3.1 and appendix B).

Shapes, ``causal`` alignment and ``scale`` follow :mod:`inferlab.attention.naive`
(SDPA's layout; grouped-query heads read their shared KV head without copying it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from inferlab.attention.naive import causal_offset, check_shapes

__all__ = ["Tile", "attend", "flash_attention", "kv_tiles", "online_softmax_steps", "tile_schedule"]


@dataclass(frozen=True)
class Tile:
    """One step of the tiled loop: query rows ``[q_start, q_end)`` meet keys ``[k_start, k_end)``.

    ``masked`` is True when the causal diagonal crosses the tile (some of its scores are
    hidden); tiles wholly above the diagonal are never visited.
    """

    q_start: int
    q_end: int
    k_start: int
    k_end: int
    masked: bool


def kv_tiles(q_start: int, q_end: int, kv_len: int, block_k: int, offset: int | None) -> Iterator[Tile]:
    """The key/value tiles query rows ``[q_start, q_end)`` must visit, in order.

    With a causal ``offset`` (query ``i`` sees keys ``j <= i + offset``) the loop stops after
    the last key the last row of the tile can see, and only tiles the diagonal crosses need a mask.
    """
    stop = kv_len if offset is None else max(0, min(kv_len, q_end - 1 + offset + 1))
    for k_start in range(0, stop, block_k):
        k_end = min(k_start + block_k, kv_len)
        masked = offset is not None and k_end - 1 > q_start + offset
        yield Tile(q_start, q_end, k_start, k_end, masked)


def tile_schedule(q_len: int, kv_len: int, block_q: int = 64, block_k: int = 64,
                  causal: bool | str = False) -> list[Tile]:
    """Every tile :func:`flash_attention` computes, in the order it computes them."""
    offset = causal_offset(causal, q_len, kv_len)
    return [t for q_start in range(0, q_len, block_q)
            for t in kv_tiles(q_start, min(q_start + block_q, q_len), kv_len, block_k, offset)]


def _tile_update(state, s, v_tile):
    """Fold one tile of scores ``s`` and values into the running (max, sum, output) state."""
    m, row_sum, acc = state
    m_new = torch.maximum(m, s.amax(dim=-1))
    m_ref = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # rows with nothing visible yet
    alpha = torch.exp(m - m_ref)  # rescales what was summed relative to the old maximum
    p = torch.exp(s - m_ref[..., None])
    row_sum = alpha * row_sum + p.sum(dim=-1)
    acc = alpha[..., None] * acc + p @ v_tile.to(p.dtype)
    return m_new, row_sum, acc


def _query_tile(q_tile, k, v, q_start, offset, scale, block_k):
    """Attention output and log-sum-exp of one query tile, streaming over key/value tiles."""
    work = torch.float64 if q_tile.dtype == torch.float64 else torch.float32
    rows = q_tile.shape[:-1]
    state = (torch.full(rows, float("-inf"), dtype=work, device=q_tile.device),
             torch.zeros(rows, dtype=work, device=q_tile.device),
             torch.zeros((*rows, v.shape[-1]), dtype=work, device=q_tile.device))
    q_end, q_tile = q_start + q_tile.shape[-2], q_tile.to(work)  # scores and sums in float32, as the kernels keep them
    for t in kv_tiles(q_start, q_end, k.shape[-2], block_k, offset):
        s = (q_tile @ k[..., t.k_start:t.k_end, :].to(work).transpose(-2, -1)) * scale
        if t.masked:
            i = torch.arange(q_start, q_end, device=s.device)[:, None]
            j = torch.arange(t.k_start, t.k_end, device=s.device)[None, :]
            s = s.masked_fill(j > i + offset, float("-inf"))
        state = _tile_update(state, s, v[..., t.k_start:t.k_end, :])
    m, row_sum, acc = state
    out = torch.where(row_sum[..., None] > 0, acc / row_sum.clamp_min(torch.finfo(work).tiny)[..., None], 0.0)
    return out, m + torch.log(row_sum)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool | str = False,
                    scale: float | None = None, block_q: int = 64, block_k: int = 64,
                    return_lse: bool = False):
    """Exact attention, equal to SDPA's, computed one ``block_q × block_k`` tile at a time.

    Never allocates more than one tile of scores per (batch, head) at once. With
    ``return_lse=True`` also returns the per-row log-sum-exp ``[batch, heads, q_len]`` (float32,
    or float64 for float64 inputs) that FlashAttention keeps for its backward pass
    (``-inf`` for a row that sees no key).
    """
    group = check_shapes(q, k, v)
    b, h, q_len, d = q.shape
    hk = k.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    offset = causal_offset(causal, q_len, k.shape[-2])
    # query heads that share a KV head are grouped on one axis; K and V broadcast over it (no copy)
    qg = q.reshape(b, hk, group, q_len, d)
    kg, vg = k[:, :, None], v[:, :, None]
    outs, lses = [], []
    for q_start in range(0, q_len, block_q):
        out, lse = _query_tile(qg[..., q_start:q_start + block_q, :], kg, vg, q_start, offset, scale, block_k)
        outs.append(out.to(q.dtype))
        lses.append(lse)
    out = torch.cat(outs, dim=-2).reshape(b, h, q_len, v.shape[-1])
    return (out, torch.cat(lses, dim=-1).reshape(b, h, q_len)) if return_lse else out


def online_softmax_steps(scores, block: int = 2) -> list[dict]:
    """The online softmax of one row of ``scores``, ``block`` values at a time, as a record.

    Each step lists the new values, the running maximum before and after, the factor
    ``exp(m_old - m_new)`` that rescales the running sum, and the sum after the step; the
    last step's ``m`` and ``l`` give ``softmax(x)_i = exp(x_i - m) / l`` exactly.
    """
    values = [float(x) for x in scores]
    m, total, steps = float("-inf"), 0.0, []
    for start in range(0, len(values), block):
        chunk = values[start:start + block]
        m_new = max(m, *chunk)
        rescale = math.exp(m - m_new) if m != float("-inf") else 0.0
        total = total * rescale + sum(math.exp(x - m_new) for x in chunk)
        steps.append({"values": chunk, "m_old": m, "m_new": m_new, "rescale": rescale, "l": total})
        m = m_new
    return steps


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta, k_cache: torch.Tensor,
           v_cache: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The engine's ``"flash"`` backend (signature of :func:`inferlab.attention.sdpa.attend`).

    Prefill chunks, the square that FlashAttention removes, go through the tiled kernel: the
    Triton one on CUDA when triton is installed, this module's loop elsewhere; a chunk over
    earlier context uses the bottom-right causal alignment (its queries are the context's last
    tokens). Decode rows, one query each, have no square to save and go through the SDPA backend.
    """
    from dataclasses import replace

    from inferlab.attention import sdpa
    from inferlab.attention.flash_triton import flash_attention_triton, triton_available

    kernel = flash_attention_triton if q.is_cuda and triton_available() else flash_attention
    out = sdpa.attend(q, k, v, replace(meta, prefills=[]), k_cache, v_cache, scale)
    k_flat, v_flat = k_cache.view(-1, *k_cache.shape[2:]), v_cache.view(-1, *v_cache.shape[2:])
    for start, end, slots, _mask in meta.prefills:
        qs = q[start:end].transpose(0, 1)[None]  # [1, heads, n, d]
        if slots is None:  # the chunk is its own context
            ks, vs, causal = k[start:end], v[start:end], True
        else:
            # the runner's chunk masks are bottom-right by construction (model_runner._add_slot_metadata)
            ks, vs, causal = k_flat[slots], v_flat[slots], "bottom_right"
        o = kernel(qs, ks.transpose(0, 1)[None], vs.transpose(0, 1)[None], causal=causal, scale=scale)
        out[start:end] = o[0].transpose(0, 1)
    return out
