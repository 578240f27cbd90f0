"""``AsyncLLMEngine``: one step loop that owns the engine, many clients that talk to it.

Serving needs continuous batching *across* clients: two HTTP streams must share each
forward pass, so no client may drive ``engine.step()`` itself. As in vLLM's
``AsyncLLMEngine``, one background thread owns the :class:`LLMEngine`; every other thread
or coroutine only *posts* commands (add a request, abort one) to a thread-safe queue and
*reads* its own request's outputs from a per-request queue. Between two steps the loop
applies the posted commands, runs one step for everyone, then hands each request what
that step produced: new token ids, their log-probabilities and the newly decoded text
(:class:`inferlab.engine.detokenizer.IncrementalDetokenizer`).

A request whose client goes away is aborted; its KV blocks return to the pool before the
next step. ``shutdown`` stops taking requests, lets the running ones finish (or aborts
them after a timeout) and joins the thread.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from inferlab.engine.detokenizer import IncrementalDetokenizer
from inferlab.engine.llm_engine import LLMEngine
from inferlab.engine.outputs import RequestOutput
from inferlab.engine.sampling_params import SamplingParams
from inferlab.engine.sequence import RequestMetrics, Sequence

_END = object()  # the last item of every request queue


class EngineDeadError(RuntimeError):
    """The step loop stopped (shut down, or a step raised); no new request can run."""


@dataclass
class SampleDelta:
    """What one step added to one sample (``index``) of a request."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, float]] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass
class StreamOutput:
    """One item of a request's stream: the deltas of its samples that changed in a step."""

    request_id: str
    deltas: list[SampleDelta]
    finished: bool = False
    num_prompt_tokens: int = 0
    metrics: RequestMetrics | None = None
    error: str | None = None
    output: RequestOutput | None = None  # the engine's final output, on the last item


@dataclass
class _Tracked:
    """The loop thread's view of one request: its sequences and what was handed out."""

    stream: RequestStream
    seqs: list[Sequence]
    sent_tokens: dict[int, int] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)  # samples whose finish was handed out


class RequestStream:
    """One request's outputs as they come, for a thread (``for``) or a coroutine (``async for``).

    Leaving the loop early (``break``, an exception, a cancelled task) aborts the request.
    """

    def __init__(self, engine: AsyncLLMEngine, request_id: str, loop: asyncio.AbstractEventLoop | None):
        self.engine, self.request_id, self.loop = engine, request_id, loop
        self._queue: Any = asyncio.Queue() if loop is not None else queue.SimpleQueue()
        self.finished = False

    def put(self, item: Any) -> None:
        """Called by the loop thread."""
        if self.loop is None:
            self._queue.put(item)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _check(self, item: Any) -> StreamOutput | None:
        if item is _END:
            self.finished = True
            return None
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        return item

    def __iter__(self) -> Iterator[StreamOutput]:
        try:
            while (item := self._check(self._queue.get())) is not None:
                yield item
        finally:
            if not self.finished:
                self.engine.abort(self.request_id)

    async def __aiter__(self) -> AsyncIterator[StreamOutput]:
        try:
            while (item := self._check(await self._queue.get())) is not None:
                yield item
        finally:
            if not self.finished:
                self.engine.abort(self.request_id)


