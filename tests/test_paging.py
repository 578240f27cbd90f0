"""Unit tests of the paged KV block allocator (inferlab.paging)."""

from __future__ import annotations

import doctest

import pytest

import inferlab.paging as paging
from inferlab.paging import BlockAllocator, OutOfBlocks, cdiv


def test_doctests():
    assert doctest.testmod(paging).failed == 0


def test_allocate_append_free_roundtrip():
    a = BlockAllocator(num_blocks=10, block_size=4)
    assert a.allocate("a", list(range(6))) == [0, 1]
    assert a.num_tokens("a") == 6 and a.num_free_blocks == 8
    assert a.append("a", 6) is None and a.append("a", 7) is None
    assert len(a.block_table("a")) == 2
    assert a.append("a", 8) is None  # 9th token opens a third block
    assert a.block_table("a") == [0, 1, 2]
    assert a.slot("a", 8) == 2 * 4 + 0
    assert a.slot_mapping("a", 4, 9) == [4, 5, 6, 7, 8]
    assert "a" in a and "b" not in a
    a.free("a")
    assert a.num_free_blocks == 10 and "a" not in a


def test_table_lengths_match_token_counts():
    a = BlockAllocator(num_blocks=200, block_size=3)
    for n in range(1, 20):
        a.allocate(n, list(range(n)))
        assert len(a.block_table(n)) == cdiv(n, 3)
    for step in range(10):
        a.append(1, step)
        assert len(a.block_table(1)) == cdiv(a.num_tokens(1), 3)


def test_fork_shares_then_copy_on_write():
    a = BlockAllocator(num_blocks=8, block_size=4)
    a.allocate("p", [1, 2, 3, 4, 5, 6])
    a.fork("p", "c")
    assert a.block_table("p") == a.block_table("c") == [0, 1]
    assert a.ref_count(0) == a.ref_count(1) == 2 and a.num_free_blocks == 6
    src_dst = a.append("c", 7)  # partly filled shared block: copy-on-write
    assert src_dst == (1, 2)
    assert a.block_table("c") == [0, 2] and a.ref_count(1) == 1 and a.ref_count(2) == 1
    assert a.append("p", 7) is None  # p now the only holder of block 1: writes in place
    assert a.stats["cow_copies"] == 1
    a.free("p")
    a.free("c")
    assert a.num_free_blocks == 8


def test_fork_at_block_boundary_needs_no_copy():
    a = BlockAllocator(num_blocks=8, block_size=4)
    a.allocate("p", [1, 2, 3, 4])
    a.fork("p", "c")
    assert a.append("c", 5) is None and a.append("p", 5) is None
    assert a.block_table("c")[0] == a.block_table("p")[0]
    assert a.block_table("c")[1] != a.block_table("p")[1]


def test_out_of_blocks_leaves_state_unchanged():
    a = BlockAllocator(num_blocks=3, block_size=2)
    a.allocate("a", [1, 2, 3])
    before = a.snapshot()
    with pytest.raises(OutOfBlocks, match=r"needs 2 free KV block\(s\) but only 1"):
        a.allocate("b", [1, 2, 3, 4])
    assert a.snapshot() == before
    a.allocate("b", [9])
    a.append("a", 4)
    before = a.snapshot()
    with pytest.raises(OutOfBlocks):
        a.append("a", 5)
    assert a.snapshot() == before and not a.can_append("a")
    a.fork("b", "b2")
    before = a.snapshot()
    with pytest.raises(OutOfBlocks):  # copy-on-write needs a block too
        a.append("b2", 5)
    assert a.snapshot() == before
    assert isinstance(OutOfBlocks("x", 1, 0), RuntimeError)


def test_misuse_errors():
    with pytest.raises(ValueError):
        BlockAllocator(0, 16)
    with pytest.raises(ValueError):
        BlockAllocator(4, 0)
    a = BlockAllocator(4, 2)
    with pytest.raises(ValueError):
        a.allocate("a", [])
    a.allocate("a", [1])
    with pytest.raises(ValueError):
        a.allocate("a", [1])
    with pytest.raises(ValueError):
        a.fork("a", "a")
    for call in (lambda: a.append("zz", 1), lambda: a.free("zz"), lambda: a.fork("zz", "y"),
                 lambda: a.block_table("zz"), lambda: a.num_tokens("zz")):
        with pytest.raises(KeyError):
            call()


def test_can_allocate():
    a = BlockAllocator(4, 4)
    assert a.can_allocate(16) and not a.can_allocate(17)
    a.allocate("x", list(range(5)))
    assert a.can_allocate(8) and not a.can_allocate(9)


# ---------------------------------------------------------------- prefix caching
def test_prefix_cache_hit_shares_blocks():
    a = BlockAllocator(num_blocks=16, block_size=4, enable_prefix_caching=True)
    system = list(range(100, 112))  # 3 full blocks
    t1 = a.allocate("u1", system + [1, 2])
    t2 = a.allocate("u2", system + [3])
    assert t1[:3] == t2[:3] and t1[3] != t2[3]
    assert a.num_cached_tokens("u1") == 0 and a.num_cached_tokens("u2") == 12
    assert a.stats["prefix_hit_blocks"] == 3 and a.stats["prefix_hit_tokens"] == 12
    assert a.ref_count(t1[0]) == 2
    assert a.num_free_blocks == 16 - 5


