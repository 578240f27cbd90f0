"""``SamplingParams``: how one request is decoded (vLLM's names and defaults).

Validated on construction, so a bad value fails where it was written, with the field's
name in the message, instead of deep inside a batched step.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    """Decoding settings of one request.

    - ``temperature``: 0 means greedy (argmax); otherwise logits are divided by it.
    - ``top_k``: keep the k most likely tokens (-1 or 0: all). ``top_p``: keep the smallest
      set whose probability reaches p (nucleus sampling, Holtzman et al. 2020).
    - ``max_tokens``: at most this many new tokens. ``stop``: strings that end the output
      (not included in the text). ``ignore_eos``: keep going past end-of-sequence.
    - ``seed``: this request's own random generator, so its samples do not depend on what
      else shares the batch. ``logprobs``: also return the log-probabilities of the sampled
      token and of the ``logprobs`` most likely ones at each step.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 16
    stop: list[str] | str | None = None
    seed: int | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            raise ValueError(f"top_k must be -1, 0 (both: no limit) or a positive integer, got {self.top_k!r}")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or self.logprobs < 0):
            raise ValueError(f"logprobs must be None or an integer >= 0, got {self.logprobs!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