class AsyncLLMEngine:
    """A background step loop over an :class:`LLMEngine`; thread- and asyncio-safe front end.

    ``add_request`` (from a thread) or ``await add_request_async`` (from a coroutine)
    validates the request in the loop (a ValueError comes back to the caller) and returns
    a :class:`RequestStream`. ``abort`` may be called from anywhere, any number of times.
    """

    def __init__(self, engine: LLMEngine, start: bool = True):
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._tracked: dict[str, _Tracked] = {}
        self._thread: threading.Thread | None = None
        self._accepting, self._drain_deadline = True, None
        self.dead: BaseException | None = None
        self.num_steps = 0
        if start:
            self.start()

    # ---------------------------------------------------------------- life cycle
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="inferlab-engine-loop", daemon=True)
            self._thread.start()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def shutdown(self, timeout: float | None = 30.0) -> None:
        """Stop taking requests; let running ones finish for up to ``timeout`` s, abort the rest, join."""
        self._accepting = False
        self._drain_deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> AsyncLLMEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown(timeout=0)

    # ---------------------------------------------------------------- client side
    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> RequestStream:
        """Queue a request from a plain thread; raises ValueError for bad input."""
        return self._post_add(prompt, params, request_id, None).result()

    async def add_request_async(self, prompt: str | list[int], params: SamplingParams | None = None,
                                request_id: str | None = None) -> RequestStream:
        """Queue a request from a coroutine; its stream is read with ``async for``."""
        future = self._post_add(prompt, params, request_id, asyncio.get_running_loop())
        return await asyncio.wrap_future(future)

    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None,
                       request_id: str | None = None) -> AsyncIterator[StreamOutput]:
        """``async for out in engine.generate(...)``: vLLM's shape of the same thing."""
        stream = await self.add_request_async(prompt, params, request_id)
        async for out in stream:
            yield out

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id, None))
        self._wake.set()

    def _post_add(self, prompt, params, request_id, loop) -> Future:
        future: Future = Future()
        if not self._accepting or self.dead is not None:
            future.set_exception(EngineDeadError("the engine is shutting down" if self.dead is None else
                                                 f"the engine loop stopped: {self.dead!r}"))
            return future
        self._commands.put(("add", (prompt, params or SamplingParams(), request_id, loop), future))
        self._wake.set()
        return future

    # ---------------------------------------------------------------- stats
    def stats(self) -> dict[str, int]:
        """Running and waiting requests, KV blocks used/total (read without locking: a snapshot)."""
        sched, blocks = self.engine.scheduler, self.engine.block_manager
        return {"running": len(sched.running), "waiting": len(sched.waiting),
                "kv_blocks_used": blocks.num_blocks - blocks.num_free_blocks,
                "kv_blocks_total": blocks.num_blocks, "num_requests": len(self._tracked)}

    # ---------------------------------------------------------------- the loop thread
    def _run(self) -> None:
        try:
            while True:
                self._wake.clear()
                self._apply_commands()
                if not self._accepting and self._drained():
                    break
                if not self.engine.has_unfinished_requests():
                    self._wake.wait(0.5)
                    continue
                self._step()
        except BaseException as err:  # noqa: BLE001 — every client must hear why
            self.dead = err
            self._fail_all(err)
            raise
        finally:
            self._fail_all(EngineDeadError("the engine loop stopped"))

    def _drained(self) -> bool:
        if not self._tracked:
            return True
        if time.monotonic() >= self._drain_deadline:
            for rid in list(self._tracked):
                self._abort(rid)
            return True
        return False

    def _apply_commands(self) -> None:
        while True:
            try:
                kind, arg, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "abort":
                self._abort(arg)
            elif future.set_running_or_notify_cancel():
                try:
                    future.set_result(self._add(*arg))
                except Exception as err:  # noqa: BLE001 — handed to the caller
                    future.set_exception(err)

    def _add(self, prompt, params: SamplingParams, request_id, loop) -> RequestStream:
        rid = self.engine.add_request(request_id, prompt, params)
        seq = self.engine.sequences[rid]
        if seq.detokenizer is None:
            seq.detokenizer = IncrementalDetokenizer(self.engine.decode, seq.prompt_token_ids, params.stop)
        stream = RequestStream(self, rid, loop)
        self._tracked[rid] = _Tracked(stream, [seq])
        return stream

    def _abort(self, request_id: str) -> None:
        tracked = self._tracked.pop(request_id, None)
        if tracked is None:
            return
        self.engine.abort_request(request_id)
        for seq in tracked.seqs[0].samples():
            self.engine.sequences.pop(seq.request_id, None)
        tracked.stream.put(_END)

    def _step(self) -> None:
        finished = {out.request_id: out for out in self.engine.step()}
        self.num_steps += 1
        for rid, tracked in list(self._tracked.items()):
            out = self._collect(rid, tracked, finished.get(rid))
            if out is not None:
                tracked.stream.put(out)
            if rid in finished:
                tracked.stream.put(_END)
                del self._tracked[rid]

    def _collect(self, rid: str, tracked: _Tracked, final: Any) -> StreamOutput | None:
        deltas = []
        for seq in tracked.seqs[0].samples():
            if seq.index in tracked.done:
                continue
            delta = _sample_delta(seq, tracked.sent_tokens.get(seq.index, 0))
            if delta is not None:
                tracked.sent_tokens[seq.index] = len(seq.output_token_ids)
                deltas.append(delta)
                if delta.finish_reason is not None:
                    tracked.done.add(seq.index)
        if not deltas and final is None:
            return None
        first = tracked.seqs[0]
        return StreamOutput(rid, deltas, finished=final is not None, num_prompt_tokens=first.num_prompt_tokens,
                            metrics=first.metrics, error=None if final is None else final.error, output=final)

    def _fail_all(self, err: BaseException) -> None:
        for tracked in self._tracked.values():
            tracked.stream.put(err if isinstance(err, Exception) else EngineDeadError(repr(err)))
        self._tracked.clear()


def _sample_delta(seq: Sequence, sent: int) -> SampleDelta | None:
    """New tokens and text of one sample since ``sent`` tokens were handed out."""
    new_ids = seq.output_token_ids[sent:]
    detok, finished = seq.detokenizer, seq.is_finished
    detok.update(seq.output_token_ids)
    text = detok.finish(seq.output_text) if finished else detok.delta()
    if not new_ids and not text and not finished:
        return None
    logprobs = seq.logprobs[sent:] if seq.logprobs is not None else None
    return SampleDelta(seq.index, text, list(new_ids), logprobs,
                       seq.finish_reason if finished else None, seq.stop_reason if finished else None)
