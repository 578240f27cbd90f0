"""Checks for notebook 05 (speculative decoding)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from inferlab.exercises import (
    Blank,
    Check,
    attempt,
    close_enough,
    not_answered,
    show_solution,
    verdict,
)
from inferlab.speculative import expected_speedup, expected_tokens_per_step, optimal_k

SOLUTIONS = {
    "residual": '''def residual(p, q):
    r = (p - q).clamp_min(0)   # the mass acceptance under-produced: max(0, p - q)
    return r / r.sum()         # normalized to a distribution''',
    "expected_tokens": '''def expected_tokens(alpha, k):
    if alpha == 1:
        return k + 1                                  # every draft accepted, plus the bonus token
    return (1 - alpha ** (k + 1)) / (1 - alpha)       # 1 + alpha + ... + alpha^k''',
    "best_k": "answer = max(range(1, 17), key=lambda k: expected_speedup(0.8, k, 0.1))   # try every k, keep the best",
}


def solution(name: str) -> None:
    """Print the worked answer of exercise ``name`` (one of :data:`SOLUTIONS`)."""
    show_solution(SOLUTIONS, name)


def check_residual(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Check:
    """Does ``fn(p, q)`` return the distribution to resample from after a rejection?

    ``p`` (target) and ``q`` (draft) are 1-D probability tensors over the same vocabulary;
    the answer is a 1-D probability tensor (Leviathan et al. 2023, Algorithm 1).
    """
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        size = 3 + trial % 7
        p = torch.softmax(2 * torch.randn(size, generator=g, dtype=torch.float64), 0)
        q = torch.softmax(2 * torch.randn(size, generator=g, dtype=torch.float64), 0)
        truth = (p - q).clamp_min(0)
        truth = truth / truth.sum()
        try:
            got = torch.as_tensor(attempt(fn, p.clone(), q.clone()), dtype=torch.float64).reshape(-1)
        except Blank:
            return not_answered("write residual(p, q), or run solution('residual')")
        except Exception as e:  # a learner's bug is a wrong answer, not a crash
            return verdict(False, "", f"fn(p, q) raised {type(e).__name__}: {e}")
        if got.shape == truth.shape and torch.allclose(got, truth, atol=1e-6):
            continue
        if got.shape == p.shape and torch.allclose(got, p, atol=1e-6):
            return verdict(False, "", "that is p itself: the widely copied tutorial's mistake. Tokens the draft proposes often "
                           "were already accepted with probability min(1, p/q); which part of p is still missing?")
        if got.shape == truth.shape and torch.allclose(got, (p - q).clamp_min(0), atol=1e-6):
            return verdict(False, "", "right shape of the idea, but it does not sum to 1: normalize it.")
        if got.shape == truth.shape and bool((got < -1e-9).any()):
            return verdict(False, "", "some probabilities are negative: keep only where p exceeds q.")
        return verdict(False, "", f"for p={p.numpy().round(3)} and q={q.numpy().round(3)} expected "
                       f"{truth.numpy().round(3)}, got {got.numpy().round(3)}.")
    return verdict(True, "norm(max(0, p − q)): it adds back exactly the mass that acceptance under-produced, "
                   "so accepted + resampled tokens follow p.", "")


def check_expected_tokens(fn: Callable[[float, int], float]) -> Check:
    """Does ``fn(alpha, k)`` return the expected number of tokens one target call yields?"""
    for alpha in (0.0, 0.3, 0.6, 0.9, 1.0):
        for k in (1, 2, 4, 8):
            truth = expected_tokens_per_step(alpha, k)
            try:
                got = float(attempt(fn, alpha, k))
            except Blank:
                return not_answered("write expected_tokens(alpha, k), or run solution('expected_tokens')")
            except ZeroDivisionError:
                return verdict(False, "", f"alpha={alpha} divides by zero: what is the limit when every draft "
                               "is accepted?")
            except Exception as e:
                return verdict(False, "", f"fn({alpha}, {k}) raised {type(e).__name__}: {e}")
            if close_enough(got, truth, 1e-6):
                continue
            if close_enough(got, truth - 1, 1e-6):
                return verdict(False, "", f"alpha={alpha}, k={k}: {got:.3f} counts accepted drafts only; each target "
                               "call also adds one token of its own (resampled or bonus).")
            return verdict(False, "", f"alpha={alpha}, k={k}: expected {truth:.4f}, got {got:.4f}. Hint: "
                           "1 + alpha + alpha^2 + ... + alpha^k.")
    return verdict(True, "(1 − α^(k+1)) / (1 − α), and k + 1 at α = 1: a capped geometric series.", "")


def check_best_k(answer: int | None, alpha: float = 0.8, c: float = 0.1, k_max: int = 16) -> Check:
    """Which k (1..k_max) maximizes the expected speedup for this α and cost ratio c?"""
    if answer is None:
        return not_answered("try expected_speedup(alpha, k, c) for a few k, or run solution('best_k')")
    best = optimal_k(alpha, c, k_max)
    gain = expected_speedup(alpha, best, c)
    if answer == best:
        return verdict(True, f"k = {best}: expected speedup {gain:.2f}×. Longer drafts get accepted less often "
                       "and each one costs c of a target step.", "")
    mine = expected_speedup(alpha, int(answer), c) if 1 <= int(answer) <= k_max else float("nan")
    return verdict(False, "", f"k = {answer} gives {mine:.2f}×; some k gives {gain:.2f}×. Try the formula "
                   "for every k and keep the largest.")
