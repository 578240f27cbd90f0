# %% [markdown]
# # 04 · Serving: one engine, many clients, two APIs
#
# **What you will do here**
#
# - see why a server needs *one* step loop that owns the engine, and how requests from many
#   HTTP clients then share every forward pass (continuous batching across clients);
# - start inferlab's server in the background and call it with the real `openai` client and the
#   real `huggingface_hub.InferenceClient`, the code a widely copied tutorial points at vLLM and
#   TGI, changing only the URL;
# - stream tokens into this notebook as they are sampled;
# - load-test the server live and draw time to first token, inter-token latency and end-to-end
#   latency against the number of concurrent clients, beside a run recorded on an H200;
# - send it bad requests and watch it answer 4xx while it keeps serving everyone else;
# - get the exact commands that serve a real model with vLLM and with TGI for the same client code.

# %% tags=["parameters"]
import os

MODEL = os.environ.get("INFERLAB_MODEL", "tiny")  # or a local folder / hub id of a Llama, Mistral or Qwen2 model
DEVICE = os.environ.get("INFERLAB_DEVICE") or None  # None: cuda, then mps, then cpu
LOAD_REQUESTS = 32  # requests per concurrency level in the live load test
CONCURRENCY = [1, 4, 16, 32]  # concurrent clients in the live load test
PROMPT_LEN, OUTPUT_LEN = (16, 64), (8, 32)  # token ranges of the synthetic requests

import torch

if torch.cuda.is_available():  # scale up where there is a GPU
    LOAD_REQUESTS, CONCURRENCY, PROMPT_LEN, OUTPUT_LEN = 128, [1, 16, 64, 128], (64, 512), (32, 128)

# %% [markdown]
# ## 1. Intuition: one loop owns the engine
#
# Notebook 03's engine does one thing per `step()`: schedule, run one forward pass for every
# running request, sample, finish. `LLM.generate` calls `step()` until its own prompts are
# done. A server cannot work that way: its requests arrive one by one, over HTTP, from
# clients that each wait for *their* tokens. If every client drove `step()` itself, two clients
# would run two interleaved loops over one engine, or take turns, and the batching of
# notebook 03 would be lost.
#
# So, as vLLM's `AsyncLLMEngine` does, one background thread owns the engine. A client only
# *posts* "add this request" or "abort that one" to a queue, and reads its request's tokens
# from a queue of its own. Between two steps the loop applies what was posted, runs one step
# for everyone, and hands each request what that step produced. Continuous batching then
# happens across HTTP clients, and a client that hangs up is aborted before the next step,
# its KV blocks back in the pool.
#
# What a user feels, for a request sent at $t_0$ whose tokens arrive at $t_1 < t_2 < \dots < t_n$:
#
# - **TTFT**, time to first token: $t_1 - t_0$ (queueing + prefill);
# - **ITL**, inter-token latency: the gaps $t_{i+1} - t_i$ (one decode step each, shared with the batch);
# - **TPOT**, time per output token: $(t_n - t_1)/(n - 1)$, the mean ITL of one request;
# - **end-to-end latency**: $t_n - t_0$.
#
# A server is judged by their p50 *and* p99 at a given load, and by its throughput. Little's law
# links them: with $L$ requests in flight, each taking $W$ seconds, it completes $\lambda = L/W$
# requests per second.

# %% [markdown]
# ## 2. Start the server in the background
#
# `python -m inferlab.serve --model tiny` is the whole server: FastAPI routes for OpenAI's and
# TGI's APIs over one `AsyncLLMEngine`. `ServerProcess` runs it as a subprocess on 127.0.0.1 and
# a free port, waits until `/health` answers and remembers its process id, so re-running this
# notebook first stops the server an earlier run left behind. We also let it answer to the model
# name the tutorial's client sends (`--served-model-name`, as vLLM's flag of the same name does).

# %%
import time

from inferlab.serve.launch import ServerProcess, port_is_open

TUTORIAL_MODEL = "meta-llama/Llama-2-7b-chat-hf"  # what the tutorial's client code asks for
server_args = ["--served-model-name", MODEL, TUTORIAL_MODEL, "--default-max-tokens", "64",
               "--max-num-seqs", "128"]
