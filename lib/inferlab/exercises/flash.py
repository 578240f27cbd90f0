"""Checks for notebook 07 (FlashAttention).

Each exercise ships open: the notebook's blank answer is ``None`` (or a function that raises
``NotImplementedError``), which prints a neutral "not answered yet" instead of stopping Run
All; :func:`solution` prints a worked answer, one click away.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from inferlab.exercises import Blank, Check, attempt, not_answered, show_solution, verdict
from inferlab.paging import cdiv

SOLUTIONS = {
    "merge": '''def merge(m_a, l_a, m_b, l_b):
    m = max(m_a, m_b)                      # the new reference maximum
    return m, l_a * math.exp(m_a - m) + l_b * math.exp(m_b - m)   # rescale both sums to it''',
    "score_bytes": "answer = 32 * 32768 * 32768 * 4   # heads x q_len x kv_len x bytes per float32 score = 128 GiB",
    "causal_tiles": "n = 4096 // 128; answer = n * (n + 1) // 2   # the lower triangle of 32 x 32 tiles, diagonal included: 528",
}


def solution(name: str) -> None:
    """Print the worked answer of exercise ``name`` (one of :data:`SOLUTIONS`)."""
    show_solution(SOLUTIONS, name)


def check_merge(fn: Callable[[float, float, float, float], tuple[float, float]]) -> Check:
    """Does ``fn(m_a, l_a, m_b, l_b)`` merge two partial softmax states (max, sum of exp(x - max))?"""
    rng = random.Random(0)
    cases = [(1.0, 2.0, 3.0, 1.5), (5.0, 1.0, -2.0, 4.0), (0.0, 1.0, 0.0, 1.0)]
    cases += [(rng.uniform(-5, 5), rng.uniform(0.1, 9), rng.uniform(-5, 5), rng.uniform(0.1, 9)) for _ in range(20)]
    for m_a, l_a, m_b, l_b in cases:
        try:
            got = attempt(fn, m_a, l_a, m_b, l_b)
        except Blank:
            return not_answered("write merge(), or run solution('merge')")
        except Exception as e:  # a learner's bug is a wrong answer, not a crash
            return verdict(False, "", f"merge{(m_a, l_a, m_b, l_b)} raised {type(e).__name__}: {e}")
        m = max(m_a, m_b)
        want = (m, l_a * math.exp(m_a - m) + l_b * math.exp(m_b - m))
        if not (math.isclose(got[0], want[0], rel_tol=1e-9) and math.isclose(got[1], want[1], rel_tol=1e-9)):
            return verdict(False, "", f"merge{(m_a, l_a, m_b, l_b)} gave {got}, expected {want}: both sums must be "
                           "relative to the same maximum before they add up.")
    return verdict(True, "two partial states combine by rescaling each sum by exp(its max - the new max): "
                   "the same step merges K/V tiles here and the splits of FlashDecoding.", "")


def check_score_bytes(answer: int | None, heads: int = 32, seq_len: int = 32768, bytes_per_score: int = 4) -> Check:
    """Bytes of one layer's float32 score matrix for ``heads`` heads at ``seq_len`` tokens (batch 1)."""
    if answer is None:
        return not_answered("how many scores per head, and how many bytes each?")
    truth = heads * seq_len * seq_len * bytes_per_score
    return verdict(int(answer) == truth, f"{truth:,} bytes = {truth / 2**30:,.0f} GiB for one layer's scores, "
                   "before the softmax makes a second matrix of the same size.",
                   f"not {answer:,}: one score per (head, query, key) pair, {bytes_per_score} bytes each.")


def check_causal_tiles(answer: int | None, seq_len: int = 4096, block: int = 128) -> Check:
    """How many ``block × block`` score tiles does causal FlashAttention compute at ``seq_len`` tokens?"""
    if answer is None:
        return not_answered("draw the tiles; which ones lie wholly above the diagonal?")
    n = cdiv(seq_len, block)
    truth = n * (n + 1) // 2
    return verdict(int(answer) == truth, f"{truth} of {n * n} tiles ({truth / (n * n):.0%}): the lower triangle, "
                   f"with only the {n} diagonal tiles needing a mask.",
                   f"not {answer}: with {n} query tiles, query tile i needs key tiles 0..i.")
