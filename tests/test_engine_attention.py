"""Every engine attention backend against the reference paged attention.

`inferlab.attention.paged` is the slow, obvious reference (explicit masks, float32 matmuls);
the `Attention` module, on each backend of `inferlab.attention.BACKENDS`, is the path the
engine runs. For random block layouts and a step that mixes decodes, first prefill chunks
and later chunks, all must give the same output from the same cache.
"""

import random

import pytest
import torch

from inferlab.attention import BACKENDS, Attention
from inferlab.attention import paged as ref
from inferlab.engine.model_runner import ChunkInput, build_metadata
from inferlab.paging import cdiv

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
        need = cdiv(start + n, BLOCK)
        table, free = free[:need], free[need:]
        chunks.append(ChunkInput(token_ids=[0] * n, start=start, block_table=table))
    return chunks


def _kernels_run_here() -> bool:
    """Triton kernels run on CUDA, or on the CPU in Triton's interpreter (``TRITON_INTERPRET=1``)."""
    from inferlab.attention.flash_triton import interpreting, triton_available

    return triton_available() and interpreting()


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("seed", range(6))
def test_engine_attention_equals_reference(seed, backend):
    if backend == "triton" and not _kernels_run_here():
        pytest.skip("the triton backend runs on CUDA (tests/test_paged_triton.py) or under TRITON_INTERPRET=1")
    torch.manual_seed(seed)
    chunks = random_step(seed)
    k_cache = torch.randn(64, BLOCK, KV_HEADS, DIM)
    v_cache = torch.randn(64, BLOCK, KV_HEADS, DIM)
    total = sum(len(c.token_ids) for c in chunks)
    q, k, v = torch.randn(total, HEADS, DIM), torch.randn(total, KV_HEADS, DIM), torch.randn(total, KV_HEADS, DIM)

    meta = build_metadata(chunks, BLOCK, "cpu")
    attention = Attention(HEADS, KV_HEADS, DIM, backend=backend)
    attention.k_cache, attention.v_cache = k_cache, v_cache
    out = attention(q, k, v, meta)  # also writes this step's K/V

    tables = ref.block_tables_tensor([c.block_table for c in chunks])
    context = torch.tensor([c.start + len(c.token_ids) for c in chunks])
    queries = torch.tensor([len(c.token_ids) for c in chunks])
    expected = ref.paged_attention_prefill(q, k_cache, v_cache, tables, context, queries)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)

    decodes = [i for i, c in enumerate(chunks) if len(c.token_ids) == 1]
    offsets = torch.cumsum(queries, 0) - queries
    expected_decode = ref.paged_attention(q[offsets[decodes]], k_cache, v_cache, tables[decodes], context[decodes])
    torch.testing.assert_close(out[offsets[decodes]], expected_decode, atol=1e-5, rtol=1e-5)
