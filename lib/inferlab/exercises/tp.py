"""Checks for notebook 08 (tensor parallelism).

Each exercise ships open: the blank answer is ``None`` (or a function that raises
``NotImplementedError``), which prints a neutral "not answered yet"; :func:`solution`
prints a worked answer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from inferlab.exercises import Blank, Check, attempt, not_answered, show_solution, verdict

SOLUTIONS = {
    "row_parallel": '''def row_parallel(x, weight, size):
    cols = weight.shape[1] // size
    partial = [x[:, r * cols:(r + 1) * cols] @ weight[:, r * cols:(r + 1) * cols].T for r in range(size)]
    return sum(partial)            # what the all-reduce adds up''',
    "kv_per_gpu": '''from inferlab.kvcache import kv_bytes_per_token
# 8 KV heads over 16 GPUs: each GPU keeps ceil(8/16) = 1 head, so the cache stops shrinking at TP=8
answer = 80 * 2 * 1 * 128 * 2        # layers x (K and V) x 1 head x head_dim x 2 bytes = 40,960 B
# or: answer = kv_bytes_per_token("llama-3-70b", "bfloat16", tp_size=16)''',
    "all_reduce_bytes": '''answer = 2 * 32 * 4096 * 2   # two all-reduces per layer x 32 layers x hidden 4096 x 2 bytes (bf16)''',
}


def solution(name: str) -> None:
    """Print the worked answer of exercise ``name`` (one of :data:`SOLUTIONS`)."""
    show_solution(SOLUTIONS, name)


def check_row_parallel(fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> Check:
    """Does ``fn(x, weight, size)`` compute ``x @ weight.T`` as a sum of ``size`` column-slice products?"""
    g = torch.Generator().manual_seed(0)
    for size, (n, d_in, d_out) in ((2, (3, 8, 5)), (4, (2, 16, 7)), (1, (1, 4, 4))):
        x, w = torch.randn(n, d_in, generator=g, dtype=torch.float64), torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
        try:
            got = attempt(fn, x, w, size)
        except Blank:
            return not_answered("write row_parallel(), or run solution('row_parallel')")
        except Exception as e:  # a learner's bug is a wrong answer, not a crash
            return verdict(False, "", f"row_parallel raised {type(e).__name__}: {e}")
        if not isinstance(got, torch.Tensor) or got.shape != (n, d_out) or not torch.allclose(got, x @ w.T):
            return verdict(False, "", f"with size={size} the result is not x @ weight.T: each rank multiplies its "
                           "slice of x's columns by the same slice of weight's columns, and the slices add up.")
    return verdict(True, "the partial products of the column slices add up to the full product: that sum is the "
                   "all-reduce after o_proj and down_proj.", "")


def check_kv_per_gpu(answer: int | None) -> Check:
    """KV-cache bytes per token per GPU for Llama-3-70B (80 layers, 8 KV heads of 128) in bf16 at TP=16."""
    from inferlab.kvcache import kv_bytes_per_token

    if answer is None:
        return not_answered("how many KV heads does each of the 16 GPUs keep?")
    truth = kv_bytes_per_token("llama-3-70b", "bfloat16", tp_size=16)
    if int(answer) == truth // 2:
        return verdict(False, "", "8 heads / 16 GPUs is half a head: a head cannot be split, each GPU keeps a whole one.")
    return verdict(int(answer) == truth, f"{truth:,} B per token per GPU: the same as at TP=8. Beyond the number of "
                   "KV heads, more GPUs replicate heads instead of dividing them.",
                   f"{int(answer):,} is not it; count layers x (K and V) x heads per GPU x head_dim x bytes.")


def check_all_reduce_bytes(answer: int | None) -> Check:
    """Bytes each rank all-reduces per token for Llama-3-8B (32 layers, hidden 4096) in bf16."""
    if answer is None:
        return not_answered("how many all-reduces per layer, and how big is each per token?")
    truth = 2 * 32 * 4096 * 2
    return verdict(int(answer) == truth, f"{truth:,} B = 512 KiB per token, whatever the TP size: the payload is a "
                   "full hidden vector twice per layer (a ring moves 2(p-1)/p of it per rank).",
                   f"{int(answer):,} is not it: two hidden-size vectors per layer, in 2-byte bf16.")
