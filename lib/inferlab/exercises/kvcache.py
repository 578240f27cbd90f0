"""Checks for notebook 01 (the two bottlenecks and the KV cache)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from inferlab import configs, units
from inferlab import kvcache as kv
from inferlab import roofline as rl
from inferlab.exercises import Blank, Check, attempt, not_answered, show_solution, verdict

SOLUTIONS = {
    "kv_per_token": '''def kv_per_token(config, bytes_per_element):
    # one key and one value, per layer, per K/V head (not per query head), head_dim numbers each
    return (2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"]
            * bytes_per_element)''',
    "max_sequences": '''mem = 81920 * 2**20                      # an A100 80 GB, in bytes
free = mem - int(0.1 * mem) - 8_030_261_248 * 2   # minus the 10% reserve and the bf16 weights
answer = int(free // (8192 * 128 * 1024))   # / KV bytes of one 8,192-token sequence''',
    "decode_bound": "answer = 4.8e12 / 2.47e9   # bytes per second / bytes read per step = steps (tokens) per second",
}


def solution(name: str) -> None:
    """Print the worked answer of exercise ``name`` (one of :data:`SOLUTIONS`)."""
    show_solution(SOLUTIONS, name)


_CASES = ["llama-2-7b", "llama-3-8b", "llama-3.2-1b", "qwen2.5-7b", "phi-3-mini", "tiny-draft"]


def check_kv_per_token(fn: Callable[[dict[str, Any], int], int]) -> Check:
    """Does ``fn(config, bytes_per_element)`` return the KV bytes one token adds (all layers)?

    ``config`` is a plain dict with ``num_hidden_layers``, ``num_attention_heads``,
    ``num_key_value_heads`` and ``head_dim``, as in a Hugging Face config.json.
    """
    for name in _CASES:
        cfg = configs.load_config(name)
        for nbytes, dtype in ((2, "float16"), (4, "float32")):
            truth = kv.kv_bytes_per_token(name, dtype)
            try:
                got = attempt(fn, dict(cfg), nbytes)
            except Blank:
                return not_answered("write kv_per_token, or run solution('kv_per_token')")
            except Exception as e:  # a learner's bug is a wrong answer, not a crash
                return verdict(False, "", f"fn(<{name}>, {nbytes}) raised {type(e).__name__}: {e}")
            if got == truth:
                continue
            if got == kv.naive_kv_cache_bytes(name, 1, 1, dtype):
                return verdict(False, "", f"{name}: {got:,} B is the n_heads formula. Which heads carry K and V "
                               "in grouped-query attention?")
            if got * 2 == truth:
                return verdict(False, "", f"{name}: {got:,} B is half of it: the cache holds a key AND a value.")
            return verdict(False, "", f"{name} with {nbytes} B per element: got {got:,}, expected {truth:,}.")
    return verdict(True, "2 x layers x n_kv_heads x head_dim x bytes: Llama-3-8B caches 128 KiB per fp16 token, "
                   "not 512 KiB.", "")


def check_max_sequences(answer: int | None, model: str = "llama-3-8b", gpu: str = "A100 80 GB", seq_len: int = 8192,
                        kv_dtype: str = "float16", weight_dtype: str = "bfloat16",
                        reserve_fraction: float = 0.1) -> Check:
    """How many ``seq_len``-token sequences fit beside the weights (reserve held back)?"""
    if answer is None:
        return not_answered("free memory / KV bytes per sequence, or run solution('max_sequences')")
    plan = kv.memory_plan(model, configs.gpu_memory_bytes(gpu), seq_len, kv_dtype, weight_dtype, reserve_fraction)
    truth = plan["max_sequences"]
    f = lambda n: units.format_bytes(n, "GiB")  # noqa: E731
    how = (f"({f(plan['gpu_memory'])} - {f(plan['reserve'])} reserve - {f(plan['weights'])} weights) "
           f"/ {f(plan['kv_per_sequence'])} per sequence, rounded down")
    return verdict(answer == truth, f"{truth} sequences: {how}.",
                   f"not {answer}. Hint: KV per sequence = seq_len x per-token bytes; free = memory - reserve - weights.")


def check_decode_bound(answer: float | None, model: str = "llama-3.2-1b", bandwidth: float = 4.8e12,
                       weight_dtype: str = "bfloat16") -> Check:
    """Batch-1 decode can't beat (bandwidth / bytes of weights) tokens/s: what is it here (±2 %)?"""
    if answer is None:
        return not_answered("how many times per second can the weights be read? or run solution('decode_bound')")
    weights = rl.weights_read_per_step(model) * kv.weight_bytes_per_param(weight_dtype)
    truth = bandwidth / weights
    ok = abs(answer - truth) <= 0.02 * truth
    return verdict(ok, f"about {truth:,.0f} tokens/s: every step streams {weights / 1e9:.2f} GB of weights "
                   f"at {bandwidth / 1e12:.1f} TB/s, whatever the FLOPs.",
                   f"not {answer:,.0f}. Each decode step must read every weight once: how long does "
                   f"{weights / 1e9:.2f} GB take at {bandwidth / 1e12:.1f} TB/s?")
