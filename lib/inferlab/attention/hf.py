"""Run a transformers model with inferlab's paged attention in every layer (notebook 02).

transformers lets a model's attention be swapped for a registered function
(``AttentionInterface``); ours scatters each layer's keys and values into a block pool
under a random block layout and attends through the block tables with the reference
:func:`~inferlab.attention.paged.paged_attention_prefill`, so equal logits show that paging
is exact.
"""

from __future__ import annotations

from functools import partial

import torch

from inferlab.attention.paged import (
    PagedKVCache,
    block_tables_tensor,
    paged_attention_prefill,
    slot_mapping_tensor,
)
from inferlab.paging import cdiv

ATTENTION_NAME = "inferlab_paged"


def _hf_paged_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                        block_size: int = 4, **kwargs):
    """A transformers attention function that routes a layer through a paged cache.

    transformers hands it the layer's queries ``[B, Hq, Tq, D]`` and full keys/values
    ``[B, Hkv, Tk, D]`` (its own cache already appended). Unpadded batches only (the
    attention mask is not consulted: causality comes from positions).
    """
    b, hq, tq, d = query.shape
    hkv, tk = key.shape[1], key.shape[2]
    per_seq = cdiv(tk, block_size)
    pool = per_seq * b + 3
    cache = PagedKVCache(1, pool, block_size, hkv, d, dtype=key.dtype, device=key.device)
    gen = torch.Generator().manual_seed(getattr(module, "layer_idx", 0) or 0)
    perm = torch.randperm(pool, generator=gen).tolist()
    tables = [perm[i * per_seq : (i + 1) * per_seq] for i in range(b)]
    for i, table in enumerate(tables):
        cache.write(0, key[i].transpose(0, 1), value[i].transpose(0, 1),
                    slot_mapping_tensor(table, 0, tk, block_size, key.device))
    q = query.transpose(1, 2).reshape(b * tq, hq, d)
    lens = torch.full((b,), tk, device=query.device)
    out = paged_attention_prefill(q, cache.k_caches[0], cache.v_caches[0], block_tables_tensor(tables, key.device),
                                  lens, torch.full((b,), tq, device=query.device), scaling)
    return out.view(b, tq, hq, d), None


def hf_paged_attention(model, block_size: int = 4):
    """Context manager: run a transformers ``model`` with our paged attention in every layer.

    >>> with hf_paged_attention(model, block_size=4):   # doctest: +SKIP
    ...     logits = model(input_ids).logits
    """
    from inferlab.hf_compat import attention_function

    return attention_function(model, ATTENTION_NAME, partial(_hf_paged_attention, block_size=block_size))
