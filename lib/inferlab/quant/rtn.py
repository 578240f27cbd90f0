"""Round-to-nearest (RTN) weight quantization: the formats, built from their definitions.

Every scheme here maps a float weight matrix ``W [out, in]`` to small integers plus a few
float constants, and back. Nothing looks at activations (that is GPTQ's and AWQ's job):

- **int8 absmax** per output channel (LLM.int8(), Dettmers et al. 2022, without its
  outlier split): ``scale = max|w| / 127``, ``q = round(w / scale)``.
- **int8 zero-point** (asymmetric) per output channel: the range ``[min, max]`` is mapped
  onto 0..255 so a skewed row does not waste half of the codes.
- **int4 group-wise** (the layout GPTQ and AWQ checkpoints use): every ``group_size``
  consecutive input columns of a row share a scale and a zero point; two 4-bit codes are
  packed into one byte.
- **NF4 with double quantization** (QLoRA, Dettmers et al. 2023): 16 levels placed at
  quantiles of a normal distribution, one absmax per block of 64 weights, and those
  absmax constants quantized again to 8 bits in blocks of 256.
"""

from __future__ import annotations

import functools

import torch

SUPPORTED_GROUP_SIZES = (32, 64, 128)
NF4_BLOCK = 64
NF4_DQ_BLOCK = 256


def _check_matrix(w: torch.Tensor, name: str = "weight") -> torch.Tensor:
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise TypeError(f"{name} must be a 2-D floating-point tensor, got {type(w).__name__} "
                        f"{tuple(getattr(w, 'shape', ()))}")
    return w.detach().float()


def check_group_size(group_size: int, in_features: int) -> int:
    """``group_size`` if it is supported and divides ``in_features``, else a ValueError."""
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {SUPPORTED_GROUP_SIZES}, got {group_size!r}")
    if in_features % group_size:
        raise ValueError(f"group_size={group_size} does not divide the layer width in_features={in_features}")
    return group_size


# ------------------------------------------------------------------ int8
def quantize_int8_absmax(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8 [out, in], scale fp32 [out])`` with ``w ≈ q * scale[:, None]``."""
    w = _check_matrix(w)
    scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8_absmax(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def quantize_int8_zeropoint(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q uint8, scale [out], zero uint8 [out])`` with ``w ≈ (q - zero) * scale``."""
    w = _check_matrix(w)
    scale, zero = asym_params(w, 8)  # 0 stays exactly representable
    q = torch.round(w / scale[:, None] + zero[:, None]).clamp(0, 255).to(torch.uint8)
    return q, scale, zero.to(torch.uint8)


def dequantize_int8_zeropoint(q, scale, zero) -> torch.Tensor:
    return (q.float() - zero.float()[:, None]) * scale.float()[:, None]


# ------------------------------------------------------------------ int4, group-wise
def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte along the last dim: element ``2j`` in the low nibble."""
    codes = codes.to(torch.uint8)
    if codes.shape[-1] % 2:
        raise ValueError(f"the last dimension must be even to pack 4-bit codes, got {codes.shape[-1]}")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 codes 0..15, twice as many along the last dim."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)


def kernel_order(codes: torch.Tensor, group_size: int) -> torch.Tensor:
    """Columns of ``codes [out, in]`` reordered within each group for the decode kernel.

    Position ``8j + i`` of a group holds column ``i·(group_size/8) + j``: packed two per byte,
    each 32-bit word then carries code ``i`` of eight slices of the group, so the kernel takes
    nibble ``i`` of a row of words with one AND and meets a contiguous slice of the
    activations (:mod:`inferlab.quant.kernels`). :func:`natural_order` undoes it.
    """
    out_f, in_f = codes.shape
    return codes.reshape(out_f, in_f // group_size, 8, group_size // 8).transpose(2, 3).reshape(out_f, in_f)


def natural_order(codes: torch.Tensor, group_size: int) -> torch.Tensor:
    """Inverse of :func:`kernel_order`."""
    out_f, in_f = codes.shape
    return codes.reshape(out_f, in_f // group_size, group_size // 8, 8).transpose(2, 3).reshape(out_f, in_f)


def asym_params(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point mapping each row's ``[min, max]`` (with 0 inside) onto 0..2^bits-1."""
    qmax = 2**bits - 1
    lo, hi = w.amin(dim=-1).clamp(max=0), w.amax(dim=-1).clamp(min=0)
    scale = (hi - lo).clamp(min=1e-8) / qmax
    zero = torch.round(-lo / scale).clamp(0, qmax)
    return scale, zero


