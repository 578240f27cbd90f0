"""One bad request must not break the engine; every bad argument is named (issue 13, points 1, 5, 7, 9)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from inferlab import LLM, SamplingParams
from inferlab.engine import EngineConfig, LLMEngine
from inferlab.engine import llm_engine as engine_module
from inferlab.hub import ModelNotFound

pytestmark = pytest.mark.usefixtures("one_thread")

GOOD = "def add(a, b):"
GREEDY = dict(temperature=0.0, max_tokens=8)


@pytest.fixture(scope="module")
def llm():
    # 16 blocks of 16 tokens: a request needing more than 256 tokens of KV is rejected, not run
    return LLM("tiny", device="cpu", dtype="float32", block_size=16, num_kv_blocks=16)


@pytest.fixture(scope="module")
def expected(llm):
    out = llm.generate([GOOD], SamplingParams(**GREEDY))[0].outputs[0]
    assert out.finish_reason in ("stop", "length") and out.token_ids
    return out.token_ids


def assert_healthy(llm, expected) -> None:
    """Nothing queued or held; a good request still gives the expected tokens and gives its blocks back."""
    e = llm.engine
    assert not e.has_unfinished_requests() and not e.sequences
    assert e.block_manager.num_free_blocks == e.block_manager.num_blocks
    assert llm.generate([]) == []
    assert llm.generate([GOOD], SamplingParams(**GREEDY))[0].outputs[0].token_ids == expected
    assert e.block_manager.num_free_blocks == e.block_manager.num_blocks and not e.sequences


# --- point 1: the audit's reproductions -----------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("temperature", math.nan), ("temperature", math.inf), ("temperature", -1.0), ("temperature", "1"),
    ("top_p", math.nan), ("top_p", 0.0), ("top_k", -2), ("top_k", 2.5), ("max_tokens", 0), ("max_tokens", True),
    ("logprobs", 5000), ("logprobs", -1), ("seed", 2**70), ("seed", -1), ("seed", 1.5), ("stop", [1]),
    ("stop", 5), ("stop_token_ids", [1.5]), ("stop_token_ids", "x"), ("ignore_eos", "no"),
])
def test_bad_sampling_params_are_named_and_leave_the_llm_healthy(llm, expected, field, value):
    with pytest.raises((ValueError, TypeError), match=field):
        llm.generate([GOOD, "import os"], SamplingParams(**{field: value}))
    assert_healthy(llm, expected)


def test_tiny_temperature_is_greedy_and_stop_token_ids_none_is_none(llm, expected):
    for params in (SamplingParams(temperature=1e-40, max_tokens=8), SamplingParams(**GREEDY, stop_token_ids=None)):
        assert llm.generate([GOOD], params)[0].outputs[0].token_ids == expected
    assert_healthy(llm, expected)


def test_logprobs_up_to_the_cap_work(llm, expected):
    out = llm.generate([GOOD], SamplingParams(**GREEDY, logprobs=20))[0].outputs[0]
    assert out.token_ids == expected and all(len(step) >= 20 for step in out.logprobs)


def test_params_changed_after_construction_are_checked_when_added(llm, expected):
    params = SamplingParams()
    params.temperature = math.nan
    with pytest.raises(ValueError, match="temperature"):
        llm.generate([GOOD], params)
    assert_healthy(llm, expected)


def test_a_row_that_breaks_sampling_fails_alone(llm, expected, monkeypatch):
    bad = SamplingParams(**GREEDY)
    real = engine_module.sample

    def sample(logits, seqs):
        if any(s.params is bad for s in seqs):
            raise RuntimeError("probability tensor contains nan")
        return real(logits, seqs)

    monkeypatch.setattr(engine_module, "sample", sample)
    outs = llm.generate([GOOD, "import os", GOOD], [SamplingParams(**GREEDY), bad, SamplingParams(**GREEDY)])
    assert [o.outputs[0].finish_reason for o in outs][1] == "error"
    assert "probability tensor contains nan" in outs[1].error and outs[1].outputs[0].token_ids == []
    assert outs[0].outputs[0].token_ids == outs[2].outputs[0].token_ids == expected
    assert outs[0].error is None
    assert_healthy(llm, expected)


def test_a_request_that_breaks_the_forward_fails_alone(llm, expected, monkeypatch):
    poison = 4000
    runner = llm.engine.runner
    real = runner.execute

    def execute(chunks):
        if any(poison in c.token_ids for c in chunks):
            raise RuntimeError("kernel fault")
        return real(chunks)

    monkeypatch.setattr(runner, "execute", execute)
    outs = llm.generate([GOOD, [5, 6, poison, 7], GOOD], SamplingParams(**GREEDY))
    assert outs[1].outputs[0].finish_reason == "error" and "kernel fault" in outs[1].error
    assert outs[1].prompt_token_ids == [5, 6, poison, 7]
    assert outs[0].outputs[0].token_ids == outs[2].outputs[0].token_ids == expected
    assert_healthy(llm, expected)


def test_an_interrupted_generate_leaves_nothing_queued(llm, expected, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(llm.engine, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        llm.generate([GOOD, "import os"], SamplingParams(**GREEDY))
    monkeypatch.undo()
    assert_healthy(llm, expected)


# --- point 9 --------------------------------------------------------------------------------------


def test_float_token_ids_are_refused_not_truncated(llm, expected):
    for prompt in ([[1.7, 5.2]], [[True, 5]], [["a"]], [None], [b"ab"]):
        with pytest.raises(TypeError, match="prompt"):
            llm.generate(prompt, SamplingParams(**GREEDY))
    ids = llm.tokenizer.encode(GOOD)
    as_numpy = llm.generate([list(np.array(ids))], SamplingParams(**GREEDY))[0]
    assert as_numpy.prompt_token_ids == ids and as_numpy.outputs[0].token_ids == expected
    assert_healthy(llm, expected)


def test_abort_frees_the_request_id(llm, expected):
    engine = llm.engine
    engine.add_request("job", [5, 6, 7], SamplingParams(**GREEDY))
    engine.step()
    engine.abort_request("job")
    engine.add_request("job", llm.tokenizer.encode(GOOD), SamplingParams(**GREEDY))  # was: "already in use"
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    assert [o.request_id for o in outs] == ["job"] and outs[0].outputs[0].token_ids == expected
    assert_healthy(llm, expected)


def test_rejected_text_prompt_keeps_its_token_ids(llm, expected):
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        outs = llm.generate([GOOD, "import os"], [SamplingParams(max_tokens=10**6), SamplingParams(**GREEDY)])
    assert outs[0].outputs[0].finish_reason == "rejected" and "num_kv_blocks" in outs[0].error
    assert outs[0].prompt_token_ids == llm.tokenizer.encode(GOOD)  # was []
    assert outs[1].outputs[0].finish_reason in ("stop", "length")
    assert_healthy(llm, expected)


# --- point 7: engine settings, point 5: the model's name ---------------------------------------------


@pytest.mark.parametrize("setting, value", [
    ("block_size", 2.5), ("num_kv_blocks", 1.5), ("max_num_seqs", True), ("max_logprobs", 0),
    ("enable_prefix_caching", "yes"), ("record_trace", None), ("seed", 2**70), ("gpu_memory_utilization", math.nan),
])
def test_engine_settings_are_named_before_anything_loads(setting, value):
    with pytest.raises((ValueError, TypeError), match=setting):
        EngineConfig(**{setting: value})
    with pytest.raises((ValueError, TypeError), match=setting):
        LLM("no-such-model-xyz", **{setting: value})  # checked first: the missing model is never looked up


def test_engine_num_blocks_must_be_an_int(llm):
    with pytest.raises(ValueError, match="num_blocks"):
        LLMEngine(llm.engine.runner, llm.tokenizer, num_blocks=2.5)


@pytest.mark.parametrize("name", ["no-such-model-xyz", "no/such model"])
def test_unknown_model_is_model_not_found_naming_it(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match=name):
        LLM(name)


def test_folder_without_config_is_named(tmp_path):
    with pytest.raises(ModelNotFound, match="config.json"):
        LLM(str(tmp_path))
