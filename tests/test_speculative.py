"""Speculative decoding: the exact rule on controlled distributions, greedy identity on the tiny pair, bad input.

The sampling tests use fixed seeds, so they are deterministic; their thresholds
(p-value > 1e-4 for "same distribution", < 1e-12 for "different") would make a false
failure very unlikely even with a different seed.
"""

from __future__ import annotations

import math

import pytest
import torch

from inferlab.naive import tutorial_speculative_step
from inferlab.sampling import warp_probabilities
from inferlab.speculative import (
    BONUS,
    RESAMPLED,
    PromptLookupDecoder,
    SpeculativeDecoder,
    expected_speedup,
    expected_tokens_per_step,
    lookup_continuation,
    optimal_k,
    plain_generate,
    speculative_sampling_step,
)
from inferlab.stats import chi_square_pvalue

PROMPTS = [
    'def is_prime(n):\n    """Return True if n is prime."""',
    "class Stack:\n    def __init__(self):",
    "import os\n\ndef list_python_files(path):",
    "    def __repr__(self):",
]


# ------------------------------------------------------------------ theory


def test_expected_tokens_per_step_formula():
    assert expected_tokens_per_step(0.0, 4) == pytest.approx(1.0)
    assert expected_tokens_per_step(1.0, 4) == 5.0
    assert expected_tokens_per_step(0.5, 1) == pytest.approx(1.5)
    alpha, k = 0.7, 5
    assert expected_tokens_per_step(alpha, k) == pytest.approx(sum(alpha**i for i in range(k + 1)))


def test_expected_speedup_formula():
    assert expected_speedup(0.8, 4, 0.0) == pytest.approx(expected_tokens_per_step(0.8, 4))
    assert expected_speedup(0.8, 4, 0.1) == pytest.approx((1 - 0.8**5) / (0.2 * 1.4))
    assert expected_speedup(1.0, 3, 0.25) == pytest.approx(4 / 1.75)
    assert 1 <= optimal_k(0.8, 0.05) <= 16
    assert optimal_k(0.1, 0.5) == 1


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_theory_rejects_bad_alpha(bad):
    with pytest.raises(ValueError, match="alpha"):
        expected_tokens_per_step(bad, 4)


# ------------------------------------------------------------------ the rule on known p and q

V, K, TRIALS = 6, 3, 200_000