def quantize_grouped(w: torch.Tensor, bits: int = 4, group_size: int = 128):
    """Group-wise asymmetric RTN: ``(codes uint8 [out, in], scales [out, G], zeros [out, G])``."""
    w = _check_matrix(w)
    out_f, in_f = w.shape
    check_group_size(group_size, in_f)
    g = w.view(out_f, in_f // group_size, group_size)
    scale, zero = asym_params(g, bits)
    codes = torch.round(g / scale[..., None] + zero[..., None]).clamp(0, 2**bits - 1)
    return codes.view(out_f, in_f).to(torch.uint8), scale, zero.to(torch.uint8)


def dequantize_grouped(codes, scales, zeros, g_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Float weights from codes and per-group constants; ``g_idx[k]`` is column k's group
    (GPTQ's act-order stores it), by default ``k // group_size``."""
    out_f, in_f = codes.shape
    if g_idx is None:
        g_idx = torch.arange(in_f, device=codes.device) // (in_f // scales.shape[1])
    g_idx = g_idx.long()
    return (codes.float() - zeros.float()[:, g_idx]) * scales.float()[:, g_idx]


def fake_quantize(w: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """Quantize and dequantize (asymmetric RTN, any bits 2..8), per row or per group: the error study."""
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in 2..8, got {bits!r}")
    w = _check_matrix(w)
    if group_size is None:
        scale, zero = asym_params(w, bits)
        return (torch.round(w / scale[:, None] + zero[:, None]).clamp(0, 2**bits - 1) - zero[:, None]) * scale[:, None]
    return dequantize_grouped(*quantize_grouped(w, bits, group_size))


# ------------------------------------------------------------------ NF4 + double quantization
def nf4_levels() -> torch.Tensor:
    """The 16 NF4 values (QLoRA §3): quantiles of N(0, 1) scaled to [-1, 1], with an exact zero.

    Both halves use the quantiles ``q_i = Φ⁻¹(p_i)`` of evenly spaced probabilities: 8 on the
    positive side and 7 on the negative side (so 0 is a level and all 16 codes are used),
    the outermost probability ``δ`` chosen halfway between 1 − 1/(2·15) and 1 − 1/(2·16) so
    that the extreme quantiles stay finite; then everything is divided by the largest value.
    """
    return _levels_on("cpu").clone()


@functools.cache
def _levels_on(device: str) -> torch.Tensor:
    """:func:`nf4_levels`, computed once and kept on ``device`` (dequantizing reads it every forward)."""
    delta = 0.5 * ((1 - 1 / (2 * 15)) + (1 - 1 / (2 * 16)))
    pos = torch.special.ndtri(torch.linspace(delta, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(delta, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (levels / levels.abs().max()).float().to(device)


def _nearest_level(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    mids = (levels[1:] + levels[:-1]) / 2
    return torch.bucketize(x, mids.to(x.device)).to(torch.uint8)


def quantize_absmax_blocks(c: torch.Tensor, block: int = NF4_DQ_BLOCK):
    """Second level of double quantization: fp32 constants → int8 with one fp32 scale per block
    of ``block``, after subtracting their mean (they are all positive; QLoRA §3)."""
    mean = c.mean()
    pad = (-c.numel()) % block
    centered = torch.nn.functional.pad(c - mean, (0, pad)).view(-1, block)
    scale = centered.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(centered / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.flatten()[: c.numel()], scale, mean


def dequantize_absmax_blocks(q, scale, mean, block: int = NF4_DQ_BLOCK) -> torch.Tensor:
    pad = (-q.numel()) % block
    full = torch.nn.functional.pad(q.float(), (0, pad)).view(-1, block) * scale[:, None]
    return full.flatten()[: q.numel()] + mean


def quantize_nf4(w: torch.Tensor, double_quant: bool = True) -> dict[str, torch.Tensor]:
    """NF4 codes (packed) and block absmax constants, double-quantized unless told otherwise."""
    w = _check_matrix(w)
    if w.numel() % NF4_BLOCK:
        raise ValueError(f"NF4 needs a weight count divisible by {NF4_BLOCK}, got shape {tuple(w.shape)}")
    blocks = w.reshape(-1, NF4_BLOCK)
    absmax = blocks.abs().amax(dim=1).clamp(min=1e-12)
    codes = _nearest_level(blocks / absmax[:, None], _levels_on(str(blocks.device)))
    out = {"packed": pack_int4(codes.view(w.shape))}
    if double_quant:
        out["absmax_q"], out["absmax_scale"], out["absmax_mean"] = quantize_absmax_blocks(absmax)
    else:
        out["absmax"] = absmax
    return out


def nf4_absmax(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    if "absmax" in parts:
        return parts["absmax"].float()
    return dequantize_absmax_blocks(parts["absmax_q"], parts["absmax_scale"], parts["absmax_mean"])


def dequantize_nf4(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    codes = unpack_int4(parts["packed"])
    values = _levels_on(str(codes.device))[codes.long()]
    return (values.view(-1, NF4_BLOCK) * nf4_absmax(parts)[:, None]).view(codes.shape)
