"""Property-based tests of the block allocator: random interleavings of allocate/append/fork/free.

Beside the allocator's own invariants, a tiny "KV cache" is written the way an engine would:
prompt tokens past the prefix-cache hits at allocate, copy-on-write copies, one token per
append. A slot holds what real K/V depends on, the token *and everything before it*, so
reading every sequence back through its block table catches wrong sharing, a missed copy
and a cache hit computed for another prefix. Half the runs replace the block hash with one
that collides all the time, to exercise the collision guard.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import inferlab.paging as paging
from inferlab.paging import BlockAllocator, OutOfBlocks, cdiv

REAL_HASH = paging.block_hash


def colliding_hash(parent, tokens):
    """A terrible hash: 3 values, so different prefixes share keys all the time."""
    return (tokens[0] + (parent or 0)) % 3

TOKENS = st.integers(min_value=0, max_value=2)  # a tiny alphabet, so prefixes repeat


class AllocatorMachine(RuleBasedStateMachine):
    @initialize(
        num_blocks=st.integers(1, 12),
        block_size=st.integers(1, 4),
        prefix=st.booleans(),
        collide=st.booleans(),
    )
    def setup(self, num_blocks, block_size, prefix, collide):
        paging.block_hash = colliding_hash if collide else REAL_HASH
        self.a = BlockAllocator(num_blocks, block_size, enable_prefix_caching=prefix)
        self.tokens: dict[int, list[int]] = {}
        self.kv: dict[int, tuple] = {}  # slot -> (tokens up to and including it): what K/V encodes
        self.next_id = 0

    # ------------------------------------------------------------- helpers
    def _write(self, seq_id, start):
        for pos, slot in enumerate(self.a.slot_mapping(seq_id, start), start):
            self.kv[slot] = tuple(self.tokens[seq_id][: pos + 1])

    def _expect_oob(self, call):
        before = self.a.snapshot()
        try:
            result = call()
        except OutOfBlocks as e:
            assert self.a.snapshot() == before, "OutOfBlocks changed the allocator"
            assert e.needed > e.free
            return False, None
        return True, result

    def _live(self):
        return sorted(self.tokens)

    # ------------------------------------------------------------- rules
    @rule(prompt=st.lists(TOKENS, min_size=1, max_size=14))
    def allocate(self, prompt):
        seq_id, self.next_id = self.next_id, self.next_id + 1
        can = self.a.can_allocate(prompt)
        ok, table = self._expect_oob(lambda: self.a.allocate(seq_id, prompt))
        assert ok == can
        if not ok:
            return
        assert len(table) == cdiv(len(prompt), self.a.block_size)
        self.tokens[seq_id] = list(prompt)
        cached = self.a.num_cached_tokens(seq_id)
        assert cached % self.a.block_size == 0 and cached < len(prompt)
        if not self.a.enable_prefix_caching:
            assert cached == 0
        for pos in range(cached):  # a hit must already hold exactly these tokens
            assert self.kv.get(self.a.slot(seq_id, pos)) == tuple(prompt[: pos + 1])
        for block_id in table[cached // self.a.block_size :]:  # the rest is private
            assert self.a.ref_count(block_id) == 1
        self._write(seq_id, cached)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), token=TOKENS)
    def append(self, data, token):
        seq_id = data.draw(st.sampled_from(self._live()))
        can = self.a.can_append(seq_id)
        ok, cow = self._expect_oob(lambda: self.a.append(seq_id, token))
        assert ok == can
        if not ok:
            return
        if cow is not None:
            src, dst = cow
            bs = self.a.block_size
            for off in range(bs):
                if src * bs + off in self.kv:
                    self.kv[dst * bs + off] = self.kv[src * bs + off]
        self.tokens[seq_id].append(token)
        n = len(self.tokens[seq_id])
        written = self.a.block_table(seq_id)[(n - 1) // self.a.block_size]
        assert self.a.ref_count(written) == 1, "append wrote into a block another sequence holds"
        self._write(seq_id, n - 1)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def fork(self, data):
        parent = data.draw(st.sampled_from(self._live()))
        child, self.next_id = self.next_id, self.next_id + 1
        self.a.fork(parent, child)  # never needs a block
        self.tokens[child] = list(self.tokens[parent])
        assert self.a.block_table(child) == self.a.block_table(parent)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free(self, data):
        seq_id = data.draw(st.sampled_from(self._live()))
        self.a.free(seq_id)
        del self.tokens[seq_id]

    @precondition(lambda self: self.tokens)
    @rule()
    def free_everything(self):
        for seq_id in self._live():
            self.a.free(seq_id)
        self.tokens.clear()
        assert self.a.num_free_blocks == self.a.num_blocks

    # ------------------------------------------------------------- invariants
    @invariant()
    def free_xor_referenced_and_refcounts_match(self):
        a = self.a
        holders = Counter(b for s in self.tokens for b in a.block_table(s))
        free = list(a.free_block_ids) + list(a.evictable)
        assert len(free) == len(set(free)) == a.num_free_blocks
        for block in a.blocks:
            assert block.ref_count == holders[block.block_id]
            assert (block.block_id in set(free)) == (block.ref_count == 0)
        for block_id in a.evictable:
            assert a.blocks[block_id].hash is not None
        for h, block_id in a.hash_to_block_id.items():
            assert a.blocks[block_id].hash == h
        assert sum(b.hash is not None for b in a.blocks) == len(a.hash_to_block_id)

    @invariant()
    def tables_fit_tokens_and_kv_reads_back(self):
        for seq_id, toks in self.tokens.items():
            assert self.a.num_tokens(seq_id) == len(toks)
            assert len(self.a.block_table(seq_id)) == cdiv(len(toks), self.a.block_size)
            want = [tuple(toks[: i + 1]) for i in range(len(toks))]
            assert [self.kv.get(s) for s in self.a.slot_mapping(seq_id)] == want

    def teardown(self):
        paging.block_hash = REAL_HASH
        if hasattr(self, "a"):
            for seq_id in self._live():
                self.a.free(seq_id)
            assert self.a.num_free_blocks == self.a.num_blocks


AllocatorMachine.TestCase.settings = settings(
    max_examples=400,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAllocatorProperties = AllocatorMachine.TestCase
