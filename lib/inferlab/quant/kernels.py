"""Fused dequantize-matmul for decoding on CUDA (Triton): weight-only int8 and int4.

At decode time a linear layer is a matrix-vector product whose time is the time to read
the weight (gpt-fast, PyTorch blog 2023: "memory bandwidth is the bottleneck"). These
kernels read the int8 or packed int4 weight tiles, turn them into numbers in registers and
multiply, so the bytes moved shrink 2× (int8) or ~3.8× (int4, group 128) against bf16.

Kernels, chosen per call from a table:

- ``gemv`` (one activation row, batch-1 decode): no tensor cores; each program owns ``BN``
  output rows, walks K in ``BK`` steps and accumulates a tile of products in fp32, reduced
  once at the end. Codes become floats by writing them into the mantissa of 2**23
  (:func:`_magic_f32`), not through the slower integer-to-float conversion.
  ``gemv2`` (int4): low and high nibbles against the even and odd columns, no interleave.
- ``dot`` (2–64 rows, and large layers at one row): the tile goes through ``tl.dot`` (tensor
  cores), rows padded to 16; int4 groups are factored, ``s·(Σ x(B + c) − (B + z)·Σ x)``, with
  ``B + c`` made exactly in bf16/fp16 by the same mantissa trick. ``dot2``: two dots over
  even/odd columns instead of interleaving the nibbles.

Tiles cover N and K with no split of K across programs: no atomics and no extra kernels to
zero or cast. The tile per layer shape comes from a sweep on the GPU
(``scripts/gpu/quant_sweep.py``), stored in ``tuned.json`` per GPU name; other GPUs get the
sweep's best tile on average, or :data:`DEFAULT`.

Measured on an H200 (data/results/quant-sweep-h200.json, Llama-3-8B layer shapes, one row, CUDA
graphs over more weights than L2 holds): int8 reads 2.1–4.2 TB/s and beats cuBLAS bf16 by
1.48–1.95× per layer; every int4 variant stays at 0.8–1.4 TB/s (1.05–1.3× bf16), so its time is
set by the instructions per code, not by memory; at 32 rows int4 is slower than bf16. What is
known to close that gap: unpacking eight nibbles per 32-bit register with one ``lop3`` each
(inline PTX) over weights pre-shuffled for the tensor-core fragment layout (Frantar et al.
2024, Marlin), or PyTorch's tinygemm int4 kernel.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import NamedTuple

import torch

try:  # Triton ships with CUDA builds of torch; without it the reference path runs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU wheels without triton
    triton = None

MAX_ROWS = 64
TUNED = Path(__file__).with_name("tuned.json")
_STATE: dict = {"ok": None}


class Tile(NamedTuple):
    """One launch shape: kernel (``gemv``, ``gemv2``, ``dot``, ``dot2``), row/column/K tiles, warps, stages."""

    kernel: str
    bm: int
    bn: int
    bk: int
    warps: int
    stages: int


DEFAULT = {  # (format, rows > 1): a tile that works everywhere, used until a sweep says better
    ("int8", False): Tile("gemv", 1, 32, 512, 8, 3), ("int4", False): Tile("gemv", 1, 32, 512, 8, 3),
    ("int8", True): Tile("dot", 32, 64, 128, 4, 3), ("int4", True): Tile("dot", 32, 64, 128, 4, 3),
}


def available() -> bool:
    """True when Triton imports and CUDA is present (checked once; INFERLAB_QUANT_TRITON=0 turns it off)."""
    if _STATE["ok"] is None:
        _STATE["ok"] = (triton is not None and torch.cuda.is_available()
                        and os.environ.get("INFERLAB_QUANT_TRITON", "1") != "0")
    return _STATE["ok"]


# ------------------------------------------------------------------ the kernels
if triton is not None:

    @triton.jit
    def _magic_f32(u):
        """``2**23 + u`` as fp32 for unsigned ``u < 2**23``: ``u`` written into the mantissa of 2**23.

        Integer-to-float conversion runs at a quarter of the fused multiply-add rate on recent
        NVIDIA GPUs; an OR and a bitcast do not, and one subtraction later removes the 2**23.
        """
        return (u.to(tl.uint32) | 0x4B000000).to(tl.float32, bitcast=True)

    @triton.jit
    def _gemv_weights(w_ptr, s_ptr, z_ptr, rn, n_ok, k0, swn, ssn, szn, INT4: tl.constexpr, BN: tl.constexpr,
                      BK: tl.constexpr, G: tl.constexpr):
        """Weights ``[BN, BK]`` from column ``k0`` as fp32 (int8: the codes; int4: ``(c − z)·s``)."""
        row = rn[:, None].to(tl.int64)
        if INT4:
            NG: tl.constexpr = BK // G
            rg, rj = tl.arange(0, NG), tl.arange(0, G // 2)
            b = tl.load(w_ptr + row[:, :, None] * swn + (k0 // 2 + rg[None, :, None] * (G // 2) + rj[None, None, :]),
                        mask=n_ok[:, None, None], other=0)
            c = _magic_f32(tl.interleave(b & 0xF, b >> 4))
            s = tl.load(s_ptr + row * ssn + (k0 // G + rg[None, :]), mask=n_ok[:, None], other=0.0).to(tl.float32)
            z = tl.load(z_ptr + row * szn + (k0 // G + rg[None, :]), mask=n_ok[:, None], other=0)
            w = (c - _magic_f32(z)[:, :, None]) * s[:, :, None]
            return tl.reshape(w, (BN, BK))
        w = tl.load(w_ptr + row * swn + (k0 + tl.arange(0, BK))[None, :], mask=n_ok[:, None], other=0)
        return _magic_f32(w.to(tl.uint8, bitcast=True) ^ 0x80) - 8388736.0  # 2**23 + 128 + c, minus 2**23 + 128

    @triton.jit
    def _gemv_int4_pairs(w_ptr, s_ptr, z_ptr, x_ptr, rn, n_ok, k0, swn, ssn, szn, BK: tl.constexpr, G: tl.constexpr):
        """``Σ`` over columns ``k0..k0+BK`` of ``x·(c − z)·s`` as a ``[BN, NG, G/2]`` tile of products.

        Low nibbles meet the even columns of ``x`` and high nibbles the odd ones: the codes stay in
        the layout they were loaded in (interleaving them would move every weight through shared
        memory).
        """
        NG: tl.constexpr = BK // G
        rg, rj = tl.arange(0, NG), tl.arange(0, G // 2)
        row = rn[:, None].to(tl.int64)
        b = tl.load(w_ptr + row[:, :, None] * swn + (k0 // 2 + rg[None, :, None] * (G // 2) + rj[None, None, :]),
                    mask=n_ok[:, None, None], other=0)
        s = tl.load(s_ptr + row * ssn + (k0 // G + rg[None, :]), mask=n_ok[:, None], other=0.0).to(tl.float32)[:, :, None]
        z = _magic_f32(tl.load(z_ptr + row * szn + (k0 // G + rg[None, :]), mask=n_ok[:, None], other=0))[:, :, None]
        cols = k0 + rg[:, None] * G + 2 * rj[None, :]
        xe = tl.load(x_ptr + cols).to(tl.float32)[None, :, :]
        xo = tl.load(x_ptr + cols + 1).to(tl.float32)[None, :, :]
        return (_magic_f32(b & 0xF) - z) * s * xe + (_magic_f32(b >> 4) - z) * s * xo

    @triton.jit
    def gemv(x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, N, K, swn, ssn, szn, INT4: tl.constexpr, G: tl.constexpr,
             BN: tl.constexpr, BK: tl.constexpr, PAIRS: tl.constexpr):
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        n_ok = rn < N
        if INT4 and PAIRS:
            acc3 = tl.zeros((BN, BK // G, G // 2), dtype=tl.float32)
            for k0 in range(0, K, BK):
                acc3 += _gemv_int4_pairs(w_ptr, s_ptr, z_ptr, x_ptr, rn, n_ok, k0, swn, ssn, szn, BK, G)
            y = tl.sum(tl.sum(acc3, axis=2), axis=1)
        else:
            acc = tl.zeros((BN, BK), dtype=tl.float32)
            for k0 in range(0, K, BK):
                x = tl.load(x_ptr + k0 + tl.arange(0, BK)).to(tl.float32)
                acc += _gemv_weights(w_ptr, s_ptr, z_ptr, rn, n_ok, k0, swn, ssn, szn, INT4, BN, BK, G) * x[None, :]
            y = tl.sum(acc, axis=1)
        if not INT4:
            y = y * tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)

    @triton.jit
    def _int4_group(acc, x_ptr, w_ptr, s_ptr, z_ptr, rm, m_ok, rn, n_ok, kg, sxm, swn, ssn, szn,
                    G: tl.constexpr, SPLIT_NIB: tl.constexpr, MAGIC: tl.constexpr, BIAS: tl.constexpr):
        """``acc`` plus the group of ``G`` columns from ``kg``, factored: ``s·(Σ x(B + c) − (B + z)·Σ x)``.

        ``B + c`` is made exactly in the activation dtype by writing the code into the mantissa of
        ``B`` (bf16: 128, fp16: 1024), so the codes reach the tensor cores with no conversion.
        """
        rj = tl.arange(0, G // 2)
        b = tl.load(w_ptr + rn[:, None].to(tl.int64) * swn + (kg // 2 + rj)[None, :], mask=n_ok[:, None], other=0)
        xt = x_ptr.dtype.element_ty
        lo = ((b & 0xF).to(tl.uint16) | MAGIC).to(xt, bitcast=True)
        hi = ((b >> 4).to(tl.uint16) | MAGIC).to(xt, bitcast=True)
        xrow = x_ptr + rm[:, None] * sxm
        if SPLIT_NIB:  # even columns meet the low nibbles, odd the high: two dots, no interleave
            xe = tl.load(xrow + (kg + 2 * rj)[None, :], mask=m_ok[:, None], other=0.0)
            xo = tl.load(xrow + (kg + 2 * rj + 1)[None, :], mask=m_ok[:, None], other=0.0)
            d = tl.dot(xo, tl.trans(hi), acc=tl.dot(xe, tl.trans(lo)))
            xs = tl.sum(xe.to(tl.float32), axis=1) + tl.sum(xo.to(tl.float32), axis=1)
        else:
            x = tl.load(xrow + (kg + tl.arange(0, G))[None, :], mask=m_ok[:, None], other=0.0)
            d = tl.dot(x, tl.trans(tl.interleave(lo, hi)))
            xs = tl.sum(x.to(tl.float32), axis=1)
        s = tl.load(s_ptr + rn.to(tl.int64) * ssn + kg // G, mask=n_ok, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + rn.to(tl.int64) * szn + kg // G, mask=n_ok, other=0).to(tl.float32)
        return acc + (d - xs[:, None] * (z + BIAS)[None, :]) * s[None, :]

    @triton.jit
    def dot(x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, M, N, K, sxm, swn, ssn, szn, sym,
            INT4: tl.constexpr, G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
            SPLIT_NIB: tl.constexpr, MAGIC: tl.constexpr, BIAS: tl.constexpr):
        rm = tl.program_id(1) * BM + tl.arange(0, BM)
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        m_ok, n_ok = rm < M, rn < N
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            if INT4:
                for gi in tl.static_range(BK // G):
                    acc = _int4_group(acc, x_ptr, w_ptr, s_ptr, z_ptr, rm, m_ok, rn, n_ok, k0 + gi * G, sxm, swn,
                                      ssn, szn, G, SPLIT_NIB, MAGIC, BIAS)
            else:
                x = tl.load(x_ptr + rm[:, None] * sxm + (k0 + tl.arange(0, BK))[None, :], mask=m_ok[:, None], other=0.0)
                w = tl.load(w_ptr + rn[:, None].to(tl.int64) * swn + (k0 + tl.arange(0, BK))[None, :],
                            mask=n_ok[:, None], other=0)
                acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc=acc)
        if not INT4:
            acc = acc * tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rm[:, None] * sym + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])


def _kernels():
    if triton is None:
        raise RuntimeError("the quantized kernels need Triton: pip install triton (it comes with CUDA builds of torch)")
    return {"gemv": gemv, "dot": dot}


# ------------------------------------------------------------------ choosing a tile
def _tuned_table() -> dict:
    """This GPU's rows of ``tuned.json`` (``{"fmt/rows/N/K": Tile, "fmt/rows": Tile}``), or {}."""
    if "table" not in _STATE:
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
        rows = json.loads(TUNED.read_text()).get(name, {}) if TUNED.is_file() else {}
        _STATE["table"] = {key: Tile(*tile) for key, tile in rows.items()}
    return _STATE["table"]


