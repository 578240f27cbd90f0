"""The widely copied tutorial's versions, kept on purpose so notebooks and tests can measure their mistakes.

Our code, the tutorial's behaviour. Never use these to generate text:

- :class:`TutorialBatcher`: its ``ContinuousBatcher``: no KV cache, so every step re-runs
  every sequence from its first token; right padding without an attention mask; the next
  token read from ``logits[:, -1]``, which for every row shorter than the longest is the
  logit at a *pad* position (notebook 03).
- :func:`tutorial_speculative_step`: its speculative-sampling rule, whose output is not the
  target's distribution (notebook 05; Leviathan et al. 2023 give the exact rule, which
  :func:`inferlab.speculative.speculative_sampling_step` implements).
"""

from __future__ import annotations

from typing import Any

import torch

from inferlab.speculative import StepOutcome


class TutorialBatcher:
    """WRONG ON PURPOSE: the tutorial's ``ContinuousBatcher`` behaviour, kept to measure its mistakes.

    Works on a transformers model. Each ``step`` right-pads prompt + generated tokens of
    every active request to the longest, runs the *whole* batch through the model without
    a KV cache or attention mask, and appends ``argmax(logits[:, -1])`` to every row: for
    the rows shorter than the longest, position -1 is a pad token, so their next token is
    predicted from the wrong place. ``tokens_processed`` counts the token positions run.
    """

    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int = 32, max_seq_len: int = 2048):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_seq_len = max_batch_size, max_seq_len
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.active: dict[str, dict] = {}
        self.queue: list[dict] = []
        self.tokens_processed = 0
        self.steps = 0

    def add_request(self, request_id: str, prompt: str, max_tokens: int) -> None:
        self.queue.append({"id": request_id, "prompt": list(self.tokenizer.encode(prompt)), "out": [], "max": max_tokens})

    def has_pending(self) -> bool:
        return bool(self.queue or self.active)

    @torch.inference_mode()
    def step(self) -> dict[str, str]:
        while self.queue and len(self.active) < self.max_batch_size:
            req = self.queue.pop(0)
            self.active[req["id"]] = req
        if not self.active:
            return {}
        rows = [r["prompt"] + r["out"] for r in self.active.values()]
        width = max(len(r) for r in rows)
        batch = torch.tensor([r + [self.pad_token_id] * (width - len(r)) for r in rows])
        device = next(self.model.parameters()).device
        logits = self.model(batch.to(device)).logits[:, -1]  # the mistake: -1 is a pad for short rows
        self.tokens_processed += batch.numel()
        self.steps += 1
        return self._collect(logits.argmax(dim=-1).tolist())

    def _collect(self, tokens: list[int]) -> dict[str, str]:
        done = {}
        for req, token in zip(list(self.active.values()), tokens, strict=True):
            req["out"].append(token)
            if len(req["out"]) >= req["max"] or token == self.tokenizer.eos_token_id:
                done[req["id"]] = self.tokenizer.decode(req["out"], skip_special_tokens=True)
                del self.active[req["id"]]
        return done

    def run(self) -> dict[str, str]:
        results: dict[str, str] = {}
        while self.has_pending():
            results.update(self.step())
        return results


def tutorial_speculative_step(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    generator: torch.Generator | None = None,
) -> StepOutcome:
    """WRONG ON PURPOSE: the tutorial's rule, re-created to show that its output is biased.

    Same inputs as :func:`speculative_sampling_step`. The acceptance test is right, but after
    a rejection the replacement is drawn from the *target* distribution (not from
    norm(max(0, p − q))) and at the *last* draft position k − 1 (not at the rejected one),
    and when all k are accepted no bonus token is added (``next_token`` is −1 then).
    Accepted tokens then get counted twice: once through acceptance, once through the
    replacement, so tokens the draft likes are over-produced. Do not use it to generate.
    """
    batch, k = draft_tokens.shape
    p_at = target_probs[:, :k].gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)
    q_at = draft_probs.gather(-1, draft_tokens.unsqueeze(-1)).squeeze(-1)
    u = torch.rand(batch, k, generator=generator, device=draft_tokens.device)
    accepted = u < (p_at / q_at).clamp(max=1.0)
    num_accepted = accepted.long().cumprod(dim=1).sum(dim=1)
    replacement = torch.multinomial(target_probs[:, k - 1], 1, generator=generator).squeeze(-1)
    next_token = torch.where(num_accepted < k, replacement, torch.full_like(replacement, -1))
    return StepOutcome(num_accepted, next_token)
