# %% [markdown]
# # 03 · Continuous batching
#
# **What you will do here**
#
# - see why *static* batching (pad, then wait for the longest request) wastes most of a
#   batch's slots, and how *iteration-level* scheduling (Orca) keeps every slot busy;
# - run inferlab's engine, a small vLLM in plain PyTorch (scheduler, paged KV blocks, a
#   batched model runner, a sampler), and check that it writes exactly what
#   `model.generate` writes;
# - draw static and continuous batching as Gantt charts of batch slots on the same requests;
# - measure throughput, TTFT and TPOT against the arrival rate, live;
# - watch the engine preempt requests when the KV pool is too small, and resume them
#   without changing a token;
# - find out what the `ContinuousBatcher` of a widely copied tutorial really computes.

# %% tags=["parameters"]
import os

MODEL = os.environ.get("INFERLAB_MODEL", "tiny")  # or a local folder / hub id of a Llama, Mistral or Qwen2 model
DEVICE = os.environ.get("INFERLAB_DEVICE") or None  # None: cuda, then mps, then cpu
NUM_REQUESTS = 16  # requests in the Gantt comparison
BATCH_SLOTS = 4  # max_num_seqs: how many requests run at once
RATES = [4.0, 8.0, 16.0]  # arrival rates (requests/s) for the live sweep
ONLINE_REQUESTS = 24  # requests per rate
REPEATS = 2  # runs of the whole rate sweep, to see how much live numbers move

import torch

if torch.cuda.is_available():  # scale up where there is a GPU
    NUM_REQUESTS, BATCH_SLOTS, RATES, ONLINE_REQUESTS = 48, 12, [8.0, 32.0, 128.0], 128

# %% [markdown]
# ## 1. Intuition and the math
#
# A server receives requests whose outputs have very different lengths, and it cannot know
# them in advance (a request stops when the model writes end-of-sequence). Batching them is
# what makes a GPU efficient: one decode step reads all the weights once for the whole
# batch, so $B$ requests cost little more than one.
#
# **Static batching** takes $B$ requests, pads their prompts to the longest, and decodes
# until the *longest* output is done. With output lengths $L_1,\dots,L_B$ the batch runs
# $\max_i L_i$ steps with $B$ slots each, of which only $\sum_i L_i$ slot-steps produce a
# token someone reads:
#
# $$\text{slot utilisation} = \frac{\sum_i L_i}{B\,\max_i L_i}.$$
#
# For lengths uniform between 1 and $2m$, $\mathbb{E}[\max] \approx 2m$ while the mean is
# $m$: half the slots are wasted on finished rows, and new requests wait in the queue the
# whole time.
#
# **Continuous batching** (Orca, Yu et al., OSDI 2022, "iteration-level scheduling")
# re-decides the batch after *every* forward pass: a finished request leaves at once and a
# waiting one takes its slot in the next step. Two things make that possible:
#
# 1. *Selective batching*: the linear layers and MLP run on the flattened tokens of all
#    requests (a prompt of 300 tokens and 15 single decode tokens are just 315 rows), and
#    only attention looks at each request separately. No padding anywhere.
# 2. A KV cache that can grow and shrink per request without reserving the maximum length
#    up front: the paged blocks of notebook 02 (vLLM, Kwon et al., SOSP 2023).
#
# vLLM adds *chunked prefill* (Sarathi, Agrawal et al. 2023/2024): a long prompt is cut into
# chunks that share steps with the running decodes, so they do not stall behind it.

# %%
import time

import inferlab as il
from inferlab import LLM, SamplingParams
from inferlab.viz import setup_plotly

setup_plotly()
if not torch.cuda.is_available():
    # The tiny model's matrices are small: synchronising two threads costs more than the math.
    torch.set_num_threads(1)
llm = LLM(MODEL, device=DEVICE)
runner = llm.engine.runner
print(f"model {MODEL}: {runner.config.num_layers} layers, {runner.config.num_heads} query heads, "
      f"{runner.config.num_kv_heads} KV heads | device {runner.device}, {runner.dtype}")
print(f"KV pool: {runner.num_blocks} blocks of {runner.block_size} tokens "
      f"({runner.num_blocks * runner.kv_bytes_per_block / 2**20:.0f} MiB)")

