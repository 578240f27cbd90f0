"""Turn a step's logits into one token per sequence: greedy, temperature, top-k, top-p.

Filtering is vectorized over the batch (per-row temperature/top-k/top-p tensors, as in
vLLM's sampler). The random draw is per row with the request's own ``torch.Generator``,
on the CPU: a seeded request then samples the same tokens whatever else is in the batch
and on whichever device the model runs.
"""

from __future__ import annotations

import torch

from inferlab.engine.sequence import Sequence


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Set to -inf every logit outside its row's top-k and nucleus (top-p) set.

    ``top_k``: [rows] ints, ``vocab`` meaning no limit. ``top_p``: [rows] floats, 1 meaning none.
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    drop = ranks >= top_k[:, None]
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    drop |= before >= top_p[:, None]  # the most likely token always survives (before = 0)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[float], torch.Tensor]:
    """One token per row, its log-probability, and the rows' log-probabilities ``[rows, vocab]``.

    Log-probabilities are those of the model's distribution (before temperature and
    filtering), as vLLM returns by default. Tokens and their log-probabilities cross to
    the host in one transfer each, not one per row.
    """
    logits = logits.float()
    logprobs = logits.log_softmax(dim=-1)
    tokens = logits.argmax(dim=-1)
    rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if rows:
        drawn = _sample_rows(logits[rows], [seqs[i] for i in rows])
        tokens[torch.tensor(rows, device=tokens.device)] = torch.tensor(drawn, device=tokens.device)
    chosen = logprobs.gather(1, tokens[:, None])[:, 0]
    return tokens.tolist(), chosen.tolist(), logprobs


def _sample_rows(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    vocab = logits.shape[-1]
    temps = torch.tensor([s.params.temperature for s in seqs], device=logits.device)
    top_k = torch.tensor([s.params.top_k if s.params.top_k > 0 else vocab for s in seqs], device=logits.device)
    top_p = torch.tensor([s.params.top_p for s in seqs], device=logits.device)
    logits = apply_top_k_top_p(logits / temps[:, None], top_k, top_p)
    probs = logits.softmax(dim=-1).cpu()
    return [int(torch.multinomial(p, 1, generator=s.generator)) for p, s in zip(probs, seqs, strict=True)]
