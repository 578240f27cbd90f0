"""Checks for notebook 02 (paged attention)."""

from __future__ import annotations

from collections.abc import Callable

from inferlab.exercises import Check, verdict
from inferlab.paging import BlockAllocator, cdiv, slot_for


def check_slot(fn: Callable[[list[int], int, int], int]) -> Check:
    """Does ``fn(block_table, position, block_size)`` return the KV slot of token ``position``?"""
    cases = [([7, 2, 9], p, 4) for p in range(12)] + [([5], p, 16) for p in range(16)] + [([3, 0, 1], 8, 3)]
    for table, pos, bs in cases:
        truth = slot_for(table, pos, bs)
        try:
            got = fn(table, pos, bs)
        except Exception as e:  # a learner's bug is a wrong answer, not a crash
            return verdict(False, "", f"fn({table}, {pos}, {bs}) raised {type(e).__name__}: {e}")
        if got != truth:
            return verdict(False, "", f"fn({table}, {pos}, {bs}) returned {got}, expected {truth}: "
                           "which logical block holds the token (pos // block_size), which physical block "
                           "is that (block_table[...]), and the offset inside it (pos % block_size)?")
    return verdict(True, "slot = block_table[pos // block_size] * block_size + pos % block_size.", "")


def check_max_waste(answer: int, num_seqs: int = 32, block_size: int = 16) -> Check:
    """At most how many slots can paging leave empty with ``num_seqs`` sequences and this block size?"""
    truth = num_seqs * (block_size - 1)
    return verdict(
        answer == truth,
        f"{truth} slots: only each sequence's last block can be partly empty, by at most block_size - 1.",
        f"not {answer}: which blocks of a sequence can hold empty slots, and how many at most?",
    )


def check_cow_count(answer: int, prompt_len: int = 20, block_size: int = 16, n: int = 4) -> Check:
    """``n`` samples forked from a ``prompt_len``-token prompt each append one token: how many CoW copies?"""
    a = BlockAllocator(cdiv(prompt_len + 1, block_size) * n + n, block_size)
    a.allocate(0, list(range(prompt_len)))
    for j in range(1, n):
        a.fork(0, j)
    for j in range(n):
        a.append(j, 0)
    truth = a.stats["cow_copies"]
    why = ("the last prompt block is partly filled and shared by all samples: every sample but the last "
           "to write gets its own copy" if prompt_len % block_size else
           "the prompt ends on a block boundary, so each sample's new token opens a fresh block: nothing to copy")
    return verdict(answer == truth, f"{truth} copies: {why}.",
                   f"not {answer}: is the last prompt block full? who still shares it when each sample writes?")
