"""The engine's attention (SDPA over gathered slots) against the reference paged attention.

`inferlab.paged_attention` is the slow, obvious reference (explicit masks, float32 matmuls);
the engine's `model_runner.paged_attention` is the path the engine runs. For random block
layouts and a step that mixes decodes, first prefill chunks and later chunks, both must give
the same output from the same cache.
"""

import random

import pytest
import torch

from inferlab import paged_attention as ref
from inferlab.engine.model_runner import ChunkInput, build_metadata
from inferlab.engine.model_runner import paged_attention as engine_attention

HEADS, KV_HEADS, DIM, BLOCK = 8, 2, 16, 4


def random_step(seed: int):
    """Chunks (start, n) for 6 sequences with random, disjoint block tables."""
    rng = random.Random(seed)
    shapes = [(rng.randint(1, 30), 1) for _ in range(3)]  # decodes: `start` tokens already cached
    shapes += [(0, rng.randint(1, 12))]  # a first prefill chunk
    shapes += [(rng.randint(1, 20), rng.randint(2, 9)) for _ in range(2)]  # later chunks
    free = list(range(64))
    rng.shuffle(free)
    chunks = []
    for start, n in shapes:
        need = (start + n + BLOCK - 1) // BLOCK
        table, free = free[:need], free[need:]
        chunks.append(ChunkInput(token_ids=[0] * n, start=start, block_table=table))
    return chunks


@pytest.mark.parametrize("seed", range(6))
def test_engine_attention_equals_reference(seed):
    torch.manual_seed(seed)
    chunks = random_step(seed)
    k_cache = torch.randn(64, BLOCK, KV_HEADS, DIM)
    v_cache = torch.randn(64, BLOCK, KV_HEADS, DIM)
    total = sum(len(c.token_ids) for c in chunks)
    q, k, v = torch.randn(total, HEADS, DIM), torch.randn(total, KV_HEADS, DIM), torch.randn(total, KV_HEADS, DIM)

    meta = build_metadata(chunks, BLOCK, "cpu")
    out = engine_attention(q, k, v, meta, k_cache, v_cache)  # also writes this step's K/V

    tables = ref.block_tables_tensor([c.block_table for c in chunks])
    context = torch.tensor([c.start + len(c.token_ids) for c in chunks])
    queries = torch.tensor([len(c.token_ids) for c in chunks])
    expected = ref.paged_attention_prefill(q, k_cache, v_cache, tables, context, queries)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)

    decodes = [i for i, c in enumerate(chunks) if len(c.token_ids) == 1]
    offsets = torch.cumsum(queries, 0) - queries
    expected_decode = ref.paged_attention(q[offsets[decodes]], k_cache, v_cache, tables[decodes], context[decodes])
    torch.testing.assert_close(out[offsets[decodes]], expected_decode, atol=1e-5, rtol=1e-5)
