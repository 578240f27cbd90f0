"""Fused dequantize-matmul for decoding on CUDA (Triton): weight-only int8 and int4.

At decode time a linear layer is a matrix-vector product whose time is the time to read
the weight (gpt-fast, PyTorch blog 2023: "memory bandwidth is the bottleneck"). These
kernels read the int8 or packed int4 weight tiles, turn them into numbers in registers and
multiply, so the bytes moved shrink 2× (int8) or ~3.8× (int4, group 128) against bf16.

Kernels, chosen per call from a table:

- ``gemv`` (one activation row, batch-1 decode): no tensor cores; each program owns ``BN``
  output rows and walks K in ``BK`` steps, products kept in fp32.
  int8: codes become floats by writing them into the mantissa of 2**23 (:func:`_magic_f32`).
  int4 (:func:`gemv_int4`): the codes, stored in :func:`~inferlab.quant.rtn.kernel_order`, are
  read as 32-bit words; masking a code where it sits makes an exact fp32 denormal
  (:func:`_code`), so each code costs one AND and one fused multiply-add.
- ``dot`` (2–64 rows, and int8's large layers at one row): the tile goes through ``tl.dot``
  (tensor cores), rows padded to 16. int4 (:func:`dot_int4`) computes ``W xᵀ`` so the weight rows
  fill the MMA's large side, and factors each group, ``s·(Σ (B + c)x − (B + z)·Σ x)``, with
  ``B + c`` made exactly in bf16/fp16.

Where a layer has too few tiles to fill the GPU, the int4 kernels can split K over ``split``
programs per tile; the last to finish adds the partial sums (:func:`_split_sum`), so a call stays
one launch. The tile per layer shape comes from a sweep on the GPU (``scripts/gpu/quant_sweep.py``),
stored in ``tuned.json`` per GPU name; other GPUs get the sweep's best tile on average, or
:data:`DEFAULT`.

Measured on an H200 (data/results/quant-sweep-h200.json, Llama-3-8B layer shapes, CUDA graphs over
more weights than L2 holds). One row: int8 reads 2.4–4.2 TB/s, 1.67–2.01× cuBLAS bf16 per layer;
int4 reads 2.0–3.3 TB/s, 2.40–3.30× bf16. 32 rows: int4 0.94–1.39× bf16 (the earlier ``x Wᵀ``
form, unsplit, made the whole 8B step at batch 32 0.48× bf16). The one-row kernels launch with
programmatic dependent launch (:mod:`inferlab.pdl`) and load their first K step's weights before
waiting for the previous kernel; with that, the sweep picks one K step per program for most int4
layers (the whole of a program's weights in flight while the kernel before it finishes), and the
graphed 8B batch-1 int4 step went from 2.46 to 2.13 ms (data/results/quant-step-profile-h200.json as
recorded at 81e8989).
The tensor-core ``dot`` kernels launch without it: with it, the batch-32 steps were slower
(data/results/quant-pdl-ablation-h200.json). The int4 gemv is bound by latency, not bandwidth.
Nsight Compute on one cold launch per 8B layer (``scripts/gpu/quant_ncu.py``, PDL off;
data/results/quant-ncu-h200.json): the words a program holds take 168 registers, so at most 3
warps per scheduler, of which 0.5–1.2 are ready to issue; the top stall is waiting on global
memory; DRAM at 27–40% of peak on the short layers, 58% on gate/up and 71% on the LM head.
Four ways around it lost on an H200 that day (data/results/quant-int4-variants-h200.json):

- a persistent form with Triton's software pipeliner (``cp.async``, 2–3 stages): 15–50% slower per
  layer;
- the K loop pipelined the same way (``tl.range`` with ``num_stages``; a plain ``range`` is not
  pipelined, whatever the launch's ``num_stages``): 4% faster on the down projection alone, but the
  whole step 7% slower, since its loads no longer start before :func:`pdl_wait`; with the wait moved
  into the loop as inline PTX, so that the pipeliner issues the first steps' weights before it,
  every layer was 37–58% slower (each short step's activations go through shared memory and
  barriers);
- products in fp16 pairs through inline PTX (16% fewer instructions): the step time unchanged;
- each program asking L2 for the next wave's weights: 0–25% slower.

What went further: feeding the unpacked codes to the tensor cores (Frantar et al. 2024, Marlin), in
CUDA, where the MMA's register fragments can be addressed (:mod:`inferlab.quant.cuda_gemv`). Where it
builds (nvcc present), one-row int4 layers with groups of 128 take that kernel instead of
:func:`gemv_int4`: on an H200 the graphed 8B batch-1 step went from 2.02 to 1.80 ms
(data/results/quant-cuda-h200.json).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import NamedTuple

import torch

from inferlab.pdl import launch_options, pdl_wait
from inferlab.quant import cuda_gemv

try:  # Triton ships with CUDA builds of torch; without it the reference path runs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU wheels without triton
    triton = None

MAX_ROWS = 64
TUNED = Path(__file__).with_name("tuned.json")
_STATE: dict = {"ok": None}


class Tile(NamedTuple):
    """One launch shape: kernel (``gemv`` for one row, ``dot`` for more), row/column/K tiles, warps,
    stages, and for the int4 kernels the programs that share each tile's K (``split``)."""

    kernel: str
    bm: int
    bn: int
    bk: int
    warps: int
    stages: int
    split: int = 1