# %% [markdown]
# ## 2. Build it: the engine, and the proof that it is right
#
# `LLM.generate` has vLLM's shape. Under it, `LLMEngine.step()` does one iteration:
# the scheduler picks who runs and how many tokens each; the model runner does **one**
# forward pass over all those tokens, reading and writing K/V through block tables; the
# sampler picks one token for every request whose tokens are all computed; finished
# requests give their blocks back.

# %%
prompts = [
    "def fibonacci(n):",
    "import os\nimport sys\n\n\ndef main(argv):\n    \"\"\"Parse the arguments and",
    "class Stack:\n    def __init__(self):",
    "    for key, value in sorted(",
    "# Copyright",
    "def read_config(path, encoding='utf-8'):\n    with open(path",
]
greedy = SamplingParams(temperature=0.0, max_tokens=32)
outs = llm.generate(prompts, greedy)
for out in outs[:3]:
    print(repr(out.prompt[-30:]), "->", repr(out.outputs[0].text[:70]), f"[{out.outputs[0].finish_reason}]")

# %% [markdown]
# Batching must not change the answer. The slow, obvious reference is
# `model.generate` on one prompt at a time, with no batching and no padding. Greedy
# decoding in float32 on the CPU must give the *same tokens*.

# %%
hf_model, tok = il.load_model(MODEL, device=DEVICE)


