"""Property-based (hypothesis) checks of issue 13: every input to ``LLM.generate`` and
``SpeculativeDecoder.generate`` either raises a TypeError/ValueError naming the argument or
returns a valid result, and the same object then still serves a good request exactly, with
no KV block leaked. Examples are few and derandomized, so CI stays fast and reproducible."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferlab import LLM, SamplingParams
from inferlab.sampling import apply_top_k_top_p
from inferlab.speculative import plain_generate

pytestmark = pytest.mark.usefixtures("one_thread")

FEW = settings(max_examples=30, deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
GOOD, GOOD_IDS = "def add(a, b):", [[5, 6, 7, 8]]
ODD = st.sampled_from([None, "1", b"x", [], 1.5, True, math.nan, -math.inf])

SAMPLING = st.fixed_dictionaries({}, optional={
    "temperature": st.one_of(st.floats(-1, 3), st.sampled_from([0.0, 1e-40, 1e-6, 0.7]), ODD),
    "top_p": st.one_of(st.floats(-0.5, 1.5), st.just(1.0), ODD),
    "top_k": st.one_of(st.integers(-3, 5000), st.sampled_from([2**40, 2**70]), ODD),
    "max_tokens": st.one_of(st.integers(-1, 5), st.just(10**6), ODD),
    "seed": st.one_of(st.none(), st.integers(-3, 2**70), ODD),
    "logprobs": st.one_of(st.none(), st.integers(-1, 25), st.just(5000), ODD),
    "stop": st.one_of(st.none(), st.text(max_size=2), st.lists(st.text(max_size=2), max_size=2), ODD),
    "stop_token_ids": st.one_of(st.none(), st.lists(st.integers(-2, 4100), max_size=2), ODD),
    "ignore_eos": st.one_of(st.booleans(), ODD),
})
PROMPT = st.one_of(
    st.text(max_size=10),
    st.lists(st.integers(-2, 4100), max_size=6),
    st.lists(st.one_of(st.integers(0, 50), st.floats(0, 50), st.none()), min_size=1, max_size=3),
    ODD,
)


def _named(err: Exception, names) -> bool:
    return any(name in str(err) for name in names)


# --- LLM.generate ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm():
    return LLM("tiny", device="cpu", dtype="float32", block_size=16, num_kv_blocks=16)


@pytest.fixture(scope="module")
def expected(llm):
    return llm.generate([GOOD], SamplingParams(temperature=0.0, max_tokens=6))[0].outputs[0].token_ids


def _check_outputs(llm, prompts, params, outs) -> None:
    assert len(outs) == len(prompts)
    for out in outs:
        assert out.finished
        for c in out.outputs:
            assert c.finish_reason in ("stop", "length", "rejected"), out.error
            if c.finish_reason != "rejected":
                assert 1 <= len(c.token_ids) <= params.max_tokens and out.error is None
                assert all(0 <= t < llm.engine.config.vocab_size for t in c.token_ids)


@FEW
@given(kwargs=SAMPLING, prompts=st.lists(PROMPT, min_size=1, max_size=2))
def test_llm_generate_names_the_argument_or_returns_valid_outputs(llm, expected, kwargs, prompts):
    try:
        params = SamplingParams(**kwargs)
    except (TypeError, ValueError) as err:
        assert _named(err, kwargs), err
        params = None
    if params is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # rejected requests warn
                outs = llm.generate(prompts, params)
            _check_outputs(llm, prompts, params, outs)
        except (TypeError, ValueError) as err:
            assert _named(err, ["prompt", *kwargs]), err
    engine = llm.engine
    assert not engine.has_unfinished_requests() and not engine.sequences
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert llm.generate([GOOD], SamplingParams(temperature=0.0, max_tokens=6))[0].outputs[0].token_ids == expected
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


# --- SpeculativeDecoder.generate ---------------------------------------------------------------------

IDS = st.one_of(
    st.lists(st.lists(st.integers(-3, 4100), max_size=5), max_size=3),
    st.lists(st.integers(0, 4095), max_size=5),
    st.lists(st.lists(st.one_of(st.integers(0, 50), st.floats(0, 50)), min_size=1, max_size=3), min_size=1, max_size=2),
    st.lists(st.integers(0, 4095), min_size=1, max_size=5).map(lambda r: torch.tensor([r])),
    st.sampled_from([torch.tensor([[1.0, 2.0]]), torch.empty(0, dtype=torch.long), "def f", None, 3]),
)
SPECULATIVE = st.fixed_dictionaries({}, optional={
    "max_new_tokens": st.one_of(st.integers(-1, 4), ODD),
    "temperature": st.one_of(st.floats(-1, 3), st.sampled_from([0.0, 1e-40]), ODD),
    "top_p": st.one_of(st.floats(-0.5, 1.5), st.just(1.0), ODD),
    "seed": st.one_of(st.none(), st.integers(-3, 2**70), ODD),
})


@pytest.fixture(scope="module")
def spec_expected(pair):
    target, _, tok = pair
    return plain_generate(target, tok, GOOD_IDS, max_new_tokens=4, temperature=0.0).new_tokens


@FEW
@given(input_ids=IDS, kwargs=SPECULATIVE)
def test_speculative_generate_names_the_argument_or_returns_valid_tokens(decoder, spec_expected, input_ids, kwargs):
    kwargs = {"max_new_tokens": 3, **kwargs}
    try:
        out = decoder.generate(input_ids, **kwargs)
    except (TypeError, ValueError) as err:
        assert _named(err, ["input_ids", *kwargs]), err
    else:
        vocab = decoder.target.get_input_embeddings().num_embeddings
        assert len(out.new_tokens) == len(out.sequences) >= 1
        for row in out.new_tokens:
            assert len(row) == kwargs["max_new_tokens"] and all(0 <= t < vocab for t in row)
    assert decoder.generate(GOOD_IDS, max_new_tokens=4, temperature=0.0).new_tokens == spec_expected


# --- point 2 (fixed in inferlab.sampling): top_p = 1.0 filters nothing ---------------------------------


@settings(max_examples=20, deadline=None, derandomize=True, database=None)
@given(vocab=st.sampled_from([2, 4096, 32000, 151936]), scale=st.floats(0.1, 10.0), seed=st.integers(0, 2**16))
def test_top_p_one_keeps_every_token(vocab, scale, seed):
    logits = scale * torch.randn(2, vocab, generator=torch.Generator().manual_seed(seed))
    kept = apply_top_k_top_p(logits, torch.tensor([vocab, vocab]), torch.tensor([1.0, 1.0]))
    assert torch.equal(kept, logits)
