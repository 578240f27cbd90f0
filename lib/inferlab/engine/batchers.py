"""Two batchers behind a widely copied tutorial's interface (``add_request``, ``step``).

- :class:`ContinuousBatcher`: the tutorial's interface done right, on our engine: a paged KV
  cache (each step computes only new tokens), no padding, requests join and leave at
  every iteration (Orca), greedy decoding identical to ``model.generate``.
- :class:`StaticBatcher`: the baseline continuous batching replaced: take a batch, pad
  the prompts to the longest, decode until its *longest* request is done, then take the
  next batch. Same engine, same kernels, only the scheduling policy differs, so the
  comparison measures scheduling and nothing else.

The tutorial's own behaviour, wrong on purpose, is :class:`inferlab.naive.TutorialBatcher`.

``step()`` returns ``{request_id: text}`` for the requests that finished in that step.
"""

from __future__ import annotations

from typing import Any

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
    """The widely copied tutorial's ``ContinuousBatcher`` interface on the real engine (iteration-level scheduling)."""

    policy = "continuous"


class StaticBatcher(_EngineBatcher):
    """Static batching: pad to the longest prompt, wait for the longest output, then refill."""

    policy = "static"

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("enable_chunked_prefill", False)
        super().__init__(*args, **kwargs)