if DEVICE:
    server_args += ["--device", DEVICE]
started = time.perf_counter()
server = ServerProcess(MODEL, args=server_args, name="notebook-04").start()
print(f"server up in {time.perf_counter() - started:.1f} s (pid {server.proc.pid}); it printed:\n")
print(server.log())

# %% [markdown]
# ## 3. The tutorial's OpenAI client, unchanged but for the URL
#
# The tutorial points the `openai` client at a vLLM server on `localhost:8000/v1` with a dummy
# key and asks for a chat completion of "Hello!" from a Llama-2 chat model. Here is that call,
# with our server's URL. The tiny model was trained on Python source, not on conversations: it
# answers in something like Python, but the request, the response object and every field the
# client reads are the real thing. The chat template that turns `messages` into a prompt is
# stored in the tiny model's tokenizer config, as real chat models store theirs.

# %%
import openai

client = openai.OpenAI(base_url=server.base_url, api_key="dummy")
response = client.chat.completions.create(model=TUTORIAL_MODEL, messages=[{"role": "user", "content": "Hello!"}])
print(repr(response.choices[0].message.content))
print("finish_reason:", response.choices[0].finish_reason, "| usage:", response.usage.model_dump(exclude_none=True))
print("models served:", [m.id for m in client.models.list()])

# %% [markdown]
# The template, and the prompt it made of that one message:

# %%
# NBVAL_CHECK_OUTPUT
from inferlab.hub import load_tokenizer, resolve_model_path

tokenizer = load_tokenizer(resolve_model_path(MODEL))
print(repr(tokenizer.apply_chat_template([{"role": "user", "content": "Hello!"}], tokenize=False,
                                         add_generation_prompt=True)))

# %% [markdown]
# Plain completions take a prompt, and `n`, `stop`, `seed`, `logprobs`, `temperature` and
# `top_p` work as in vLLM. With `n=3` the engine prefills the prompt once and *forks* three
# samples from it: they share the prompt's KV blocks, and a sample that writes into a shared
# block gets its own copy first (copy-on-write, notebook 02).

# %%
code = "def fibonacci(n):"
greedy = client.completions.create(model=MODEL, prompt=code, max_tokens=40, temperature=0)
print(greedy.choices[0].text)
three = client.completions.create(model=MODEL, prompt=code, max_tokens=20, temperature=0.8, n=3, seed=0,
                                  stop=["\n\n"])
for choice in three.choices:
    print(f"--- sample {choice.index} ({choice.finish_reason}):\n{choice.text}")

# %% [markdown]
# ## 4. Streaming, live
#
# With `stream=True` the server sends server-sent events, one per engine step that produced
# text, and ends with `data: [DONE]`. Tokens appear below as they are sampled. A byte-level
# token can end in the middle of a UTF-8 character, and a stop string can arrive split across
# tokens, so the server holds back such a tail until it is sure; the text is decoded
# incrementally, a few tokens per step, never the whole output again.

# %%
stream = client.completions.create(model=MODEL, prompt="class LinkedList:\n", max_tokens=60, temperature=0,
                                   stream=True, stream_options={"include_usage": True})
arrivals, sent_at, streamed = [], time.perf_counter(), ""
for chunk in stream:
    if chunk.choices and chunk.choices[0].text:
        arrivals.append(time.perf_counter())
        streamed += chunk.choices[0].text
        print(chunk.choices[0].text, end="", flush=True)
    elif chunk.usage:
        usage = chunk.usage
print(f"\n\n{usage.completion_tokens} tokens; first after {1000 * (arrivals[0] - sent_at):.0f} ms, "
      f"then one every {1000 * (arrivals[-1] - arrivals[0]) / max(len(arrivals) - 1, 1):.1f} ms on average")
plain = client.completions.create(model=MODEL, prompt="class LinkedList:\n", max_tokens=60, temperature=0)
print("streamed text == plain text:", streamed == plain.choices[0].text)

