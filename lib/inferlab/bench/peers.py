"""The peers: every Hugging Face transformers baseline our implementations are measured against.

One module so that "the peer" means the same call in every benchmark and notebook:
``generate`` at batch 1 (the roofline's peer, optionally with a static, compiled cache),
one prompt at a time and in static left-padded batches (the batching benchmark), and with
an assistant model or prompt lookup (the speculative-decoding benchmark).
"""

from __future__ import annotations

import torch

from inferlab.bench.workloads import Request, RunResult
from inferlab.device import time_fn


@torch.inference_mode()
def hf_generate_per_prompt(model, requests: list[Request]) -> RunResult:
    """transformers ``generate``, one request at a time (no batching at all)."""
    device = next(model.parameters()).device
    tokens = []

    def run() -> None:
        for req in requests:
            ids = torch.tensor([req.prompt_token_ids], device=device)
            out = model.generate(ids, max_new_tokens=req.max_tokens, min_new_tokens=req.max_tokens,
                                 do_sample=False, pad_token_id=0)
            tokens.append(out.shape[1] - ids.shape[1])

    (wall,) = time_fn(run, device, repeats=1, warmup=0)
    return RunResult("hf_generate_per_prompt", wall, sum(tokens))


def _left_padded(batch: list[Request], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r.prompt_token_ids) for r in batch)
    ids = [[pad_token_id] * (width - len(r.prompt_token_ids)) + r.prompt_token_ids for r in batch]
    mask = [[0] * (width - len(r.prompt_token_ids)) + [1] * len(r.prompt_token_ids) for r in batch]
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


@torch.inference_mode()
def hf_generate_static(model, requests: list[Request], batch_size: int, pad_token_id: int = 0) -> RunResult:
    """Static batching: left-padded batches through ``generate``, each to its longest output."""
    device = next(model.parameters()).device
    batches = [requests[i:i + batch_size] for i in range(0, len(requests), batch_size)]

    def run() -> None:
        for batch in batches:
            ids, mask = _left_padded(batch, pad_token_id, device)
            longest = max(r.max_tokens for r in batch)
            model.generate(ids, attention_mask=mask, max_new_tokens=longest, min_new_tokens=longest,
                           do_sample=False, pad_token_id=pad_token_id)

    (wall,) = time_fn(run, device, repeats=1, warmup=0)
    useful = sum(r.max_tokens for r in requests)
    padding = sum(len(b) * max(r.max_tokens for r in b) for b in batches) - useful
    return RunResult("hf_generate_static", wall, useful, padding_tokens=padding)


def hf_generate_batch1(model, prompt_len: int = 128, new_tokens: int = 64,
                       cache_implementation: str | None = None, warmup: int = 1) -> dict[str, float]:
    """transformers ``generate`` at batch 1, greedy, exactly ``new_tokens`` tokens, timed once.

    ``cache_implementation="static"`` preallocates the cache; on CUDA transformers then
    compiles the decode step (``torch.compile``, CUDA graphs), which removes most per-step
    launch overhead. Warm-up runs use the same lengths, so the timed run reuses the graphs.
    """
    from inferlab.roofline import random_ids

    ids = random_ids(model, 1, prompt_len)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=0, eos_token_id=None)
    if cache_implementation:
        kwargs["cache_implementation"] = cache_implementation
        warmup_kwargs = kwargs
    else:  # the dynamic cache has nothing to compile: a short warm-up is enough
        warmup_kwargs = {**kwargs, "max_new_tokens": 2, "min_new_tokens": 2}
    out = []
    with torch.inference_mode():
        for _ in range(warmup):
            model.generate(ids, **warmup_kwargs)
        (seconds,) = time_fn(lambda: out.append(model.generate(ids, **kwargs)), model.device, repeats=1, warmup=0)
    made = out[0].shape[1] - prompt_len
    return {"prompt_len": prompt_len, "new_tokens": int(made), "seconds": seconds, "tokens_per_s": made / seconds,
            "cache_implementation": cache_implementation or "dynamic"}


def hf_generate(model, prompt_ids: list[int], max_new_tokens: int, temperature: float, seed: int, **kwargs) -> int:
    """transformers ``generate`` for one prompt, seeded; returns the number of new tokens.

    ``temperature`` 0 is greedy; otherwise plain sampling (no top-k, no top-p). Extra
    ``kwargs`` select transformers' own speculation: ``assistant_model=draft`` (assisted
    generation) or ``prompt_lookup_num_tokens=k``.
    """
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0 else {"do_sample": False}
    out = model.generate(torch.tensor([prompt_ids], device=model.device), max_new_tokens=max_new_tokens,
                         attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=model.device),
                         pad_token_id=0, **sampling, **kwargs)
    return out.shape[1] - len(prompt_ids)


def hf_generate_continuous(model, requests: list[Request], max_new_tokens: int | None = None) -> RunResult:
    """transformers' own continuous batching (``generate_batch``, paged attention), greedy, EOS ignored.

    ``generate_batch`` takes one ``max_new_tokens`` for every request; default: the requests'
    mean output length, so the total output tokens match the workload's. Not under
    ``torch.inference_mode``: ``generate_batch`` runs its loop in a thread of its own, which
    cannot update tensors created in inference mode.
    """
    from transformers import GenerationConfig

    new = max_new_tokens or round(sum(r.max_tokens for r in requests) / len(requests))
    config = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
    inputs = [list(r.prompt_token_ids) for r in requests]
    outputs = []
    (wall,) = time_fn(lambda: outputs.append(model.generate_batch(inputs, generation_config=config)),
                      model.device, repeats=1, warmup=0)
    made = sum(len(o.generated_tokens) for o in outputs[0].values())
    return RunResult("hf_generate_continuous", wall, made)