def _controlled(seed: int = 0):
    """Position-dependent p_i and a deliberately poor q_i over 6 tokens, for K positions (+1 for the bonus)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(2.0 * torch.randn(K + 1, V, generator=g), -1)
    q = torch.softmax(2.0 * torch.randn(K, V, generator=g), -1)
    return p, q


def _simulate(step, seed: int = 1):
    p, q = _controlled()
    g = torch.Generator().manual_seed(seed)
    drafts = torch.multinomial(q, TRIALS, replacement=True, generator=g).T  # (TRIALS, K), x_i ~ q_i
    outcome = step(drafts, q.expand(TRIALS, K, V), p.expand(TRIALS, K + 1, V), g)
    return p, q, drafts, outcome


def _emitted_at(position, drafts, outcome):
    """Tokens emitted at ``position`` within the step, for the trials that reached it."""
    n, nxt = outcome.num_accepted, outcome.next_token
    reached = n >= position
    tokens = torch.where(n[reached] > position, drafts[reached, min(position, K - 1)], nxt[reached])
    return tokens[tokens >= 0]


@pytest.mark.parametrize("position", range(K + 1))
def test_exact_rule_reproduces_target_distribution(position):
    p, _, drafts, outcome = _simulate(speculative_sampling_step)
    tokens = _emitted_at(position, drafts, outcome)
    assert len(tokens) > 1000
    assert chi_square_pvalue(torch.bincount(tokens, minlength=V).double(), p[position].double()) > 1e-4


def test_exact_rule_acceptance_matches_overlap():
    """P(accept position 0) = Σ_x min(p(x), q(x)) (Leviathan et al. 2023, Lemma 3.3)."""
    p, q, _, outcome = _simulate(speculative_sampling_step)
    beta = float(torch.minimum(p[0], q[0]).sum())
    rate = float((outcome.num_accepted >= 1).double().mean())
    assert rate == pytest.approx(beta, abs=5 * math.sqrt(beta * (1 - beta) / TRIALS))


def test_seed_rule_is_biased():
    """The widely copied tutorial's rule (wrong on purpose) does not produce the target's first-token distribution."""
    p, _, drafts, outcome = _simulate(tutorial_speculative_step)
    first = torch.where(outcome.num_accepted > 0, drafts[:, 0], outcome.next_token)
    assert chi_square_pvalue(torch.bincount(first, minlength=V).double(), p[0].double()) < 1e-12


def test_seed_rule_is_biased_even_at_k1():
    """With k = 1 the position is right; resampling from p instead of norm(max(0, p − q)) alone biases it."""
    p, q = _controlled()
    g = torch.Generator().manual_seed(3)
    drafts = torch.multinomial(q[0], TRIALS, replacement=True, generator=g)[:, None]
    outcome = tutorial_speculative_step(drafts, q[:1].expand(TRIALS, 1, V), p[:2].expand(TRIALS, 2, V), g)
    first = torch.where(outcome.num_accepted > 0, drafts[:, 0], outcome.next_token)
    counts = torch.bincount(first, minlength=V).double()
    beta = torch.minimum(p[0], q[0]).sum()
    predicted = torch.minimum(p[0], q[0]) + (1 - beta) * p[0]  # what the tutorial's rule produces
    assert chi_square_pvalue(counts, predicted.double()) > 1e-4
    assert chi_square_pvalue(counts, p[0].double()) < 1e-12


def test_all_accepted_gives_bonus_from_last_position():
    p, _ = _controlled()
    q = p[:K].clone()  # a perfect draft: everything is accepted
    g = torch.Generator().manual_seed(5)
    drafts = torch.multinomial(q, 20_000, replacement=True, generator=g).T
    outcome = speculative_sampling_step(drafts, q.expand(20_000, K, V), p.expand(20_000, K + 1, V), g)
    assert bool((outcome.num_accepted == K).all())
    assert chi_square_pvalue(torch.bincount(outcome.next_token, minlength=V).double(), p[K].double()) > 1e-4


def test_warp_top_p_keeps_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    probs = warp_probabilities(logits, 1.0, top_p=0.75)
    assert probs.tolist() == pytest.approx([0.625, 0.375, 0.0, 0.0])


# ------------------------------------------------------------------ greedy identity on the tiny pair


@pytest.fixture(scope="module")
def references(pair):
    """The target's own greedy continuations (transformers ``generate``, left-padded batch)."""
    target, _, tok = pair
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    hf = target.generate(**enc, max_new_tokens=40, min_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
    return {p: hf[i, enc.input_ids.shape[1]:].tolist() for i, p in enumerate(PROMPTS)}


def test_plain_baseline_matches_transformers_greedy(pair, references):
    target, _, tok = pair
    out = plain_generate(target, tok, [tok(p).input_ids for p in PROMPTS], max_new_tokens=40)
    assert out.new_tokens == [references[p] for p in PROMPTS]


@pytest.mark.parametrize("k", [1, 4])
def test_greedy_is_token_identical_to_target(pair, references, k):
    target, draft, tok = pair
    decoder = SpeculativeDecoder(target, draft, tok, num_speculative_tokens=k)
    for prompt in PROMPTS[:2]:
        out = decoder.generate(tok(prompt).input_ids, max_new_tokens=40, temperature=0)
        assert out.new_tokens[0] == references[prompt], (k, prompt)


@pytest.mark.parametrize("k", [2, 3, 7])
def test_greedy_batch_with_left_padding_is_identical(pair, references, k):
    target, draft, tok = pair
    decoder = SpeculativeDecoder(target, draft, tok, num_speculative_tokens=k)
    out = decoder.generate([tok(p).input_ids for p in PROMPTS], max_new_tokens=40, temperature=0)
    assert out.new_tokens == [references[p] for p in PROMPTS]


def test_greedy_batch_from_padded_tensor(pair, references):
    target, draft, tok = pair
    tok.padding_side = "left"
    enc = tok(PROMPTS[:3], return_tensors="pt", padding=True)
    out = SpeculativeDecoder(target, draft, tok, 3).generate(
        enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=40, temperature=0
    )
    assert out.new_tokens == [references[p] for p in PROMPTS[:3]]
    assert out.sequences[0] == tok(PROMPTS[0]).input_ids + references[PROMPTS[0]]


def test_right_padding_is_refused(pair):
    target, draft, tok = pair
    ids = torch.tensor([[5, 6, 7], [5, 6, 1]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with pytest.raises(ValueError, match="left"):
        SpeculativeDecoder(target, draft, tok).generate(ids, attention_mask=mask, max_new_tokens=4)


def test_adaptive_k_is_identical_and_moves(pair, references):
    target, draft, tok = pair
    decoder = SpeculativeDecoder(target, draft, tok, num_speculative_tokens=2, adaptive_k=True, max_k=8)
    out = decoder.generate(tok(PROMPTS[1]).input_ids, max_new_tokens=40, temperature=0)
    assert out.new_tokens[0] == references[PROMPTS[1]]
    assert len(set(out.k_history)) > 1


def test_prompt_lookup_greedy_is_identical(pair, references):
    target, _, tok = pair
    for k in (2, 5):
        out = PromptLookupDecoder(target, tok, num_speculative_tokens=k).generate(
            [tok(p).input_ids for p in PROMPTS], max_new_tokens=40, temperature=0
        )
        assert out.new_tokens == [references[p] for p in PROMPTS]


def test_lookup_continuation():
    ctx = [1, 2, 3, 4, 9, 9, 1, 2, 3]
    assert lookup_continuation(ctx, 3, max_ngram=3) == [4, 9, 9]
    assert lookup_continuation([1, 2, 3], 3) == []
    assert lookup_continuation([7, 8, 7], 2, max_ngram=2) == [8, 7]


def test_statistics_are_consistent(pair):
    target, draft, tok = pair
    out = SpeculativeDecoder(target, draft, tok, 4).generate(tok(PROMPTS[2]).input_ids, max_new_tokens=30, temperature=0)
    prov = out.provenance[0]
    assert len(prov) == len(out.new_tokens[0]) == 30
    # every target call ends with exactly one token of the target's own (resampled or bonus)
    assert sum(p in (RESAMPLED, BONUS) for p in prov) == out.target_calls
    assert out.attempted_per_position[0] == out.target_calls - (out.k_history.count(0))
    assert 0 <= out.alpha <= 1 and out.cost_ratio > 0
    assert out.tokens_per_target_call == pytest.approx(30 / out.target_calls)


def test_kv_caches_are_rolled_back_not_recomputed(pair):
    """Each round feeds the target exactly k + 1 new tokens: the accepted prefix is never re-run."""
    target, draft, tok = pair
    fed = []
    hook = target.register_forward_pre_hook(lambda m, args, kw: fed.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        ids = tok(PROMPTS[0]).input_ids
        out = SpeculativeDecoder(target, draft, tok, 4).generate(ids, max_new_tokens=30, temperature=0)
    finally:
        hook.remove()
    assert fed[0] == len(ids) - 1  # prefill
    assert fed[1:] == [k + 1 for k in out.k_history]


def test_sampling_is_reproducible_with_seed(pair):
    target, draft, tok = pair
    decoder = SpeculativeDecoder(target, draft, tok, 3)
    ids = tok(PROMPTS[0]).input_ids
    a = decoder.generate(ids, max_new_tokens=20, temperature=0.8, top_p=0.95, seed=7)
    b = decoder.generate(ids, max_new_tokens=20, temperature=0.8, top_p=0.95, seed=7)
    assert a.new_tokens == b.new_tokens and len(a.new_tokens[0]) == 20


def test_eos_stops_a_row(pair, references):
    target, draft, tok = pair
    ids = tok(PROMPTS[0]).input_ids
    ref = references[PROMPTS[0]]
    stop = ref[5]
    out = SpeculativeDecoder(target, draft, tok, 4).generate(ids, max_new_tokens=40, temperature=0, eos_token_id=stop)
    assert out.new_tokens[0] == ref[: ref.index(stop) + 1]


# ------------------------------------------------------------------ bad input


def test_bad_k(pair):
    target, draft, tok = pair
    for k in (0, -1, 2.5):
        with pytest.raises(ValueError, match="k"):
            SpeculativeDecoder(target, draft, tok, num_speculative_tokens=k)


def test_bad_temperature(pair):
    target, draft, tok = pair
    with pytest.raises(ValueError, match="temperature"):
        SpeculativeDecoder(target, draft, tok).generate(tok("x").input_ids, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SpeculativeDecoder(target, draft, tok).generate(tok("x").input_ids, top_p=0)


def test_different_vocabularies(pair):
    from transformers import LlamaConfig, LlamaForCausalLM

    target, _, tok = pair
    other = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match="tokenizer"):
        SpeculativeDecoder(target, other, tok)


# ------------------------------------------------------------------ exercise checkers


def test_exercise_checkers_accept_right_and_reject_wrong():
    from inferlab.exercises.speculative import check_best_k, check_expected_tokens, check_residual

    assert check_residual(lambda p, q: (p - q).clamp_min(0) / (p - q).clamp_min(0).sum())
    assert not check_residual(lambda p, q: p)
    assert check_expected_tokens(lambda a, k: k + 1 if a == 1 else (1 - a ** (k + 1)) / (1 - a))
    assert not check_expected_tokens(lambda a, k: (1 - a ** (k + 1)) / (1 - a))
    assert check_best_k(optimal_k(0.8, 0.1), alpha=0.8, c=0.1)
    assert not check_best_k(1, alpha=0.8, c=0.1)


def test_padded_vocabularies_that_share_a_tokenizer_work(pair, references):
    """A draft whose embedding matrix is padded past the tokenizer (as in model families) is accepted."""
    import copy

    target, draft, tok = pair
    padded = copy.deepcopy(draft)
    padded.resize_token_embeddings(draft.config.vocab_size + 64)
    out = SpeculativeDecoder(target, padded, tok, 3).generate(tok(PROMPTS[0]).input_ids, max_new_tokens=40,
                                                               temperature=0)
    assert out.new_tokens[0] == references[PROMPTS[0]]