# %% [markdown]
# ## 5. The tutorial's TGI client
#
# The tutorial wraps `huggingface_hub.InferenceClient` around a TGI endpoint: `text_generation`
# with `details=True` for the finish reason and each token's log-probability, or `stream=True`
# for tokens one by one. Our server speaks TGI's routes (`/`, `/generate`, `/generate_stream`,
# `/info`, `/health`) on the same port. One environment detail: this series sets
# `HF_HUB_OFFLINE=1` so that nothing downloads, and `huggingface_hub` then refuses *every*
# request, even one to our own local server, so we lift it for the client.

# %%
import huggingface_hub.constants
from huggingface_hub import InferenceClient

huggingface_hub.constants.HF_HUB_OFFLINE = False  # our server is local; nothing is downloaded
tgi = InferenceClient(server.url)
answer = tgi.text_generation("def is_prime(n):", max_new_tokens=30, temperature=0.7, seed=1, details=True)
print(answer.generated_text)
print("finish:", answer.details.finish_reason, "| tokens:", answer.details.generated_tokens)
print("first tokens:", [(t.text, round(t.logprob, 2)) for t in answer.details.tokens[:5]])
print("streamed:", end=" ")
for piece in tgi.text_generation("import os\n", max_new_tokens=30, stream=True):
    print(piece, end="", flush=True)

# %% [markdown]
# **Myth vs measured: `get_model_info`.** The tutorial's TGI wrapper also calls
# `InferenceClient.get_model_info()`. No release of `huggingface_hub` has that method; the
# endpoint's description is `GET /info`, which the hub client reads only for its own hosted
# endpoints. Ask the route directly:

# %%
import httpx

print("InferenceClient has get_model_info:", hasattr(InferenceClient, "get_model_info"))
info = httpx.get(f"{server.url}/info").json()
print({k: info[k] for k in ("model_id", "max_input_tokens", "max_total_tokens", "max_batch_size")})

# %% [markdown]
# ## 6. Many clients, one batch
#
# Eight clients stream at the same time from eight threads. If each had its own loop, or the
# requests ran one after the other, eight requests would take about eight times as long as one.
# With one step loop they share every step.

# %%
from concurrent.futures import ThreadPoolExecutor


def one_stream(i: int) -> str:
    chunks = client.completions.create(model=MODEL, prompt=f"def task_{i}(items):\n", max_tokens=48, temperature=0,
                                       stream=True)
    return "".join(c.choices[0].text for c in chunks if c.choices)


t0 = time.perf_counter()
one_stream(0)
alone = time.perf_counter() - t0
t0 = time.perf_counter()
with ThreadPoolExecutor(8) as pool:
    texts = list(pool.map(one_stream, range(8)))
together = time.perf_counter() - t0
print(f"one stream alone: {alone:.2f} s; eight at once: {together:.2f} s "
      f"({together / alone:.1f}x one, not 8x: they shared the steps)")

# %% [markdown]
# ## 7. A live load test
#
# `python -m inferlab.bench serve --concurrency N --requests M` keeps `N` streaming requests in
# flight until `M` are done and reports TTFT, ITL and end-to-end latency at p50 and p99, as
# vLLM's `benchmark_serving` does. Here it runs against the server we started, on synthetic
# prompts (token ids, lengths uniform in the ranges of the parameters cell, seed 0).

# %%
from inferlab.bench.serve import benchmark, format_runs
from inferlab.bench.workloads import synthetic_requests

vocab = tokenizer.vocab_size
load = synthetic_requests(LOAD_REQUESTS, PROMPT_LEN, OUTPUT_LEN, vocab, seed=0)
live_runs = benchmark(server.url, MODEL, load, CONCURRENCY)
print(format_runs(live_runs))
lost = sum(r["failed"] for r in live_runs)
print(f"\nrequests lost: {lost} of {sum(r['requests'] for r in live_runs)}")

# %% [markdown]
# Live timings on a shared machine move from run to run by tens of percent; read the shape, not
# the third digit. The H200 run, if recorded, used a Llama-3.2-1B-shaped model with random bf16
# weights and 256 requests (`scripts/gpu/serve.sh`).

# %%
from inferlab.bench import load_result
from inferlab.viz import setup_plotly
from inferlab.viz.serving import latency_vs_concurrency, throughput_vs_concurrency

