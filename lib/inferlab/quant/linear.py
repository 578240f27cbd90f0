"""Quantized linear layers and the module swap (gpt-fast's ``quantize.py`` pattern).

A quantized model is the same model with its ``nn.Linear`` modules replaced by modules
that hold packed integer weights and their constants as buffers. ``forward`` dequantizes
the weight and runs the matmul (the reference path, any device); on CUDA, int8 and int4
layers call a fused dequantize-matmul Triton kernel (:mod:`inferlab.quant.kernels`) that
reads the small weights straight from memory, which is what makes decoding faster.
The swap works on anything built from ``nn.Linear`` (a transformers model or the engine's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inferlab.quant import rtn

SCALE_DTYPE = torch.float16  # what GPTQ/AWQ checkpoints store


class QuantLinear(nn.Module):
    """Base class: shapes, optional bias, honest byte count, reference forward."""

    kind = "base"
    bits = 16

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def dequantize(self) -> torch.Tensor:
        """The float32 weight ``[out, in]`` these buffers stand for."""
        raise NotImplementedError

    def fast_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """A fused kernel's result, or None where there is none (then the reference runs)."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fast_forward(x) if x.is_cuda else None
        if y is None:
            y = F.linear(x, self.dequantize().to(x.dtype))
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def weight_bytes(self) -> int:
        """Bytes of every buffer that stores the weight (the bias excluded): the real footprint."""
        return sum(b.numel() * b.element_size() for n, b in self.named_buffers() if n != "bias")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}"


class Int8Linear(QuantLinear):
    """int8 weights per output channel: absmax (symmetric) or zero-point (asymmetric)."""

    bits = 8

    def __init__(self, qweight, scales, zeros=None, bias=None):
        super().__init__(qweight.shape[1], qweight.shape[0], bias)
        self.kind = "int8" if zeros is None else "int8-zp"
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales.to(SCALE_DTYPE))
        self.register_buffer("zeros", zeros)

    @classmethod
    def from_float(cls, weight, bias=None, zero_point: bool = False) -> Int8Linear:
        if zero_point:
            q, s, z = rtn.quantize_int8_zeropoint(weight)
            return cls(q, s, z, bias)
        q, s = rtn.quantize_int8_absmax(weight)
        return cls(q, s, None, bias)

    def dequantize(self) -> torch.Tensor:
        if self.zeros is None:
            return rtn.dequantize_int8_absmax(self.qweight, self.scales)
        return rtn.dequantize_int8_zeropoint(self.qweight, self.scales, self.zeros)

    def fast_forward(self, x):
        from inferlab.quant import kernels

        return kernels.int8_linear(x, self) if self.zeros is None else None


class Int4Linear(QuantLinear):
    """4-bit codes packed two per byte, one fp16 scale and one zero point (a byte) per group.

    ``qweight`` holds the codes in the decode kernel's order within each group
    (:func:`~inferlab.quant.rtn.kernel_order`); :meth:`codes` gives them back in column order.
    Build one with :meth:`from_codes` or :meth:`from_float`. ``g_idx`` (GPTQ's act-order) gives
    each input column's group; None means ``k // group_size``.
    """

    bits = 4
    kind = "int4"

    def __init__(self, qweight, scales, zeros, g_idx=None, bias=None):
        super().__init__(qweight.shape[1] * 2, qweight.shape[0], bias)
        self.group_size = self.in_features // scales.shape[1]
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales.to(SCALE_DTYPE))
        self.register_buffer("zeros", zeros.to(torch.uint8))
        self.register_buffer("g_idx", None if g_idx is None else g_idx.to(torch.int32))

    @classmethod
    def from_codes(cls, codes, scales, zeros, g_idx=None, bias=None) -> Int4Linear:
        """From codes ``uint8 [out, in]`` (0..15, column order) and per-group ``scales``/``zeros``."""
        group = codes.shape[1] // scales.shape[1]
        return cls(rtn.pack_int4(rtn.kernel_order(codes, group)), scales, zeros, g_idx, bias)

    @classmethod
    def from_float(cls, weight, bias=None, group_size: int = 128) -> Int4Linear:
        codes, s, z = rtn.quantize_grouped(weight, 4, group_size)
        return cls.from_codes(codes, s, z, None, bias)

    def codes(self) -> torch.Tensor:
        """The codes ``uint8 [out, in]`` in column order."""
        return rtn.natural_order(rtn.unpack_int4(self.qweight), self.group_size)

    def dequantize(self) -> torch.Tensor:
        return rtn.dequantize_grouped(self.codes(), self.scales, self.zeros, self.g_idx)

    def fast_forward(self, x):
        from inferlab.quant import kernels

        return kernels.int4_linear(x, self) if self.g_idx is None else None


class NF4Linear(QuantLinear):
    """NF4 codes packed two per byte, block absmax constants (double-quantized by default)."""

    bits = 4
    kind = "nf4"

    def __init__(self, parts: dict[str, torch.Tensor], shape, bias=None):
        super().__init__(shape[1], shape[0], bias)
        self.part_names = tuple(parts)
        for name, tensor in parts.items():
            self.register_buffer(name, tensor)

    @classmethod
    def from_float(cls, weight, bias=None, double_quant: bool = True) -> NF4Linear:
        return cls(rtn.quantize_nf4(weight, double_quant), tuple(weight.shape), bias)

    def dequantize(self) -> torch.Tensor:
        return rtn.dequantize_nf4({n: getattr(self, n) for n in self.part_names})


# ------------------------------------------------------------------ finding and swapping modules
def find_linears(model: nn.Module, skip=("lm_head",)) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` whose dotted name does not end with one of ``skip``."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(name == s or name.endswith("." + s) for s in skip)}


def swap_modules(model: nn.Module, replacements: dict[str, nn.Module]) -> None:
    """Put each replacement where the named module was (all names resolved before any change).

    Plain attributes the model reads off a layer (the engine's fused ``qkv_proj.output_sizes``)
    are carried over to the replacement.
    """
    slots = []
    for name in replacements:
        parent_name, _, child = name.rpartition(".")
        slots.append((model.get_submodule(parent_name) if parent_name else model, child))
    for (parent, child), new in zip(slots, replacements.values(), strict=True):
        old = getattr(parent, child)
        for key, value in vars(old).items():
            if not key.startswith("_") and key not in vars(new) and isinstance(value, (int, float, str, list, tuple)):
                setattr(new, key, value)
        setattr(parent, child, new)


def model_weight_bytes(model: nn.Module) -> int:
    """Bytes of all weights as stored: quantized buffers plus every float parameter (tied counted once)."""
    seen, total = set(), 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            total += m.weight_bytes()
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total
