"""Checkers for notebook 03 (continuous batching)."""

from __future__ import annotations

import random
from collections.abc import Callable

from inferlab.bench.workloads import static_decode_waste
from inferlab.exercises import (
    Blank,
    Check,
    attempt,
    close_enough,
    not_answered,
    show_solution,
    verdict,
)
from inferlab.paging import cdiv

SOLUTIONS = {
    "last_token_index": '''def last_token_index(lengths, width):
    return [n - 1 for n in lengths]   # each row's own last real token; the pads after it predict nothing''',
    "static_waste": '''lens, B = [10, 80, 20, 30, 5, 5, 5, 60], 4
batches = [lens[i:i + B] for i in range(0, len(lens), B)]
answer = 1 - sum(lens) / sum(len(b) * max(b) for b in batches)   # useful slot-steps / slot-steps run''',
    "min_kv_blocks": "answer = -(-min(100 + 200, 1024) // 16)   # every token it can ever hold, in 16-slot blocks: 19",
    "preemption_victim": 'answer = "d"   # the newest running request: least work to redo, oldest keep their progress',
}


def solution(name: str) -> None:
    """Print the worked answer of exercise ``name`` (one of :data:`SOLUTIONS`)."""
    show_solution(SOLUTIONS, name)


def check_last_token_index(fn: Callable[[list[int], int], list[int]]) -> Check:
    """Exercise 1: fix the widely copied tutorial batcher's read position.

    ``fn(lengths, width)`` gets the true lengths of right-padded rows and the padded width,
    and must return, per row, the position whose logits predict that row's next token.
    """
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 30) for _ in range(rng.randint(1, 8))]
        width = max(lengths) + rng.randint(0, 3)
        try:
            got = list(attempt(fn, lengths, width))
        except Blank:
            return not_answered("write last_token_index(), or run solution('last_token_index')")
        want = [n - 1 for n in lengths]
        if got != want:
            return verdict(False, "", f"for lengths={lengths}, width={width} you returned {got}; "
                           "the next token is predicted at each row's last *real* token, not at the pad "
                           "after it (what is the index of a row's last token when it has n tokens?)")
    return verdict(True, "each row reads its own last real token (length - 1), never a pad: "
                   "with right padding, logits[:, -1] is only right for the longest row", "")


def check_static_waste(answer: float | None, output_lens: list[int], batch_size: int) -> Check:
    """Exercise 2: the fraction of decode slot-steps static batching wastes on finished rows."""
    if answer is None:
        return not_answered("slot-steps run vs slot-steps used, per batch; or run solution('static_waste')")
    want = static_decode_waste(output_lens, batch_size)
    return verdict(close_enough(answer, want, rel=1e-2),
                   f"{want:.1%} of the decode slots compute tokens nobody reads: each batch runs as long as "
                   "its longest request, every row occupying its slot till then",
                   f"you said {answer:.3f}; count, per batch, len(batch) * max(batch) slot-steps, of which "
                   "only sum(batch) are useful")


def check_min_kv_blocks(answer: int | None, prompt_len: int, max_tokens: int, block_size: int, max_model_len: int) -> Check:
    """Exercise 3: the smallest KV pool (in blocks) that can ever run this request alone."""
    if answer is None:
        return not_answered("how many tokens can it ever hold? or run solution('min_kv_blocks')")
    tokens = min(prompt_len + max_tokens, max_model_len)
    want = cdiv(tokens, block_size)
    return verdict(answer == want,
                   f"{want} blocks: every token the request can ever hold ({tokens}) needs a slot; "
                   "below that the engine rejects it up front instead of preempting it forever",
                   f"you said {answer}; the request can grow to min(prompt + max_tokens, max_model_len) "
                   "tokens, and blocks hold block_size tokens each (round up)")


def check_preemption_victim(answer: str | None, running_in_arrival_order: list[str]) -> Check:
    """Exercise 4: whom does the scheduler preempt when a decode finds no free block?"""
    if answer is None:
        return not_answered("a request name such as 'b', or run solution('preemption_victim')")
    want = running_in_arrival_order[-1]
    return verdict(answer == want,
                   f"{want}: the newest running request; it has the least work to redo (recompute) "
                   "and the oldest requests keep their progress (first come, first served)",
                   f"you said {answer!r}; vLLM preempts from the back of the running queue")
