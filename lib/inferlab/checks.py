"""Argument checks shared by the engine, speculative decoding and sizing: a bad value is a
``TypeError`` (wrong type) or ``ValueError`` (wrong value) whose message names the argument,
raised where it was passed, never an ``IndexError`` or a NaN deep inside a batched step.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

# Below this temperature, logits / T overflow (NaN probabilities) long before sampling
# differs from argmax: treated as greedy, as vLLM does (its _SAMPLING_EPS is 1e-5).
GREEDY_TEMPERATURE = 1e-5
MAX_SEED = 2**64  # torch.Generator.manual_seed takes seeds in [0, 2**64)


def check_number(name: str, value: Any) -> None:
    """A finite real number (not a bool), else TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


def check_integer(name: str, value: Any) -> None:
    """An integer (numpy integers too, not a bool or a float), else TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")


def token_id_list(prompt: Any, name: str = "prompt") -> list[int]:
    """A prompt of token ids as a list of ints; a float (1.7) or a non-number is a TypeError, never truncated."""
    if isinstance(prompt, (str, bytes, dict)) or not hasattr(prompt, "__iter__"):
        raise TypeError(f"{name} must be a list of token ids, got {type(prompt).__name__}")
    ids = []
    for t in prompt:
        if isinstance(t, (bool, float)) or getattr(t, "is_floating_point", lambda: False)():
            raise TypeError(f"{name} token ids must be integers, got {t!r}")
        try:
            ids.append(operator.index(t))
        except TypeError:
            raise TypeError(f"{name} token ids must be integers, got {type(t).__name__} {t!r}") from None
    return ids
