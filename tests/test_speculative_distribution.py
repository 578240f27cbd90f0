"""Sampling on the real tiny pair: the first tokens follow the target's distribution; the widely copied tutorial's rule does not.

Fixed seeds make these deterministic; p-value thresholds (> 1e-4 same, < 1e-8 different)
make a false verdict very unlikely for any seed. top_p keeps the support small enough for
a chi-square test with a few thousand samples.
"""

from __future__ import annotations

import pytest
import torch

from inferlab.naive import tutorial_speculative_step
from inferlab.sampling import warp_probabilities
from inferlab.speculative import (
    SpeculativeDecoder,
    first_step_samples,
    target_next_token_probs,
)
from inferlab.stats import chi_square_pvalue

PROMPT = "    if not"  # three tokens: cheap to replicate into a batch of a thousand rows
TEMPERATURE, TOP_P = 1.0, 0.8


@pytest.fixture(scope="module")
def decoded(pair):
    """1200 independent rows of 3 new tokens from one prompt (k = 2 in the first round)."""
    target, draft, tok = pair
    ids = tok(PROMPT, return_tensors="pt").input_ids
    out = SpeculativeDecoder(target, draft, tok, num_speculative_tokens=2).generate(
        ids.repeat(1200, 1), max_new_tokens=3, temperature=TEMPERATURE, top_p=TOP_P, seed=0
    )
    return ids, out


def test_first_token_follows_target(pair, decoded):
    target, _, _ = pair
    ids, out = decoded
    p = target_next_token_probs(target, ids, TEMPERATURE, TOP_P).double()
    counts = torch.bincount(torch.tensor([t[0] for t in out.new_tokens]), minlength=p.numel()).double()
    assert chi_square_pvalue(counts, p) > 1e-4


@torch.no_grad()
def test_second_token_follows_target(pair, decoded):
    """Exact second-token marginal: Σ over first tokens t of p(t) · p(· | t)."""
    target, _, _ = pair
    ids, out = decoded
    p1 = target_next_token_probs(target, ids, TEMPERATURE, TOP_P)
    support = torch.nonzero(p1).squeeze(-1)
    extended = torch.cat([ids.repeat(len(support), 1), support[:, None]], dim=1)
    p2 = warp_probabilities(target(extended).logits[:, -1], TEMPERATURE, TOP_P)
    marginal = (p1[support, None] * p2).sum(0).double()
    counts = torch.bincount(torch.tensor([t[1] for t in out.new_tokens]), minlength=marginal.numel()).double()
    assert chi_square_pvalue(counts, marginal) > 1e-4
    assert out.alpha > 0 and out.target_calls >= 1


def test_seed_rule_is_biased_on_the_tiny_pair(pair):
    target, draft, tok = pair
    ids = tok(PROMPT, return_tensors="pt").input_ids
    p = target_next_token_probs(target, ids, TEMPERATURE, TOP_P).double()
    ours = first_step_samples(target, draft, ids, 1000, k=3, temperature=TEMPERATURE, top_p=TOP_P, seed=1)
    seeds = first_step_samples(target, draft, ids, 1000, k=3, temperature=TEMPERATURE, top_p=TOP_P, seed=1,
                               rule=tutorial_speculative_step)
    assert chi_square_pvalue(torch.bincount(ours, minlength=p.numel()).double(), p) > 1e-4
    assert chi_square_pvalue(torch.bincount(seeds, minlength=p.numel()).double(), p) < 1e-8


def test_left_padded_rows_sample_from_their_own_distribution(pair):
    """A ragged batch (short prompts left-padded next to long ones) still samples each row's target distribution."""
    target, draft, tok = pair
    short, long = tok(PROMPT).input_ids, tok("import os\nimport sys\n\n\ndef main():\n   ").input_ids
    assert len(long) > len(short) + 2
    rows = [short, long] * 500
    out = SpeculativeDecoder(target, draft, tok, num_speculative_tokens=3).generate(
        rows, max_new_tokens=2, temperature=TEMPERATURE, top_p=TOP_P, seed=3
    )
    for offset, prompt in enumerate((short, long)):
        p = target_next_token_probs(target, torch.tensor(prompt), TEMPERATURE, TOP_P).double()
        first = torch.tensor([t[0] for t in out.new_tokens[offset::2]])
        assert chi_square_pvalue(torch.bincount(first, minlength=p.numel()).double(), p) > 1e-4
