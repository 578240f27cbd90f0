"""Speculative decoding done right: exact rejection sampling, KV caches on both models, bonus token.

A small *draft* model proposes ``k`` tokens one at a time; the large *target* model scores
all ``k + 1`` positions in a single forward pass; a rejection-sampling rule keeps a prefix
of the proposal and adds one token of its own, so every target call yields between 1 and
``k + 1`` tokens, and the output is distributed **exactly** as if the target had sampled
alone (Leviathan, Kalman & Matias 2023, "Fast Inference from Transformers via Speculative
Decoding"; Chen et al. 2023, "Accelerating Large Language Model Decoding with Speculative
Sampling").

The rule (:func:`speculative_sampling_step`), for draft token ``x_i ~ q_i``:

1. accept ``x_i`` with probability ``min(1, p_i(x_i) / q_i(x_i))``;
2. at the first rejection, sample the replacement from ``norm(max(0, p_i - q_i))``;
3. when all ``k`` are accepted, sample one *bonus* token from ``p_k``, which the target
   has computed anyway.

Greedy decoding (temperature 0) is the limit: accept the longest prefix that matches the
target's argmax, then append the target's own next token.

A widely copied tutorial breaks the rule in three ways (replacement drawn from the target,
at the last draft position instead of the rejected one, and no bonus token), so its output
is *not* the target's distribution; :func:`inferlab.naive.tutorial_speculative_step`
re-creates that flawed rule on purpose, so tests and notebook 05 can show the difference.

Batches: rows accept different numbers of tokens. All rows share one KV cache per model;
slots of rejected tokens are cropped when every row rejected them, and otherwise stay in
the cache as *holes*, masked out with the 2-D attention mask, while ``position_ids`` carry
each row's logical positions. Left-padded prompts are holes of the same kind. With batch
size 1 there are never holes and the cache is cropped to the accepted length exactly.

Also here: :class:`PromptLookupDecoder` (drafts copied from the context by n-gram match,
Saxena 2023), adaptive ``k`` (grows while drafts are accepted, shrinks when they are not),
:func:`plain_generate` (the target alone, on the same code path: the fair baseline) and the
theory (:func:`expected_tokens_per_step`, :func:`expected_speedup`).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from inferlab.checks import GREEDY_TEMPERATURE, MAX_SEED, check_integer, check_number, token_id_list
from inferlab.device import synchronize
from inferlab.hf_compat import cache_keyword, crop_cache, new_dynamic_cache
from inferlab.sampling import sample_token, warp_probabilities

ACCEPTED, RESAMPLED, BONUS = "accepted", "resampled", "bonus"

# --------------------------------------------------------------------------- theory


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """Expected tokens per target call: (1 − α^(k+1)) / (1 − α); k + 1 when α = 1.

    α is the expected acceptance rate of one draft token (Leviathan et al. 2023, eq. 1):
    the number of accepted tokens is a capped geometric variable, plus the one token the
    target always adds.
    """
    _check_alpha(alpha)
    _check_k(k)
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def expected_speedup(alpha: float, k: int, c: float) -> float:
    """Expected wall-time speedup over the target alone: (1 − α^(k+1)) / ((1 − α)(k·c + 1)).

    ``c`` is the cost ratio, one draft step's time over one target step's time
    (Leviathan et al. 2023, Theorem 3.8). It assumes verifying k + 1 tokens costs one
    target step, and ignores the sampling overhead: measured speedups fall below it when
    those assumptions do not hold.
    """
    if c < 0:
        raise ValueError(f"cost ratio c must be ≥ 0 (draft step time / target step time), got {c}")
    return expected_tokens_per_step(alpha, k) / (k * c + 1.0)


def optimal_k(alpha: float, c: float, k_max: int = 16) -> int:
    """The k in 1..k_max that maximizes :func:`expected_speedup` for these α and c."""
    return max(range(1, k_max + 1), key=lambda k: expected_speedup(alpha, k, c))


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha is an acceptance rate and must lie in [0, 1], got {alpha}")


def _check_k(k: int, name: str = "num_speculative_tokens (k)") -> None:
    whole = isinstance(k, numbers.Real) and not isinstance(k, bool) and math.isfinite(k) and int(k) == k
    if not whole or k < 1:
        raise ValueError(
            f"{name} must be an integer ≥ 1, got {k!r}; "
            "use k=1..8 (for the target alone, call plain_generate)"
        )


def _check_temperature(temperature: float, top_p: float) -> float:
    """The temperature to use (below 1e-5: 0, greedy, as the engine and vLLM treat it); bad values named."""
    check_number("temperature", temperature)
    if temperature < 0:
        raise ValueError(f"temperature must be ≥ 0 (0 means greedy), got {temperature!r}")
    check_number("top_p", top_p)
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}; use 1.0 to switch it off")
    return 0.0 if temperature < GREEDY_TEMPERATURE else float(temperature)


def _check_run(max_new_tokens: int, seed: int | None, eos_token_id: int | None) -> None:
    check_integer("max_new_tokens", max_new_tokens)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
    if seed is not None:
        check_integer("seed", seed)
        if not 0 <= seed < MAX_SEED:
            raise ValueError(f"seed must be None or an integer in [0, 2**64), got {seed!r}")
    if eos_token_id is not None:
        check_integer("eos_token_id", eos_token_id)


@dataclass
class StepOutcome:
    """What one verification decided, per row: how many drafts to keep and the token after them."""

    num_accepted: torch.Tensor  # (B,) in 0..k
    next_token: torch.Tensor  # (B,) resampled (num_accepted < k) or bonus (== k) token


def speculative_sampling_step(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    generator: torch.Generator | None = None,
) -> StepOutcome:
    """The exact accept / resample / bonus rule (Leviathan et al. 2023, Algorithm 1), batched.

    ``draft_tokens`` (B, k) were drawn from ``draft_probs`` (B, k, V); ``target_probs``
    (B, k + 1, V) are the target's distributions at the same k positions plus the next one.
    Accept token i with probability min(1, p_i/q_i) (tested as u·q < p, no division);
    at the first rejection sample from norm(max(0, p_i − q_i)); if all k are accepted,
    sample the bonus token from p_k. A pure function: all randomness comes from ``generator``.
    """
    batch, k = draft_tokens.shape
    p_at = target_probs[:, :k].gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)
    q_at = draft_probs.gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)
    u = torch.rand(batch, k, generator=generator, device=draft_tokens.device)
    accepted = u * q_at < p_at
    num_accepted = accepted.long().cumprod(dim=1).sum(dim=1)
    # A zero row after the k draft distributions makes the bonus case the same formula:
    # at position k, max(0, p_k − 0) is p_k itself.
    q_padded = torch.cat([draft_probs, target_probs.new_zeros(batch, 1, target_probs.shape[-1])], dim=1)
    rows = torch.arange(batch, device=draft_tokens.device)
    p_n, q_n = target_probs[rows, num_accepted], q_padded[rows, num_accepted]
    residual = (p_n - q_n).clamp_min(0.0)
    mass = residual.sum(-1, keepdim=True)
    # p == q exactly leaves no residual mass, but then rejection has probability 0.
    residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p_n)
    next_token = torch.multinomial(residual, 1, generator=generator).squeeze(-1)
    return StepOutcome(num_accepted, next_token)


def greedy_step(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> StepOutcome:
    """Temperature 0: keep the longest draft prefix equal to the target's argmax, then its next token."""
    target_choice = target_logits.argmax(-1)  # (B, k + 1)
    k = draft_tokens.shape[1]
    matches = draft_tokens == target_choice[:, :k]
    num_accepted = matches.long().cumprod(dim=1).sum(dim=1)
    rows = torch.arange(draft_tokens.shape[0], device=draft_tokens.device)
    return StepOutcome(num_accepted, target_choice[rows, num_accepted])


