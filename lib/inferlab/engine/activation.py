"""The gated MLP's activations, by the names Hugging Face configs use (``hidden_act``).

Llama, Mistral and Qwen2 checkpoints use SiLU (SwiGLU, Shazeer 2020, "GLU Variants Improve
Transformer"); fine-tunes and relatives set a GELU variant instead (GeGLU). Each function
matches transformers' ``ACT2FN`` entry of the same name, so a config runs with the
activation it was trained with; a name not listed here is refused when the config is read
(:func:`inferlab.engine.config.check_implemented`), never silently replaced by SiLU.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

_tanh_gelu = partial(F.gelu, approximate="tanh")  # Hendrycks & Gimpel 2016, the tanh approximation

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,  # exact, with erf
    "gelu_python": F.gelu,
    "gelu_new": _tanh_gelu,  # GPT-2's
    "gelu_fast": _tanh_gelu,
    "gelu_pytorch_tanh": _tanh_gelu,  # Gemma's
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
}


def act_and_mul(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``act(gate) * up`` of a fused ``[gate | up]`` tensor, for the activation named ``name``."""
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act {name!r} is not implemented (implemented: {', '.join(ACTIVATIONS)})")
    act = ACTIVATIONS[name]
    silu = act is F.silu

    def gated(gate_up: torch.Tensor) -> torch.Tensor:
        if silu and gate_up.is_cuda:
            from inferlab.engine.fused_triton import fused_ok, silu_and_mul

            if fused_ok(gate_up.device):
                return silu_and_mul(gate_up)  # one kernel instead of two, same rounding
        gate, up = gate_up.chunk(2, dim=-1)
        return act(gate) * up

    return gated
