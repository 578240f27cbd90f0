"""``LLM``: the vLLM-shaped offline API over our engine.

    from inferlab import LLM, SamplingParams
    llm = LLM(model="tiny")
    outs = llm.generate(["def add(a, b):"], SamplingParams(temperature=0.0, max_tokens=32))
    outs[0].outputs[0].text

Unlike the widely copied tutorial's ``VLLMInference`` (which wrapped vLLM and whose streaming method
read a ``model_name`` it never stored), everything here runs in-process on our own engine,
and ``stream`` really streams.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from inferlab.engine.async_engine import AsyncLLMEngine
from inferlab.engine.config import EngineConfig
from inferlab.engine.detokenizer import IncrementalDetokenizer  # noqa: F401 — its old home
from inferlab.engine.llm_engine import LLMEngine, RequestTooLarge
from inferlab.engine.model_runner import ModelRunner
from inferlab.engine.outputs import CompletionOutput, RequestOutput
from inferlab.engine.sampling_params import SamplingParams
from inferlab.engine.sequence import RequestMetrics


def build_engine(model: Any = "tiny", tokenizer: Any = None, config: EngineConfig | None = None,
                 **settings: Any) -> LLMEngine:
    """An :class:`LLMEngine` for a name/path/hub id, or for an already loaded transformers model.

    ``config``/``settings``: an :class:`EngineConfig` and/or any of its fields.
    """
    config = EngineConfig.from_kwargs(config, **settings)
    if not isinstance(model, (str, Path)) and tokenizer is None:
        raise ValueError("tokenizer is required when model is a loaded model object")
    if config.tensor_parallel_size > 1:  # rank 0 here, workers in their own processes
        from inferlab.engine.distributed import start_tensor_parallel

        runner = start_tensor_parallel(model, config)
    else:
        runner = ModelRunner(model, config)
    if tokenizer is None:
        from inferlab.hub import load_tokenizer

        tokenizer = load_tokenizer(str(runner.checkpoint))
    engine = LLMEngine(runner, tokenizer, config)
    if runner.checkpoint is not None:
        engine.eos_token_ids.update(_generation_eos(runner.checkpoint))
    else:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        engine.eos_token_ids.update([] if eos is None else eos if isinstance(eos, list) else [eos])
    return engine


class LLM:
    """Offline batched generation with continuous batching and a paged KV cache.

    ``model``: an embedded name (``"tiny"``), a folder, a hub id, or a loaded transformers
    model (then ``tokenizer`` is required). Every other keyword is an :class:`EngineConfig`
    field (``device``, ``dtype``, ``block_size``, ``num_kv_blocks``, ``max_num_seqs``,
    ``max_num_batched_tokens``, ``enable_prefix_caching``, ``enable_chunked_prefill``,
    ``policy``, ``gpu_memory_utilization``, ``attention_backend``, ...), checked before
    anything loads.
    """

    def __init__(self, model: Any = "tiny", tokenizer: Any = None, config: EngineConfig | None = None,
                 **settings: Any):
        self.engine = build_engine(model, tokenizer, config, **settings)
        self.tokenizer = self.engine.tokenizer
        self._async: AsyncLLMEngine | None = None

    def get_tokenizer(self):
        return self.tokenizer

    # ---------------------------------------------------------------- generate
    def generate(self, prompts: str | Sequence[str] | Sequence[list[int]], sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in the prompts' order.

        Invalid input (empty prompt, bad parameter, prompt longer than the context) raises
        ValueError before anything runs. A request that could never fit the KV pool is
        returned with ``finish_reason="rejected"`` and ``error`` set, and the others run.
        """
        prompts = [prompts] if isinstance(prompts, str) or _is_token_list(prompts) else list(prompts)
        params = _per_prompt(sampling_params, len(prompts))
        if self._async is not None and self._async.is_running:  # the loop owns the engine now
            return self._generate_through_loop(prompts, params)
        ids, rejected = self._add_all(prompts, params)
        done: dict[str, RequestOutput] = {}
        bar = _progress(use_tqdm, len(ids) - len(rejected))
        try:
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    done[out.request_id] = out
                    if bar is not None:
                        bar.update(1)
        except BaseException:  # interrupted (Ctrl-C) or an engine bug: leave nothing queued behind
            for rid in ids:
                if rid is not None and rid not in done:
                    self.engine.abort_request(rid)
            raise
        if bar is not None:
            bar.close()
        return [rejected[i] if i in rejected else done[rid] for i, rid in enumerate(ids)]

    def _generate_through_loop(self, prompts, params) -> list[RequestOutput]:
        streams = []
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            try:
                streams.append(self._async.add_request(prompt, p))
            except RequestTooLarge as err:
                streams.append(_rejected_output(str(i), prompt, str(err)))
        return [s if isinstance(s, RequestOutput) else [o for o in s][-1].output for s in streams]

    def _add_all(self, prompts, params) -> tuple[list[str | None], dict[int, RequestOutput]]:
        ids: list[str | None] = []
        rejected: dict[int, RequestOutput] = {}
        try:
            for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
                try:
                    ids.append(self.engine.add_request(None, prompt, p))
                except RequestTooLarge as err:
                    warnings.warn(f"request {i} rejected: {err}", stacklevel=3)
                    ids.append(None)
                    rejected[i] = _rejected_output(str(i), prompt, str(err), err.prompt_token_ids)
        except (ValueError, TypeError):  # a bad request leaves nothing of the call queued
            for rid in ids:
                if rid is not None:
                    self.engine.abort_request(rid)
            raise
        return ids, rejected

    # ---------------------------------------------------------------- stream
    @property
    def async_engine(self) -> AsyncLLMEngine:
        """The step loop that owns the engine once anything streams (started on first use)."""
        if self._async is None or not self._async.is_running:
            self._async = AsyncLLMEngine(self.engine)
        return self._async

    def stream(self, prompt: str | list[int], sampling_params: SamplingParams | None = None) -> Iterator[str]:
        """Yield the text of one request as it is generated, in deltas.

        The request goes through :attr:`async_engine`, so several streams (threads, or a
        server's clients) share every step. Deltas hold back a trailing incomplete UTF-8
        character and, with stop strings, the last characters that could still begin one
        (:class:`~inferlab.engine.detokenizer.IncrementalDetokenizer`).
        """
        params = sampling_params or SamplingParams()
        if params.n != 1:
            raise ValueError(f"stream returns one sample; got n={params.n} (use the server or generate)")
        for out in self.async_engine.add_request(prompt, params):
            for delta in out.deltas:
                if delta.text:
                    yield delta.text

    def shutdown(self) -> None:
        """Stop the step loop (if streaming started one)."""
        if self._async is not None:
            self._async.shutdown(timeout=0)
            self._async = None


def _generation_eos(path: Path) -> set[int]:
    """End-of-sequence ids from generation_config.json (chat models often add one there)."""
    import json

    file = path / "generation_config.json"
    if not file.is_file():
        return set()
    eos = json.loads(file.read_text()).get("eos_token_id")
    return set() if eos is None else set(eos) if isinstance(eos, list) else {int(eos)}


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="requests", unit="req")


def _is_token_list(prompts: Any) -> bool:
    return isinstance(prompts, list) and bool(prompts) and isinstance(prompts[0], int)


def _per_prompt(params, n: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(n)]
    if isinstance(params, SamplingParams):
        return [params] * n
    params = list(params)
    if len(params) != n:
        raise ValueError(f"sampling_params: got {len(params)} for {n} prompts")
    return params


def _rejected_output(request_id: str, prompt: Any, error: str, token_ids: list[int] | None = None) -> RequestOutput:
    text = prompt if isinstance(prompt, str) else None
    ids = list(token_ids) if token_ids is not None else [] if isinstance(prompt, str) else list(prompt)
    completion = CompletionOutput(index=0, text="", token_ids=[], finish_reason="rejected")
    return RequestOutput(request_id, text, ids, [completion], finished=True, metrics=RequestMetrics(0.0), error=error)
