"""Fused dequantize-matmul for decoding on CUDA (Triton): weight-only int8 and int4.

At decode time a linear layer is a matrix-vector product whose time is the time to read
the weight. These kernels read the int8 or packed int4 weight tiles, turn them into the
activation dtype in registers and multiply, so the bytes moved shrink 2× (int8) or ~3.8×
(int4, group 128) against bf16 (gpt-fast, PyTorch blog 2023; Frantar et al. 2024, Marlin).

For int4 the group constants are factored out of the inner product:
``Σ_k x_k (c_k − z) s = s (Σ_k x_k c_k − z Σ_k x_k)`` over a group, so the codes go into the
dot product unscaled. Few output tiles would leave most SMs idle at batch 1, so the K
dimension is split across programs that add their partial sums atomically (split-K).
Only for rows ≤ :data:`MAX_ROWS` (decode); larger batches take the reference path.

Measured on an H200 (data/results/quant-h200.json, Llama-3-8B shape, batch 1, CUDA graphs): int8
1.26× bf16, int4 0.85×: about 1.6 and 0.6 TB/s of weight reads, against 2.4 TB/s for cuBLAS bf16.
Not tuned yet: one fixed tile shape (no autotuning), fp32 atomics for split-K, and the int4 path
loads activations at stride 2 to pair them with low and high nibbles; a Marlin-style layout
(codes pre-shuffled so one 128-bit load feeds the tensor cores) is the known next step.
"""

from __future__ import annotations

import os

import torch

MAX_ROWS = 64
_STATE = {"ok": None}


def available() -> bool:
    """True when Triton imports and CUDA is present (checked once; INFERLAB_QUANT_TRITON=0 turns it off)."""
    if _STATE["ok"] is None:
        try:
            import triton  # noqa: F401

            _STATE["ok"] = torch.cuda.is_available() and os.environ.get("INFERLAB_QUANT_TRITON", "1") != "0"
        except ImportError:
            _STATE["ok"] = False
    return _STATE["ok"]


def _build():
    import triton
    import triton.language as tl

    @triton.jit
    def wo_matmul(x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, M, N, K, K_SPLIT, sxm, swn, ssn, szn, sym,
                  INT4: tl.constexpr, GROUP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                  BK: tl.constexpr, ATOMIC: tl.constexpr):
        pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        m_ok, n_ok = rm < M, rn < N
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for i in range(0, K_SPLIT, BK):
            k0 = pid_k * K_SPLIT + i
            if INT4:
                half = tl.arange(0, BK // 2)
                xe = tl.load(x_ptr + rm[:, None] * sxm + (k0 + 2 * half)[None, :], mask=m_ok[:, None], other=0.0)
                xo = tl.load(x_ptr + rm[:, None] * sxm + (k0 + 2 * half + 1)[None, :], mask=m_ok[:, None], other=0.0)
                wb = tl.load(w_ptr + rn[:, None] * swn + (k0 // 2 + half)[None, :], mask=n_ok[:, None], other=0)
                lo = (wb & 0xF).to(xe.dtype)
                hi = (wb >> 4).to(xe.dtype)
                part = tl.dot(xe, tl.trans(lo)) + tl.dot(xo, tl.trans(hi))
                g = k0 // GROUP
                s = tl.load(s_ptr + rn * ssn + g, mask=n_ok, other=0.0).to(tl.float32)
                z = tl.load(z_ptr + rn * szn + g, mask=n_ok, other=0).to(tl.float32)
                xsum = tl.sum(xe.to(tl.float32), axis=1) + tl.sum(xo.to(tl.float32), axis=1)
                acc += (part - xsum[:, None] * z[None, :]) * s[None, :]
            else:
                rk = k0 + tl.arange(0, BK)
                x = tl.load(x_ptr + rm[:, None] * sxm + rk[None, :], mask=m_ok[:, None], other=0.0)
                w = tl.load(w_ptr + rn[:, None] * swn + rk[None, :], mask=n_ok[:, None], other=0)
                acc += tl.dot(x, tl.trans(w.to(x.dtype)))
        if not INT4:
            acc = acc * tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        ptrs = y_ptr + rm[:, None] * sym + rn[None, :]
        mask = m_ok[:, None] & n_ok[None, :]
        if ATOMIC:
            tl.atomic_add(ptrs, acc, mask=mask)
        else:
            tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)

    return wo_matmul


def _kernel():
    if "kernel" not in _STATE:
        _STATE["kernel"] = _build()
    return _STATE["kernel"]


def _sm_count(device) -> int:
    key = ("sms", str(device))
    if key not in _STATE:
        _STATE[key] = torch.cuda.get_device_properties(device).multi_processor_count if torch.cuda.is_available() else 8
    return _STATE[key]


def plan(M: int, N: int, K: int, block_k: int, sms: int, block_n: int = 64) -> tuple[int, int, int]:
    """``(BM, BN, split)``: a split of K (a power of two dividing K into BK multiples) that gives
    every SM about four programs."""
    bm = 16 if M <= 16 else (32 if M <= 32 else 64)
    tiles = -(-N // block_n) * -(-M // bm)
    split = 1
    while tiles * split < 4 * sms and K % (2 * split * block_k) == 0 and K // (2 * split) >= 4 * block_k:
        split *= 2
    return bm, block_n, split


def _launch(x2, w, s, z, N, K, int4: bool, group: int, block_k: int):
    M = x2.shape[0]
    bm, bn, split = plan(M, N, K, block_k, _sm_count(x2.device))
    y = (torch.zeros if split > 1 else torch.empty)((M, N), device=x2.device,
                                                    dtype=torch.float32 if split > 1 else x2.dtype)
    grid = (-(-N // bn), -(-M // bm), split)
    _kernel()[grid](x2, w, s, z, y, M, N, K, K // split, x2.stride(0), w.stride(0), s.stride(0),
                    z.stride(0) if z is not None else 0, y.stride(0), INT4=int4, GROUP=group, BM=bm, BN=bn,
                    BK=block_k, ATOMIC=split > 1, num_warps=4, num_stages=3)
    return y.to(x2.dtype)


def _rows(x: torch.Tensor) -> torch.Tensor | None:
    if not available() or x.dtype not in (torch.bfloat16, torch.float16):
        return None
    x2 = x.reshape(-1, x.shape[-1])
    return x2.contiguous() if x2.shape[0] <= MAX_ROWS else None


def int8_linear(x: torch.Tensor, layer) -> torch.Tensor | None:
    """``x @ (q * s)^T`` for an absmax :class:`~inferlab.quant.linear.Int8Linear`, or None."""
    x2 = _rows(x)
    if x2 is None or layer.in_features % 64:
        return None
    bk = 128 if layer.in_features % 128 == 0 else 64
    y = _launch(x2, layer.qweight, layer.scales, None, layer.out_features, layer.in_features, False, bk, bk)
    return y.view(*x.shape[:-1], layer.out_features)


def int4_linear(x: torch.Tensor, layer) -> torch.Tensor | None:
    """``x @ dequant(W)^T`` for a group-wise :class:`~inferlab.quant.linear.Int4Linear`, or None."""
    x2 = _rows(x)
    if x2 is None:
        return None
    g = layer.group_size
    y = _launch(x2, layer.qweight, layer.scales, layer.zeros, layer.out_features, layer.in_features, True, g, g)
    return y.view(*x.shape[:-1], layer.out_features)
