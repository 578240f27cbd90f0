"""Iteration-level scheduling: who runs in the next step, and how many of their tokens.

Orca (Yu et al., OSDI 2022) schedules per *iteration* instead of per request: after every
forward pass finished sequences leave and waiting ones join, so a slot never idles while
the longest request of a batch finishes. We follow vLLM's token-budget formulation
(a step computes at most ``max_num_batched_tokens`` tokens of at most ``max_num_seqs``
sequences) and its policies:

1. Running sequences go first, oldest first: a decode costs 1 token of budget; a prompt
   still being prefilled takes what budget is left (*chunked prefill*, Sarathi,
   Agrawal et al. 2023/2024: long prompts are cut into chunks so decodes keep flowing
   in the same step instead of stalling behind them).
2. If a running sequence's new token has no free slot, the *newest* running sequence is
   preempted by recompute (vLLM's default): its blocks are freed, it goes back to the
   front of the waiting queue, and later it is re-admitted with prompt + outputs so far
   and prefilled again. Its output does not change.
3. Waiting sequences are admitted in arrival order while budget, ``max_num_seqs`` and
   free blocks allow (never in a step that had to preempt). With prefix caching the
   allocator says how many leading tokens are already in the cache; those are skipped.

``policy="static"`` turns this into classic static batching for comparison: a batch is
admitted only when the previous one has completely finished, prompts are padded to the
longest and finished rows keep occupying (and computing) their slot until the longest
row is done.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from inferlab.engine.block_manager import BlockManager
from inferlab.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledChunk:
    seq: Sequence
    num_tokens: int  # tokens of this sequence computed in this step

    @property
    def kind(self) -> str:
        return "prefill" if self.seq.is_prefill else "decode"


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    padding: list[tuple[Sequence, int]] = field(default_factory=list)  # static batching: wasted rows

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks and not self.padding


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        enable_chunked_prefill: bool = True,
        policy: str = "continuous",
    ):
        if policy not in ("continuous", "static"):
            raise ValueError(f"policy must be 'continuous' or 'static', got {policy!r}")
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_chunked_prefill = enable_chunked_prefill
        self.policy = policy
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    # ---------------------------------------------------------------- queues
    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, request_id: str) -> Sequence | None:
        """Remove a request (all its samples when n > 1) and free its blocks; returns its first sequence."""
        found = None
        for queue in (self.waiting, self.running):
            for seq in list(queue):
                group = seq.group.request_id if seq.group is not None else seq.request_id
                if group == request_id:
                    queue.remove(seq)
                    self.blocks.free(seq)
                    if seq.request_id == request_id:
                        found = seq
                    else:
                        seq.status, seq.finish_reason = SequenceStatus.FINISHED, "abort"
        return found

    def fork_pending(self, sampling: list[Sequence]) -> tuple[list[Sequence], list[int]]:
        """Parallel sampling: fork the siblings of every sequence whose prompt was just computed.

        Returns the sequences to sample and, for each, its row in the step's logits (a
        sibling samples from its parent's row: same prompt, same distribution).
        """
        seqs, rows = [], []
        for row, seq in enumerate(sampling):
            seqs.append(seq)
            rows.append(row)
            while seq.num_pending_forks:
                child = seq.fork(len(seq.group.seqs))
                seq.num_pending_forks -= 1
                self.blocks.fork(seq, child)
                self.running.insert(self.running.index(seq) + 1, child)
                seqs.append(child)
                rows.append(row)
        return seqs, rows

    # ---------------------------------------------------------------- scheduling
    def schedule(self) -> SchedulerOutput:
        if self.policy == "static":
            return self._schedule_static()
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.max_num_batched_tokens)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            if n < seq.num_uncomputed_tokens and not self.enable_chunked_prefill:
                break
            if not self._reserve_or_preempt(seq, out):
                break  # seq itself was the newest and got preempted
            out.chunks.append(ScheduledChunk(seq, n))
            budget -= n
            i += 1
        return budget

    def _reserve_or_preempt(self, seq: Sequence, out: SchedulerOutput) -> bool:
        while not self.blocks.reserve_slots(seq):
            victim = self.running[-1]
            self._preempt(victim, out)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        """Preemption by recompute: drop the KV, keep the tokens, wait at the front."""
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.metrics.num_preemptions += 1
        self.waiting.appendleft(seq)
        out.preempted.append(seq)

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.blocks.can_admit(seq):
                break
            uncached_guess = seq.num_tokens  # before admission we cannot know cache hits cheaply
            if not self.enable_chunked_prefill and uncached_guess > budget and out.chunks:
                break
            self.waiting.popleft()
            seq.num_computed_tokens = self.blocks.admit(seq)
            n = seq.num_uncomputed_tokens if not self.enable_chunked_prefill else min(seq.num_uncomputed_tokens, budget)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.chunks.append(ScheduledChunk(seq, n))
            budget -= n

    def _schedule_static(self) -> SchedulerOutput:
        out = SchedulerOutput()
        if not self.running:
            self._admit_static_batch(out)
            return out
        for seq in self.running:
            if seq.is_finished:
                out.padding.append((seq, 1))  # a finished row still costs a decode slot
            elif self.blocks.reserve_slots(seq):
                out.chunks.append(ScheduledChunk(seq, seq.num_uncomputed_tokens))
            else:
                raise RuntimeError("static batching ran out of KV blocks; admit smaller batches")
        return out

    def _admit_static_batch(self, out: SchedulerOutput) -> None:
        """Take up to ``max_num_seqs`` requests whose worst-case lengths all fit (static reservation)."""
        reserved = 0
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            worst = self.blocks.blocks_needed(seq.num_prompt_tokens + seq.params.max_tokens)
            if reserved + worst > self.blocks.num_free_blocks:
                break
            reserved += worst
            self.waiting.popleft()
            seq.num_computed_tokens = self.blocks.admit(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.chunks.append(ScheduledChunk(seq, seq.num_uncomputed_tokens))
        longest = max((c.num_tokens for c in out.chunks), default=0)
        out.padding = [(c.seq, longest - c.num_tokens) for c in out.chunks if c.num_tokens < longest]

    # ---------------------------------------------------------------- after the step
    def finish(self, seq: Sequence) -> list[Sequence]:
        """Release a finished sequence; returns the sequences whose results are now final.

        Continuous: just this one, its blocks go back at once. Static: nobody until the
        whole batch is done, then the whole batch.
        """
        if self.policy == "continuous":
            self.running.remove(seq)
            self.blocks.free(seq)
            return [seq]
        if all(s.is_finished for s in self.running):
            done, self.running = self.running, []
            for s in done:
                self.blocks.free(s)
            return done
        return []
