"""``LLMEngine``: requests in, one scheduled forward pass per ``step()``, finished outputs out.

A step is: schedule (who runs, how many tokens each, who is preempted) → build the
flattened batch → one forward pass through the paged KV cache → sample one token for
every sequence whose uncomputed tokens are now all computed → check stop conditions →
release finished sequences. Every step is recorded in ``engine.trace`` (who ran, how many
tokens, prefill or decode, who was preempted, free blocks), which the notebook draws.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from inferlab.engine.block_manager import BlockManager
from inferlab.engine.config import EngineConfig
from inferlab.engine.model_runner import ChunkInput, ModelRunner
from inferlab.engine.outputs import CompletionOutput, RequestOutput
from inferlab.engine.sampling_params import SamplingParams
from inferlab.engine.scheduler import Scheduler, SchedulerOutput
from inferlab.engine.sequence import RequestMetrics, Sequence, SequenceStatus
from inferlab.sampling import sample


class RequestTooLarge(ValueError):
    """The request could never fit: its tokens need more KV blocks than the whole pool has."""


@dataclass
class StepRecord:
    """What one engine step did, for Gantt charts and accounting."""

    step: int
    start: float
    end: float
    entries: list[tuple[str, str, int]] = field(default_factory=list)  # (request id, kind, tokens)
    preempted: list[str] = field(default_factory=list)
    num_free_blocks: int = 0
    num_padding_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(n for _, _, n in self.entries)


class LLMEngine:
    """The engine over a :class:`ModelRunner`: ``add_request``, then ``step()`` until done.

    ``config``/``settings``: an :class:`EngineConfig` and/or any of its fields (the scheduling
    ones apply here; the model and pool ones were used when ``runner`` was built).
    ``num_blocks``: use only this many of the runner's KV blocks (to study a small pool).
    """

    def __init__(self, runner: ModelRunner, tokenizer: Any, config: EngineConfig | None = None, *,
                 num_blocks: int | None = None, **settings: Any):
        self.engine_config = config = EngineConfig.from_kwargs(config, **settings)
        self.runner, self.tokenizer = runner, tokenizer
        self.config = runner.config
        if num_blocks is not None and not 0 < num_blocks <= runner.num_blocks:
            raise ValueError(f"num_blocks must be in [1, {runner.num_blocks}], got {num_blocks!r}")
        pool = num_blocks or runner.num_blocks
        self.block_manager = BlockManager(pool, runner.block_size, config.enable_prefix_caching, runner.copy_block)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens,
                                   config.enable_chunked_prefill, config.policy)
        self.max_model_len = runner.config.max_model_len
        self.eos_token_ids = set(runner.config.eos_token_ids)
        if getattr(tokenizer, "eos_token_id", None) is not None:
            self.eos_token_ids.add(tokenizer.eos_token_id)
        self.pad_token_id = getattr(tokenizer, "pad_token_id", None) or 0
        self.record_trace = config.record_trace
        self.trace: list[StepRecord] = []
        self.sequences: dict[str, Sequence] = {}
        self._counter = 0

    # ---------------------------------------------------------------- requests
    def add_request(self, request_id: str | None, prompt: str | list[int], params: SamplingParams | None = None, arrival_time: float | None = None) -> str:
        """Validate and queue a request; returns its id. Raises ValueError naming the bad field."""
        params = params or SamplingParams()
        params.validate()
        request_id = self._new_id() if request_id is None else str(request_id)
        if request_id in self.sequences:
            raise ValueError(f"request_id {request_id!r} is already in use")
        text, token_ids = self._tokenize(prompt)
        self._check_fits(token_ids, params)
        seq = Sequence(
            request_id, text, token_ids, params,
            RequestMetrics(arrival_time if arrival_time is not None else time.perf_counter()),
            generator=_generator(params.seed),
        )
        self.sequences[request_id] = seq
        self.scheduler.add(seq)
        return request_id

    def _new_id(self) -> str:
        self._counter += 1
        return str(self._counter - 1)

    def _tokenize(self, prompt: str | list[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt must not be empty")
            ids = self.tokenizer.encode(prompt)
            return prompt, list(ids)
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("prompt (token ids) must not be empty")
        if min(ids) < 0 or max(ids) >= self.config.vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {self.config.vocab_size})")
        return None, ids

    def _check_fits(self, token_ids: list[int], params: SamplingParams) -> None:
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt is {len(token_ids)} tokens but the model's context (max_model_len) is "
                f"{self.max_model_len}; at least one token must be left to generate"
            )
        total = min(len(token_ids) + params.max_tokens, self.max_model_len)
        needed = self.block_manager.blocks_needed(total)
        if needed > self.block_manager.num_blocks:
            raise RequestTooLarge(
                f"request needs {total} tokens of KV cache ({needed} blocks of "
                f"{self.block_manager.block_size}) but the whole pool has only "
                f"{self.block_manager.num_blocks} blocks; lower max_tokens or build the LLM with "
                "a larger num_kv_blocks"
            )

    def abort_request(self, request_id: str) -> None:
        seq = self.scheduler.abort(request_id)
        if seq is not None:
            self._finish(seq, "abort")

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---------------------------------------------------------------- the step
    def step(self) -> list[RequestOutput]:
        """Run one iteration; returns the requests that finished in it."""
        start = time.perf_counter()
        plan = self.scheduler.schedule()
        if plan.is_empty:
            if self.scheduler.has_unfinished() and not plan.preempted:
                raise RuntimeError("the scheduler could not run any waiting request (pool too small?)")
            return []
        kinds = [c.kind for c in plan.chunks]  # before processing turns prefills into decodes
        chunks = self._chunk_inputs(plan)
        logits = self.runner.execute(chunks)
        now = time.perf_counter()
        finished = self._process(plan, logits, now)
        if self.record_trace:
            self._record(plan, kinds, start, now)
        for seq in finished:
            self.sequences.pop(seq.request_id, None)
        return [self.make_output(seq) for seq in finished]

    def _chunk_inputs(self, plan: SchedulerOutput) -> list[ChunkInput]:
        chunks = []
        for c in plan.chunks:
            seq = c.seq
            start = seq.num_computed_tokens
            sample_now = start + c.num_tokens == seq.num_tokens
            chunks.append(ChunkInput(seq.token_ids[start:start + c.num_tokens], start, self.block_manager.block_table(seq), sample_now))
        for _, n in plan.padding:  # static batching's waste: real compute, thrown away
            if n:
                chunks.append(ChunkInput([self.pad_token_id] * n, 0, None, False))
        return chunks

    def _process(self, plan: SchedulerOutput, logits: torch.Tensor, now: float) -> list[Sequence]:
        sampling = []
        for c in plan.chunks:
            seq = c.seq
            if seq.metrics.first_scheduled_time is None:
                seq.metrics.first_scheduled_time = now
            seq.num_computed_tokens += c.num_tokens
            self.block_manager.mark_computed(seq)
            if seq.num_computed_tokens == seq.num_tokens:
                sampling.append(seq)
        if not sampling:
            return []
        tokens, chosen, logprobs = sample(logits, sampling)
        finished = []
        for row, seq in enumerate(sampling):
            finished += self._append(seq, tokens[row], chosen[row], logprobs[row], now)
        return finished

    def _append(self, seq: Sequence, token: int, logprob: float, logprobs: torch.Tensor, now: float) -> list[Sequence]:
        seq.append_token(token)
        if seq.metrics.first_token_time is None:
            seq.metrics.first_token_time = now
        seq.cumulative_logprob += logprob
        if seq.logprobs is not None:
            seq.logprobs.append(_top_logprobs(logprobs, token, logprob, seq.params.logprobs))
        reason = self._stop_reason(seq)
        return self._finish(seq, reason) if reason else []

    def _stop_reason(self, seq: Sequence) -> str | None:
        p, token = seq.params, seq.output_token_ids[-1]
        if not p.ignore_eos and token in self.eos_token_ids:
            seq.stop_reason = None
            return "stop"
        if token in p.stop_token_ids:
            seq.stop_reason = token
            return "stop"
        if p.stop:
            text = self.decode(seq.output_token_ids)
            hits = [(text.find(s), s) for s in p.stop if s in text]
            if hits:
                at, s = min(hits)
                seq.output_text, seq.stop_reason = text[:at], s
                return "stop"
        if len(seq.output_token_ids) >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: str) -> list[Sequence]:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if not (reason == "stop" and seq.stop_reason in seq.params.stop):
            seq.output_text = self.decode(seq.output_token_ids)
        done = self.scheduler.finish(seq) if reason != "abort" else [seq]
        now = time.perf_counter()
        for s in done:
            s.metrics.finish_time = now
        return done

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _record(self, plan: SchedulerOutput, kinds: list[str], start: float, end: float) -> None:
        entries = [(c.seq.request_id, kind, c.num_tokens) for c, kind in zip(plan.chunks, kinds, strict=True)]
        entries += [(s.request_id, "padding", n) for s, n in plan.padding if n]
        self.trace.append(StepRecord(
            step=len(self.trace), start=start, end=end, entries=entries,
            preempted=[s.request_id for s in plan.preempted],
            num_free_blocks=self.block_manager.num_free_blocks,
            num_padding_tokens=sum(n for _, n in plan.padding),
        ))

    # ---------------------------------------------------------------- outputs
    def make_output(self, seq: Sequence) -> RequestOutput:
        completion = CompletionOutput(
            index=0, text=seq.output_text, token_ids=list(seq.output_token_ids),
            cumulative_logprob=seq.cumulative_logprob, logprobs=seq.logprobs,
            finish_reason=seq.finish_reason, stop_reason=seq.stop_reason,
        )
        return RequestOutput(
            request_id=seq.request_id, prompt=seq.prompt, prompt_token_ids=list(seq.prompt_token_ids),
            outputs=[completion], finished=seq.is_finished, metrics=seq.metrics, error=seq.error,
        )


def _generator(seed: int | None) -> torch.Generator:
    """The request's own random stream: seeded if asked, else drawn from torch's global RNG."""
    g = torch.Generator()
    g.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,))))
    return g


def _top_logprobs(logprobs: torch.Tensor, token: int, logprob: float, k: int) -> dict[int, float]:
    top = {}
    if k:
        values, ids = logprobs.topk(k)
        top = dict(zip(ids.tolist(), values.tolist(), strict=True))
    top[token] = logprob
    return top
