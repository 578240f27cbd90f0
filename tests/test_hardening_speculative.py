"""SpeculativeDecoder.generate names every bad input (issue 13, point 8)."""

from __future__ import annotations

import math

import pytest
import torch

from inferlab.speculative import SpeculativeDecoder, plain_generate

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = [[5, 6, 7, 8]]


@pytest.fixture(scope="module")
def expected(pair):
    target, _, tok = pair
    return plain_generate(target, tok, PROMPT, max_new_tokens=5, temperature=0.0).new_tokens


@pytest.mark.parametrize("input_ids, error, match", [
    ([], ValueError, "input_ids"), ([[]], ValueError, "input_ids"), ([[5, 6, 7], []], ValueError, r"empty rows: \[1\]"),
    ([[99999]], ValueError, "input_ids"), ([[5, -3]], ValueError, "input_ids"), ([[1.7, 5.2]], TypeError, "input_ids"),
    ("def f", TypeError, "input_ids"), (torch.empty(1, 0, dtype=torch.long), ValueError, "input_ids"),
    (torch.tensor([[1.0, 2.0]]), TypeError, "input_ids"), (torch.zeros(1, 2, 2, dtype=torch.long), ValueError, "input_ids"),
])
def test_bad_prompts_are_named(decoder, expected, input_ids, error, match):
    with pytest.raises(error, match=match):
        decoder.generate(input_ids, max_new_tokens=3, temperature=0.0)
    assert decoder.generate(PROMPT, max_new_tokens=5, temperature=0.0).new_tokens == expected


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(temperature=math.nan), ValueError, "temperature"), (dict(temperature="1"), TypeError, "temperature"),
    (dict(top_p=math.nan), ValueError, "top_p"), (dict(max_new_tokens=2.5), TypeError, "max_new_tokens"),
    (dict(max_new_tokens=0), ValueError, "max_new_tokens"), (dict(seed=2**70), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"), (dict(eos_token_id="x"), TypeError, "eos_token_id"),
])
def test_bad_settings_are_named(decoder, expected, kwargs, error, match):
    with pytest.raises(error, match=match):
        decoder.generate(PROMPT, **{"max_new_tokens": 3, **kwargs})
    assert decoder.generate(PROMPT, max_new_tokens=5, temperature=0.0).new_tokens == expected


def test_tiny_temperature_is_greedy(decoder, expected):
    assert decoder.generate(PROMPT, max_new_tokens=5, temperature=1e-40).new_tokens == expected  # was NaN


def test_left_padding_values_never_reach_the_embedding(decoder, expected):
    ids = torch.tensor([[-7, 99999, 5, 6, 7, 8]])  # garbage under a zero mask
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    out = decoder.generate(ids, attention_mask=mask, max_new_tokens=5, temperature=0.0)
    assert out.new_tokens == expected and out.sequences == [PROMPT[0] + expected[0]]


@pytest.mark.parametrize("k", [math.nan, "4", 2.5, True, 0, None])
def test_bad_k_is_named_never_a_conversion_error(pair, k):
    target, draft, tok = pair
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        SpeculativeDecoder(target, draft, tok, num_speculative_tokens=k)
    with pytest.raises(ValueError, match="max_k"):
        SpeculativeDecoder(target, draft, tok, adaptive_k=True, max_k=math.nan)
