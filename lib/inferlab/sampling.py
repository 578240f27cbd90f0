"""From logits to tokens, shared by the engine and speculative decoding.

Two entry points over the same idea (temperature, then top-k / nucleus top-p filtering,
Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"):

- :func:`sample`: the engine's step. Filtering is vectorized over the batch (per-row
  temperature/top-k/top-p tensors, as in vLLM's sampler). The random draw depends only on
  the request's seed and how many tokens it has produced, never on the rest of the batch.
  On the CPU it uses the request's own ``torch.Generator`` (``multinomial``); on a GPU the
  whole batch is drawn on the device (:func:`sample_on_device`: the exponential race, with
  noise from a counter-based hash of seed, step and token id, as Philox-style samplers do),
  and the step's tokens and their log-probabilities reach the host in one copy.
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

    ``top_k``: [rows] ints, ``vocab`` meaning no limit. ``top_p``: [rows] floats, 1 meaning none
    (exactly none: a row with ``top_p >= 1`` skips the nucleus test, whose float32 cumulative sum
    can reach 1 before the last tokens and would drop them).
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    drop = ranks >= top_k[:, None]
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    nucleus = top_p[:, None] < 1.0
    drop |= nucleus & (before >= top_p[:, None])  # the most likely token always survives (before = 0)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[float], torch.Tensor]:
    """One token per row, its log-probability, and the rows' log-probabilities ``[rows, vocab]``.

    Log-probabilities are those of the model's distribution (before temperature and
    filtering), as vLLM returns by default. On CUDA the draw runs on the device
    (:func:`sample_on_device`) and tokens with their log-probabilities cross to the host in
    one copy; elsewhere each sampled row draws from its request's generator.
    """
    logits = logits.float()
    logprobs = logits.log_softmax(dim=-1)
    if logits.is_cuda:
        tokens = sample_on_device(logits, seqs)
        chosen = logprobs.gather(1, tokens[:, None])[:, 0]
        both = torch.stack([tokens.double(), chosen.double()]).tolist()  # the step's one device-to-host copy
        return [int(t) for t in both[0]], both[1], logprobs
    tokens = logits.argmax(dim=-1)
    rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if rows:
        drawn = _sample_rows(logits[rows], [seqs[i] for i in rows])
        tokens[torch.tensor(rows, device=tokens.device)] = torch.tensor(drawn, device=tokens.device)
    chosen = logprobs.gather(1, tokens[:, None])[:, 0]
    return tokens.tolist(), chosen.tolist(), logprobs


def _filtered(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """``logits / temperature`` per row, then top-k / top-p (skipped when no row filters)."""
    vocab = logits.shape[-1]
    temps = torch.tensor([s.params.temperature for s in seqs], device=logits.device)
    top_k = [s.params.top_k if s.params.top_k > 0 else vocab for s in seqs]
    top_p = [s.params.top_p for s in seqs]
    logits = logits / temps[:, None]
    if min(top_k) >= vocab and min(top_p) >= 1.0:
        return logits
    return apply_top_k_top_p(logits, torch.tensor(top_k, device=logits.device), torch.tensor(top_p, device=logits.device))


def _sample_rows(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    probs = _filtered(logits, seqs).softmax(dim=-1).cpu()
    return [int(torch.multinomial(p, 1, generator=s.generator)) for p, s in zip(probs, seqs, strict=True)]


_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply rounds) on int64 tensors holding values below 2**32."""
    for mult in (0x7FEB352D, 0x2C1B3C6D):  # below 2**31: products stay below 2**63
        x = x ^ (x >> 16)
        x = (x * mult) & _MASK32
    return x ^ (x >> 16)


def _row_key(seed: int, step: int) -> int:
    """A 32-bit key per (request seed, output position): splitmix64's finalizer, on the host."""
    z = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) & _MASK32


def uniform_noise(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """``[rows, vocab]`` uniforms in (0, 1), a pure function of each row's key and the token id."""
    ids = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    x = _mix32(_mix32(ids[None, :] ^ keys[:, None]) ^ ((keys[:, None] * 0x5BD1E995) & _MASK32))
    return ((x >> 8).to(torch.float32) + 0.5) * (1.0 / 2**24)


def sample_on_device(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """``[rows]`` tokens drawn on the logits' device: argmax for greedy rows, the exponential race otherwise.

    ``argmax_i p_i / E_i`` with ``E_i ~ Exp(1)`` picks token ``i`` with probability ``p_i``
    (the Gumbel-max trick in another form), so no cumulative sum, no host round trip and no
    per-row generator object: the noise is a hash of the request's seed, its output position
    and the token id, hence reproducible and independent of the batch.
    """
    tokens = logits.argmax(dim=-1)
    rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
    if not rows:
        return tokens
    sub = [seqs[i] for i in rows]
    keys = torch.tensor([_row_key(_seed_of(s), len(s.output_token_ids)) for s in sub], device=logits.device)
    scores = _filtered(logits[rows], sub).log_softmax(dim=-1)
    drawn = (scores - uniform_noise(keys, logits.shape[-1]).log().neg().log()).argmax(dim=-1)  # - log E
    index = torch.tensor(rows, device=logits.device)
    return tokens.index_copy(0, index, drawn)


def _seed_of(seq: Sequence) -> int:
    generator = getattr(seq, "generator", None)
    return int(generator.initial_seed()) if generator is not None else 0


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
