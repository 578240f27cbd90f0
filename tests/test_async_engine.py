"""The step loop that owns the engine: many threads and coroutines, one engine, shared steps."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from inferlab import LLM, SamplingParams
from inferlab.engine.async_engine import AsyncLLMEngine, EngineDeadError
from inferlab.engine.detokenizer import IncrementalDetokenizer
from inferlab.hub import load_tokenizer, resolve_model_path

GREEDY = SamplingParams(temperature=0.0, max_tokens=20)
PROMPTS = ["def parse(text):", "import os\n", "class Stack:", "for i in range(10):"]


@pytest.fixture(scope="module")
def llm():
    return LLM("tiny", device="cpu", dtype="float32", num_kv_blocks=300, block_size=8)


@pytest.fixture(scope="module")
def refs(llm):
    return [o.outputs[0].text for o in llm.generate(PROMPTS, GREEDY)]


def test_threads_share_steps_and_match_generate(llm, refs):
    engine = AsyncLLMEngine(llm.engine)
    texts = {}

    def run(i):
        texts[i] = "".join(d.text for out in engine.add_request(PROMPTS[i], GREEDY) for d in out.deltas)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.shutdown()
    assert [texts[i] for i in range(len(PROMPTS))] == refs
    assert engine.num_steps < len(PROMPTS) * GREEDY.max_tokens  # steps were shared, not taken in turn


def test_coroutines_stream_and_abort_frees_blocks(llm, refs):
    engine = AsyncLLMEngine(llm.engine)
    free = llm.engine.block_manager.num_free_blocks

    async def full(i):
        return "".join([d.text async for out in engine.generate(PROMPTS[i], GREEDY) for d in out.deltas])

    async def cut():
        params = SamplingParams(temperature=0.0, max_tokens=500, ignore_eos=True)
        stream = await engine.add_request_async("def long(x):", params)
        async for out in stream:
            if sum(len(d.token_ids) for d in out.deltas) and llm.engine.block_manager.num_free_blocks < free:
                break  # leaving the loop aborts the request
        return stream

    async def main():
        return await asyncio.gather(*(full(i) for i in range(len(PROMPTS))), cut())

    *texts, stream = asyncio.run(main())
    assert texts == refs
    engine.shutdown()
    assert stream.finished is False and llm.engine.block_manager.num_free_blocks == free
    assert not llm.engine.has_unfinished_requests() and not llm.engine.sequences


def test_bad_request_raises_in_the_caller_and_others_continue(llm, refs):
    engine = AsyncLLMEngine(llm.engine)
    good = engine.add_request(PROMPTS[0], GREEDY)
    with pytest.raises(ValueError, match="prompt"):
        engine.add_request("", GREEDY)
    with pytest.raises(ValueError, match="context"):
        engine.add_request(list(range(5, 2000)), GREEDY)
    assert "".join(d.text for out in good for d in out.deltas) == refs[0]
    engine.shutdown()
    with pytest.raises(EngineDeadError):
        engine.add_request(PROMPTS[0], GREEDY)


def test_shutdown_lets_running_requests_finish(llm, refs):
    engine = AsyncLLMEngine(llm.engine)
    stream = engine.add_request(PROMPTS[1], GREEDY)
    engine.shutdown(timeout=60)
    outs = list(stream)
    assert "".join(d.text for o in outs for d in o.deltas) == refs[1] and outs[-1].finished
    assert outs[-1].output.outputs[0].finish_reason == "length"


def test_llm_stream_runs_on_the_loop_and_generate_goes_through_it(llm, refs):
    assert "".join(llm.stream(PROMPTS[2], GREEDY)) == refs[2]
    assert llm.async_engine.is_running
    assert [o.outputs[0].text for o in llm.generate(PROMPTS, GREEDY)] == refs
    llm.shutdown()


# ---------------------------------------------------------------- incremental detokenization
@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(resolve_model_path("tiny"))


def test_incremental_text_equals_full_decode_on_random_tokens(tok):
    rng = random.Random(0)
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    for _ in range(20):
        prompt = [rng.randrange(4096) for _ in range(rng.randint(1, 8))]
        out = [rng.randrange(4096) for _ in range(rng.randint(1, 60))]
        detok = IncrementalDetokenizer(decode, prompt)
        streamed = ""
        for i in range(1, len(out) + 1):
            detok.update(out[:i])
            streamed += detok.delta()
        streamed += detok.finish(decode(out))
        assert streamed == decode(out)


def test_decoding_work_is_linear_in_the_output(tok):
    decoded = []
    detok = IncrementalDetokenizer(lambda ids: decoded.append(len(ids)) or tok.decode(ids), [1, 2, 3], stop=["zz"])
    ids = tok.encode("def f(x):\n    return x * 2\n" * 40)
    for i in range(1, len(ids) + 1):
        detok.update(ids[:i])
    assert max(decoded) <= 12  # a short window per token, never the whole output
    assert sum(decoded) <= 24 * len(ids)


def test_stop_string_split_over_tokens_is_found_and_held_back(tok):
    text = "value = compute(alpha, beta)\nprint(value)"
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok.decode, stop=["(alpha"])
    sent = ""
    for i in range(1, len(ids) + 1):
        detok.update(ids[:i])
        sent += detok.delta()
        assert "(al" not in sent  # the start of the stop string is never streamed
        if detok.stop_hit:
            break
    assert detok.stop_hit == "(alpha" and detok.text == "value = compute" and sent + detok.delta(True) == detok.text