# --------------------------------------------------------------------------- results


@dataclass
class SpeculativeOutput:
    """Generated tokens and the statistics of the run that produced them.

    ``sequences``: prompt + new tokens per row (lists of ints, no padding);
    ``new_tokens``: only the new ones; ``provenance``: for each new token, "accepted"
    (a draft token the target kept), "resampled" (drawn by the target after a rejection)
    or "bonus" (drawn by the target after all drafts were accepted).
    """

    sequences: list[list[int]]
    new_tokens: list[list[int]]
    provenance: list[list[str]]
    num_speculative_tokens: int
    attempted_per_position: list[int]
    accepted_per_position: list[int]
    target_calls: int
    draft_calls: int
    target_time_s: float
    draft_time_s: float
    wall_time_s: float
    k_history: list[int] = field(default_factory=list)
    overlap_sum: float = 0.0  # Σ over attempted positions of Σ_x min(p(x), q(x))
    overlap_count: int = 0

    @property
    def acceptance_per_position(self) -> list[float]:
        """P(draft token i accepted | tokens 0..i−1 accepted), for i = 0..k−1 (nan if never tried)."""
        return [a / t if t else float("nan") for a, t in zip(self.accepted_per_position, self.attempted_per_position, strict=True)]

    @property
    def alpha(self) -> float:
        """Empirical acceptance rate: accepted draft tokens / draft tokens the target looked at."""
        tried = sum(self.attempted_per_position)
        return sum(self.accepted_per_position) / tried if tried else float("nan")

    @property
    def alpha_expected(self) -> float:
        """α as E[Σ_x min(p(x), q(x))] over the positions tried (Leviathan et al. 2023, Def. 3.1)."""
        return self.overlap_sum / self.overlap_count if self.overlap_count else float("nan")

    @property
    def num_generated(self) -> int:
        return sum(len(t) for t in self.new_tokens)

    @property
    def tokens_per_target_call(self) -> float:
        """Mean new tokens per row per target forward pass (1 for plain decoding)."""
        rows = max(1, len(self.new_tokens))
        return self.num_generated / rows / self.target_calls if self.target_calls else float("nan")

    @property
    def draft_step_s(self) -> float:
        return self.draft_time_s / self.draft_calls if self.draft_calls else float("nan")

    @property
    def target_step_s(self) -> float:
        return self.target_time_s / self.target_calls if self.target_calls else float("nan")

    @property
    def cost_ratio(self) -> float:
        """Measured c: one draft forward's time over one target (verification) forward's time."""
        return self.draft_step_s / self.target_step_s if self.draft_calls and self.target_calls else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.num_generated / self.wall_time_s if self.wall_time_s else float("nan")

    def summary(self) -> dict:
        """The statistics as a plain dict (for JSON and tables)."""
        return {
            "k": self.num_speculative_tokens,
            "generated": self.num_generated,
            "alpha": self.alpha,
            "alpha_expected": self.alpha_expected,
            "acceptance_per_position": self.acceptance_per_position,
            "tokens_per_target_call": self.tokens_per_target_call,
            "target_calls": self.target_calls,
            "draft_calls": self.draft_calls,
            "draft_step_ms": 1e3 * self.draft_step_s,
            "target_step_ms": 1e3 * self.target_step_s,
            "cost_ratio": self.cost_ratio,
            "wall_time_s": self.wall_time_s,
            "tokens_per_second": self.tokens_per_second,
        }


