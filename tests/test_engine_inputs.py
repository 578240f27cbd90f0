"""Bad input fails early and clearly; a request too big for the pool is rejected alone."""

from __future__ import annotations

import pytest
import torch

from inferlab import LLM, SamplingParams
from inferlab.engine import ContinuousBatcher, RequestTooLarge, StaticBatcher
from inferlab.naive import TutorialBatcher


@pytest.fixture(scope="module")
def llm():
    torch.set_num_threads(1)
    return LLM("tiny", device="cpu", dtype="float32", block_size=16, num_kv_blocks=12)


@pytest.mark.parametrize(
    "kwargs,field",
    [({"max_tokens": 0}, "max_tokens"), ({"max_tokens": -3}, "max_tokens"), ({"temperature": -0.1}, "temperature"),
     ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": -2}, "top_k"), ({"logprobs": -1}, "logprobs")],
)
def test_bad_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_empty_prompt(llm):
    with pytest.raises(ValueError, match="prompt"):
        llm.generate("", SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="prompt"):
        llm.generate(["fine", ""], SamplingParams(max_tokens=4))
    assert not llm.engine.has_unfinished_requests(), "the valid request must not be left queued"


def test_prompt_longer_than_context(llm):
    too_long = list(range(2, 2 + llm.engine.max_model_len + 5))
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([too_long], SamplingParams(max_tokens=4))


def test_request_larger_than_pool_is_rejected_others_run(llm):
    capacity = llm.engine.block_manager.num_blocks * 16  # 192 tokens
    big = "x = 1\n" * 100  # ~ 300+ tokens: fits the context (1024), not the pool
    params = SamplingParams(temperature=0.0, max_tokens=8)
    with pytest.warns(UserWarning, match="rejected"):
        outs = llm.generate(["def f():", big, "import os"], params)
    assert len(llm.tokenizer.encode(big)) > capacity
    assert outs[1].outputs[0].finish_reason == "rejected" and "num_kv_blocks" in outs[1].error
    assert outs[0].outputs[0].token_ids and outs[2].outputs[0].token_ids
    with pytest.raises(RequestTooLarge):
        llm.engine.add_request(None, big, params)


def test_batchers_share_the_seed_interface_and_agree():
    prompts = {"a": "def f(x):", "b": "import os\nimport sys\n\nclass Config:\n    def __init__(self", "c": "x ="}
    results = {}
    for cls in (ContinuousBatcher, StaticBatcher):
        batcher = cls("tiny", max_batch_size=2, device="cpu", dtype="float32")
        for rid, p in prompts.items():
            batcher.add_request(rid, p, max_tokens=10)
        results[cls.__name__] = batcher.run()
    assert results["ContinuousBatcher"] == results["StaticBatcher"]
    assert set(results["ContinuousBatcher"]) == set(prompts)


def test_tutorial_batcher_reads_pad_logits():
    """With prompts of different lengths, the seed's recipe changes the short prompt's text."""
    import inferlab as il

    model, tok = il.load_model("tiny", device="cpu", dtype="float32")
    short, long = "def f(x):", "import os\nimport sys\n\nclass Config:\n    def __init__(self, path):\n        self.path"
    seed = TutorialBatcher(model, tok)
    right = ContinuousBatcher(model, tok)
    for b in (seed, right):
        b.add_request("short", short, 8)
        b.add_request("long", long, 8)
    wrong, good = seed.run(), right.run()
    assert wrong["long"] == good["long"]  # the longest row reads its own last position
    assert wrong["short"] != good["short"]  # the short row reads a pad position


def test_seed_vllm_inference_counterpart_works():
    from inferlab.engine import VLLMInference

    vi = VLLMInference("tiny", device="cpu", dtype="float32")
    assert vi.model_name == "tiny"  # the seed read this attribute without ever setting it
    out = vi.generate(["def f(x):"], max_tokens=6, temperature=0.0)
    assert out[0]["prompt"] == "def f(x):" and out[0]["tokens"] == 6
    assert "".join(vi.streaming_generate("def f(x):", max_tokens=6, temperature=0.0)) == out[0]["generated"]
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        VLLMInference("tiny", tensor_parallel_size=0)  # 2 works: tests/test_tp.py runs the engine over 2 processes
    with pytest.raises(ValueError, match="trust_remote_code"):
        LLM("tiny", trust_remote_code=True)


@pytest.mark.parametrize(
    "settings,name",
    [({"block_size": 0}, "block_size"), ({"block_size": 2.5}, "block_size"), ({"num_kv_blocks": -1}, "num_kv_blocks"),
     ({"max_num_seqs": 0}, "max_num_seqs"), ({"max_num_batched_tokens": True}, "max_num_batched_tokens"),
     ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"), ({"policy": "fifo"}, "policy"),
     ({"attention_backend": "nope"}, "attention_backend")],
)
def test_bad_engine_settings_name_the_argument_before_loading(settings, name):
    from inferlab.engine import EngineConfig

    with pytest.raises(ValueError, match=name):
        EngineConfig(**settings)
    with pytest.raises(ValueError, match=name):  # a model that does not exist: the check comes first
        LLM("no/such-model-anywhere", **settings)


def test_unknown_engine_setting_is_a_clear_error():
    from inferlab.engine import EngineConfig

    with pytest.raises(TypeError, match="max_num_seq"):
        EngineConfig.from_kwargs(max_num_seq=4)
