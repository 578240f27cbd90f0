"""FlashAttention's forward pass as a Triton kernel (CUDA; the Triton interpreter on CPU).

The same algorithm as :mod:`inferlab.attention.flash` (Dao et al. 2022; the loop order and
causal tile skipping of Dao 2023, FlashAttention-2), written for a GPU: one program (a CUDA
thread block) per ``BLOCK_M`` query rows of one (batch, head); its query tile, running
maximum ``m``, running sum ``l`` and output accumulator live in registers while ``BLOCK_N``-row
key and value tiles stream through shared memory. Scores never touch global memory; each row
is divided by ``l`` once, at the end. Exponentials are ``exp2`` with ``log2(e)`` folded into the
scale (one multiply fewer per score), as FlashAttention's kernels do.

Grouped-query attention costs nothing extra: a program for query head ``h`` reads KV head
``h // group`` through its strides. Head dimensions that are not powers of two (80, 96) are
padded to the next one with masked loads. Accumulation is float32 (float64 for float64
inputs); float32 inputs use IEEE matmuls, not TF32, so results match SDPA's math backend.

Tensors on the CPU run through Triton's interpreter (numpy, for tests and teaching: correct
but slow), which ``TRITON_INTERPRET=1`` in the environment before triton is imported turns on
for every Triton kernel of the process. (Triton 3.9's interpreter multiplies bfloat16 tiles
wrongly, so there they are multiplied in float32: the interpreter checks the algorithm, the GPU
checks the arithmetic.) Needs the
``triton`` package: ``pip install triton`` (Linux x86-64 wheels, about 290 MB; CUDA machines
with PyTorch usually have it already).
"""

from __future__ import annotations

import math
import os

import torch

from inferlab.attention.naive import causal_offset, check_shapes
from inferlab.paging import cdiv

try:  # optional: the kernel's body refers to ``tl`` as a module global, as Triton requires
    import triton.language as tl
except ImportError:  # pragma: no cover - flash_attention_triton then raises a clear error
    tl = None

__all__ = ["flash_attention_triton", "interpreting", "triton_available"]

LOG2E = 1.4426950408889634


def triton_available() -> bool:
    """True when the ``triton`` package imports (the kernel then runs on CUDA, or interpreted on CPU)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _flash_fwd(Q, K, V, Out, qk_scale, q_len, kv_len, heads, group, causal_shift,
               sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr, ACC: tl.constexpr,
               UPCAST: tl.constexpr):
    """One query tile of one (batch, head): stream K/V tiles, keep (m, l, acc) on chip."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=(offs_m[:, None] < q_len) & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b * skb + (h // group) * skh
    v_base = V + b * svb + (h // group) * svh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC)
    l_i = tl.zeros([BLOCK_M], dtype=ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
    hi = kv_len
    if CAUSAL:  # keys past the tile's last visible one are never loaded
        hi = tl.maximum(tl.minimum(kv_len, (start_m + 1) * BLOCK_M + causal_shift), 0)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        kt = tl.load(k_base + cols[None, :] * skn + offs_d[:, None] * skd,
                     mask=(cols[None, :] < kv_len) & d_ok[:, None], other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
        if IEEE:
            s = tl.dot(q, kt, input_precision="ieee") * qk_scale
        else:
            s = tl.dot(q, kt) * qk_scale
        visible = cols[None, :] < kv_len
        if CAUSAL:
            visible = visible & (cols[None, :] <= offs_m[:, None] + causal_shift)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        vt = tl.load(v_base + cols[:, None] * svn + offs_d[None, :] * svd,
                     mask=(cols[:, None] < kv_len) & d_ok[None, :], other=0.0)
        if UPCAST:
            vt = vt.to(tl.float32)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # a row that saw no key stays 0
    tl.store(Out + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod,
             out.to(Out.dtype.element_ty), mask=(offs_m[:, None] < q_len) & d_ok[None, :])


_KERNEL: list = []


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernel():
    """The kernel, compiled once (or wrapped by the interpreter when ``TRITON_INTERPRET=1``)."""
    if not _KERNEL:
        import triton

        _KERNEL.append(triton.jit(_flash_fwd))
    return _KERNEL[0]


def _launch_config(head_dim: int, dtype: torch.dtype, on_cuda: bool) -> dict:
    """Tile sizes and warps: big tiles for 16-bit inputs on a GPU, small ones elsewhere.

    A 128 × 64 tile of 16-bit queries and keys (FlashAttention-2's choice for head dim 128)
    fits the registers of 8 warps; 32-bit inputs need twice the room, so the tiles shrink.
    """
    if not on_cuda:  # the interpreter: fewer, larger tiles mean fewer slow Python steps
        return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4}
    if dtype in (torch.float16, torch.bfloat16):
        return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8 if head_dim > 64 else 4, "num_stages": 3}
    if dtype == torch.float64:
        return {"BLOCK_M": 32, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}
    return {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}


def flash_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool | str = False,
                           scale: float | None = None, block_m: int | None = None,
                           block_n: int | None = None, num_warps: int | None = None,
                           num_stages: int | None = None) -> torch.Tensor:
    """Exact attention, equal to SDPA's, computed by a tiled Triton kernel (forward only).

    Same arguments as :func:`inferlab.attention.flash.flash_attention`, plus the launch's tile
    sizes, warps and pipeline stages (defaults by head dim and dtype). CUDA tensors run the
    compiled kernel; CPU tensors run it in Triton's interpreter (slow, for tests and teaching),
    which must be switched on first (:func:`interpreting`).
    """
    if not triton_available():
        raise ImportError("flash_attention_triton needs the triton package: pip install triton")
    group = check_shapes(q, k, v)
    b, h, q_len, d = q.shape
    kv_len = k.shape[-2]
    on_cuda = q.is_cuda
    if not on_cuda and not interpreting():
        raise RuntimeError("CPU tensors run through Triton's interpreter: set TRITON_INTERPRET=1 "
                           "before triton is first imported")
    offset = causal_offset(causal, q_len, kv_len)
    cfg = _launch_config(d, q.dtype, on_cuda)
    given = {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps, "num_stages": num_stages}
    cfg.update({name: val for name, val in given.items() if val is not None})
    out = torch.empty_like(q)
    if q.numel() == 0 or kv_len == 0:
        return out.zero_()
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    grid = (cdiv(q_len, cfg["BLOCK_M"]), b * h)
    _kernel()[grid](
        q, k, v, out, scale * LOG2E, q_len, kv_len, h, group, offset or 0,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        HEAD_DIM=d, BLOCK_D=max(16, 1 << (d - 1).bit_length()), CAUSAL=offset is not None,
        IEEE=q.dtype in (torch.float32, torch.float64),
        ACC=tl.float64 if q.dtype == torch.float64 else tl.float32,
        UPCAST=not on_cuda and q.dtype == torch.bfloat16, **cfg)
    return out
