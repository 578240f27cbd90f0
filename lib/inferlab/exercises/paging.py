"""Checks for notebook 02 (paged attention)."""

from __future__ import annotations

from collections.abc import Callable

from inferlab.exercises import Blank, Check, attempt, not_answered, show_solution, verdict
from inferlab.paging import BlockAllocator, cdiv, slot_for

SOLUTIONS = {
    "slot": '''def slot(block_table, position, block_size):
    block = block_table[position // block_size]      # the physical block holding this logical block
    return block * block_size + position % block_size  # its first slot + the offset inside it''',
    "max_waste": "answer = 32 * 15   # only each sequence's last block can be partly empty: at most block_size - 1 slots",
    "cow_count": "answer = 3   # the half-full last prompt block is shared by 4; each writer but the last gets a copy",
}


def solution(name: str) -> None:
    """Print the worked answer of exercise ``name`` (one of :data:`SOLUTIONS`)."""
    show_solution(SOLUTIONS, name)


def check_slot(fn: Callable[[list[int], int, int], int]) -> Check:
    """Does ``fn(block_table, position, block_size)`` return the KV slot of token ``position``?"""
    cases = [([7, 2, 9], p, 4) for p in range(12)] + [([5], p, 16) for p in range(16)] + [([3, 0, 1], 8, 3)]
    for table, pos, bs in cases:
        truth = slot_for(table, pos, bs)
        try:
            got = attempt(fn, table, pos, bs)
        except Blank:
            return not_answered("write slot(), or run solution('slot')")
        except Exception as e:  # a learner's bug is a wrong answer, not a crash
            return verdict(False, "", f"fn({table}, {pos}, {bs}) raised {type(e).__name__}: {e}")
        if got != truth:
            return verdict(False, "", f"fn({table}, {pos}, {bs}) returned {got}, expected {truth}: "
                           "which logical block holds the token (pos // block_size), which physical block "
                           "is that (block_table[...]), and the offset inside it (pos % block_size)?")
    return verdict(True, "slot = block_table[pos // block_size] * block_size + pos % block_size.", "")


def check_max_waste(answer: int | None, num_seqs: int = 32, block_size: int = 16) -> Check:
    """At most how many slots can paging leave empty with ``num_seqs`` sequences and this block size?"""
    if answer is None:
        return not_answered("which blocks can be partly empty? or run solution('max_waste')")
    truth = num_seqs * (block_size - 1)
    return verdict(
        answer == truth,
        f"{truth} slots: only each sequence's last block can be partly empty, by at most block_size - 1.",
        f"not {answer}: which blocks of a sequence can hold empty slots, and how many at most?",
    )


def check_cow_count(answer: int | None, prompt_len: int = 20, block_size: int = 16, n: int = 4) -> Check:
    """``n`` samples forked from a ``prompt_len``-token prompt each append one token: how many CoW copies?"""
    if answer is None:
        return not_answered("is the last prompt block full? or run solution('cow_count')")
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
