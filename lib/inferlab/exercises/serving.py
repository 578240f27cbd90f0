"""Checkers for notebook 04 (serving)."""

from __future__ import annotations

import random
from collections.abc import Callable

from inferlab.exercises import (
    Blank,
    Check,
    attempt,
    close_enough,
    not_answered,
    show_solution,
    verdict,
)

SOLUTIONS = {
    "token_latencies": '''def token_latencies(sent_at, token_times):
    ttft = token_times[0] - sent_at                       # waiting for the answer to start
    gaps = [b - a for a, b in zip(token_times, token_times[1:])]
    itl = sum(gaps) / len(gaps) if gaps else 0.0          # then its reading speed
    return ttft, itl''',
    "littles_law": "answer = 32 / 2.0   # Little's law: in flight = throughput x time in system, so 16 requests/s",
    "status_code": 'answer = {"max_tokens past the context": 400, "unknown model": 404, "wrong API key": 401, '
                   '"body too large": 413}',
}

EXPECTED_STATUS = {"max_tokens past the context": 400, "unknown model": 404, "wrong API key": 401,
                   "body too large": 413}


def solution(name: str) -> None:
    """Print the worked answer of exercise ``name`` (one of :data:`SOLUTIONS`)."""
    show_solution(SOLUTIONS, name)


def check_token_latencies(fn: Callable[[float, list[float]], tuple[float, float]]) -> Check:
    """Exercise 1: TTFT and mean inter-token latency from a stream's arrival times."""
    rng = random.Random(0)
    for _ in range(30):
        sent = rng.uniform(0, 100)
        times = [sent + rng.uniform(0.05, 2.0)]
        for _ in range(rng.randint(0, 20)):
            times.append(times[-1] + rng.uniform(0.001, 0.2))
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        want = (times[0] - sent, sum(gaps) / len(gaps) if gaps else 0.0)
        try:
            got = attempt(fn, sent, list(times))
        except Blank:
            return not_answered("write token_latencies(), or run solution('token_latencies')")
        if not (close_enough(got[0], want[0], 1e-6) and close_enough(got[1], want[1], 1e-6)):
            return verdict(False, "", f"for a request sent at {sent:.3f} with tokens at {[round(t, 3) for t in times[:4]]}... "
                           f"you returned {got}, expected ({want[0]:.4f}, {want[1]:.4f}): TTFT counts from the send, "
                           "ITL is the mean gap between consecutive tokens")
    return verdict(True, "TTFT is when the answer starts, ITL how fast it reads: the two latencies a user feels, "
                   "and what bench serve reports at p50 and p99", "")


def check_littles_law(answer: float | None, in_flight: int = 32, seconds_each: float = 2.0) -> Check:
    """Exercise 2: requests per second of a server that keeps ``in_flight`` requests busy."""
    if answer is None:
        return not_answered("in flight = throughput x time each; or run solution('littles_law')")
    want = in_flight / seconds_each
    return verdict(close_enough(answer, want, 1e-3),
                   f"{want:g} requests/s: Little's law (L = λW) ties concurrency, throughput and latency, "
                   "so more concurrency only raises throughput while latency grows more slowly",
                   f"you said {answer}; with L = {in_flight} in flight and W = {seconds_each} s each, λ = L / W")


def check_status_codes(answer: dict[str, int] | None) -> Check:
    """Exercise 3: the HTTP status our server (and vLLM's) returns for each bad request."""
    if answer is None:
        return not_answered("a dict from each case to a status code; or run solution('status_code')")
    wrong = {k: v for k, v in answer.items() if EXPECTED_STATUS.get(k) != v}
    missing = sorted(set(EXPECTED_STATUS) - set(answer))
    return verdict(not wrong and not missing,
                   "400 bad value, 401 who are you, 404 no such model, 413 too big: all 4xx, so the client "
                   "knows to fix its request instead of retrying, and the server keeps serving everyone else",
                   f"not yet: wrong {wrong}, missing {missing}; try each against the running server")
