"""A request's life inside the engine: tokens, progress, status and timings.

``num_computed_tokens`` is the heart of iteration-level scheduling: every step the
scheduler hands a sequence some of its not-yet-computed tokens (a prompt chunk, or the
one token sampled last step), and the sequence samples only once all of them are done.
Preemption by recompute resets it to 0; the tokens themselves (prompt and outputs so far)
are kept, so the sequence resumes exactly where it was.

Parallel sampling (``n > 1``, vLLM's ``SequenceGroup``): a request's prompt is prefilled
once, by its first sequence; when the prompt is computed the other ``n - 1`` are *forked*
from it, sharing its KV blocks (the allocator's ``fork``: ref counts, then copy-on-write
when a sample writes into a shared block, vLLM paper §4.4), and each samples on its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch

from inferlab.engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class RequestMetrics:
    """Wall-clock times (``time.perf_counter()`` seconds) of one request's milestones."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    num_preemptions: int = 0

    @property
    def ttft(self) -> float | None:
        """Time to first token: arrival to the first sampled token."""
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def e2e(self) -> float | None:
        """End-to-end latency: arrival to the last token."""
        return None if self.finish_time is None else self.finish_time - self.arrival_time

    def tpot(self, num_generated: int) -> float | None:
        """Time per output token after the first (decode speed as one request saw it); None below 2 tokens."""
        if num_generated < 2 or self.finish_time is None or self.first_token_time is None:
            return None
        return (self.finish_time - self.first_token_time) / (num_generated - 1)


@dataclass
class Sequence:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    metrics: RequestMetrics
    generator: torch.Generator | None = None
    output_token_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)  # prompt + outputs
    num_computed_tokens: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    output_text: str = ""
    logprobs: list[dict[int, float]] | None = None
    cumulative_logprob: float = 0.0
    error: str | None = None
    detokenizer: Any = field(default=None, repr=False, compare=False)  # an IncrementalDetokenizer, when text is needed per step
    index: int = 0  # which of the request's n samples this is
    group: SequenceGroup | None = field(default=None, repr=False, compare=False)  # n > 1 only
    num_pending_forks: int = 0  # samples still to fork once the prompt is computed

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids) + list(self.output_token_ids)
        if self.params.logprobs is not None and self.logprobs is None:
            self.logprobs = []

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_prefill(self) -> bool:
        """True while more than the last sampled token is left to compute."""
        return self.num_uncomputed_tokens > 1 or not self.output_token_ids

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.token_ids.append(token_id)

    def fork(self, index: int) -> Sequence:
        """A sibling sample at the same point (prompt computed, no output yet), with its own random stream.

        The caller shares the KV blocks (``BlockManager.fork``). A seeded request's siblings
        draw from ``seed + index``, so the whole group is reproducible.
        """
        seed = self.generator.initial_seed() + index if self.generator is not None else None
        child = Sequence(
            f"{self.request_id}#{index}", self.prompt, list(self.prompt_token_ids), self.params,
            RequestMetrics(self.metrics.arrival_time, self.metrics.first_scheduled_time),
            generator=None if seed is None else torch.Generator().manual_seed(seed % 2**63),
            output_token_ids=list(self.output_token_ids), num_computed_tokens=self.num_computed_tokens,
            status=self.status, index=index, group=self.group,
        )
        if self.detokenizer is not None:
            child.detokenizer = self.detokenizer.clone()
        self.group.seqs.append(child)
        return child

    def samples(self) -> list[Sequence]:
        """Every sample of this sequence's request, in index order (just itself when n = 1)."""
        return [self] if self.group is None else sorted(self.group.seqs, key=lambda s: s.index)


@dataclass(eq=False)
class SequenceGroup:
    """The ``n`` samples of one request; the first one's ``request_id`` is the request's."""

    request_id: str
    seqs: list[Sequence] = field(default_factory=list)

    @property
    def is_finished(self) -> bool:
        return all(s.is_finished for s in self.seqs) and not self.seqs[0].num_pending_forks


def finished_requests(finished: list[Sequence]) -> list[Sequence]:
    """The first sequence of each request completed by ``finished`` (a group once all its samples are done)."""
    out = []
    for seq in finished:
        if seq.group is None:
            out.append(seq)
        elif seq.group.is_finished and all(seq.group.seqs[0] is not o for o in out):
            out.append(seq.group.seqs[0])
    return out
