"""The shared basics: statistics, sampling shared by the engine and speculative decoding, cache shims."""

from __future__ import annotations

import pytest
import torch

from inferlab import hf_compat
from inferlab.sampling import apply_top_k_top_p, sample_token, warp_probabilities
from inferlab.stats import chi_square_pvalue, percentile, spread


def test_percentile_interpolates_and_spread_is_relative_to_the_median():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(101)), 99) == 99
    s = spread([1.0, 1.2, 0.9])
    assert s == {"median": 1.0, "min": 0.9, "max": 1.2, "relative_spread": pytest.approx(0.3)}


def test_chi_square_tells_a_matching_sample_from_a_biased_one():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    fair = torch.bincount(torch.multinomial(p, 20000, replacement=True, generator=g), minlength=3)
    biased = torch.bincount(torch.multinomial(torch.tensor([0.4, 0.4, 0.2]), 20000, replacement=True, generator=g),
                            minlength=3)
    assert chi_square_pvalue(fair, p) > 1e-4
    assert chi_square_pvalue(biased, p) < 1e-12


def test_the_engine_filter_and_the_speculative_warp_keep_the_same_nucleus():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g)
    for top_p in (0.3, 0.75, 1.0):
        filtered = apply_top_k_top_p(logits, torch.full((3,), 50), torch.full((3,), top_p))
        engine = filtered.softmax(-1)
        torch.testing.assert_close(engine, warp_probabilities(logits, 1.0, top_p))


def test_sample_token_is_argmax_at_zero_temperature_and_draws_from_the_warp_otherwise():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    token, probs = sample_token(logits, 0.0)
    assert token.tolist() == [1, 0] and probs is None
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_token(logits, 1.0, generator=g)[0] for _ in range(4000)])
    frac = (draws[:, 0] == 1).float().mean().item()
    assert frac == pytest.approx(warp_probabilities(logits, 1.0)[0, 1].item(), abs=0.03)


def test_cache_shims_build_crop_and_pass_a_dynamic_cache():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    cache = hf_compat.new_dynamic_cache(model)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        out = model(ids, use_cache=True, **hf_compat.cache_kwargs(model, cache))
    assert hf_compat.cache_of(out).get_seq_length() == 5
    hf_compat.crop_cache(cache, 3)
    assert cache.get_seq_length() == 3
    assert hf_compat.cache_keyword(model) in {"cache", "past_key_values"}
