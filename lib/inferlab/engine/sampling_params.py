"""``SamplingParams``: how one request is decoded (vLLM's names and defaults).

Validated on construction (and again when a request is added, in case a field was changed
since), so a bad value fails where it was written, as a ``TypeError`` (wrong type) or
``ValueError`` (wrong value) naming the field, instead of deep inside a batched step where
it would take every other request of the batch down with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inferlab.checks import GREEDY_TEMPERATURE, MAX_SEED, check_integer, check_number

MAX_TOP_K = 2**31 - 1  # any top_k at or above the vocabulary size means "no limit"


@dataclass
class SamplingParams:
    """Decoding settings of one request.

    - ``temperature``: 0 (or below 1e-5) means greedy (argmax); otherwise logits are divided by it.
    - ``top_k``: keep the k most likely tokens (-1 or 0: all). ``top_p``: keep the smallest
      set whose probability reaches p (nucleus sampling, Holtzman et al. 2020).
    - ``max_tokens``: at most this many new tokens. ``stop``: strings that end the output
      (not included in the text). ``stop_token_ids``: token ids that end it (None: none).
      ``ignore_eos``: keep going past end-of-sequence.
    - ``seed``: this request's own random generator, so its samples do not depend on what
      else shares the batch. ``logprobs``: also return the log-probabilities of the sampled
      token and of the ``logprobs`` most likely ones at each step (the engine caps it:
      ``EngineConfig.max_logprobs``).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 16
    stop: list[str] | str | None = None
    seed: int | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    stop_token_ids: list[int] | None = field(default_factory=list)
    n: int = 1  # parallel sampling: n samples of one prompt, sharing its KV blocks (fork)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop is not None and not isinstance(self.stop, (list, tuple)):
            raise TypeError(f"stop must be a string, a list of strings or None, got {type(self.stop).__name__}")
        self.stop = [s for s in (self.stop or []) if s != ""]
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        elif isinstance(self.stop_token_ids, (list, tuple)):
            self.stop_token_ids = list(self.stop_token_ids)
        self.validate()
        # numpy scalars in, plain Python numbers out (JSON, torch.tensor and hashing all agree)
        self.temperature, self.top_p, self.top_k, self.max_tokens = (
            float(self.temperature), float(self.top_p), int(self.top_k), int(self.max_tokens))
        self.stop_token_ids = [int(t) for t in self.stop_token_ids]
        self.logprobs = None if self.logprobs is None else int(self.logprobs)
        self.seed = None if self.seed is None else int(self.seed)

    def validate(self) -> None:
        """Raise TypeError/ValueError naming the first bad field."""
        check_number("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        check_number("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        check_integer("top_k", self.top_k)
        if not -1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be -1, 0 (both: no limit) or a positive integer <= {MAX_TOP_K}, "
                             f"got {self.top_k!r}")
        check_integer("max_tokens", self.max_tokens)
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        self._validate_optional_ints()
        self._validate_stops()
        check_integer("n", self.n)
        if self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n!r}")
        if not isinstance(self.ignore_eos, bool):
            raise TypeError(f"ignore_eos must be True or False, got {self.ignore_eos!r}")

    def _validate_optional_ints(self) -> None:
        if self.logprobs is not None:
            check_integer("logprobs", self.logprobs)
            if self.logprobs < 0:
                raise ValueError(f"logprobs must be None or an integer >= 0, got {self.logprobs!r}")
        if self.seed is not None:
            check_integer("seed", self.seed)
            if not 0 <= self.seed < MAX_SEED:
                raise ValueError(f"seed must be None or an integer in [0, 2**64), got {self.seed!r}")

    def _validate_stops(self) -> None:
        if not isinstance(self.stop, list) or not all(isinstance(s, str) for s in self.stop):
            raise TypeError(f"stop must be a string, a list of strings or None, got {self.stop!r}")
        if not isinstance(self.stop_token_ids, list):
            raise TypeError(f"stop_token_ids must be a list of token ids or None, got {self.stop_token_ids!r}")
        for token in self.stop_token_ids:
            check_integer("stop_token_ids", token)
            if token < 0:
                raise ValueError(f"stop_token_ids must be token ids >= 0, got {token!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE
