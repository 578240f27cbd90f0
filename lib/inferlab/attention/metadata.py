"""What one engine step tells attention: where to store K/V, and which slots each query reads.

The model runner builds it once per step (:func:`inferlab.engine.model_runner.build_metadata`)
and every layer's :class:`~inferlab.attention.layer.Attention` shares it, as nano-vllm's
``Context`` and vLLM's ``AttentionMetadata`` are shared. A backend reads only this and the
cache; a kernel backend may add its own fields (e.g. ``cu_seqlens``) where it builds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AttentionMetadata:
    """Index tensors describing one step, built once and shared by every layer."""

    write_tokens: torch.Tensor  # token indices whose K/V are stored
    write_slots: torch.Tensor  # ... and where
    decode_tokens: torch.Tensor | None = None  # [rows] token index of each decode row
    decode_slots: torch.Tensor | None = None  # [rows, max_ctx] cache slots to read
    decode_mask: torch.Tensor | None = None  # [rows, 1, 1, max_ctx] True = attend
    prefills: list[tuple[int, int, torch.Tensor | None, torch.Tensor | None]] = field(default_factory=list)
    # (first token, end token, context slots or None when the chunk is its own context, mask [n, ctx])
