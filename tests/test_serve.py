"""The server, as clients see it: started as a subprocess on 127.0.0.1 and a free port, called
with the real ``openai`` client and the real ``huggingface_hub.InferenceClient``.

Greedy text must be the same streamed, not streamed, and from ``LLM.generate`` in-process.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra")
pytest.importorskip("uvicorn", reason="needs the serve extra")
openai = pytest.importorskip("openai", reason="needs the openai client (serve extra)")
httpx = pytest.importorskip("httpx", reason="needs httpx (serve extra)")

from huggingface_hub import InferenceClient  # noqa: E402

from inferlab import LLM, SamplingParams  # noqa: E402
from inferlab.serve.launch import ServerProcess, port_is_open  # noqa: E402

ENGINE_ARGS = ["--device", "cpu", "--dtype", "float32", "--num-kv-blocks", "600", "--max-num-seqs", "96"]
TUTORIAL_MODEL = "meta-llama/Llama-2-7b-chat-hf"  # the name the widely copied tutorial's client sends
PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def server():
    with ServerProcess("tiny", args=[*ENGINE_ARGS, "--served-model-name", "tiny", TUTORIAL_MODEL,
                                     "--default-max-tokens", "48"],
                       name="pytest-serve") as proc:
        yield proc


@pytest.fixture(autouse=True)
def hub_client_may_reach_localhost(monkeypatch):
    """HF_HUB_OFFLINE (set for the whole suite) blocks every huggingface_hub request, even to our local server."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def llm():
    return LLM("tiny", device="cpu", dtype="float32", num_kv_blocks=600)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def greedy(llm, prompt, max_tokens=24, **kw):
    return llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw))[0].outputs[0]


def metric(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(f"inferlab:{name} ")))


# ---------------------------------------------------------------- OpenAI
def test_completion_streamed_equals_plain_equals_generate(server, client, llm):
    plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    ref = greedy(llm, PROMPT)
    assert plain.choices[0].text == streamed == ref.text
    assert plain.choices[0].finish_reason == ref.finish_reason == "length"
    n_prompt = len(llm.tokenizer.encode(PROMPT))
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (n_prompt, 24)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_stream_ends_with_done_marker(server):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as r:
        events = [line for line in r.iter_lines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]" and all(json.loads(e[5:]) for e in events[:-1])


def test_chat_streamed_equals_plain_and_uses_the_template(server, client, llm):
    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Sort a list."}]
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=20, temperature=0, stream=True))
    prompt = llm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("# assistant:\n") and "# user: Sort a list." in prompt
    assert plain.choices[0].message.content == streamed == greedy(llm, prompt, 20).text
    assert plain.choices[0].message.role == "assistant"
    assert plain.usage.prompt_tokens == len(llm.tokenizer.encode(prompt))


def test_the_tutorials_openai_call_runs_unchanged_but_for_the_url(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="dummy")  # the tutorial: localhost:8000/v1
    response = client.chat.completions.create(model=TUTORIAL_MODEL, messages=[{"role": "user", "content": "Hello!"}])
    assert isinstance(response.choices[0].message.content, str) and response.choices[0].message.content
    assert response.choices[0].finish_reason in ("stop", "length") and response.usage.completion_tokens <= 48
    assert {m.id for m in client.models.list()} == {"tiny", TUTORIAL_MODEL}


def test_stop_strings_seed_and_logprobs(server, client, llm):
    full = greedy(llm, PROMPT, 30).text
    stop = full[12:15]
    cut = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[:full.find(stop)] and cut.choices[0].finish_reason == "stop"
    kw = dict(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0.9, top_p=0.9, seed=7)
    assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text
    lp = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3).choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert value <= 0 and top[token] == value and max(top.values()) == value  # greedy: the top token


def test_n_samples_share_the_prompt_and_match_single_seeded_requests(server, client):
    kw = dict(model="tiny", prompt=PROMPT, max_tokens=10, temperature=1.0, seed=11)
    many = client.completions.create(n=3, **kw)
    assert sorted(c.index for c in many.choices) == [0, 1, 2]
    assert many.usage.completion_tokens == sum(1 for _ in range(3)) * 10
    # sample i of a seeded n-request draws from seed + i: the same text as a single request with that seed
    for choice in many.choices:
        single = client.completions.create(**{**kw, "seed": 11 + choice.index}).choices[0].text
        assert choice.text == single
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                          max_tokens=8, n=2, temperature=1.0, seed=3, stream=True)
    texts = {0: "", 1: ""}
    for chunk in chat:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert all(texts.values())


