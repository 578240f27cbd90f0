"""Three batchers behind the seed lesson's interface (``add_request``, ``step``).

- :class:`ContinuousBatcher`: the seed's interface done right, on our engine: a paged KV
  cache (each step computes only new tokens), no padding, requests join and leave at
  every iteration (Orca), greedy decoding identical to ``model.generate``.
- :class:`StaticBatcher`: the baseline continuous batching replaced: take a batch, pad
  the prompts to the longest, decode until its *longest* request is done, then take the
  next batch. Same engine, same kernels, only the scheduling policy differs, so the
  comparison measures scheduling and nothing else.
- :class:`SeedStyleBatcher`: **wrong on purpose.** A faithful re-creation of what the seed
  lesson's ``ContinuousBatcher`` *does* (our code, its behaviour): no KV cache, so every
  step re-runs every sequence from its first token; right padding without an attention
  mask; and the next token read from ``logits[:, -1]``, which for every row shorter than
  the longest is the logit at a *pad* position. Shown in notebook 03 to produce different
  text from ``model.generate`` and to do quadratically more work.

``step()`` returns ``{request_id: text}`` for the requests that finished in that step.
"""

from __future__ import annotations

from typing import Any

import torch

from inferlab.engine.llm import build_engine
from inferlab.engine.sampling_params import SamplingParams


class _EngineBatcher:
    policy = "continuous"

    def __init__(self, model: Any = "tiny", tokenizer: Any = None, max_batch_size: int = 32,
                 max_seq_len: int = 2048, **engine_kwargs: Any):
        engine_kwargs.setdefault("max_num_batched_tokens", max(512, max_seq_len))
        self.engine = build_engine(model, tokenizer, max_num_seqs=max_batch_size, policy=self.policy, **engine_kwargs)
        self.engine.max_model_len = min(self.engine.max_model_len, max_seq_len)
        self.tokenizer = self.engine.tokenizer
        self.max_batch_size, self.max_seq_len = max_batch_size, max_seq_len

    def add_request(self, request_id: str, prompt: str, max_tokens: int, params: SamplingParams | None = None) -> None:
        """Queue a request (greedy unless ``params`` says otherwise)."""
        params = params or SamplingParams(temperature=0.0, max_tokens=max_tokens)
        self.engine.add_request(request_id, prompt, params)

    def step(self) -> dict[str, str]:
        return {out.request_id: out.outputs[0].text for out in self.engine.step()}

    def has_pending(self) -> bool:
        return self.engine.has_unfinished_requests()

    def run(self) -> dict[str, str]:
        """Step until every queued request has finished."""
        results: dict[str, str] = {}
        while self.has_pending():
            results.update(self.step())
        return results

    @property
    def trace(self):
        return self.engine.trace


class ContinuousBatcher(_EngineBatcher):
    """The seed's ``ContinuousBatcher`` interface on the real engine (iteration-level scheduling)."""

    policy = "continuous"


class StaticBatcher(_EngineBatcher):
    """Static batching: pad to the longest prompt, wait for the longest output, then refill."""

    policy = "static"

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("enable_chunked_prefill", False)
        super().__init__(*args, **kwargs)


class SeedStyleBatcher:
    """WRONG ON PURPOSE: the seed lesson's batcher behaviour, kept to measure its mistakes.

    Works on a transformers model. Each ``step`` right-pads prompt + generated tokens of
    every active request to the longest, runs the *whole* batch through the model without
    a KV cache or attention mask, and appends ``argmax(logits[:, -1])`` to every row: for
    the rows shorter than the longest, position -1 is a pad token, so their next token is
    predicted from the wrong place. ``tokens_processed`` counts the token positions run.
    """

    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int = 32, max_seq_len: int = 2048):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_seq_len = max_batch_size, max_seq_len
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.active: dict[str, dict] = {}
        self.queue: list[dict] = []
        self.tokens_processed = 0
        self.steps = 0

    def add_request(self, request_id: str, prompt: str, max_tokens: int) -> None:
        self.queue.append({"id": request_id, "prompt": list(self.tokenizer.encode(prompt)), "out": [], "max": max_tokens})

    def has_pending(self) -> bool:
        return bool(self.queue or self.active)

    @torch.inference_mode()
    def step(self) -> dict[str, str]:
        while self.queue and len(self.active) < self.max_batch_size:
            req = self.queue.pop(0)
            self.active[req["id"]] = req
        if not self.active:
            return {}
        rows = [r["prompt"] + r["out"] for r in self.active.values()]
        width = max(len(r) for r in rows)
        batch = torch.tensor([r + [self.pad_token_id] * (width - len(r)) for r in rows])
        device = next(self.model.parameters()).device
        logits = self.model(batch.to(device)).logits[:, -1]  # the mistake: -1 is a pad for short rows
        self.tokens_processed += batch.numel()
        self.steps += 1
        return self._collect(logits.argmax(dim=-1).tolist())

    def _collect(self, tokens: list[int]) -> dict[str, str]:
        done = {}
        for req, token in zip(list(self.active.values()), tokens, strict=True):
            req["out"].append(token)
            if len(req["out"]) >= req["max"] or token == self.tokenizer.eos_token_id:
                done[req["id"]] = self.tokenizer.decode(req["out"], skip_special_tokens=True)
                del self.active[req["id"]]
        return done

    def run(self) -> dict[str, str]:
        results: dict[str, str] = {}
        while self.has_pending():
            results.update(self.step())
        return results
