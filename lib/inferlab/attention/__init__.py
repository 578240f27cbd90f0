"""Paged attention: one cache layout, one ``paged_attention`` name, one module with a backend switch.

- :mod:`~inferlab.attention.paged`     the KV block pool (:class:`PagedKVCache`) and the readable
  reference (``paged_attention`` for decode, ``paged_attention_prefill``); notebook 02
- :mod:`~inferlab.attention.metadata`  what one engine step tells attention (slots to write and read)
- :mod:`~inferlab.attention.layer`     ``Attention``: the module every model layer calls
- :mod:`~inferlab.attention.backends`  backends by name: ``reference``, ``sdpa`` (Triton, flash: later)
- :mod:`~inferlab.attention.sdpa`      the SDPA backend the engine runs by default
- :mod:`~inferlab.attention.hf`        ``hf_paged_attention``: a transformers model on our paged cache
- :mod:`~inferlab.attention.naive`     ``naive_attention``: the score matrix in memory; notebook 07
- :mod:`~inferlab.attention.flash`     ``flash_attention``: FlashAttention's tiles and online softmax in
  PyTorch, and the engine's ``flash`` backend; notebook 07
- :mod:`~inferlab.attention.flash_triton`  ``flash_attention_triton``: the same as a Triton kernel
"""

from inferlab.attention.backends import BACKENDS, get_backend
from inferlab.attention.flash import flash_attention
from inferlab.attention.flash_triton import flash_attention_triton
from inferlab.attention.hf import hf_paged_attention
from inferlab.attention.layer import Attention
from inferlab.attention.metadata import AttentionMetadata
from inferlab.attention.naive import naive_attention
from inferlab.attention.paged import (
    PagedKVCache,
    block_tables_tensor,
    gather_kv,
    paged_attention,
    paged_attention_prefill,
    slot_mapping_tensor,
)

__all__ = [
    "BACKENDS", "Attention", "AttentionMetadata", "PagedKVCache", "block_tables_tensor", "gather_kv",
    "get_backend", "hf_paged_attention", "paged_attention", "paged_attention_prefill", "slot_mapping_tensor",
    "flash_attention", "flash_attention_triton", "naive_attention",
]
