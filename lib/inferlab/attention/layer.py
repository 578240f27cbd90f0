"""``Attention``: the one attention module every model layer calls, with its backend chosen once.

Stores this step's K/V into the paged cache through the step's slot lists (``index_copy_``; a
kernel backend that reads block tables stores them itself), then hands the queries to the
backend picked at construction (:mod:`inferlab.attention.backends`).
The runner binds each layer's cache views (``k_cache``, ``v_cache``) once, as nano-vllm does,
so the model's code never sees the cache layout.
"""

from __future__ import annotations

import torch
from torch import nn

from inferlab.attention.backends import TABLE_BACKENDS, get_backend
from inferlab.attention.metadata import AttentionMetadata
from inferlab.attention.paged import write_slots


class Attention(nn.Module):
    """Paged attention over ``num_heads`` query heads and ``num_kv_heads`` KV heads (GQA)."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float | None = None,
                 backend: str = "sdpa"):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale  # None: 1/sqrt(head_dim), each backend's default
        self.backend = backend
        self.attend = get_backend(backend)
        self.tables = backend in TABLE_BACKENDS  # reads block tables and stores K/V itself (kernels)
        self.k_cache = self.v_cache = torch.empty(0)  # bound by the model runner

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """q ``[tokens, heads, d]``, k/v ``[tokens, kv_heads, d]`` -> ``[tokens, heads, d]``."""
        if not self.tables and meta.write_slots.numel():
            tokens = meta.write_tokens
            write_slots(k.index_select(0, tokens), v.index_select(0, tokens), meta.write_slots, self.k_cache, self.v_cache)
        return self.attend(q, k, v, meta, self.k_cache, self.v_cache, self.scale)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, backend={self.backend!r}"