def row_bucket(M: int) -> int:
    """The batch sizes that share a tile: 1, then up to 16, 32, 64."""
    return 1 if M == 1 else (16 if M <= 16 else (32 if M <= 32 else 64))


def choose_tile(fmt: str, M: int, N: int, K: int) -> Tile:
    """The swept tile for this exact shape, else the swept best for the format and rows, else a default."""
    table, b = _tuned_table(), row_bucket(M)
    tile = table.get(f"{fmt}/{b}/{N}/{K}") or table.get(f"{fmt}/{b}") or DEFAULT[(fmt, M > 1)]
    return tile._replace(bm=max(16, min(tile.bm, b))) if tile.kernel.startswith("dot") else tile


def fits(tile: Tile, K: int, group: int) -> bool:
    """True when the tile's K step divides K (and, for int4, is a whole number of groups)."""
    return K % tile.bk == 0 and tile.bk % group == 0


# ------------------------------------------------------------------ launching
def launch(x2: torch.Tensor, w, s, z, N: int, K: int, group: int, tile: Tile) -> torch.Tensor:
    """``y [M, N]`` from activations ``x2 [M, K]`` and one layer's buffers, with ``tile``.

    int8: ``s`` the per-row scales ``[N]``, ``z`` None. int4: ``s`` and ``z`` as the layer stores
    them, ``[N, groups]``.
    """
    int4, M = z is not None, x2.shape[0]
    szn = z.stride(0) if int4 else 0
    y = torch.empty((M, N), device=x2.device, dtype=x2.dtype)
    opts = dict(INT4=int4, G=group, BN=tile.bn, BK=tile.bk, num_warps=tile.warps, num_stages=tile.stages)
    if tile.kernel.startswith("gemv"):
        if M != 1:
            raise ValueError(f"the gemv kernel takes one row, got {M}")
        _kernels()["gemv"][(-(-N // tile.bn),)](x2, w, s, z, y, N, K, w.stride(0), s.stride(0), szn,
                                                 PAIRS=tile.kernel == "gemv2", **opts)
    else:
        grid = (-(-N // tile.bn), -(-M // tile.bm))
        magic, bias = (0x6400, 1024.0) if x2.dtype == torch.float16 else (0x4300, 128.0)
        _kernels()["dot"][grid](x2, w, s, z, y, M, N, K, x2.stride(0), w.stride(0), s.stride(0), szn,
                                y.stride(0), BM=tile.bm, SPLIT_NIB=tile.kernel == "dot2", MAGIC=magic, BIAS=bias,
                                **opts)
    return y


def _rows(x: torch.Tensor) -> torch.Tensor | None:
    if not available() or x.dtype not in (torch.bfloat16, torch.float16):
        return None
    x2 = x.reshape(-1, x.shape[-1])
    return x2.contiguous() if x2.shape[0] <= MAX_ROWS else None


@functools.cache
def _tile_for(fmt: str, bucket: int, N: int, K: int, group: int) -> Tile | None:
    """:func:`choose_tile`, its K step shrunk until it divides K (None if none does); once per shape."""
    tile = choose_tile(fmt, bucket, N, K)
    return next((t for t in (tile, *(tile._replace(bk=bk) for bk in (256, 128, 64, 32))) if fits(t, K, group)), None)


def _run(x, layer, fmt: str, group: int) -> torch.Tensor | None:
    x2 = _rows(x)
    if x2 is None:
        return None
    N, K = layer.out_features, layer.in_features
    tile = _tile_for(fmt, row_bucket(x2.shape[0]), N, K, group)
    if tile is None:
        return None
    z = layer.zeros if fmt == "int4" else None
    return launch(x2, layer.qweight, layer.scales, z, N, K, group, tile).view(*x.shape[:-1], N)


def int8_linear(x: torch.Tensor, layer) -> torch.Tensor | None:
    """``x @ (q * s)^T`` for an absmax :class:`~inferlab.quant.linear.Int8Linear`, or None."""
    return _run(x, layer, "int8", 1)


def int4_linear(x: torch.Tensor, layer) -> torch.Tensor | None:
    """``x @ dequant(W)^T`` for a group-wise :class:`~inferlab.quant.linear.Int4Linear`, or None."""
    return _run(x, layer, "int4", layer.group_size)