setup_plotly()
series = {f"live ({MODEL}, {'cuda' if torch.cuda.is_available() else 'cpu'})": live_runs}
recorded = load_result("serve", "h200")
if recorded is not None:
    series["H200 (1B-shaped, random bf16)"] = recorded["runs"]
    print(format_runs(recorded["runs"]))
else:
    print("no H200 run recorded yet (data/results/serve-h200.json)")
latency_vs_concurrency(series, "p50 (solid) and p99 (dashed) latency vs concurrent clients").show()
throughput_vs_concurrency(series, "output tokens per second").show()

# %% [markdown]
# As concurrency grows, throughput rises while each step carries more requests, and TTFT
# grows fastest: a new request waits for a free slot and for its prefill to share a step with
# everyone's decodes. ITL grows slowly until the batch stops being memory-bound. The numbers
# for the two ends of the live sweep:

# %%
lo, hi = live_runs[0], live_runs[-1]
print(f"concurrency {lo['concurrency']}: {lo['output_throughput_tok_s']:.0f} tok/s, TTFT p50 {lo['ttft_p50_ms']:.0f} ms, "
      f"ITL p50 {lo['itl_p50_ms']:.1f} ms")
print(f"concurrency {hi['concurrency']}: {hi['output_throughput_tok_s']:.0f} tok/s, TTFT p50 {hi['ttft_p50_ms']:.0f} ms, "
      f"ITL p50 {hi['itl_p50_ms']:.1f} ms")
print(f"throughput x{hi['output_throughput_tok_s'] / lo['output_throughput_tok_s']:.1f} "
      f"for {hi['concurrency'] // lo['concurrency']}x the clients")

# %% [markdown]
# **Myth vs measured: the tutorial's benchmark.** The tutorial's `benchmark_inference` sends its
# prompts one after another and divides the tokens by the sum of the latencies. That is the
# concurrency-1 row above, the slowest way to use a server, and its "p99" of ten samples is
# just the largest one. Serving throughput is measured with requests in flight together.

# %% [markdown]
# ## 8. Bad input gets a 4xx, everyone else keeps going
#
# A malformed body, a missing or mistyped field, `max_tokens` of 0 or past the context, an
# unknown model, a prompt longer than the context, invalid UTF-8 or an oversized body each get
# a 4xx answer with a JSON error in OpenAI's shape, checked before the request reaches the
# engine, while other clients' requests keep running (the tests send both at once).

# %%
import json

for body in ({"model": MODEL, "prompt": "x", "max_tokens": 5000}, {"model": "gpt-9", "prompt": "x"},
             {"model": MODEL, "prompt": "x", "max_tokens": "ten"}):
    r = httpx.post(f"{server.url}/v1/completions", json=body)
    print(r.status_code, json.dumps(r.json())[:150])
metrics = httpx.get(f"{server.url}/metrics").text
print("\n".join(line for line in metrics.splitlines()
                if line.startswith(("inferlab:num_requests", "inferlab:kv_blocks", "inferlab:generation_tokens_total"))))

# %% [markdown]
# ## 9. The same client code in production: vLLM and TGI
#
# Serve a real model with vLLM's OpenAI-compatible server (GPU; `pip install vllm`):
#
# ```bash
# vllm serve meta-llama/Llama-3.2-1B-Instruct --host 127.0.0.1 --port 8000 --api-key "$API_KEY"
# # older releases: python -m vllm.entrypoints.openai.api_server --model meta-llama/Llama-3.2-1B-Instruct --port 8000
# ```
#
# or with Text Generation Inference (Docker, GPU):
#
# ```bash
# docker run --gpus all --shm-size 1g -p 8080:80 -v "$PWD/data:/data" \
#     -e HF_TOKEN="$HF_TOKEN" ghcr.io/huggingface/text-generation-inference:latest \
#     --model-id meta-llama/Llama-3.2-1B-Instruct
# ```
#
# (pin a release tag instead of `latest` in production). Then only the URLs change:
# `openai.OpenAI(base_url="http://HOST:8000/v1", api_key=API_KEY)` for vLLM, and
# `InferenceClient("http://HOST:8080")` for TGI; TGI also answers OpenAI's
# `/v1/chat/completions` on its port. Ours: `python -m inferlab.serve --model tiny --port 8000`,
# with `--api-key` to require a key, binding 127.0.0.1 unless told otherwise.

