"""The roofline of LLM inference: why prefill is compute-bound and decode is memory-bound.

A step of a model does ``F`` floating-point operations and moves ``B`` bytes between
memory and the chip. On a device with peak throughput ``P`` (FLOP/s) and memory
bandwidth ``W`` (bytes/s) it cannot take less than ``max(F / P, B / W)``. The ratio
``I = F / B`` (FLOP per byte, the *arithmetic intensity*) says which bound wins: below the
ridge point ``P / W`` the step is memory-bound (Williams, Waterman and Patterson 2009,
"Roofline: an insightful visual performance model").

* **Prefill** pushes a whole prompt of ``L`` tokens through each weight matrix once:
  about ``2 * params * L`` FLOPs for ``params * bytes`` of weights, so ``I`` grows with ``L``
  and sits far right of the ridge (compute-bound).
* **Decode** produces one token per sequence per step, yet reads every weight and the whole
  KV cache: ``I`` is about ``batch`` FLOP per byte of bf16 weights, far left of an H200's
  ridge (~200 FLOP/byte). Batching more sequences is the cheapest way up the roof, until the
  KV cache (read per sequence, not shared) dominates the bytes.

The analytic part needs only a config (:mod:`inferlab.configs` reads them); the measuring
part (``measure_*``) runs torch on any device.
"""

from __future__ import annotations

import math
import time
from typing import Any

from inferlab.configs import model_shape, param_count, tied_embeddings
from inferlab.device import pick_device, synchronize, time_fn, torch_dtype
from inferlab.hf_compat import cache_kwargs, cache_of, last_logits_only
from inferlab.kvcache import kv_bytes_per_token, kv_cache_bytes, weight_bytes_per_param

# ---------------------------------------------------------------------------------------
# analytic costs
# ---------------------------------------------------------------------------------------


def _expert_fraction(cfg: dict, batch_tokens: int) -> tuple[int, float]:
    """(params in routed experts, fraction of them a step of ``batch_tokens`` tokens touches)."""
    n_routed = int(cfg.get("n_routed_experts") or cfg.get("num_local_experts") or 0)
    if not n_routed:
        return 0, 1.0
    shape = model_shape(cfg)
    expert = 3 * shape.hidden * int(cfg.get("moe_intermediate_size") or shape.intermediate)
    moe_layers = shape.n_layers - int(cfg.get("first_k_dense_replace", 0) or 0)
    top_k = int(cfg.get("num_experts_per_tok") or 2)
    touched = min(n_routed, batch_tokens * top_k)  # upper bound: routing spreads tokens out
    return n_routed * expert * moe_layers, touched / n_routed


def _matmul_params(cfg: dict) -> int:
    """Parameters used as matmul weights: all but an untied input-embedding table.

    The input embedding is a lookup (only ``batch`` rows are read, no FLOPs); when it is
    tied to the LM head, the shared matrix is read whole and multiplied by, so it counts.
    """
    shape = model_shape(cfg)
    n = param_count(cfg)
    if not tied_embeddings(cfg):
        n -= shape.vocab * shape.hidden
    return n


def weights_read_per_step(config: Any, batch_tokens: int = 1) -> int:
    """Parameters a forward step over ``batch_tokens`` tokens streams from memory.

    MoE models read only the experts their tokens are routed to (at most
    ``batch_tokens * top_k`` per layer, assuming routing spreads tokens out).
    """
    cfg = model_shape(config).raw
    experts, frac = _expert_fraction(cfg, batch_tokens)
    return int(_matmul_params(cfg) - experts * (1 - frac))


def active_params(config: Any) -> int:
    """Parameters one token's forward pass multiplies by (MoE: only its top-k experts)."""
    cfg = model_shape(config).raw
    experts, frac = _expert_fraction(cfg, 1)
    return int(_matmul_params(cfg) - experts * (1 - frac))


def _attention_flops(shape, new_tokens: int, context: int) -> float:
    """QK^T and PV FLOPs for ``new_tokens`` queries, the last of which sees ``context`` keys."""
    if shape.mla:
        _, rope, nope, v_dim = shape.mla
        per_pair = 2 * shape.n_heads * (nope + rope + v_dim)
    else:
        per_pair = 4 * shape.n_heads * shape.head_dim
    first = context - new_tokens + 1  # keys seen by the first new token (causal)
    pairs = 0.0
    for w in shape.windows:
        if w is None:
            pairs += new_tokens * (first + context) / 2
        else:  # sum over i < new_tokens of min(first + i, w)
            c = max(0, min(new_tokens, w - first + 1))
            pairs += c * first + c * (c - 1) / 2 + (new_tokens - c) * w
    return per_pair * pairs


def step_cost(config: Any, batch_size: int, new_tokens: int, context: int,
              weight_dtype: Any = "bfloat16", kv_dtype: Any = "bfloat16") -> dict[str, float]:
    """FLOPs and bytes of one forward step: ``batch_size`` sequences each adding
    ``new_tokens`` tokens on top of ``context - new_tokens`` cached ones.

    Prefill is ``new_tokens == context``; decode is ``new_tokens == 1``.
    Bytes = weights streamed once + KV cache read + KV written (activations are ignored: small).
    """
    if new_tokens < 1 or context < new_tokens or batch_size < 1:
        raise ValueError("need batch_size >= 1 and 1 <= new_tokens <= context")
    shape = model_shape(config)
    tokens = batch_size * new_tokens
    flops = 2 * active_params(shape.raw) * tokens + batch_size * _attention_flops(shape, new_tokens, context)
    weights = weights_read_per_step(shape.raw, tokens) * weight_bytes_per_param(weight_dtype)
    past = context - new_tokens
    kv_read = kv_cache_bytes(shape, past, batch_size, kv_dtype) if past > 0 else 0
    kv_write = kv_bytes_per_token(shape, kv_dtype) * tokens
    total = weights + kv_read + kv_write
    return {"flops": flops, "bytes": total, "weight_bytes": weights, "kv_read_bytes": kv_read,
            "kv_write_bytes": kv_write, "intensity": flops / total}