# ---------------------------------------------------------------- TGI
class TutorialStyleTGIClient:
    """Does what the tutorial's TGI client does (our own code): InferenceClient on an endpoint URL."""

    def __init__(self, endpoint: str):
        self.client = InferenceClient(endpoint)

    def generate(self, prompt, max_new_tokens=256, temperature=0.7, stream=False):
        if stream:
            return self.client.text_generation(prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                                               stream=True)
        return self.client.text_generation(prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                                           details=True)


def test_tutorial_style_tgi_client(server):
    tgi = TutorialStyleTGIClient(server.url)
    response = tgi.generate("Write a short poem about AI:", max_new_tokens=30)
    assert response.details.generated_tokens == len(response.details.tokens) <= 30
    assert response.details.finish_reason in ("length", "eos_token")
    assert "".join(t.text for t in response.details.tokens) == response.generated_text
    pieces = list(tgi.generate("Once upon a time,", max_new_tokens=20, stream=True))
    assert pieces and all(isinstance(p, str) for p in pieces)
    info = httpx.get(f"{server.url}/info").json()  # TGI's GET /info (the hub client reads it only on its own endpoints)
    assert info["model_id"] == "tiny" and info["max_total_tokens"] == 1024


def test_tgi_greedy_streamed_equals_plain_equals_generate(server, llm):
    hub = InferenceClient(server.url)
    plain = hub.text_generation(PROMPT, max_new_tokens=20, details=True)
    events = list(hub.text_generation(PROMPT, max_new_tokens=20, details=True, stream=True))
    ref = greedy(llm, PROMPT, 20)
    assert plain.generated_text == "".join(e.token.text for e in events) == events[-1].generated_text == ref.text
    assert [t.id for t in plain.details.tokens] == [e.token.id for e in events] == ref.token_ids
    assert all(t.logprob <= 0 for t in plain.details.tokens)
    assert events[-1].details.finish_reason == "length" and events[-1].details.generated_tokens == 20
    direct = httpx.post(f"{server.url}/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 20}})
    assert direct.json()["generated_text"] == ref.text
    assert httpx.get(f"{server.url}/health").status_code == 200


# ---------------------------------------------------------------- operations
def test_metrics_count_requests_tokens_and_blocks(server, client):
    before = metric(server, "generation_tokens_total")
    client.completions.create(model="tiny", prompt=PROMPT, max_tokens=7, temperature=0)
    assert metric(server, "generation_tokens_total") == before + 7
    assert metric(server, "kv_blocks_total") == 600 and metric(server, "kv_blocks_used") == 0
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("num_requests_running", "num_requests_waiting", "time_to_first_token_seconds_bucket",
                 "time_per_output_token_seconds_bucket"):
        assert f"inferlab:{name}" in text


def test_client_disconnect_cancels_and_returns_blocks(server):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 900, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert metric(server, "kv_blocks_used") > 0
    assert any(line.startswith("data:") for line in got)
    assert _eventually(lambda: metric(server, "kv_blocks_used") == 0 and metric(server, "num_requests_running") == 0)


def _eventually(condition, tries: int = 200) -> bool:
    import time

    for _ in range(tries):
        if condition():
            return True
        time.sleep(0.05)
    return condition()


BAD_REQUESTS = [  # (path, raw body or JSON, expected status)
    ("/v1/completions", b"{not json", 400),
    ("/v1/completions", {"prompt": PROMPT}, 400),  # missing model
    ("/v1/completions", {"model": "tiny"}, 400),  # missing prompt
    ("/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": "ten"}, 400),
    ("/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 0}, 400),
    ("/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 5000}, 400),  # past the context
    ("/v1/completions", {"model": "gpt-9", "prompt": PROMPT}, 404),
    ("/v1/completions", {"model": "tiny", "prompt": "x = 1\n" * 2000, "max_tokens": 4}, 400),  # prompt too long
    ("/v1/completions", b'{"model": "tiny", "prompt": "\xff\xfe"}', 400),  # invalid UTF-8
    ("/v1/completions", {"model": "tiny", "prompt": "a" * (2 << 20)}, 413),  # oversized body
    ("/v1/completions", {"model": "tiny", "prompt": PROMPT, "temperature": -1}, 400),
    ("/v1/chat/completions", {"model": "tiny", "messages": []}, 400),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400),
    ("/v1/completions", {"model": "tiny", "prompt": [1, 2, 99999]}, 400),  # token id past the vocabulary
]


def test_bad_input_is_a_4xx_in_openais_shape_while_good_requests_stream(server, client, llm):
    results, good = {}, [f"def f{i}(x):" for i in range(4)]

    def stream(prompt):
        chunks = client.completions.create(model="tiny", prompt=prompt, max_tokens=30, temperature=0, stream=True)
        results[prompt] = "".join(c.choices[0].text for c in chunks if c.choices)

    threads = [threading.Thread(target=stream, args=(p,)) for p in good]
    for t in threads:
        t.start()
    for path, body, status in BAD_REQUESTS:
        kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
        r = httpx.post(f"{server.url}{path}", timeout=30, **kw)
        assert r.status_code == status, (body if isinstance(body, bytes) else str(body)[:80], r.text[:200])
        err = r.json()["error"]
        assert isinstance(err["message"], str) and err["message"] and err["type"]
    for t in threads:
        t.join()
    assert all(results[p] == greedy(llm, p, 30).text for p in good)
    chunked = httpx.post(f"{server.url}/v1/completions", headers={"content-type": "application/json"},
                         content=(b"x" * 65536 for _ in range(40)), timeout=30)  # no Content-Length: counted
    assert chunked.status_code == 413 and "limit" in chunked.json()["error"]["message"]
    bad_tgi = httpx.post(f"{server.url}/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 0}})
    assert bad_tgi.status_code == 400 and bad_tgi.json()["error_type"] == "validation"


def test_sixty_four_concurrent_streams_complete_with_no_block_leaked(server, llm):
    prompts = [f"def task_{i}(items):\n    " for i in range(72)]

    async def one(client, prompt):
        stream = await client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0,
                                                 stream=True)
        return "".join([c.choices[0].text async for c in stream if c.choices])

    async def main():
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=300) as c:
            return await asyncio.gather(*(one(c, p) for p in prompts))

    texts = asyncio.run(main())
    refs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=12))
    assert len(texts) == len(prompts)
    assert texts == [r.outputs[0].text for r in refs]
    assert metric(server, "kv_blocks_used") == 0 and metric(server, "num_requests_running") == 0


