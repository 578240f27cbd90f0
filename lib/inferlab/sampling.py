"""From logits to tokens, shared by the engine and speculative decoding.

Two entry points over the same idea (temperature, then top-k / nucleus top-p filtering,
Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"):

- :func:`sample`: the engine's step. Filtering is vectorized over the batch (per-row
  temperature/top-k/top-p tensors, as in vLLM's sampler); the random draw is per row with
  the request's own ``torch.Generator``, on the CPU, so a seeded request samples the same
  tokens whatever else is in the batch and on whichever device the model runs.
- :func:`warp_probabilities` / :func:`sample_token`: one setting for the whole batch, as
  speculative decoding needs; its accept/reject rule compares the draft's and the
  target's *warped* probabilities, so both go through the same warp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
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


def warp_probabilities(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """Softmax of ``logits / temperature`` restricted to the top-p nucleus, renormalized.

    Both models' logits go through the same warp: the output then follows the *warped*
    target distribution, which is what plain sampling with these settings would produce.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(-1, keepdim=True)


def sample_token(logits: torch.Tensor, temperature: float, top_p: float = 1.0, generator=None):
    """``(token, probs)`` per row: argmax and ``None`` at temperature 0, else a draw from the warped probabilities."""
    if temperature == 0:
        return logits.argmax(-1), None
    probs = warp_probabilities(logits, temperature, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1), probs