def prefill_cost(config: Any, prompt_len: int, batch_size: int = 1, **kw: Any) -> dict[str, float]:
    """:func:`step_cost` of processing whole prompts of ``prompt_len`` tokens."""
    return step_cost(config, batch_size, prompt_len, prompt_len, **kw)


def decode_cost(config: Any, batch_size: int, context: int, **kw: Any) -> dict[str, float]:
    """:func:`step_cost` of one decode step with ``context`` tokens per sequence (incl. the new one)."""
    return step_cost(config, batch_size, 1, context, **kw)


def ridge_point(peak_flops: float, bandwidth: float) -> float:
    """Intensity (FLOP/byte) where the memory roof meets the compute roof."""
    return peak_flops / bandwidth


def step_time_bound(cost: dict[str, float], peak_flops: float, bandwidth: float) -> float:
    """Shortest possible step time in seconds: ``max(F/P, B/W)``."""
    return max(cost["flops"] / peak_flops, cost["bytes"] / bandwidth)


def decode_tokens_per_s_bound(config: Any, batch_size: int, context: int, bandwidth: float,
                              peak_flops: float = math.inf, **kw: Any) -> float:
    """Upper bound on decode throughput (tokens/s, all sequences together)."""
    return batch_size / step_time_bound(decode_cost(config, batch_size, context, **kw), peak_flops, bandwidth)


# ---------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------


def measure_copy_bandwidth(device: str | None = None, nbytes: int = 1 << 28, repeats: int = 5) -> dict[str, float]:
    """Device memory bandwidth from copying one large buffer into another.

    A copy of ``n`` bytes reads ``n`` and writes ``n``: 2n bytes moved, which is how GPU
    vendors' STREAM-style copy figures count. Returns bytes/s plus the sizes used.
    """
    import torch

    device = pick_device(device)
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    # best of ``repeats`` after one warm-up copy (page faults, allocator)
    seconds = min(time_fn(lambda: dst.copy_(src), device, repeats, warmup=1))
    moved = 2 * n * 4
    return {"bytes_per_s": moved / seconds, "buffer_bytes": n * 4, "seconds": seconds}


def measure_matmul_flops(device: str | None = None, dtype: Any = None, n: int = 1024, repeats: int = 5) -> dict[str, float]:
    """Achieved FLOP/s of one square ``n x n`` matmul (2 n^3 FLOPs): the compute roof we can reach."""
    import torch

    device = pick_device(device)
    dtype = torch_dtype(dtype) if dtype is not None else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = min(time_fn(lambda: a @ b, device, repeats, warmup=1))
    return {"flops_per_s": 2 * n**3 / seconds, "n": n, "dtype": str(dtype).replace("torch.", "")}


def random_ids(model, batch: int, length: int, seed: int = 0):
    """``batch`` rows of ``length`` seeded random token ids (no special ids 0, 1) on the model's device."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, model.config.vocab_size, (batch, length), generator=g).to(model.device)


def measure_prefill(model, prompt_len: int, batch_size: int = 1, repeats: int = 3) -> float:
    """Seconds for one forward pass over ``batch_size`` prompts of ``prompt_len`` tokens."""
    import torch

    ids = random_ids(model, batch_size, prompt_len)
    device = str(model.device)
    keep = last_logits_only(model)
    with torch.inference_mode():
        return min(time_fn(lambda: model(ids, use_cache=True, **keep), device, repeats, warmup=1))


def greedy_decode_steps(model, ids, steps: int):
    """Prefill ``ids`` then run ``steps`` cached single-token greedy steps.

    Yields ``(new_tokens, seconds)`` per step, the plain loop ``generate`` runs inside:
    each step feeds one token per sequence and reuses the KV cache.
    """
    import torch

    device = str(model.device)
    with torch.inference_mode():
        out = model(ids, use_cache=True, **last_logits_only(model))
        cache, nxt = cache_of(out), out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            synchronize(device)
            t0 = time.perf_counter()
            out = model(nxt, use_cache=True, **cache_kwargs(model, cache))
            cache, new = cache_of(out), out.logits[:, -1:].argmax(-1)
            synchronize(device)
            yield nxt, time.perf_counter() - t0
            nxt = new


def measure_decode(model, batch_size: int, context: int, steps: int = 16, warmup: int = 2) -> dict[str, float]:
    """Median seconds per decode step with a KV cache of about ``context`` tokens.

    The median over steps (not the mean) keeps one stall from another process out of it.
    """
    ids = random_ids(model, batch_size, context)
    times = [t for _, t in greedy_decode_steps(model, ids, warmup + steps)][warmup:]
    seconds = sorted(times)[len(times) // 2]
    return {"batch_size": batch_size, "context": context + warmup + steps // 2, "seconds_per_step": seconds,
            "tokens_per_s": batch_size / seconds, "mean_seconds_per_step": sum(times) / len(times)}