def test_last_prompt_token_is_never_cached():
    a = BlockAllocator(num_blocks=16, block_size=4, enable_prefix_caching=True)
    a.allocate("u1", list(range(8)))
    a.allocate("u2", list(range(8)))  # identical, block aligned: last block recomputed
    assert a.num_cached_tokens("u2") == 4
    assert a.block_table("u2")[0] == a.block_table("u1")[0]
    assert a.block_table("u2")[1] != a.block_table("u1")[1]


def test_freed_cached_blocks_count_as_free_and_are_reused():
    a = BlockAllocator(num_blocks=4, block_size=2, enable_prefix_caching=True)
    a.allocate("u1", [1, 2, 3, 4, 5])
    a.free("u1")
    assert a.num_free_blocks == 4 and a.num_cached_blocks == 2
    a.allocate("u2", [1, 2, 3, 4, 9])
    assert a.num_cached_tokens("u2") == 4 and a.stats["evictions"] == 0


def test_eviction_is_lru_and_a_block_filled_by_append_is_cached():
    a = BlockAllocator(num_blocks=4, block_size=2, enable_prefix_caching=True)
    a.allocate("old", [1, 2, 3])
    a.append("old", 4)  # completes block 1 -> cached on append
    assert a.num_cached_blocks == 2
    a.free("old")
    a.allocate("new", [7, 8, 9])  # cached [7,8], takes the 2 never-cached blocks
    a.free("new")
    assert a.stats["evictions"] == 0
    # free now: 1 never-cached block, and cached [3,4], [1,2] (old, tail first), [7,8] (new)
    a.allocate("big", [5, 5, 6, 6, 0])  # needs 3 fresh: 1 uncached + evict the 2 LRU ones
    assert a.stats["evictions"] == 2
    a.free("big")
    a.allocate("again", [7, 8, 0])  # the most recently freed cached block survived
    assert a.num_cached_tokens("again") == 2
    a.free("again")
    a.allocate("gone", [1, 2, 3, 4, 0])  # "old"'s blocks were evicted
    assert a.num_cached_tokens("gone") == 0


def test_hash_collisions_are_caught(monkeypatch):
    monkeypatch.setattr(paging, "block_hash", lambda parent, tokens: 42)
    a = BlockAllocator(num_blocks=16, block_size=2, enable_prefix_caching=True)
    a.allocate("a", [1, 2, 3, 4, 5])
    a.allocate("b", [9, 9, 3, 4, 5])  # same "hash" for every block, different tokens
    assert a.num_cached_tokens("b") == 0
    assert set(a.block_table("a")).isdisjoint(a.block_table("b"))
    a.allocate("c", [1, 2, 3, 4, 5])
    assert a.num_cached_tokens("c") == 2  # block 0 verified; block 1's parent check fails


def test_hits_on_evictable_blocks_count_against_the_pool():
    a = BlockAllocator(num_blocks=3, block_size=2, enable_prefix_caching=True)
    a.allocate("a", [1, 2, 3, 4, 5])
    a.free("a")
    assert a.can_allocate([1, 2, 3, 4, 6]) and a.num_free_blocks == 3
    a.allocate("b", [1, 2, 3, 4, 6])
    assert a.num_cached_tokens("b") == 4 and a.num_free_blocks == 0
    a.free("b")
    assert a.num_free_blocks == 3


def test_exercise_checkers():
    from inferlab.exercises.paging import check_cow_count, check_max_waste, check_slot

    assert check_slot(lambda t, p, bs: t[p // bs] * bs + p % bs)
    assert not check_slot(lambda t, p, bs: p)
    assert not check_slot(lambda t, p, bs: 1 / 0)
    assert check_max_waste(32 * 15) and not check_max_waste(32 * 16)
    assert check_cow_count(3, prompt_len=20, block_size=16, n=4)
    assert check_cow_count(0, prompt_len=32, block_size=16, n=4)
    assert not check_cow_count(4)


def test_cached_block_is_only_reused_after_its_own_parent(monkeypatch):
    """A hash that forgets the prefix maps [3, 4] after [1, 2] and after [9, 9] to one key."""
    monkeypatch.setattr(paging, "block_hash", lambda parent, tokens: hash(tuple(tokens)))
    a = BlockAllocator(num_blocks=16, block_size=2, enable_prefix_caching=True)
    a.allocate("A", [1, 2, 3, 4, 0])
    a.allocate("C", [9, 9, 3, 4, 0])
    a.allocate("D", [9, 9, 3, 4, 7])  # [9, 9] hits C's block; [3, 4] is cached, but after [1, 2]
    assert a.num_cached_tokens("D") == 2
    assert a.block_table("D")[1] not in (a.block_table("A")[1], a.block_table("C")[1])
    a.allocate("E", [1, 2, 3, 4, 7])
    assert a.num_cached_tokens("E") == 4 and a.block_table("E")[:2] == a.block_table("A")[:2]