DEFAULT = {  # (format, rows > 1): a tile that works everywhere, used until a sweep says better
    ("int8", False): Tile("gemv", 1, 32, 512, 8, 1), ("int4", False): Tile("gemv", 1, 16, 1024, 4, 1),
    ("int8", True): Tile("dot", 32, 64, 128, 4, 3), ("int4", True): Tile("dot", 32, 64, 128, 4, 3, 4),
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
    def _int8_step(acc, w, x_ptrs):
        """``acc + c·x`` for one K step of int8 codes ``w [BN, BK]``; the code becomes a float by
        :func:`_magic_f32` (``2**23 + 128 + c`` after flipping the sign bit, then one subtraction)."""
        x = tl.load(x_ptrs).to(tl.float32)
        return acc + (_magic_f32(w.to(tl.uint8, bitcast=True) ^ 0x80) - 8388736.0) * x[None, :]

    @triton.jit
    def gemv(x_ptr, w_ptr, s_ptr, y_ptr, N, K, swn, BN: tl.constexpr, BK: tl.constexpr, PDL: tl.constexpr):
        """int8, one row: ``BN`` outputs per program, K walked in ``BK`` steps, products kept in fp32.
        The first step's weights are loaded before :func:`pdl_wait`, as in :func:`gemv_int4`."""
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        n_ok = rn < N
        rk = tl.arange(0, BK)
        w_rows = w_ptr + rn[:, None].to(tl.int64) * swn
        w = tl.load(w_rows + rk[None, :], mask=n_ok[:, None], other=0)
        pdl_wait(PDL)
        acc = _int8_step(tl.zeros((BN, BK), dtype=tl.float32), w, x_ptr + rk)
        for k0 in range(BK, K, BK):
            w = tl.load(w_rows + (k0 + rk)[None, :], mask=n_ok[:, None], other=0)
            acc = _int8_step(acc, w, x_ptr + k0 + rk)
        y = tl.sum(acc, axis=1) * tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)

    @triton.jit
    def dot(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, sxm, swn, sym,
            BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        """int8, 2–64 rows (or large layers at one): the int8 tile converted and fed to ``tl.dot``."""
        rm = tl.program_id(1) * BM + tl.arange(0, BM)
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        m_ok, n_ok = rm < M, rn < N
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            x = tl.load(x_ptr + rm[:, None] * sxm + (k0 + tl.arange(0, BK))[None, :], mask=m_ok[:, None], other=0.0)
            w = tl.load(w_ptr + rn[:, None].to(tl.int64) * swn + (k0 + tl.arange(0, BK))[None, :],
                        mask=n_ok[:, None], other=0)
            acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc=acc)
        acc = acc * tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rm[:, None] * sym + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])

    @triton.jit
    def _split_sum(val, y_ptrs, ok, part_ptrs, PART, count_ptr, pid_k, SPLIT: tl.constexpr):
        """Split-K epilogue: store this program's partial ``val`` (slot ``pid_k`` of ``SPLIT``, ``PART``
        apart) and count in; the last of the ``SPLIT`` programs adds the partials into ``y`` and resets
        the counter, so the next call and CUDA-graph replays start at 0. One launch, no atomics on data."""
        tl.store(part_ptrs + pid_k * PART, val, mask=ok)
        tl.debug_barrier()  # every thread's partial is written before the counter moves
        if tl.atomic_add(count_ptr, 1, sem="acq_rel") == SPLIT - 1:
            total = tl.zeros(val.shape, dtype=tl.float32)
            for i in tl.static_range(SPLIT):
                total += tl.load(part_ptrs + i * PART, mask=ok, other=0.0, cache_modifier=".cg")
            tl.store(y_ptrs, total.to(y_ptrs.dtype.element_ty), mask=ok)
            tl.atomic_xchg(count_ptr, 0)

    @triton.jit
    def _code(v, P: tl.constexpr):
        """The code at bits ``P..P+3`` of ``v`` as the fp32 denormal ``c·2**(P − 149)``: one AND, exact.

        A float whose exponent bits are zero is its mantissa times 2**-149, so masking a nibble in
        place *is* the conversion; GPUs multiply denormals at full speed unless told to flush them.
        """
        return (v & (0xF << P)).to(tl.float32, bitcast=True)

    @triton.jit
    def _slice(x_ptr, cols, i: tl.constexpr, WG: tl.constexpr, P: tl.constexpr):
        """Activation slice ``i`` of each word's group, times ``2**(100 − P)``: each product is ``c·x·2**-49``."""
        return tl.load(x_ptr + cols + i * WG).to(tl.float32)[None, :] * (2.0 ** (100 - P))

    @triton.jit
    def _int4_weights(w_ptr, s_ptr, z_ptr, row, n_ok, k0, swn, ssn, szn, G: tl.constexpr, W: tl.constexpr,
                      NG: tl.constexpr):
        """One K step's codes ``[BN, W]`` (32-bit words), scales and zero points ``[BN, NG]``."""
        w = tl.load(w_ptr + row * swn + (k0 // 8 + tl.arange(0, W))[None, :], mask=n_ok[:, None], other=0)
        s = tl.load(s_ptr + row * ssn + (k0 // G + tl.arange(0, NG))[None, :], mask=n_ok[:, None], other=0.0)
        z = tl.load(z_ptr + row * szn + (k0 // G + tl.arange(0, NG))[None, :], mask=n_ok[:, None], other=0)
        return w, s.to(tl.float32), z

    @triton.jit
    def _int4_step(acc, zsx, w, s, z, x_ptr, k0, BN: tl.constexpr, G: tl.constexpr, W: tl.constexpr,
                   NG: tl.constexpr):
        """Add one K step's ``Σ c·x`` per group (scaled once) to ``acc`` and its ``s·z·Σx`` to ``zsx``."""
        WG: tl.constexpr = G // 8  # words per group
        rw, rg, rc = tl.arange(0, W), tl.arange(0, NG), tl.arange(0, G)
        # x read a second time, as [groups, G] (an L2 hit): summing the eight slices already in
        # registers per group needed layout shuffles through shared memory and was slower
        xsum = tl.sum(tl.load(x_ptr + k0 + rg[:, None] * G + rc[None, :]).to(tl.float32), axis=1)
        hi = w >> 16
        cols = k0 + (rw // WG) * G + rw % WG
        a = _code(w, 0) * _slice(x_ptr, cols, 0, WG, 0)
        a += _code(w, 4) * _slice(x_ptr, cols, 1, WG, 4)
        a += _code(w, 8) * _slice(x_ptr, cols, 2, WG, 8)
        a += _code(w, 12) * _slice(x_ptr, cols, 3, WG, 12)
        a += _code(w, 16) * _slice(x_ptr, cols, 4, WG, 16)
        a += _code(hi, 4) * _slice(x_ptr, cols, 5, WG, 4)
        a += _code(hi, 8) * _slice(x_ptr, cols, 6, WG, 8)
        a += _code(hi, 12) * _slice(x_ptr, cols, 7, WG, 12)
        acc += tl.sum(tl.reshape(a, (BN, NG, WG)), axis=2) * s  # word w is in group w // WG
        zsx += s * z.to(tl.float32) * xsum[None, :]
        return acc, zsx

    @triton.jit
    def gemv_int4(x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, part_ptr, count_ptr, N, K, swn, ssn, szn,
                  G: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT: tl.constexpr, PDL: tl.constexpr):
        """int4, one row, codes in :func:`~inferlab.quant.rtn.kernel_order` read as 32-bit words.

        Word ``j`` of a group holds code ``i`` of column ``i·G/8 + j`` in bits ``4i..4i+3``: five
        codes are taken in place (:func:`_code`), three after one shift, each multiplied by a
        contiguous slice of ``x`` pre-scaled for its bit position. A group's ``G/8`` word sums are
        added, then scaled once (scaling every four words cost registers and up to 9% of the time);
        each step also takes its groups' ``s·z·Σx``, subtracted at the end. All of a step's loads
        (codes, scales, zero points, ``x``) are issued together, so a program waits on memory once
        per step: a separate zero-point pass after the main loop waited twice and was 1–12% slower
        on the 8B layers of an H200. The first step's weights are loaded before :func:`pdl_wait`
        (they do not depend on the previous kernel), so under PDL they arrive while it finishes.
        With ``SPLIT > 1`` (``SPLIT·BK ≤ K``), ``SPLIT`` programs share each row block's
        K steps (more loads in flight on short, wide layers); each stores its partial sums and the
        last to finish adds them up (a counter per row block, reset by that program, so the next
        call and CUDA-graph replays start at 0).
        """
        W: tl.constexpr = BK // 8  # words per step
        NG: tl.constexpr = BK // G  # groups per step
        pid_n, pid_k = tl.program_id(0), tl.program_id(1)
        rn = pid_n * BN + tl.arange(0, BN)
        n_ok = rn < N
        row = rn[:, None].to(tl.int64)
        k_first = pid_k * BK
        w, s, z = _int4_weights(w_ptr, s_ptr, z_ptr, row, n_ok, k_first, swn, ssn, szn, G, W, NG)
        pdl_wait(PDL)
        acc = tl.zeros((BN, NG), dtype=tl.float32)
        zsx = tl.zeros((BN, NG), dtype=tl.float32)
        acc, zsx = _int4_step(acc, zsx, w, s, z, x_ptr, k_first, BN, G, W, NG)
        for k0 in range(k_first + SPLIT * BK, K, SPLIT * BK):
            w, s, z = _int4_weights(w_ptr, s_ptr, z_ptr, row, n_ok, k0, swn, ssn, szn, G, W, NG)
            acc, zsx = _int4_step(acc, zsx, w, s, z, x_ptr, k0, BN, G, W, NG)
        y = tl.sum(acc, axis=1) * (2.0 ** 49) - tl.sum(zsx, axis=1)
        if SPLIT == 1:
            tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=n_ok)
        else:
            _split_sum(y, y_ptr + rn, n_ok, part_ptr + rn, N, count_ptr + pid_n, pid_k, SPLIT)

    @triton.jit
    def dot_int4(x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, part_ptr, count_ptr, M, N, K, sxm, swn, ssn, szn, sym,
                 G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                 MAGIC: tl.constexpr, BIAS: tl.constexpr, SPLIT: tl.constexpr):
        """int4, 2–64 rows, as ``yᵀ = W xᵀ``: per group, eight ``tl.dot`` of a code slice against a
        contiguous ``x`` slice.

        The weight tile is the MMA's first operand, so ``BN`` weight rows fill its large side and the
        few activation rows its small one (the "swap AB" of small-batch GEMMs; 1.5–2.5× faster than
        ``x Wᵀ`` on an H200 at 32 rows). Groups are factored, ``s·(Σ (B + c)x − (B + z)·Σ x)``, with
        ``B + c`` made exactly in the activation dtype by writing the code into the mantissa of ``B``
        (bf16: 128, fp16: 1024). Needs ``G/8 ≥ 16`` (``tl.dot``'s smallest K). With ``SPLIT > 1``,
        ``SPLIT`` programs share each tile's K steps (:func:`_split_sum`): a few hundred tiles do not
        fill an H200 otherwise.
        """
        WG: tl.constexpr = G // 8
        pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        m_ok, n_ok = rm < M, rn < N
        rj = tl.arange(0, WG)
        xt = x_ptr.dtype.element_ty
        acc = tl.zeros((BN, BM), dtype=tl.float32)
        for k0 in range(pid_k * BK, K, SPLIT * BK):
            for gi in tl.static_range(BK // G):
                kg = k0 + gi * G
                w = tl.load(w_ptr + rn[:, None].to(tl.int64) * swn + (kg // 8 + rj)[None, :], mask=n_ok[:, None], other=0)
                d = tl.zeros((BN, BM), dtype=tl.float32)
                xs = tl.zeros((BM,), dtype=tl.float32)
                for i in tl.static_range(8):
                    c = (((w >> (4 * i)) & 0xF) | MAGIC).to(tl.int16).to(xt, bitcast=True)
                    x = tl.load(x_ptr + rm[:, None] * sxm + (kg + i * WG + rj)[None, :], mask=m_ok[:, None], other=0.0)
                    d = tl.dot(c, tl.trans(x), acc=d)
                    xs += tl.sum(x.to(tl.float32), axis=1)
                s = tl.load(s_ptr + rn.to(tl.int64) * ssn + kg // G, mask=n_ok, other=0.0).to(tl.float32)
                z = tl.load(z_ptr + rn.to(tl.int64) * szn + kg // G, mask=n_ok, other=0).to(tl.float32)
                acc += (d - (z + BIAS)[:, None] * xs[None, :]) * s[:, None]
        ok = n_ok[:, None] & m_ok[None, :]
        y_ptrs = y_ptr + rn[:, None] + rm[None, :] * sym
        if SPLIT == 1:
            tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=ok)
        else:
            _split_sum(acc, y_ptrs, ok, part_ptr + rn[:, None] + rm[None, :] * N, tl.num_programs(1) * BM * N,
                       count_ptr + pid_m * tl.num_programs(0) + pid_n, pid_k, SPLIT)


def _kernels():
    if triton is None:
        raise RuntimeError("the quantized kernels need Triton: pip install triton (it comes with CUDA builds of torch)")
    return {"gemv": gemv, "dot": dot, "gemv_int4": gemv_int4, "dot_int4": dot_int4}


# ------------------------------------------------------------------ choosing a tile
def _gpu_rows() -> dict:
    """This GPU's rows of ``tuned.json`` as stored, or {} (read once)."""
    if "rows" not in _STATE:
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
        _STATE["rows"] = json.loads(TUNED.read_text()).get(name, {}) if TUNED.is_file() else {}
    return _STATE["rows"]


def _tuned_table() -> dict:
    """The Triton tiles among this GPU's rows (``{"fmt/rows/N/K": Tile, "fmt/rows": Tile}``), or {}."""
    if "table" not in _STATE:
        _STATE["table"] = {key: Tile(*tile) for key, tile in _gpu_rows().items()
                           if isinstance(tile, list) and tile[0] in ("gemv", "dot")}
    return _STATE["table"]


def set_tuned_rows(rows: dict) -> None:
    """Use ``rows`` (``tuned.json``'s form) on top of this GPU's stored ones from now on, e.g. a
    sweep's fresh results; every choice made from the old ones is forgotten."""
    _STATE["rows"] = {**_gpu_rows(), **rows}
    _STATE.pop("table", None)
    _tile_for.cache_clear()
    _cuda_groups.cache_clear()


def row_bucket(M: int) -> int:
    """The batch sizes that share a tile: 1, then up to 16, 32, 64."""
    return 1 if M == 1 else (16 if M <= 16 else (32 if M <= 32 else 64))


def choose_tile(fmt: str, M: int, N: int, K: int) -> Tile:
    """The swept tile for this exact shape, else the swept best for the format and rows, else a default."""
    table, b = _tuned_table(), row_bucket(M)
    tile = table.get(f"{fmt}/{b}/{N}/{K}") or table.get(f"{fmt}/{b}") or DEFAULT[(fmt, M > 1)]
    return tile._replace(bm=max(16, min(tile.bm, b))) if tile.kernel.startswith("dot") else tile


def fits(tile: Tile, K: int, group: int) -> bool:
    """True when the tile's K step divides K and is a whole number of int4 groups (``group`` 1 for int8),
    every one of its ``split`` programs gets a step, and, for the int4 ``dot``, groups are at least 128
    (``tl.dot`` takes slices of 16 or more)."""
    return (K % tile.bk == 0 and tile.bk % group == 0 and tile.split * tile.bk <= K
            and (tile.kernel == "gemv" or group == 1 or group >= 128))


# ------------------------------------------------------------------ launching
def launch(x2: torch.Tensor, w, s, z, N: int, K: int, group: int, tile: Tile) -> torch.Tensor:
    """``y [M, N]`` from activations ``x2 [M, K]`` and one layer's buffers, with ``tile``.

    int8: ``w`` the codes ``[N, K]``, ``s`` the per-row scales ``[N]``, ``z`` None. int4: ``w``
    the packed codes in kernel order (``uint8 [N, K/2]``), ``s`` and ``z`` ``[N, groups]``.
    """
    int4, M = z is not None, x2.shape[0]
    y = torch.empty((M, N), device=x2.device, dtype=x2.dtype)
    opts = dict(BN=tile.bn, BK=tile.bk, num_warps=tile.warps, num_stages=tile.stages)
    k = _kernels()
    if tile.kernel == "gemv":
        if M != 1:
            raise ValueError(f"the gemv kernel takes one row, got {M}")
        if int4:
            words = w.view(torch.int32)
            part, count = _split_buffers(x2.device, N, tile) if tile.split > 1 else (y, y)
            k["gemv_int4"][(-(-N // tile.bn), tile.split)](x2, words, s, z, y, part, count, N, K, words.stride(0),
                                                           s.stride(0), z.stride(0), G=group, SPLIT=tile.split, **opts,
                                                           **launch_options(x2))
        else:
            k["gemv"][(-(-N // tile.bn),)](x2, w, s, y, N, K, w.stride(0), **opts, **launch_options(x2))
        return y
    grid_n, grid_m = -(-N // tile.bn), -(-M // tile.bm)
    if int4:
        words = w.view(torch.int32)
        magic, bias = (0x6400, 1024.0) if x2.dtype == torch.float16 else (0x4300, 128.0)
        part, count = _split_buffers(x2.device, N, tile, grid_m) if tile.split > 1 else (y, y)
        k["dot_int4"][(grid_n, grid_m, tile.split)](x2, words, s, z, y, part, count, M, N, K, x2.stride(0),
                                                     words.stride(0), s.stride(0), z.stride(0), y.stride(0), G=group,
                                                     BM=tile.bm, MAGIC=magic, BIAS=bias, SPLIT=tile.split, **opts)
    else:
        k["dot"][(grid_n, grid_m)](x2, w, s, y, M, N, K, x2.stride(0), w.stride(0), y.stride(0), BM=tile.bm, **opts)
    return y


def _split_buffers(device, N: int, tile: Tile, row_blocks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The partial sums ``[split, row_blocks·bm, N]`` and per-tile counters (zeros) of a split kernel,
    made once per device, shape, tile and row blocks (layers run one at a time, so layers of a shape
    share them)."""
    key = ("split", str(device), N, tile, row_blocks)
    if key not in _STATE:
        # memory taken from a CUDA graph's pool must not outlive the graph
        if torch.device(device).type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("a split int4 kernel met a new layer shape inside CUDA-graph capture: "
                               "run the model once eagerly before capturing (its buffers are made then)")
        _STATE[key] = (torch.empty(tile.split, row_blocks * tile.bm, N, device=device, dtype=torch.float32),
                       torch.zeros(row_blocks * -(-N // tile.bn), device=device, dtype=torch.int32))
    return _STATE[key]


def _rows(x: torch.Tensor) -> torch.Tensor | None:
    if not available() or x.dtype not in (torch.bfloat16, torch.float16):
        return None
    x2 = x.reshape(-1, x.shape[-1])
    return x2.contiguous() if x2.shape[0] <= MAX_ROWS else None


@functools.cache
def _tile_for(fmt: str, bucket: int, N: int, K: int, group: int) -> Tile | None:
    """:func:`choose_tile`, its K step halved until it fits K (None if none down to 32 does); once per shape."""
    tile = choose_tile(fmt, bucket, N, K)
    steps = (tile.bk >> i for i in range(tile.bk.bit_length()) if tile.bk >> i >= 32)
    return next((t for t in (tile._replace(bk=bk) for bk in steps) if fits(t, K, group)), None)


@functools.cache
def _cuda_groups(N: int, K: int, group: int) -> int | None:
    """Groups per warp of the tensor-core int4 kernel for one row of this shape: this GPU's
    ``cuda-int4/N/K`` row of ``tuned.json`` (``scripts/gpu/quant_cuda.py``) where it fits, else
    :func:`~inferlab.quant.cuda_gemv.groups_per_warp`'s default; None where the kernel does not take
    the shape. Once per shape."""
    swept = _gpu_rows().get(f"cuda-int4/{N}/{K}")
    if swept and cuda_gemv.groups_per_warp(N, K, group, swept):
        return swept
    return cuda_gemv.groups_per_warp(N, K, group)


def _run(x, layer, fmt: str, group: int) -> torch.Tensor | None:
    x2 = _rows(x)
    if x2 is None:
        return None
    N, K = layer.out_features, layer.in_features
    if fmt == "int4" and x2.shape[0] == 1 and cuda_gemv.available():
        gs = _cuda_groups(N, K, group)
        if gs is not None:
            return cuda_gemv.gemv_int4(x2, layer.qweight, layer.scales, layer.zeros, N, K, gs).view(*x.shape[:-1], N)
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