# --------------------------------------------------------------------------- KV-cached model state


class _CachedModel:
    """One causal LM with its KV cache, a slot mask (1 = real token, 0 = hole) and per-row positions.

    ``feed`` appends tokens to every row; ``keep`` rolls the cache back: slots a row does
    not keep become holes, and slots no row keeps are cropped away.
    """

    def __init__(self, model, batch_size: int, device):
        self.model = model
        self.cache = new_dynamic_cache(model)
        self.mask = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.calls = 0
        self.seconds = 0.0
        self.cache_keyword = cache_keyword(model)

    def feed(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Run the model on ``tokens`` (B, n) after the cache; returns logits (B, n, V)."""
        if valid is None:
            valid = torch.ones_like(tokens, dtype=torch.long)
        valid = valid.long()
        positions = self.next_position[:, None] + valid.cumsum(dim=1) - 1
        positions = positions.clamp_min(0)
        self.mask = torch.cat([self.mask, valid], dim=1)
        self.next_position = self.next_position + valid.sum(dim=1)
        holes = bool((self.mask == 0).any())
        start = time.perf_counter()
        out = self.model(
            input_ids=tokens,
            attention_mask=self.mask if holes else None,
            position_ids=positions,
            use_cache=True,
            **{self.cache_keyword: self.cache},
        )
        logits = out.logits
        synchronize(logits.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return logits

    def keep(self, fed: int, kept: torch.Tensor) -> None:
        """Of the last ``fed`` slots, row r keeps its first ``kept[r]`` real ones; the rest become holes."""
        tail = self.mask[:, -fed:]
        real_rank = tail.cumsum(dim=1)
        keep_tail = (tail == 1) & (real_rank <= kept[:, None])
        dropped = tail.sum(dim=1) - keep_tail.long().sum(dim=1)
        self.mask = torch.cat([self.mask[:, :-fed], keep_tail.long()], dim=1)
        self.next_position = self.next_position - dropped
        used = self.mask.shape[1]
        while used > 0 and not bool(self.mask[:, used - 1].any()):
            used -= 1
        if used < self.mask.shape[1]:
            self.mask = self.mask[:, :used]
            crop_cache(self.cache, used)


def _as_batch(input_ids, attention_mask, pad_id: int, device, vocab: int):
    """Normalize prompts to left-padded (B, P) ids and mask; accepts a tensor or lists of ids.

    Every row needs at least one token, every id must be an integer in ``[0, vocab)``
    (TypeError/ValueError naming ``input_ids`` otherwise, not an IndexError from the embedding).
    """
    if isinstance(input_ids, torch.Tensor):
        ids, mask = _tensor_batch(input_ids, attention_mask)
    else:
        ids, mask = _list_batch(input_ids, pad_id)
    empty = [r for r in range(ids.shape[0]) if not bool(mask[r].any())]
    if ids.numel() == 0 or empty:
        raise ValueError(f"input_ids must hold at least one token per row (empty rows: {empty or 'all'})")
    real = ids[mask.bool()]
    if int(real.min()) < 0 or int(real.max()) >= vocab:
        raise ValueError(f"input_ids must be token ids in [0, {vocab}), got {int(real.min())}..{int(real.max())}")
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad_id))  # padding never reaches the embedding as-is
    return ids.to(device), mask.to(device)


def _tensor_batch(input_ids: torch.Tensor, attention_mask):
    if input_ids.dtype in (torch.bool,) or input_ids.is_floating_point() or input_ids.is_complex():
        raise TypeError(f"input_ids must hold integer token ids, got a {input_ids.dtype} tensor")
    if input_ids.dim() not in (1, 2):
        raise ValueError(f"input_ids must be 1-D or 2-D (batch, length), got shape {tuple(input_ids.shape)}")
    ids = input_ids.unsqueeze(0) if input_ids.dim() == 1 else input_ids
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask.reshape(ids.shape)
    ids, mask = ids.long(), mask.long()
    if ids.shape[1] and bool((mask[:, -1] == 0).any()):
        raise ValueError(
            "the prompts look right-padded (attention_mask ends in 0); pad on the left "
            "(tokenizer.padding_side = 'left') or pass a list of token-id lists"
        )
    return ids, mask


def _list_batch(input_ids, pad_id: int):
    if isinstance(input_ids, (str, bytes)) or not hasattr(input_ids, "__len__"):
        raise TypeError(f"input_ids must be a tensor or lists of token ids, got {type(input_ids).__name__}")
    if len(input_ids) == 0:
        raise ValueError("input_ids must not be empty")
    nested = hasattr(input_ids[0], "__iter__") and not isinstance(input_ids[0], str)
    rows = [token_id_list(r, "input_ids") for r in (input_ids if nested else [input_ids])]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], dtype=torch.long).reshape(len(rows), width)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long).reshape(len(rows), width)
    return ids, mask


# --------------------------------------------------------------------------- decoders


class _DecoderBase:
    """The verify loop shared by every drafter: propose k tokens, score k + 1 in one target call, keep a prefix."""

    def __init__(self, target, tokenizer, num_speculative_tokens: int = 4, adaptive_k: bool = False, max_k: int = 16):
        if num_speculative_tokens != 0:
            _check_k(num_speculative_tokens)
        self.target = target
        self.tokenizer = tokenizer
        self.k = int(num_speculative_tokens)
        if adaptive_k:
            _check_k(max_k, "max_k")
        self.adaptive_k = adaptive_k
        self.max_k = max(int(max_k), self.k)
        self.vocab_size: int | None = None  # set when the two models' logit widths differ (padded embeddings)

    # drafters override these three
    def _start(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        pass

    def _propose(self, last: torch.Tensor, k: int, temperature: float, top_p: float, generator):
        """Return (draft_tokens (B, k'), draft_probs (B, k', V) or None), k' ≤ k.

        ``None`` probabilities mean greedy drafts, or a deterministic drafter (each token
        proposed with probability 1).
        """
        raise NotImplementedError

    def _accepted(self, num_accepted: torch.Tensor, k: int, drafts: torch.Tensor, next_token: torch.Tensor) -> None:
        pass

    def _draft_stats(self) -> tuple[int, float]:
        return 0, 0.0

    def _vocab_limit(self) -> int:
        """Token ids every model of this decoder can embed."""
        return self.target.get_input_embeddings().num_embeddings

    @torch.no_grad()
    def generate(
        self,
        input_ids,
        max_new_tokens: int = 100,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = 0,
        attention_mask: torch.Tensor | None = None,
        eos_token_id: int | None = None,
    ) -> SpeculativeOutput:
        """Generate ``max_new_tokens`` per row (fewer if ``eos_token_id`` is given and met).

        ``input_ids``: (B, P) tensor, left-padded with ``attention_mask``, or lists of ids.
        ``temperature`` 0 is greedy; ``seed`` fixes the sampling (None: unseeded).
        """
        temperature = _check_temperature(temperature, top_p)
        _check_run(max_new_tokens, seed, eos_token_id)
        device = next(self.target.parameters()).device
        pad_id = getattr(self.tokenizer, "pad_token_id", None) or 0
        ids, mask = _as_batch(input_ids, attention_mask, pad_id, device, self._vocab_limit())
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed if seed is not None else torch.seed())
        start = time.perf_counter()
        run = _Run(self, ids, mask, temperature, top_p, generator)
        run.loop(max_new_tokens, eos_token_id)
        return run.output(ids, mask, time.perf_counter() - start)


class _Run:
    """The state of one ``generate`` call."""

    def __init__(self, decoder: _DecoderBase, ids, mask, temperature, top_p, generator):
        self.d = decoder
        self.temperature, self.top_p, self.generator = temperature, top_p, generator
        batch = ids.shape[0]
        self.target = _CachedModel(decoder.target, batch, ids.device)
        if ids.shape[1] > 1:
            self.target.feed(ids[:, :-1], mask[:, :-1])
            self.target.calls, self.target.seconds = 0, 0.0  # prefill is not a decoding step
        decoder._start(ids, mask)
        self.last = ids[:, -1].clone()
        self.new = [[] for _ in range(batch)]
        self.prov = [[] for _ in range(batch)]
        k = decoder.k
        self.k_now = k
        self.attempted = [0] * max(decoder.max_k, 1)
        self.accepted = [0] * max(decoder.max_k, 1)
        self.k_history: list[int] = []
        self.overlap_sum, self.overlap_count = 0.0, 0

    def loop(self, max_new_tokens: int, eos_token_id: int | None) -> None:
        done = [False] * len(self.new)
        while not all(done):
            remaining = max(max_new_tokens - len(t) for t, f in zip(self.new, done, strict=True) if not f)
            k = min(self.k_now, remaining - 1)
            n, k = self.step(k)
            for row, tokens in enumerate(self.new):
                hit_eos = eos_token_id is not None and eos_token_id in tokens
                done[row] = done[row] or len(tokens) >= max_new_tokens or hit_eos
            if self.d.adaptive_k and k > 0:
                all_kept = bool((n == k).all())
                self.k_now = min(self.d.max_k, k + 2) if all_kept else max(1, k - 1)
        for row, tokens in enumerate(self.new):
            cut = max_new_tokens
            if eos_token_id is not None and eos_token_id in tokens[:cut]:
                cut = tokens.index(eos_token_id) + 1
            self.new[row], self.prov[row] = tokens[:cut], self.prov[row][:cut]

    def step(self, k: int) -> tuple[torch.Tensor, int]:
        """One draft-and-verify round with k drafts (k = 0: a plain target step)."""
        greedy = self.temperature == 0
        if k > 0:
            drafts, q = self.d._propose(self.last, k, self.temperature, self.top_p, self.generator)
            k = drafts.shape[1]
        else:
            drafts, q = self.last.new_zeros(self.last.shape[0], 0), None
        logits = self.target.feed(torch.cat([self.last[:, None], drafts], dim=1))[..., : self.d.vocab_size]
        if greedy:
            outcome = greedy_step(drafts, logits)
        else:
            p = warp_probabilities(logits, self.temperature, self.top_p)
            if q is None:  # a deterministic drafter proposes each token with probability 1
                q = torch.zeros_like(p[:, :k]).scatter(-1, drafts.unsqueeze(-1), 1.0)
            outcome = speculative_sampling_step(drafts, q, p, self.generator)
            self._record_overlap(p[:, :k], q, outcome.num_accepted)
        n = outcome.num_accepted
        self.target.keep(k + 1, n + 1)
        self.d._accepted(n, k, drafts, outcome.next_token)
        self._record(drafts, outcome, k)
        self.last = outcome.next_token
        return n, k

    def _record(self, drafts, outcome: StepOutcome, k: int) -> None:
        self.k_history.append(k)
        for row, n in enumerate(outcome.num_accepted.tolist()):
            self.new[row] += drafts[row, :n].tolist() + [int(outcome.next_token[row])]
            self.prov[row] += [ACCEPTED] * n + [BONUS if n == k else RESAMPLED]
            for i in range(min(n + 1, k)):
                self.attempted[i] += 1
                self.accepted[i] += int(i < n)

    def _record_overlap(self, p, q, num_accepted) -> None:
        overlap = torch.minimum(p, q).sum(-1)  # (B, k)
        tried = torch.arange(p.shape[1], device=p.device)[None, :] <= num_accepted[:, None]
        tried = tried & (torch.arange(p.shape[1], device=p.device)[None, :] < p.shape[1])
        self.overlap_sum += float(overlap[tried].sum())
        self.overlap_count += int(tried.sum())

    def output(self, ids, mask, wall: float) -> SpeculativeOutput:
        prompts = [ids[r][mask[r].bool()].tolist() for r in range(ids.shape[0])]
        draft_calls, draft_seconds = self.d._draft_stats()
        width = max(self.d.max_k if self.d.adaptive_k else self.d.k, 1)
        return SpeculativeOutput(
            sequences=[p + t for p, t in zip(prompts, self.new, strict=True)],
            new_tokens=self.new,
            provenance=self.prov,
            num_speculative_tokens=self.d.k,
            attempted_per_position=self.attempted[:width],
            accepted_per_position=self.accepted[:width],
            target_calls=self.target.calls,
            draft_calls=draft_calls,
            target_time_s=self.target.seconds,
            draft_time_s=draft_seconds,
            wall_time_s=wall,
            k_history=self.k_history,
            overlap_sum=self.overlap_sum,
            overlap_count=self.overlap_count,
        )


class SpeculativeDecoder(_DecoderBase):
    """Speculative decoding with a draft model (Leviathan et al. 2023; Chen et al. 2023).

    ``SpeculativeDecoder(target, draft, tokenizer, num_speculative_tokens=4).generate(ids,
    max_new_tokens=100, temperature=1.0, top_p=1.0, seed=0)`` returns a
    :class:`SpeculativeOutput`. Any two Hugging Face causal LMs that share a tokenizer work;
    ``adaptive_k=True`` grows k by 2 after a round where every draft was accepted and
    shrinks it by 1 otherwise (the schedule transformers uses), between 1 and ``max_k``.
    """

    def __init__(self, target, draft, tokenizer, num_speculative_tokens: int = 4, adaptive_k: bool = False, max_k: int = 16):
        _check_k(num_speculative_tokens)
        shared = _shared_vocabulary(target, draft, tokenizer)
        super().__init__(target, tokenizer, num_speculative_tokens, adaptive_k, max_k)
        self.vocab_size = shared
        self.draft = draft

    def _start(self, ids, mask) -> None:
        self._draft = _CachedModel(self.draft, ids.shape[0], ids.device)
        if ids.shape[1] > 1:
            self._draft.feed(ids[:, :-1], mask[:, :-1])
            self._draft.calls, self._draft.seconds = 0, 0.0
        # The one draft token per row that the draft proposed but never fed itself
        # (its k-th), needed when the target accepted all k of them.
        self._unfed = torch.full_like(ids[:, -1], -1)

    def _propose(self, last, k, temperature, top_p, generator):
        has_unfed = self._unfed >= 0
        if bool(has_unfed.any()):
            tokens = torch.stack([self._unfed.clamp_min(0), last], dim=1)
            logits = self._draft.feed(tokens, torch.stack([has_unfed, torch.ones_like(has_unfed)], dim=1))
        else:
            logits = self._draft.feed(last[:, None])
        self._fed_this_round = logits.shape[1]
        tokens, probs = [], []
        for i in range(k):
            if i > 0:
                logits = self._draft.feed(tokens[-1][:, None])
            token, prob = sample_token(logits[:, -1, : self.vocab_size], temperature, top_p, generator)
            tokens.append(token)
            probs.append(prob)
        self._fed_this_round += k - 1
        self._last_drafts = torch.stack(tokens, dim=1)
        q = None if temperature == 0 else torch.stack(probs, dim=1)
        return self._last_drafts, q

    def _accepted(self, num_accepted, k, drafts, next_token) -> None:
        if k == 0:  # a plain target step (only ever the last one): the draft sat it out
            return
        # Fed this round: [unfed?] last d_0 .. d_{k-2}. Keep [unfed] last d_0 .. d_{n-1}.
        had_unfed = (self._unfed >= 0).long()
        keep = had_unfed + 1 + num_accepted.clamp(max=k - 1)
        self._draft.keep(self._fed_this_round, keep)
        self._unfed = torch.where(num_accepted == k, self._last_drafts[:, -1], torch.full_like(num_accepted, -1))

    def _draft_stats(self):
        return self._draft.calls, self._draft.seconds

    def _vocab_limit(self) -> int:
        return min(super()._vocab_limit(), self.draft.get_input_embeddings().num_embeddings)


def _shared_vocabulary(target, draft, tokenizer) -> int | None:
    """None when both models score the same vocabulary; else the common width to compare on.

    Models of one family sometimes pad their embedding matrices to different sizes (Qwen2.5-0.5B
    has 151,936 rows, Qwen2.5-7B 152,064) while sharing one tokenizer: the rows past the
    tokenizer are never real tokens, so both are compared on the first min(V_target, V_draft).
    """
    vt = target.get_output_embeddings().weight.shape[0]
    vd = draft.get_output_embeddings().weight.shape[0]
    if vt == vd:
        return None
    if len(tokenizer) <= min(vt, vd):
        return min(vt, vd)
    raise ValueError(
        f"target and draft have different vocabularies ({vt} vs {vd} logits, tokenizer {len(tokenizer)}): "
        "speculative decoding compares their probabilities token by token, so pick a draft trained with "
        "the target's tokenizer (e.g. a smaller model of the same family), or use PromptLookupDecoder"
    )


class PromptLookupDecoder(_DecoderBase):
    """Speculation without a draft model: copy the tokens that followed the last n-gram earlier in the context.

    Prompt lookup decoding (Saxena 2023, github.com/apoorvumang/prompt-lookup-decoding):
    find the most recent earlier occurrence of the context's last ``n`` tokens (n from
    ``max_ngram`` down to ``min_ngram``) and propose the ``k`` tokens that followed it.
    It shines when the output copies from the input (editing code, summarizing, RAG).
    The proposal is deterministic (q is a point mass), so the same accept/resample rule
    keeps the output distributed exactly as the target's. Rows with no match propose
    nothing; in a batch they propose a repeat of the longest row's width (still exact).
    """

    def __init__(self, target, tokenizer, num_speculative_tokens: int = 4, max_ngram: int = 3, min_ngram: int = 1,
                 adaptive_k: bool = False, max_k: int = 16):
        _check_k(num_speculative_tokens)
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 ≤ min_ngram ≤ max_ngram, got min_ngram={min_ngram}, max_ngram={max_ngram}")
        super().__init__(target, tokenizer, num_speculative_tokens, adaptive_k, max_k)
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def _start(self, ids, mask) -> None:
        self._context = [ids[r][mask[r].bool()].tolist() for r in range(ids.shape[0])]

    def _propose(self, last, k, temperature, top_p, generator):
        found = [lookup_continuation(ctx, k, self.max_ngram, self.min_ngram) for ctx in self._context]
        width = max(len(f) for f in found)
        rows = [f + [(f or ctx)[-1]] * (width - len(f)) for f, ctx in zip(found, self._context, strict=True)]
        return torch.tensor(rows, dtype=torch.long, device=last.device).reshape(len(rows), width), None

    def _accepted(self, num_accepted, k, drafts, next_token) -> None:
        for row, n in enumerate(num_accepted.tolist()):
            self._context[row] += drafts[row, :n].tolist() + [int(next_token[row])]


def lookup_continuation(context: Sequence[int], k: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the context's last n-gram (longest n first)."""
    size = len(context)
    for n in range(min(max_ngram, size - 1), min_ngram - 1, -1):
        pattern = list(context[size - n:])
        for start in range(size - n - 1, -1, -1):
            if list(context[start:start + n]) == pattern:
                return list(context[start + n:start + n + k])
    return []


