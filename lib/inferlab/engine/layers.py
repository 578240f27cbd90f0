"""The building blocks of the engine's models, nano-vllm style: each parameter knows how to load itself.

Every linear layer's parameters carry a ``weight_loader(param, loaded, shard_id=None)``,
which :mod:`inferlab.engine.loader` calls with the checkpoint tensor. A fused layer
(:class:`QKVLinear`, :class:`MergedLinear`) places each checkpoint shard (``q_proj``,
``gate_proj``, ...) at its own rows. So a quantized linear (notebook 06) or a
tensor-parallel one (notebook 08, Megatron-LM's column/row split) is a swap of the module
class with its own ``weight_loader``; the model code does not change (as in gpt-fast).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from inferlab.engine.config import ModelConfig


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor) -> None:
    """Copy a checkpoint tensor into a parameter of the same shape."""
    if param.shape != loaded.shape:
        raise ValueError(f"checkpoint tensor of shape {tuple(loaded.shape)} for a parameter of shape {tuple(param.shape)}")
    param.data.copy_(loaded)


class Linear(nn.Linear):
    """``y = x W^T + b``, whose parameters load with :func:`default_weight_loader`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        for p in self.parameters():
            p.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        default_weight_loader(param, loaded)


class MergedLinear(Linear):
    """Several linears on the same input, fused along the output rows (e.g. gate and up of a SwiGLU MLP).

    Checkpoint shard ``i`` (``shard_id``: an int) fills rows ``sum(sizes[:i])`` onwards.
    """

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False):
        self.output_sizes = list(output_sizes)
        super().__init__(in_features, sum(output_sizes), bias=bias)

    def shard_offset(self, shard_id) -> tuple[int, int]:
        return sum(self.output_sizes[:shard_id]), self.output_sizes[shard_id]

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if shard_id is None:
            return default_weight_loader(param, loaded)
        offset, size = self.shard_offset(shard_id)
        default_weight_loader(param.narrow(0, offset, size), loaded)


class QKVLinear(MergedLinear):
    """Query, key and value projections fused in one matmul; ``shard_id`` is ``"q"``, ``"k"`` or ``"v"``."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, bias: bool = False):
        sizes = [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
        super().__init__(hidden_size, sizes, bias=bias)

    def shard_offset(self, shard_id) -> tuple[int, int]:
        return super().shard_offset("qkv".index(shard_id))


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), computed in fp32 like transformers."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """``norm(x)``; given the residual stream, ``(norm(x + residual), x + residual)`` (the add
        folded into the norm's kernel on a GPU, as vLLM's ``fused_add_rms_norm``)."""
        if x.is_cuda and _fused(x.device):
            from inferlab.engine import fused_triton

            if residual is None:
                return fused_triton.rms_norm(x, self.weight, self.eps)  # the same arithmetic in one kernel
            return fused_triton.add_rms_norm(x, residual, self.weight, self.eps)
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


# --------------------------------------------------------------------------- rotary embedding
def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Inverse frequencies of RoPE (Su et al. 2021) with the config's scaling, in fp32."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    raise NotImplementedError(f"RoPE scaling {kind!r} is not implemented (default, linear, llama3 are)")


def _llama3_inv_freq(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3.1's frequency-dependent scaling: long wavelengths / factor, short kept, smooth between."""
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryEmbedding(nn.Module):
    """RoPE: ``cos_sin`` once per step from the positions, ``apply`` in every layer.

    The frequencies stay fp32 whatever the model's dtype (call :meth:`reset_frequencies`
    after a ``.to(dtype)``), as transformers keeps them.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)

    def reset_frequencies(self) -> None:
        self.inv_freq = rope_inv_freq(self.config).to(self.inv_freq.device)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``[tokens, 1, head_dim]`` cosines and sines of each token's position."""
        freqs = positions.float()[:, None] * self.inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + rotate_half(x) * sin


def apply_rotary_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                    sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`RotaryEmbedding.apply` to queries and keys; one fused kernel for both on a GPU
    (:mod:`inferlab.engine.fused_triton`)."""
    if q.is_cuda and _fused(q.device):
        from inferlab.engine.fused_triton import rope_qk

        return rope_qk(q, k, cos, sin)
    return RotaryEmbedding.apply(q, cos, sin), RotaryEmbedding.apply(k, cos, sin)


def _fused(device) -> bool:
    """Fused kernels on this device: triton installed, and a one-time check against the PyTorch code passed."""
    from inferlab.engine.fused_triton import fused_ok

    return fused_ok(device)