@torch.inference_mode()
def generate_alone(prompt: str, max_tokens: int) -> list[int]:
    ids = tok(prompt, return_tensors="pt").input_ids.to(hf_model.device)
    out = hf_model.generate(ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    return new[: new.index(tok.eos_token_id) + 1] if tok.eos_token_id in new else new


same = [o.outputs[0].token_ids == generate_alone(p, 32) for p, o in zip(prompts, outs)]
print(f"engine == generate, token for token: {sum(same)}/{len(same)} prompts")

# %% [markdown]
# Here is what the scheduler decided, step by step, for these six prompts with a budget of
# 48 tokens per step (`max_num_batched_tokens`): the long prompt is *chunked* over several
# steps while the others already decode.

# %%
small = LLM(MODEL, device=DEVICE, max_num_seqs=6, max_num_batched_tokens=48)
small.generate(prompts, SamplingParams(temperature=0.0, max_tokens=4))
for rec in small.engine.trace[:6]:
    parts = ", ".join(f"{rid}:{kind[0]}{n}" for rid, kind, n in rec.entries)
    print(f"step {rec.step}: {rec.num_tokens:3d} tokens | {parts}")
print("(p = prefill tokens, d = decode token; request ids are the prompt numbers)")

# %% [markdown]
# ## 3. Static vs continuous, on the same requests
#
# `StaticBatcher` and `ContinuousBatcher` run the *same* engine, model runner and kernels;
# only the scheduling policy differs. Static: take `BATCH_SLOTS` requests, pad the prompts,
# run until the longest is done, then take the next batch. Continuous: refill a slot as
# soon as it frees. Every request generates exactly its `max_tokens` (lengths drawn at
# random), so both do the same useful work.

# %%
from inferlab.engine import LLMEngine
from inferlab.viz.batching import latency_vs_rate, pool_usage, slot_gantt
from inferlab.bench.workloads import run_engine, static_decode_waste, synthetic_requests


def make_engine(policy: str, slots: int = BATCH_SLOTS, **kw) -> LLMEngine:
    kw.setdefault("enable_chunked_prefill", policy == "continuous")
    return LLMEngine(runner, tok, max_num_seqs=slots, policy=policy, **kw)


requests = synthetic_requests(NUM_REQUESTS, prompt_len=(8, 64), output_len=(4, 64), vocab_size=runner.config.vocab_size, seed=0)
runs = {policy: run_engine(make_engine(policy), requests, name=policy, realtime=False) for policy in ("static", "continuous")}
for res in runs.values():
    slots_used = sum(n for r in res.trace for _, k, n in r.entries if k == "decode")
    print(f"{res.name:>10}: {res.steps:4d} steps, {res.wall_s:5.2f} s, {res.throughput:6.0f} tok/s, "
          f"padding tokens computed: {res.padding_tokens}")

# %%
span = max(res.trace[-1].end - res.trace[0].start for res in runs.values())
for policy in ("static", "continuous"):
    fig = slot_gantt(runs[policy].trace, title=f"{policy} batching: {BATCH_SLOTS} slots, {NUM_REQUESTS} requests", x="time")
    fig.update_xaxes(range=[0, 1.02 * span])  # same time axis for both: who finishes first?
    fig.show()

# %% [markdown]
# In the static chart, grey is a finished request that still occupies its slot (and is
# still computed) until the longest request of its batch is done; new requests queue
# meanwhile. In the continuous chart a slot is refilled the step after it frees, and the
# same work ends sooner. (Hover over a bar to see its request.) The formula from section 1
# predicts the waste from the output lengths alone:

# %%
# NBVAL_CHECK_OUTPUT
output_lens = [r.max_tokens for r in requests]
print(f"static batching wastes {static_decode_waste(output_lens, BATCH_SLOTS):.1%} of its decode slot-steps")
print(f"engine steps: static {runs['static'].steps}, continuous {runs['continuous'].steps}")

# %% [markdown]
# ## 4. Measure it live: latency and throughput against load
#
# Real traffic arrives over time. Requests now arrive as a Poisson process at a given rate;
# for each we record **TTFT** (time to first token: arrival to first sampled token,
# including the wait in the queue) and **TPOT** (time per output token after the first).
# p99 needs enough samples to differ from the maximum; we report it with 20 or more.
# The whole sweep runs `REPEATS` times, the two policies interleaved, so that we can tell a
# difference between them from the run-to-run noise of a shared machine.

# %%
from inferlab.stats import compare_runs

rows, runs_by = [], {}
for rep in range(REPEATS):
    for rate in RATES:
        reqs = synthetic_requests(ONLINE_REQUESTS, (8, 64), (8, 64), runner.config.vocab_size, seed=1, rate=rate)
        for policy in ("static", "continuous"):
            summary = run_engine(make_engine(policy), reqs, name=policy).summary()
            runs_by.setdefault((rate, policy), []).append(summary)
            if rep == 0:
                rows.append({"rate": rate, **summary})
offered = {rate: rate * sum(r.max_tokens for r in reqs) / len(reqs) for rate in RATES}  # tokens/s asked for
print(f"{'rate':>5} {'policy':>10} {'tok/s':>7} {'asked':>6} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9}  (ms, run 1)")
for r in rows:
    print(f"{r['rate']:5.0f} {r['name']:>10} {r['throughput_tok_s']:7.0f} {offered[r['rate']]:6.0f} {r['ttft_p50_ms']:9.1f} "
          f"{r['ttft_p99_ms']:9.1f} {r['tpot_p50_ms']:9.1f} {r['tpot_p99_ms']:9.1f}")
latency_vs_rate(rows, title=f"live, {runner.device}: static vs continuous batching").show()

# %% [markdown]
# Static batching makes a newly arrived request wait for the whole current batch to finish,
# so its TTFT grows with the longest request in flight; continuous batching admits it at the
# next step. A policy *keeps up* when its throughput matches the tokens asked for (arrival rate ×
# mean output tokens, the `asked` column); as load grows, static batching saturates first. What
# this machine showed, over the repeated runs:

# %%
for rate in RATES:
    ttft = compare_runs([r["ttft_p50_ms"] for r in runs_by[(rate, "static")]],
                        [r["ttft_p50_ms"] for r in runs_by[(rate, "continuous")]])
    keeps = [p for p in ("static", "continuous")
             if min(r["throughput_tok_s"] for r in runs_by[(rate, p)]) >= 0.9 * offered[rate]]
    print(f"{rate:4.0f} req/s: {' and '.join(keeps) or 'neither'} kept up in every run; static's median TTFT is "
          f"{ttft['text']} continuous batching's")
#
# Recorded on an H200 (Llama-3.2-1B shape with random bf16 weights, `python -m inferlab.bench batching`;
# the workload it ran is printed with it):

# %%
from inferlab.bench import load_result

recorded = load_result("batching", "h200")
if recorded is None:
    print("no H200 record yet (data/results/batching-h200.json); run scripts/gpu/engine.sh on a GPU")
else:
    w = recorded["workload"]
    print(f"{w['n']} requests, prompts {w['prompt_len']} tokens, outputs {w['output_len']} tokens, on {recorded['environment'].get('gpu_name')}")
    for name, r in recorded["offline"].items():
        print(f"{name:>24}: {r['throughput_tok_s']:8.0f} tok/s")
    if recorded.get("online"):
        latency_vs_rate(recorded["online"], title="recorded on an H200").show()

# %% [markdown]
# ## 5. When the KV pool runs out: preemption by recompute
#
# Continuous batching admits requests as long as their *prompts* fit; their outputs then
# grow into free blocks. When a running request needs a block and none is free, the
# scheduler **preempts** the newest running request (vLLM's default, recompute): its blocks
# are freed, it returns to the front of the queue keeping the tokens it has generated, and
# when it is readmitted, prompt + output so far are prefilled again. Its text must not
# change.

# %%
pool_blocks = 12
tight = make_engine("continuous", slots=8, max_num_batched_tokens=256, num_blocks=pool_blocks)  # a deliberately tiny pool
tight_reqs = synthetic_requests(10, (16, 40), (24, 48), runner.config.vocab_size, seed=2)
tight_run = run_engine(tight, tight_reqs, name="tight pool", realtime=False)
roomy_run = run_engine(make_engine("continuous", slots=8), tight_reqs, name="roomy pool", realtime=False)
print(f"preemptions: {sum(len(r.preempted) for r in tight_run.trace)} with {pool_blocks} blocks, "
      f"{sum(len(r.preempted) for r in roomy_run.trace)} with {runner.num_blocks}")
slot_gantt(tight_run.trace, title=f"{pool_blocks}-block pool: preemptions (x) and recompute (orange again)", x="step").show()
pool_usage(tight_run.trace, pool_blocks).show()

# %% [markdown]
# Preemption costs recomputation (the orange prefill bars that reappear), never correctness:

# %%
# NBVAL_CHECK_OUTPUT
greedy_small = SamplingParams(temperature=0.0, max_tokens=40)
tight_llm = LLM(MODEL, device=DEVICE, num_kv_blocks=10, block_size=8)
texts_tight = [o.outputs[0].token_ids for o in tight_llm.generate(prompts, greedy_small)]
texts_roomy = [o.outputs[0].token_ids for o in llm.generate(prompts, greedy_small)]
print("preemptions:", sum(len(r.preempted) for r in tight_llm.engine.trace) > 0,
      "| outputs identical:", texts_tight == texts_roomy,
      "| blocks all free again:", tight_llm.engine.block_manager.num_free_blocks == 10)

# %% [markdown]
# A request that could *never* fit (its prompt plus `max_tokens` need more blocks than the
# whole pool) is rejected up front with a clear error, and the others run:

# %%
import warnings

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    mixed = tight_llm.generate(["def f(x):", "x = 1\n" * 60], SamplingParams(temperature=0.0, max_tokens=8))
print([o.outputs[0].finish_reason for o in mixed])
print(mixed[1].error)

# %% [markdown]
# ## 6. Chunked prefill: a long prompt without a stall
#
# A prompt of 900 tokens arrives while six requests are decoding. Without chunking, the
# step that prefills it computes 900 + 6 tokens and every decoding request waits for it
# (a TPOT spike). With chunked prefill (Sarathi) and a budget of 128 tokens per step, the
# prompt is spread over several steps, each carrying the six decodes along.

# %%
import plotly.graph_objects as go

from inferlab.bench.workloads import Request

vocab = runner.config.vocab_size
decoders = synthetic_requests(6, (8, 16), (48, 48), vocab, seed=3)
long_prompt = Request(synthetic_requests(1, (900, 900), (1, 1), vocab, seed=4)[0].prompt_token_ids, 4, arrival=0.05)
fig = go.Figure()
for label, kw in {"no chunking": {"enable_chunked_prefill": False, "max_num_batched_tokens": 2048},
                  "chunked, 128 tokens/step": {"enable_chunked_prefill": True, "max_num_batched_tokens": 128}}.items():
    res = run_engine(make_engine("continuous", slots=8, **kw), decoders + [long_prompt], name=label)
    with_decodes = [r for r in res.trace if any(k == "decode" for _, k, _ in r.entries)]
    worst = max(r.end - r.start for r in with_decodes)
    print(f"{label:>26}: longest step a decoding request waited through: {1000 * worst:6.1f} ms, "
          f"TPOT p50 {res.summary()['tpot_p50_ms']:.1f} ms")
    fig.add_trace(go.Scatter(x=[r.step for r in res.trace], y=[1000 * (r.end - r.start) for r in res.trace],
                             mode="lines+markers", name=label))
fig.update_layout(title="step duration: the long prompt's prefill, whole or chunked", xaxis_title="engine step",
                  yaxis_title="ms", height=300)
fig.show()

# %% [markdown]
# ## 7. Myth vs measured: a widely copied tutorial's `ContinuousBatcher`
#
# A `ContinuousBatcher` class that circulates in a widely copied tutorial keeps a queue and
# refills the batch as requests finish, which is the right idea. What it computes is another
# matter. Each step it:
#
# 1. concatenates prompt + generated tokens for every active request and **re-runs the
#    whole sequence** through the model (no KV cache: step $t$ costs $O(t)$ tokens per row,
#    so a request of $n$ tokens costs $O(n^2)$ instead of $O(n)$);
# 2. **right-pads** the rows to the longest, with no attention mask;
# 3. reads the next token from `logits[:, -1]`, the last *column*. For the longest row that
#    is its last token. For every shorter row it is a **pad** position: the model predicts
#    what follows "…prompt, pad, pad, pad", not what follows the prompt.
#
# `TutorialBatcher` re-creates that behaviour (wrong on purpose); `ContinuousBatcher` is
# the same interface on our engine. The heart of the re-creation, the lines that build and read
# each step:

# %%
import inspect

from inferlab.naive import TutorialBatcher

print("\n".join(line for line in inspect.getsource(TutorialBatcher.step).splitlines()
                if any(key in line for key in ("rows =", "width =", "batch =", "logits ="))))

# %%
from inferlab.engine import ContinuousBatcher
from inferlab.naive import TutorialBatcher

tutorial = TutorialBatcher(hf_model, tok, max_batch_size=8)
done_right = ContinuousBatcher(MODEL, device=DEVICE, max_batch_size=8)
for batcher in (tutorial, done_right):
    for i, p in enumerate(prompts):
        batcher.add_request(f"req{i}", p, max_tokens=24)
t0 = time.perf_counter()
wrong = tutorial.run()
t_wrong = time.perf_counter() - t0
t0 = time.perf_counter()
right = done_right.run()
t_right = time.perf_counter() - t0
for i, p in enumerate(prompts):
    rid = f"req{i}"
    print(f"{len(tok.encode(p)):3d}-token prompt {p[:24]!r:28} same text as generate: {wrong[rid] == right[rid]}")
for i in (0, 2):
    print(f"\n{prompts[i]!r}\n   tutorial: {wrong[f'req{i}'][:70]!r}\n   engine  : {right[f'req{i}'][:70]!r}")

# %%
ours_tokens = sum(r.num_tokens for r in done_right.trace)
print(f"token positions run: tutorial {tutorial.tokens_processed}, engine {ours_tokens} "
      f"({tutorial.tokens_processed / ours_tokens:.1f}x more)")
print(f"wall time (one run each, so only a rough guide on a busy machine): tutorial {t_wrong:.2f} s, "
      f"engine {t_right:.2f} s; the token positions above are the measure that does not move")

# %% [markdown]
# The fix is three things: a KV cache (compute only new tokens), no padding in attention
# (flatten the tokens, attend per sequence, or pass an attention mask), and read each row at
# its own last real token (exercise 1).

# %% [markdown]
# ## 8. The same engine on an H200, beside transformers
#
# `python -m inferlab.bench engine` runs, in one process on the reference workload (256 requests,
# prompts 64–1024 tokens, outputs 64–512, a Llama-3.2-1B shape with random bf16 weights), our
# engine, transformers' `generate` on static batches of 32 and transformers' own continuous
# batching (`generate_batch`; in the recorded file that one ran in a second process on the same
# workload, and its entry says why). Below: the recorded H200 run, and a small live run of our engine here.

# %%
from inferlab.bench import load_result
from inferlab.bench.engine import live_run
from inferlab.viz.engine import batch1_figure, profile_text, summary_text, systems_figure

recorded = load_result("engine", "h200")
live = live_run(DEVICE, n=8 if not torch.cuda.is_available() else None)
print(f"live ({live['device']}, {live['model']}, {live['requests']} requests): "
      f"{live['inferlab']['output_tok_s']:,.1f} output tok/s, batch-1 decode {live['batch1_tok_s']:,.1f} tok/s")
if recorded:
    print(summary_text(recorded))
systems_figure(recorded, live)

# %%
if recorded:
    batch1_figure(recorded).show()

# %% [markdown]
# ### 8.1 Where the time went
#
# A profile of one decode step (`torch.profiler`, top GPU kernels by time per step), eager and
# replayed as a CUDA graph. Eager, the top line is `aten::mm` *on the host side*: time spent
# launching; the graph removes that. At batch 256 the paged-attention kernel reading every
# sequence's KV blocks is the largest item, then the weight matmuls, which now run at a large
# batch, then small elementwise kernels.

# %%
if recorded and recorded.get("profile"):
    print(profile_text(recorded["profile"]))
    for batch, row in recorded["decode_step"].items():
        print(f"batch {batch:>3}: {row['bytes'] / 1e9:.2f} GB and {row['flops'] / 1e9:.0f} GFLOP per step; "
              f"graphed {1e3 * row.get('graphed_s', float('nan')):.2f} ms = "
              f"{100 * row.get('graphed_fraction_of_bandwidth', 0):.0f}% of bandwidth, "
              f"{100 * row.get('graphed_fraction_of_flops', 0):.1f}% of bf16 matmul peak")

# %% [markdown]
# ## 9. Exercises

# %%
from inferlab.exercises.batching import (check_last_token_index, check_min_kv_blocks, check_preemption_victim,
                                        check_static_waste, solution)

# %% [markdown]
# **Exercise 1.** Fix the tutorial's read position. Rows are right-padded to `width`; `lengths`
# are their real lengths. Return, for each row, the position whose logits predict its next
# token.

# %%
def last_token_index(lengths: list[int], width: int) -> list[int]:
    raise NotImplementedError("your code here")  # the tutorial returns width - 1 for every row; stuck? solution("last_token_index")


check_last_token_index(last_token_index)

# %% [markdown]
# **Exercise 2.** Four requests per static batch with output lengths `[10, 80, 20, 30, 5, 5, 5, 60]`:
# what fraction of decode slot-steps is wasted on finished rows?

# %%
answer = None  # your answer, a fraction between 0 and 1; stuck? solution("static_waste")
check_static_waste(answer, [10, 80, 20, 30, 5, 5, 5, 60], batch_size=4)

# %% [markdown]
# **Exercise 3.** A 100-token prompt with `max_tokens=200`, block size 16, context 1024: what is
# the smallest KV pool (in blocks) that can run it at all?

# %%
answer = None  # your answer; stuck? solution("min_kv_blocks")
check_min_kv_blocks(answer, prompt_len=100, max_tokens=200, block_size=16, max_model_len=1024)

# %% [markdown]
# **Exercise 4.** Requests `a`, `b`, `c`, `d` arrived in that order and are all decoding; `a`
# needs a new block and none is free. Which request does the scheduler preempt?

# %%
answer = None  # your answer, e.g. "b"; stuck? solution("preemption_victim")
check_preemption_victim(answer, ["a", "b", "c", "d"])

# %% [markdown]
# ## 10. Summary
#
# - Static batching runs each batch as long as its longest request: finished rows keep
#   their slots (and their compute), newcomers wait. Slot utilisation is
#   $\sum L_i / (B \max L_i)$.
# - Continuous batching schedules every iteration: requests join and leave between forward
#   passes, prefill chunks and decodes share a step, and no token is padding.
# - It relies on a KV cache that grows per request in blocks; when the pool runs dry the
#   newest request is preempted and recomputed later, with identical output.
# - Chunked prefill (Sarathi) cuts long prompts into budget-sized chunks that ride along
#   with the decodes, so one long prompt no longer stalls everyone's next token.
# - The widely copied tutorial's `ContinuousBatcher` has the right queueing idea but no KV cache and reads
#   pad positions, so its text differs from `generate` for every row but the longest.
# - Correctness first: the engine's greedy tokens equal `model.generate`'s, under
#   preemption, chunked prefill and prefix caching (see `tests/test_engine.py`).
#
# **References**
#
# - G.-I. Yu, J. S. Jeong, G.-W. Kim, S. Kim, B.-G. Chun. *Orca: A Distributed Serving System
#   for Transformer-Based Generative Models.* OSDI 2022.
# - W. Kwon et al. *Efficient Memory Management for Large Language Model Serving with
#   PagedAttention.* SOSP 2023. [arXiv:2309.06180](https://arxiv.org/abs/2309.06180)
# - A. Agrawal et al. *SARATHI: Efficient LLM Inference by Piggybacking Decodes with Chunked
#   Prefills* (2023, [arXiv:2308.16369](https://arxiv.org/abs/2308.16369)) and *Taming
#   Throughput-Latency Tradeoff in LLM Inference with Sarathi-Serve* (OSDI 2024).
# - vLLM ([github.com/vllm-project/vllm](https://github.com/vllm-project/vllm)) and nano-vllm
#   ([github.com/GeeeekExplorer/nano-vllm](https://github.com/GeeeekExplorer/nano-vllm)).
