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

from inferlab.checks import token_id_list
from inferlab.engine.block_manager import BlockManager
from inferlab.engine.config import EngineConfig
from inferlab.engine.detokenizer import IncrementalDetokenizer
from inferlab.engine.model_runner import ChunkInput, ModelRunner
from inferlab.engine.outputs import CompletionOutput, RequestOutput
from inferlab.engine.sampling_params import SamplingParams
from inferlab.engine.scheduler import Scheduler, SchedulerOutput
from inferlab.engine.sequence import (
    RequestMetrics,
    Sequence,
    SequenceGroup,
    SequenceStatus,
    finished_requests,
)
from inferlab.sampling import sample


class RequestTooLarge(ValueError):
    """The request could never fit: its tokens need more KV blocks than the whole pool has."""

    def __init__(self, message: str, prompt_token_ids: list[int] | None = None):
        super().__init__(message)
        self.prompt_token_ids = prompt_token_ids  # the tokenized prompt, for the rejection's output


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
        if num_blocks is not None and (isinstance(num_blocks, bool) or not isinstance(num_blocks, int)
                                       or not 0 < num_blocks <= runner.num_blocks):
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
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling_params must be a SamplingParams, got {type(params).__name__}")
        params.validate()  # again: a field may have been changed since construction
        self._check_logprobs(params)
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
        if params.stop:  # stop strings need the text at every step: decoded incrementally
            seq.detokenizer = IncrementalDetokenizer(self.decode, token_ids, params.stop)
        if params.n > 1:  # parallel sampling: siblings fork from seq once its prompt is computed
            seq.group, seq.num_pending_forks = SequenceGroup(request_id, [seq]), params.n - 1
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
        if not hasattr(prompt, "__iter__") or isinstance(prompt, (bytes, dict)):
            raise TypeError(f"prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        ids = token_id_list(prompt)
        if not ids:
            raise ValueError("prompt (token ids) must not be empty")
        if min(ids) < 0 or max(ids) >= self.config.vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {self.config.vocab_size}), got {min(ids)}..{max(ids)}")
        return None, ids

    def _check_logprobs(self, params: SamplingParams) -> None:
        cap = min(self.engine_config.max_logprobs, self.config.vocab_size)
        if params.logprobs is not None and params.logprobs > cap:
            raise ValueError(f"logprobs={params.logprobs} is above this engine's limit of {cap} "
                             "(EngineConfig.max_logprobs, at most the vocabulary size)")

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
                "a larger num_kv_blocks", token_ids,
            )

    def abort_request(self, request_id: str) -> None:
        """Stop a request: its blocks go back to the pool and its id may be used again."""
        seq = self.scheduler.abort(str(request_id))
        if seq is not None:
            self._finish(seq, "abort")
        self.sequences.pop(str(request_id), None)

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
        logits, failed = self._run(plan)
        kinds = [c.kind for c in plan.chunks]  # before processing turns prefills into decodes
        now = time.perf_counter()
        finished = failed + (self._process(plan, logits, now) if plan.chunks else [])
        if self.record_trace:
            self._record(plan, kinds, start, now)
        for seq in finished:
            self.sequences.pop(seq.request_id, None)
        return [self.make_output(seq) for seq in finished_requests(finished)]

    def _run(self, plan: SchedulerOutput) -> tuple[torch.Tensor | None, list[Sequence]]:
        """The step's logits. If the batched forward fails, each sequence runs alone and only
        those that fail again are removed (reported with ``finish_reason="error"``); the plan
        keeps the others, so one bad request never stops the batch."""
        chunks = self._chunk_inputs(plan)
        try:
            return self.runner.execute(chunks), []
        except Exception:  # noqa: BLE001 (which request is at fault is found below)
            pass
        kept, rows, failed = [], [], []
        for c, chunk in zip(plan.chunks, chunks, strict=False):  # static padding rows are dropped
            try:
                rows.append(self.runner.execute([chunk]))
                kept.append(c)
            except Exception as err:  # noqa: BLE001
                failed += self._fail(c.seq, err)
        plan.chunks, plan.padding = kept, []
        return (torch.cat(rows) if rows else None), failed

    def _fail(self, seq: Sequence, err: BaseException) -> list[Sequence]:
        """Remove ``seq`` from the engine (blocks freed) and record why, for its output alone."""
        self.scheduler.abort(seq.request_id)
        seq.error = f"{type(err).__name__}: {err}"
        seq.status, seq.finish_reason = SequenceStatus.FINISHED, "error"
        seq.metrics.finish_time = time.perf_counter()
        return [seq]

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
        sampling, rows = self.scheduler.fork_pending(sampling)  # n > 1: siblings share the prompt's blocks
        self.sequences.update((s.request_id, s) for s in sampling)
        drawn, finished = self._sample(logits[rows] if len(rows) > logits.shape[0] else logits, sampling)
        for seq, (token, chosen, logprobs) in drawn:
            try:
                finished += self._append(seq, token, chosen, logprobs, now)
            except Exception as err:  # noqa: BLE001 (stop checks, detokenizing: this request only)
                finished += self._fail(seq, err)
        return finished

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list, list[Sequence]]:
        """``[(seq, (token, logprob, row logprobs))]`` and the failed sequences: the batch at once,
        or row by row when a row breaks the batched draw."""
        try:
            tokens, chosen, logprobs = sample(logits, seqs)
            return list(zip(seqs, zip(tokens, chosen, logprobs, strict=True), strict=True)), []
        except Exception:  # noqa: BLE001
            pass
        drawn, failed = [], []
        for row, seq in enumerate(seqs):
            try:
                tokens, chosen, logprobs = sample(logits[row:row + 1], [seq])
                drawn.append((seq, (tokens[0], chosen[0], logprobs[0])))
            except Exception as err:  # noqa: BLE001
                failed += self._fail(seq, err)
        return drawn, failed

    def _append(self, seq: Sequence, token: int, logprob: float, logprobs: torch.Tensor, now: float) -> list[Sequence]:
        seq.append_token(token)
        if seq.detokenizer is not None:
            seq.detokenizer.update(seq.output_token_ids)
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
        if seq.detokenizer is not None and seq.detokenizer.stop_hit is not None:
            seq.output_text, seq.stop_reason = seq.detokenizer.text, seq.detokenizer.stop_hit
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
        completions = [CompletionOutput(
            index=s.index, text=s.output_text, token_ids=list(s.output_token_ids),
            cumulative_logprob=s.cumulative_logprob, logprobs=s.logprobs,
            finish_reason=s.finish_reason, stop_reason=s.stop_reason,
        ) for s in seq.samples()]
        return RequestOutput(
            request_id=seq.request_id, prompt=seq.prompt, prompt_token_ids=list(seq.prompt_token_ids),
            outputs=completions, finished=seq.is_finished, metrics=seq.metrics, error=seq.error,
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
