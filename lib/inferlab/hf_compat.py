"""Every Hugging Face transformers version difference the library papers over, in one place.

The project runs on transformers 5.17 (the GPU machine) and newer 5.2x releases (laptops,
CI), which renamed the forward's ``past_key_values`` to ``cache`` and the output's
``.past_key_values`` to ``.cache``. Code elsewhere calls these helpers instead of testing
versions itself, so the next rename is fixed here once.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from typing import Any


def cache_keyword(model: Any) -> str:
    """``"cache"`` where ``model.forward`` takes that name (transformers >= 5.2x), else ``"past_key_values"``."""
    return _cache_keyword_of(type(model))


@functools.cache
def _cache_keyword_of(cls: type) -> str:  # once per model class: decode loops ask every step
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{cache_keyword(model): cache}``, so the same call runs on both sides of the rename."""
    return {cache_keyword(model): cache}


def cache_of(outputs: Any) -> Any:
    """The cache inside a model output (``.cache`` in transformers >= 5.2x, else ``.past_key_values``)."""
    for key in ("cache", "past_key_values"):
        value = getattr(outputs, key, None) if not isinstance(outputs, dict) else outputs.get(key)
        if value is not None:
            return value
    return outputs


def new_dynamic_cache(model: Any):
    """An empty ``DynamicCache`` for ``model`` (newer releases take the config, older ones nothing)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older signatures
        return DynamicCache()


def crop_cache(cache: Any, length: int) -> None:
    """Roll a DynamicCache back to ``length`` slots (a negative crop works in transformers 5.17 and 5.24)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def last_logits_only(model: Any) -> dict[str, Any]:
    """``{"logits_to_keep": 1}`` where the model supports it, else nothing.

    A server needs only the last position's logits, and a 256 x 1024-token prefill would
    otherwise build a 67 GB logits tensor for a 128K vocabulary.
    """
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


@contextmanager
def attention_function(model: Any, name: str, fn):
    """Run ``model`` with ``fn`` as every layer's attention (transformers' ``AttentionInterface``).

    ``fn(module, query, key, value, attention_mask, scaling=..., dropout=..., **kwargs)``
    returns ``(output [B, T, H, D], weights or None)``; the previous implementation is
    restored on exit.
    """
    from transformers import AttentionInterface

    previous = model.config._attn_implementation
    AttentionInterface.register(name, fn)
    model.set_attn_implementation(name)
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)
