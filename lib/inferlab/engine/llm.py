"""``LLM``: the vLLM-shaped offline API over our engine.

    from inferlab import LLM, SamplingParams
    llm = LLM(model="tiny")
    outs = llm.generate(["def add(a, b):"], SamplingParams(temperature=0.0, max_tokens=32))
    outs[0].outputs[0].text

Unlike the seed lesson's ``VLLMInference`` (which wrapped vLLM and whose streaming method
read a ``model_name`` it never stored), everything here runs in-process on our own engine,
and ``stream`` really streams.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from inferlab.engine.config import EngineConfig
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
        ids, rejected = self._add_all(prompts, params)
        done: dict[str, RequestOutput] = {}
        bar = _progress(use_tqdm, len(ids) - len(rejected))
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                done[out.request_id] = out
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return [rejected[i] if i in rejected else done[rid] for i, rid in enumerate(ids)]

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
                    rejected[i] = _rejected_output(str(i), prompt, str(err))
        except ValueError:
            for rid in ids:
                if rid is not None:
                    self.engine.abort_request(rid)
            raise
        return ids, rejected

    # ---------------------------------------------------------------- stream
    def stream(self, prompt: str | list[int], sampling_params: SamplingParams | None = None) -> Iterator[str]:
        """Yield the text of one request as it is generated, in deltas.

        Deltas are cut from the incrementally decoded text, holding back a trailing
        incomplete UTF-8 character (shown as U+FFFD until its last byte arrives) and, when
        stop strings are set, the last characters that could still begin one.
        """
        params = sampling_params or SamplingParams()
        rid = self.engine.add_request(None, prompt, params)
        seq = self.engine.sequences[rid]
        detok = IncrementalDetokenizer(self.engine.decode, holdback=max((len(s) for s in params.stop), default=1) - 1)
        while not seq.is_finished:
            self.engine.step()
            if not seq.is_finished:
                delta = detok.update(seq.output_token_ids)
                if delta:
                    yield delta
        delta = detok.finish(seq.output_text)
        if delta:
            yield delta


class IncrementalDetokenizer:
    """Text deltas from a growing list of token ids, safe for multi-byte characters.

    A byte-level BPE token can end in the middle of a UTF-8 character; decoding then shows
    U+FFFD until the rest arrives, so a delta is only emitted once the text does not end in
    U+FFFD. ``holdback`` characters are also kept back (the longest stop string minus one)
    so that a stop string is never half-streamed before it is recognised.
    """

    def __init__(self, decode, holdback: int = 0):
        self.decode, self.holdback, self.sent = decode, holdback, ""

    def update(self, token_ids: list[int]) -> str:
        text = self.decode(token_ids)
        stable = text[: len(text) - self.holdback] if self.holdback else text
        if stable.endswith("\ufffd") or not stable.startswith(self.sent):
            return ""
        delta, self.sent = stable[len(self.sent):], stable
        return delta

    def finish(self, final_text: str) -> str:
        """The rest of the final text (after stop-string truncation)."""
        if not final_text.startswith(self.sent):
            return ""
        delta, self.sent = final_text[len(self.sent):], final_text
        return delta


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


def _rejected_output(request_id: str, prompt: Any, error: str) -> RequestOutput:
    text = prompt if isinstance(prompt, str) else None
    ids = [] if isinstance(prompt, str) else list(prompt)
    completion = CompletionOutput(index=0, text="", token_ids=[], finish_reason="rejected")
    return RequestOutput(request_id, text, ids, [completion], finished=True, metrics=RequestMetrics(0.0), error=error)