# %% [markdown]
# ## 10. Exercises

# %%
from inferlab.exercises.serving import check_littles_law, check_status_codes, check_token_latencies, solution

# %% [markdown]
# **Exercise 1.** A request was sent at `sent_at`; its tokens arrived at `token_times`. Return
# `(ttft, mean inter-token latency)` in seconds (0 for the ITL of a one-token answer).

# %%
def token_latencies(sent_at: float, token_times: list[float]) -> tuple[float, float]:
    raise NotImplementedError("your code here")  # stuck? solution("token_latencies")


check_token_latencies(token_latencies)

# %% [markdown]
# **Exercise 2.** A server keeps 32 requests in flight and each takes 2.0 s end to end. How many
# requests per second does it complete?

# %%
answer = None  # your answer; stuck? solution("littles_law")
check_littles_law(answer, in_flight=32, seconds_each=2.0)

# %% [markdown]
# **Exercise 3.** Which HTTP status does the server return for each case? Try them against the
# running server (`httpx.post(f"{server.url}/v1/completions", json=...)`) before answering.

# %%
answer = None  # a dict {"max_tokens past the context": ..., "unknown model": ..., "wrong API key": ..., "body too large": ...}; stuck? solution("status_code")
check_status_codes(answer)

# %% [markdown]
# ## 11. Stop the server
#
# SIGTERM starts a graceful shutdown: the server stops accepting, lets open requests finish,
# then the step loop stops. No port stays open.

# %%
exit_code = server.stop()
print("exit code:", exit_code, "| port still open:", port_is_open(server.port))

# %% [markdown]
# ## 12. The numbers, live and recorded
#
# The load test's results at each concurrency: live on this machine, and on the H200
# (a Llama-3.2-1B-shaped model with random bf16 weights, 256 requests with prompts of 64–512
# and outputs of 32–128 tokens, at 64 and 256 concurrent clients).

# %%
def headline(label: str, runs: list[dict]) -> None:
    for r in runs:
        print(f"{label}: {r['concurrency']:>3} clients, {r['completed']}/{r['requests']} done, "
              f"{r['output_throughput_tok_s']:.0f} output tok/s, TTFT p50/p99 {r['ttft_p50_ms']:.0f}/{r['ttft_p99_ms']:.0f} ms, "
              f"ITL p50/p99 {r['itl_p50_ms']:.1f}/{r['itl_p99_ms']:.0f} ms, e2e p50/p99 {r['e2e_p50_ms'] / 1000:.2f}/{r['e2e_p99_ms'] / 1000:.2f} s")


headline(f"live {'cuda' if torch.cuda.is_available() else 'cpu'}", live_runs)
if recorded is not None:
    headline(f"H200 ({recorded['environment'].get('date', '')})", recorded["runs"])

# %% [markdown]
# ## 13. Summary
#
# - A server needs one step loop that owns the engine; clients post requests and read their
#   own queues. Continuous batching then happens across HTTP clients.
# - The `openai` client and `huggingface_hub.InferenceClient` run unchanged against
#   `inferlab.serve`, vLLM or TGI; only the URL changes.
# - Streaming sends each step's text as it is decoded, holding back half characters and
#   possible stop strings; a client that hangs up is aborted and its KV blocks freed.
# - Judge a server by TTFT, ITL and end-to-end latency at p50 and p99 under load, and by its
#   throughput; Little's law ties them together.
# - Bad input is a 4xx with a JSON error, never a crashed step for everyone.
#
# **References.** Kwon et al., "Efficient Memory Management for Large Language Model Serving
# with PagedAttention", SOSP 2023 (vLLM, its `AsyncLLMEngine` and OpenAI-compatible server);
# Yu et al., "Orca", OSDI 2022; Hugging Face Text Generation Inference documentation
# (`/generate`, `/generate_stream`, `/info`); OpenAI API reference (completions, chat
# completions, streaming); vLLM's `benchmarks/benchmark_serving.py` (TTFT, TPOT, ITL).