def test_api_key_and_graceful_shutdown():
    with ServerProcess("tiny", args=[*ENGINE_ARGS, "--api-key", "sesame"], name="pytest-serve-key") as proc:
        assert httpx.get(f"{proc.url}/v1/models").status_code == 401
        wrong = httpx.get(f"{proc.url}/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        ok = openai.OpenAI(base_url=proc.base_url, api_key="sesame")
        assert ok.completions.create(model="tiny", prompt=PROMPT, max_tokens=3).choices[0].text is not None
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 40, "stream": True, "temperature": 0}
        with httpx.stream("POST", f"{proc.url}/v1/completions", json=body,
                          headers={"Authorization": "Bearer sesame"}, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)
            stopper = threading.Thread(target=proc.stop)
            stopper.start()  # SIGTERM while this stream is open: it still finishes
            rest = [line for line in lines if line.startswith("data:")]
            stopper.join()
        assert rest[-1] == "data: [DONE]"
        assert proc.proc.returncode == 0 and not port_is_open(proc.port)


def test_bench_serve_counts_every_token_of_every_request(server):
    from inferlab.bench.serve import benchmark, summarize
    from inferlab.bench.workloads import synthetic_requests

    requests = synthetic_requests(10, (8, 24), (4, 9), 4096, seed=1)
    (run,) = benchmark(server.url, "tiny", requests, [4])
    assert run["completed"] == 10 and run["failed"] == 0
    assert run["output_tokens"] == sum(r.max_tokens for r in requests)
    assert 0 < run["ttft_p50_ms"] <= run["ttft_p99_ms"] and run["itl_p50_ms"] <= run["itl_p99_ms"]
    assert summarize([], 1.0, 1)["completed"] == 0
