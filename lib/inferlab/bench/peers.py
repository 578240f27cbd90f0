"""The peers: every Hugging Face transformers baseline our implementations are measured against.

One module so that "the peer" means the same call in every benchmark and notebook:
``generate`` one prompt at a time, in static left-padded batches, and (in the
speculative-decoding benchmark) with an assistant model.
"""

from __future__ import annotations

import time

import torch

from inferlab.bench.workloads import Request, RunResult
from inferlab.device import synchronize


@torch.inference_mode()
def hf_generate_per_prompt(model, requests: list[Request]) -> RunResult:
    """transformers ``generate``, one request at a time (no batching at all)."""
    device = next(model.parameters()).device
    tokens, t0 = 0, time.perf_counter()
    for req in requests:
        ids = torch.tensor([req.prompt_token_ids], device=device)
        out = model.generate(ids, max_new_tokens=req.max_tokens, min_new_tokens=req.max_tokens,
                             do_sample=False, pad_token_id=0)
        tokens += out.shape[1] - ids.shape[1]
    synchronize(device)
    return RunResult("hf_generate_per_prompt", time.perf_counter() - t0, tokens)


@torch.inference_mode()
def hf_generate_static(model, requests: list[Request], batch_size: int, pad_token_id: int = 0) -> RunResult:
    """Static batching: left-padded batches through ``generate``, each to its longest output."""
    device = next(model.parameters()).device
    useful = padding = 0
    t0 = time.perf_counter()
    for i in range(0, len(requests), batch_size):
        batch = requests[i:i + batch_size]
        width, longest = max(len(r.prompt_token_ids) for r in batch), max(r.max_tokens for r in batch)
        ids = torch.tensor([[pad_token_id] * (width - len(r.prompt_token_ids)) + r.prompt_token_ids for r in batch], device=device)
        mask = torch.tensor([[0] * (width - len(r.prompt_token_ids)) + [1] * len(r.prompt_token_ids) for r in batch], device=device)
        model.generate(ids, attention_mask=mask, max_new_tokens=longest, min_new_tokens=longest,
                       do_sample=False, pad_token_id=pad_token_id)
        useful += sum(r.max_tokens for r in batch)
        padding += len(batch) * longest - sum(r.max_tokens for r in batch)
    synchronize(device)
    return RunResult("hf_generate_static", time.perf_counter() - t0, useful, padding_tokens=padding)