class _TargetOnly(_DecoderBase):
    def __init__(self, target, tokenizer):
        super().__init__(target, tokenizer, num_speculative_tokens=0)


def plain_generate(target, tokenizer, input_ids, max_new_tokens: int = 100, temperature: float = 0.0,
                   top_p: float = 1.0, seed: int | None = 0, attention_mask=None, eos_token_id=None) -> SpeculativeOutput:
    """The target alone, one token per forward pass, with its KV cache, through the same loop and sampler.

    This is the fair baseline for speedups: identical prefill, cache, warping and sampling
    code, only without drafts.
    """
    return _TargetOnly(target, tokenizer).generate(
        input_ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
        attention_mask=attention_mask, eos_token_id=eos_token_id,
    )


# --------------------------------------------------------------------------- teaching helpers


@torch.no_grad()
def target_next_token_probs(target, input_ids, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """The target's (warped) distribution of the next token after one prompt: what sampling must reproduce."""
    ids = torch.as_tensor(input_ids).reshape(1, -1).to(next(target.parameters()).device)
    return warp_probabilities(target(ids).logits[0, -1], temperature, top_p)


@torch.no_grad()
def first_step_samples(target, draft, input_ids, num_samples: int = 2000, k: int = 4, temperature: float = 1.0,
                       top_p: float = 1.0, rule=speculative_sampling_step, seed: int = 0) -> torch.Tensor:
    """The first token emitted by one draft-and-verify round, ``num_samples`` times, in one batch.

    ``rule`` is :func:`speculative_sampling_step` or, to see the bias,
    :func:`inferlab.naive.tutorial_speculative_step`. Both models read the prompt once; the caches are
    then copied ``num_samples`` times, the draft proposes k tokens per copy and the target
    scores them in one call, so comparing rules costs a few forward passes.
    """
    _check_k(k)
    temperature = _check_temperature(temperature, top_p)
    if temperature == 0:
        raise ValueError("first_step_samples compares distributions: use temperature > 0")
    device = next(target.parameters()).device
    ids = torch.as_tensor(input_ids).reshape(1, -1).to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    caches = {}
    for name, model in (("target", target), ("draft", draft)):
        caches[name] = _CachedModel(model, 1, device)
        if ids.shape[1] > 1:
            caches[name].feed(ids[:, :-1])
        caches[name].cache.batch_repeat_interleave(num_samples)
        caches[name].mask = caches[name].mask.expand(num_samples, -1).contiguous()
        caches[name].next_position = caches[name].next_position.expand(num_samples).contiguous()
    token = ids[:, -1].expand(num_samples)
    drafts, probs = [], []
    for _ in range(k):
        logits = caches["draft"].feed(token[:, None])[:, -1]
        token, q = sample_token(logits, temperature, top_p, g)
        drafts.append(token)
        probs.append(q)
    drafts_t = torch.stack(drafts, dim=1)
    last = ids[:, -1].expand(num_samples)[:, None]
    p = warp_probabilities(caches["target"].feed(torch.cat([last, drafts_t], dim=1)), temperature, top_p)
    outcome = rule(drafts_t, torch.stack(probs, dim=1), p, g)
    return torch.where(outcome.num_accepted > 0, drafts_t[:, 0], outcome.next_token)
