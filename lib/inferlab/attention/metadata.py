"""What one engine step tells attention: where to store K/V, and which blocks each query reads.

The model runner builds it once per step (:func:`inferlab.engine.model_runner.build_metadata`)
and every layer's :class:`~inferlab.attention.layer.Attention` shares it, as nano-vllm's
``Context`` and vLLM's ``AttentionMetadata`` are shared. A backend reads only this and the
cache. Two descriptions of the same step live here: block tables and lengths (what a kernel
reads in place: ``slot_mapping``, ``block_tables``, ``context_lens``, ``query_starts``; the ``triton``
backend), and gathered slot lists with masks (``decode_slots``, ``prefills``; the readable ``sdpa`` and
``reference`` backends). The runner fills only the one its backend reads (``Attention.tables``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AttentionMetadata:
    """Index tensors describing one step, built once and shared by every layer."""

    write_tokens: torch.Tensor | None = None  # token indices whose K/V are stored
    write_slots: torch.Tensor | None = None  # ... and where
    slot_mapping: torch.Tensor | None = None  # [tokens] cache slot of every token, -1 = none (kernels)
    is_decode: bool = False  # every token is one sequence's single new token
    block_tables: torch.Tensor | None = None  # [seqs, max_blocks] int32, per cached sequence
    context_lens: torch.Tensor | None = None  # [seqs] int32 tokens in the cache after this step's writes
    query_starts: torch.Tensor | None = None  # [seqs] int32 first row of each sequence's queries
    query_lens: torch.Tensor | None = None  # [seqs] int32 how many queries
    max_query_len: int = 0
    num_splits: int | None = None  # split-K slices of the decode kernel (fixed inside a CUDA graph)
    uncached: list[tuple[int, int]] = field(default_factory=list)  # rows of chunks that own no cache
    decode_tokens: torch.Tensor | None = None  # [rows] token index of each decode row
    decode_slots: torch.Tensor | None = None  # [rows, max_ctx] cache slots to read
    decode_mask: torch.Tensor | None = None  # [rows, 1, 1, max_ctx] True = attend
    prefills: list[tuple[int, int, torch.Tensor | None, torch.Tensor | None]] = field(default_factory=list)
    # (first token, end token, context slots or None when the chunk is its own context, mask [n, ctx])
