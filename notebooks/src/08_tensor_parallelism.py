# %% [markdown]
# # 08 · Tensor parallelism: one model over two processes
#
# **What you will do here**
#
# - see how one transformer layer splits over GPUs so that they talk only twice per layer:
#   column-parallel, then row-parallel, then one all-reduce (Megatron-LM's split);
# - draw who holds which slice of every weight, including what happens when there are more GPUs
#   than KV heads;
# - run our engine over two processes with `LLM(model, tensor_parallel_size=2)` (gloo on this CPU,
#   NCCL where two GPUs exist) and check that it generates exactly what one process generates, with
#   half the KV cache per process;
# - count the bytes every token all-reduces, compute them, and measure what an all-reduce costs
#   against batch size, live and on two H200s;
# - decide when tensor parallelism pays off and when it does not, and where to go when one machine
#   is not enough (vLLM and TGI flags, multi-node vLLM over Ray).
#
# Papers behind it: Shoeybi, Patwary, Puri, LeGresley, Casper & Catanzaro 2019 (*Megatron-LM: Training
# Multi-Billion Parameter Language Models Using Model Parallelism*); Pope et al. 2022 (*Efficiently
# Scaling Transformer Inference*); Patarasuk & Yuan 2009 (*Bandwidth optimal all-reduce algorithms for
# clusters of workstations*).

# %% tags=["parameters"]
import os

MODEL = os.environ.get("INFERLAB_MODEL", "tiny")  # the model the engine runs live (a name, folder or hub id)
DEVICE = os.environ.get("INFERLAB_DEVICE") or None  # None: NCCL on two GPUs when there are two, else gloo on the CPU
TP = 2  # tensor-parallel size of the live runs
MAX_TOKENS = 24  # greedy tokens per prompt in the equality check

import torch  # noqa: E402

if DEVICE is None:
    DEVICE = "cuda" if torch.cuda.device_count() >= TP else "cpu"
BATCHES = [1, 16, 64, 256] if DEVICE.startswith("cuda") else [1, 16, 64]  # all-reduce sizes measured live

# %%
from IPython.display import Markdown, display

from inferlab import LLM, SamplingParams, tp
from inferlab.bench import load_result
from inferlab.bench import tp as bench
from inferlab.configs import GPUS, load_config
from inferlab.engine.config import ModelConfig
from inferlab.engine.loader import resolve_source
from inferlab.kvcache import kv_bytes_per_token, kv_cache_bytes, weight_bytes
from inferlab.viz import setup_plotly
from inferlab.viz.tp import lines_figure, sharding_figure, sharding_static

setup_plotly()
config = resolve_source(MODEL).config
print(f"live: {MODEL} ({config.num_layers} layers, hidden {config.hidden_size}, {config.num_heads} query heads, "
      f"{config.num_kv_heads} KV heads) over {TP} processes on {DEVICE} "
      f"({bench.__name__.split('.')[-1]}: {'NCCL' if DEVICE.startswith('cuda') else 'gloo'})")

# %% [markdown]
# ## 1. Intuition: split the matmuls so that the GPUs talk twice per layer
#
# Decoding is bound by reading the weights (notebook 01): every step streams every weight from
# memory once. Two GPUs that each hold *half* of every weight matrix read half as many bytes per
# step, and have twice the memory for the KV cache. The price is communication, and the art is to
# need little of it.
#
# Take the MLP, $Y = \big(\mathrm{silu}(XG) \odot XU\big) D$. Split the gate and up matrices $G, U$ by
# **columns** over $p$ ranks: rank $i$ computes its own columns of $\mathrm{silu}(XG_i) \odot XU_i$
# from the full input $X$, with no help, because the activation works element by element. Split the
# down matrix $D$ by **rows** to match: rank $i$ multiplies its slice $A_i$ of the activation by its
# rows $D_i$, and
#
# $$Y = A D = \sum_{i=1}^{p} A_i D_i .$$
#
# Each rank holds one term of that sum; one **all-reduce** (every rank sends its term, every rank gets
# the sum) finishes the MLP. Attention splits the same way along its heads: the query, key and value
# projections are column-parallel (rank $i$ computes its heads, attends over them, and keeps only
# *their* K and V in its cache), and the output projection is row-parallel, closed by a second
# all-reduce. Two all-reduces per layer, each of one hidden-size vector per token; embedding, norms and
# residual adds are replicated. (PyTorch's `nn.Linear` stores $W$ as `[out, in]`, so "column-parallel"
# splits its *rows* and "row-parallel" its *columns*; the layers are named after $XW^\top$'s math.)
#
# Grouped-query attention adds a wrinkle: with 8 KV heads and 16 GPUs, a head cannot be halved.
# Each GPU then keeps a whole KV head, shared by two GPUs (vLLM does the same), and the cache per GPU
# stops shrinking. `inferlab.tp.head_shard` says who holds what:

# %%
# NBVAL_CHECK_OUTPUT
shapes = {"tiny": resolve_source("tiny").config, "llama-3-70b": ModelConfig.from_dict(load_config("llama-3-70b"))}
for name, size in (("tiny", 2), ("tiny", 4), ("llama-3-70b", 8), ("llama-3-70b", 16)):
    c = shapes[name]
    h = tp.head_shard(c.num_heads, c.num_kv_heads, 1, size)
    per_gpu = kv_bytes_per_token(c, "bfloat16", tp_size=size)
    print(f"{name:>12} TP={size:<2}: rank 1 holds query heads {h.q_start}-{h.q_start + h.num_heads - 1}, "
          f"KV head(s) {h.kv_start}-{h.kv_start + h.num_kv_heads - 1} (each on {h.kv_replicas} GPU(s)); "
          f"KV cache {per_gpu:,} B/token per GPU")

# %% [markdown]
# ## 2. The sharding, drawn
#
# One layer's five weight matrices, each slice coloured by the rank that holds it (hover for what it
# is). Column-parallel matrices are cut into bands of output rows, row-parallel ones into bands of
# input columns. First the live model at TP=2, then TP=4, where its 2 KV heads are each held twice.

# %%
layout = tp.sharding_layout(config, TP)
sharding_figure(layout, f"{MODEL} at TP={TP}: who holds which slice").show()

# %%
fig = sharding_static(tp.sharding_layout(shapes["tiny"], 4), "tiny at TP=4: 2 KV heads, each replicated on 2 ranks (static)")

# %% [markdown]
# ## 3. Build it: the shards add up
#
# `inferlab.tp` holds `ColumnParallelLinear`, `MergedColumnParallelLinear` (gate | up),
# `QKVParallelLinear` and `RowParallelLinear`: swaps of the engine's linear layers whose
# `weight_loader` takes the *full* checkpoint tensor and keeps this rank's slice, so the engine's
# loader is unchanged (the swap pattern of gpt-fast, the loader pattern of nano-vllm).
# `shard_model(model, rank, size)` swaps them into a built model. Before any process is started, one
# process can check the algebra: replace the all-reduce by "return my partial sum", run every rank's
# MLP on the same input, add the results.

# %%
import copy  # noqa: E402

from inferlab.engine.model_runner import ModelRunner  # noqa: E402

full = ModelRunner(MODEL, device="cpu", dtype="float32", num_kv_blocks=4).model
ranks = [tp.shard_model(copy.deepcopy(full), r, TP) for r in range(TP)]
x = torch.randn(3, config.hidden_size, generator=torch.Generator().manual_seed(0))
real_all_reduce, tp.all_reduce = tp.all_reduce, lambda t, group=None: t  # see each rank's partial sum
try:
    with torch.no_grad():
        partial = [r.model.layers[0].mlp(x) for r in ranks]
        whole = full.model.layers[0].mlp(x)
finally:
    tp.all_reduce = real_all_reduce
w = ranks[0].model.layers[0].mlp.down_proj.weight
print(f"rank 0's down_proj: {tuple(w.shape)} of {tuple(full.model.layers[0].mlp.down_proj.weight.shape)}")
print(f"max |sum of {TP} partial MLP outputs - full MLP output| = {(sum(partial) - whole).abs().max():.1e}")
print(f"max |one partial output - full output|            = {(partial[0] - whole).abs().max():.1e}")

# %% [markdown]
# The sum of the partial outputs is the full output to float32 rounding; one rank's partial alone is
# far from it. That sum is exactly what the all-reduce computes.
#
# ## 4. The engine over two processes, live
#
# `LLM(MODEL, tensor_parallel_size=2)` keeps the whole engine (scheduler, block manager, sampling) in
# this process, which becomes rank 0, and starts one worker process
# (`inferlab.engine.distributed`). Every rank loads the model and keeps its shard and its own KV
# pool; the block tables are the same everywhere because only rank 0 schedules. Each step, rank 0
# sends the step's inputs to the workers (nano-vllm does this through shared memory; we use a pipe),
# every rank runs the same forward pass and meets the others in the all-reduces (gloo on a CPU, NCCL on
# GPUs), and the logits come out identical on every rank; rank 0 samples.
#
# Same prompts, greedy, float32, same KV pool size: TP=1 against TP=2.

# %%
prompts = ["def add(a, b):", "import os\n", "class Stack:", "for i in range(", "    return self."]
greedy = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
settings = dict(device=DEVICE, dtype="float32", num_kv_blocks=64, enforce_eager=True, attention_backend="sdpa")
one = LLM(MODEL, **settings)
two = LLM(MODEL, tensor_parallel_size=TP, **settings)
ref = one.generate(prompts, greedy)
out = two.generate(prompts, greedy)
same = [a.outputs[0].token_ids == b.outputs[0].token_ids for a, b in zip(ref, out, strict=True)]
for prompt, o, s in zip(prompts, out, same, strict=True):
    print(f"{'same' if s else 'DIFFERENT'}: {prompt!r} -> {o.outputs[0].text[:40]!r}")
print(f"greedy tokens equal for {sum(same)} of {len(same)} prompts ({TP} processes vs 1, {DEVICE})")

# %% [markdown]
# And the KV cache: each rank's pool holds only its KV heads. The calculator of notebook 01,
# `kv_cache_bytes(config, tokens, tp_size=...)`, predicts the bytes per rank:

# %%
runner = two.engine.runner
per_rank = runner.call("kv_cache_bytes", reply=True)  # asked of every rank
tokens = 64 * runner.block_size
print(f"TP=1 pool: {one.engine.runner.kv_cache.nbytes():,} B for {tokens} tokens")
print(f"TP={TP} pools: {', '.join(f'rank {r}: {b:,} B' for r, b in enumerate(per_rank))}")
print(f"predicted per rank: kv_cache_bytes(config, {tokens}, dtype='float32', tp_size={TP}) = "
      f"{kv_cache_bytes(config, tokens, dtype='float32', tp_size=TP):,} B")

# %% [markdown]
# ## 5. What every token costs in communication
#
# Each layer all-reduces one hidden-size vector per token twice, so the payload per token is
# $2 \times \text{layers} \times \text{hidden} \times \text{bytes}$, whatever the number of GPUs. A ring
# all-reduce (Patarasuk & Yuan 2009) makes each rank send $2(p-1)/p$ of the payload: as much as the
# payload itself at $p = 2$, approaching twice it for large $p$. Computed, and counted by a hook on
# every all-reduce of every rank while one request of 5 tokens runs:

# %%
prompt = one.tokenizer.encode(prompts[0])
runner.call("meter_start", reply=True)
two.generate([prompt], SamplingParams(temperature=0.0, max_tokens=5))
counted = runner.call("meter_stop", reply=True)
through = len(prompt) + 4  # the prompt, then 4 decoded tokens go through the model (the 5th is only sampled)
computed = tp.all_reduce_bytes_per_token(config, "float32")
for r, (calls, nbytes) in enumerate(counted):
    print(f"rank {r}: {calls} all-reduces, {nbytes:,} B = {nbytes / through:,.0f} B per token")
print(f"computed: 2 x {config.num_layers} layers x {config.hidden_size} x 4 B = {computed:,} B per token; "
      f"ring traffic per rank at TP={TP}: {tp.ring_bytes_per_rank(computed, TP):,.0f} B")
for name in ("llama-3.2-1b", "llama-3-8b", "llama-3-70b"):
    c = ModelConfig.from_dict(load_config(name))
    print(f"{name:>13} in bf16: {tp.all_reduce_bytes_per_token(c, 'bfloat16') / 1024:,.0f} KiB per token")

# %%
two.engine.runner.shutdown()  # stop the worker

# %% [markdown]
# A decode step of a batch of $b$ sequences all-reduces $b$ such vectors per layer, twice. How long does
# one all-reduce take as $b$ grows? Live, between two processes on this machine, and recorded between
# two H200s over NCCL (`scripts/gpu/tp.sh`):

# %%
live_ar = bench.time_all_reduce(DEVICE, config.hidden_size, torch.float32, batches=BATCHES, repeats=5, inner=5)
for row in live_ar:
    s = sorted(row["seconds"])
    print(f"batch {row['batch']:>4} ({row['bytes']:>9,} B): {1e6 * s[0]:8.1f} us  (spread {(s[-1] - s[0]) / s[0]:.0%})")
recorded = load_result("tp", "h200")
if recorded is None:
    print("No recorded H200 run yet (data/results/tp-h200.json): scripts/gpu/tp.sh makes one.")

# %%
series = {f"live, {DEVICE} ({'NCCL' if DEVICE.startswith('cuda') else 'gloo'})":
          ([r["bytes"] for r in live_ar], [1e6 * min(r["seconds"]) for r in live_ar])}
if recorded is not None and recorded.get("all_reduce"):
    series["recorded, 2 x H200 (NCCL)"] = ([r["bytes"] for r in recorded["all_reduce"]],
                                           [1e6 * min(r["seconds"]) for r in recorded["all_reduce"]])
lines_figure(series, "One all-reduce over two ranks", "bytes per rank", "microseconds").show()

# %% [markdown]
# Two regimes show up. Small messages cost a fixed latency (the launch, the handshake), nearly flat
# in size; large ones cost bytes over bandwidth, growing linearly. A decode step at batch 1 sends the
# smallest messages there are, $2 \times$ layers of them, one after the other, each on the critical path.
#
# ## 6. When does it pay off?
#
# Halving the weights per GPU halves the bytes each decode step reads, but adds $2 \times$ layers
# all-reduces to every step. `inferlab.bench.tp.time_sharded_matmuls` isolates exactly that trade: one
# decode step's projections (q/k/v, o, gate/up, down) and their all-reduces, attention left out, at
# TP=1 and TP=2, against batch. Live first (the model of this notebook, two processes here):

# %%
live_mm = {t: bench.time_sharded_matmuls(config, t, DEVICE, torch.float32, batches=BATCHES[:3], repeats=3, inner=2)
           for t in (1, TP)}
for b_i, b in enumerate(BATCHES[:3]):
    t1, t2 = (min(live_mm[t][b_i]["seconds"]) for t in (1, TP))
    print(f"batch {b:>3}: TP=1 {1e3 * t1:7.2f} ms, TP={TP} {1e3 * t2:7.2f} ms per step -> TP={TP} is {t1 / t2:4.2f}x as fast")

# %% [markdown]
# Where the ratio is below 1, tensor parallelism loses: for a model this small the step is already
# short, gloo's all-reduces go through the operating system's sockets, and two processes on a small
# machine compete for the same cores. Now the same measurement on two NVLinked H200s over NCCL, for a
# Llama-3.2-1B-shaped model in bf16, each step replayed as a CUDA graph:

# %%
mm = (recorded or {}).get("matmuls")
if mm:
    env = recorded["environment"]
    print(f"{env.get('gpu_name')} x2, torch {env.get('torch')}, {env.get('date')}; {recorded['model']}, {recorded['dtype']}")
    rows = []
    for r1, r2 in zip(mm["1"], mm["2"], strict=True):
        t1, t2 = min(r1["seconds"]), min(r2["seconds"])
        rows.append((r1["batch"], t1, t2))
        print(f"batch {r1['batch']:>4}: TP=1 {1e6 * t1:8.1f} us, TP=2 {1e6 * t2:8.1f} us -> TP=2 is {t1 / t2:4.2f}x as fast")
    mm_series = {"TP=1": ([b for b, _, _ in rows], [1e6 * t for _, t, _ in rows]),
                 "TP=2": ([b for b, _, _ in rows], [1e6 * t for _, _, t in rows])}
    lines_figure(mm_series, "Recorded, 2 x H200: one decode step's projections + all-reduces", "batch",
                 "microseconds per step").show()
else:
    print("No recorded H200 projections yet.")

# %% [markdown]
# Why no gain at batch 1, where decoding is most memory-bound? Put the two recorded numbers side by
# side: the step's weight bytes over the bandwidth the TP=1 step achieved, and $2 \times$ layers
# all-reduces at the recorded small-message latency. The same two terms, with the same measured
# bandwidth and latency, estimate larger models (`tp.decode_step_estimate`; an estimate, for small
# batches only):

# %%
def pays_off(recorded) -> list[str]:
    """Sentences from the recorded H200 numbers and the two-term estimate, so the prose cannot drift from them."""
    mm, ar = recorded["matmuls"], recorded["all_reduce"]
    c1b = ModelConfig.from_dict(load_config(recorded["model"]))
    t1, t2 = min(mm["1"][0]["seconds"]), min(mm["2"][0]["seconds"])
    bw = tp.projection_bytes(c1b) / t1  # bytes/s the TP=1 step achieved at batch 1
    lat = min(ar[0]["seconds"])  # one small all-reduce
    out = [f"- {recorded['model']}, batch 1: TP=1 reads {tp.projection_bytes(c1b) / 1e9:.2f} GB of projection weights "
           f"in {1e6 * t1:.0f} us ({bw / 1e12:.2f} TB/s). Halving them can save at most {1e6 * t1 / 2:.0f} us; the "
           f"{2 * c1b.num_layers} all-reduces cost {2 * c1b.num_layers} x {1e6 * lat:.1f} us = "
           f"{2e6 * c1b.num_layers * lat:.0f} us, and half-size matrix-vector products run less efficiently: "
           f"measured TP=2 {1e6 * t2:.0f} us, {t1 / t2:.2f}x as fast."]
    for name in ("llama-3-8b", "llama-3-70b"):
        c = ModelConfig.from_dict(load_config(name))
        e1, e2 = (tp.decode_step_estimate(c, t, bw, lat) for t in (1, 2))
        weights, gpu = weight_bytes(load_config(name), "bfloat16"), GPUS["H200 141 GB"]["memory"]
        fits = "" if weights < 0.8 * gpu else (f" (TP=1 is only on paper: {weights / 1e9:.0f} GB of weights leave one "
                                               f"H200's {gpu / 1e9:.0f} GB no room for a KV cache)")
        out.append(f"- {name}, estimated: TP=1 {1e3 * e1:.2f} ms, TP=2 {1e3 * e2:.2f} ms per step "
                   f"({e1 / e2:.2f}x); the all-reduces are {2 * c.num_layers * lat / e2:.0%} of the TP=2 step{fits}.")
    return out


if mm:
    display(Markdown("\n".join(pays_off(recorded))))

# %% [markdown]
# The whole engine at TP=1 against TP=2 on the H200s, random bf16 weights of the Llama-3.2-1B shape
# (`scripts/gpu/tp_engine.sh`): the decode step at batch 1 (one request, 128-token prompt: the median
# time from one decode step to the next, scheduling and sampling included), the throughput on a
# reduced reference workload (64 requests, prompts of 64-1024 tokens, 64-128 outputs), the all-reduce
# bytes per token counted while the batch-1 request ran beside the computed payload, and the KV pool
# each rank holds. Each TP size ran twice: eager (`enforce_eager=True`, every kernel launched from
# Python, on a slow host: these lines measure the host more than the GPUs) and with decode steps
# replayed as CUDA graphs (the engine's default). The sentences under the table are computed from
# the same file:

# %%
def engine_lines(recorded) -> tuple[list[str], list[str]]:
    """The recorded engine runs as table lines, and sentences comparing TP=2 with TP=1 in each mode."""
    computed, lines, sentences = recorded["computed_all_reduce_bytes_per_token"], [], []
    for key, mode in (("engine_eager", "eager"), ("engine", "CUDA graphs")):
        runs = {t: r for t, r in recorded.get(key, {}).get("runs", {}).items() if isinstance(r, dict)}
        for t, r in sorted(runs.items()):
            reduced = (f"{r['all_reduce_bytes_per_token']:,.0f} B/token counted ({computed:,} computed)" if t != "1"
                       else f"{r['all_reduce_bytes_per_token']:,.0f} B/token (one rank: nothing to reduce)")
            lines.append(f"{mode:>11}, TP={t}: decode step at batch 1 {r['decode_step_ms_median']:6.2f} ms, "
                         f"throughput {r['throughput_tok_s']:7,.0f} tok/s, KV pool "
                         f"{r['kv_cache_bytes_per_rank'] / 2**30:.2f} GiB per rank, all-reduce {reduced}")
        if {"1", "2"} <= set(runs):
            one, two = runs["1"], runs["2"]
            sentences.append(
                f"- {mode}: TP=2's decode step at batch 1 is {one['decode_step_ms_median'] / two['decode_step_ms_median']:.2f}x "
                f"as fast as TP=1's, its workload throughput {two['throughput_tok_s'] / one['throughput_tok_s']:.2f}x; "
                f"each rank keeps {two['kv_cache_bytes_per_rank'] / one['kv_cache_bytes_per_rank']:.2f} of TP=1's KV pool "
                f"for the same number of blocks.")
    return lines, sentences


eng_lines, eng_sentences = engine_lines(recorded) if recorded else ([], [])
print("\n".join(eng_lines) or "No recorded engine runs.")
if recorded and recorded.get("not_recorded"):
    print("Not recorded:", recorded["not_recorded"])
if eng_sentences:
    display(Markdown("\n".join(eng_sentences)))

# %% [markdown]
# How to read these:
#
# - **Small model, fast GPU: it does not pay.** A 1B model's step is already short, and $2 \times$
#   layers all-reduces of a few microseconds each, one after the other on the critical path, eat
#   what halving the weights saves (the lines above).
# - **Big model, small batch: it pays.** The weight-reading term grows with the model, the all-reduce
#   term only with the number of layers: the estimate for the larger models shows the ratio approaching 2.
# - **Throughput, when the model fits on one GPU: replicas win.** Two GPUs running two independent
#   copies of the model (data parallelism) double the throughput with no communication at all; TP=2 at
#   best matches that.
# - **It is the only way when the model does not fit.** 70B parameters in bf16 are 140 GB of weights:
#   not one H200 with room for a KV cache. TP also buys KV-cache memory: each GPU keeps only its KV heads,
#   so twice the GPUs hold twice the tokens (until the GPUs outnumber the KV heads, §1).
# - **Only over fast links.** Two all-reduces per layer per step need NVLink-class latency and
#   bandwidth. Across machines, or over PCIe, pipeline parallelism (each GPU holds whole layers and passes
#   one activation per token to the next) communicates far less.
#
# ## 7. Myth vs measured: "multi-GPU distribution"
#
# The widely copied tutorial launches a 7B chat model with `--tensor-parallel-size 2` (vLLM) and
# `--num-shard 2` (TGI), and sums the technique up as "Tensor Parallelism: Multi-GPU distribution", as
# if a second GPU were simply more speed.
#
# | the flags suggest | what we measured and computed |
# | --- | --- |
# | 2 GPUs, about 2x faster | A step is not divided by the GPU count: each rank still runs every layer and adds two all-reduces per layer (§5, §6). Compare the live TP=1 and TP=2 lines of §6 on this machine, and what the projections and the engine gained on two H200s. |
# | sharding is free | Every token all-reduces $2 \times$ layers $\times$ hidden values (§5): 128 KiB per token for a 1B model in bf16, 2.5 MiB for a 70B one, and in a ring each rank sends about that much again. |
# | a 7B model needs two GPUs | In bf16 its weights are about 13.5 GB (7 billion × 2 bytes): they fit on one 24 GB GPU, and two replicas then serve more requests than one two-GPU shard (§6). TP=2 buys lower latency per token and twice the KV-cache room, not free throughput. |
# | more GPUs, always less memory per GPU | Weights, yes. The KV cache stops shrinking once GPUs outnumber KV heads (§1: Llama-3-70B's 8 KV heads cost as much per GPU at TP=16 as at TP=8). |
#
# ## 8. When one machine is not enough
#
# Our engine stops at one machine; production engines go further. vLLM (docs: "Distributed inference
# and serving") takes tensor parallelism within a machine and pipeline parallelism across machines:
#
# ```bash
# # one machine, 4 GPUs: tensor parallelism
# vllm serve meta-llama/Llama-3.1-70B-Instruct --tensor-parallel-size 4
# # the same from Python
# python -c "from vllm import LLM; LLM('meta-llama/Llama-3.1-70B-Instruct', tensor_parallel_size=4)"
# # two machines of 8 GPUs over Ray: TP inside each machine, PP across them
# ray start --head --port=6379                  # on the head machine
# ray start --address=<head-ip>:6379            # on every other machine
# vllm serve meta-llama/Llama-3.1-405B-Instruct \
#     --tensor-parallel-size 8 --pipeline-parallel-size 2 --distributed-executor-backend ray   # on the head
# ```
#
# Text Generation Inference shards a model over the GPUs of one machine (`--num-shard N`, or
# `--sharded true` for all of them); it has no pipeline-parallel or multi-machine mode:
#
# ```bash
# docker run --gpus all --shm-size 1g -p 8080:80 ghcr.io/huggingface/text-generation-inference:latest \
#     --model-id meta-llama/Llama-3.1-70B-Instruct --num-shard 4
# ```
#
# The rule of thumb in vLLM's documentation: tensor-parallel size = GPUs per machine, pipeline-parallel
# size = number of machines; and none of it while the model fits on one GPU.
#
# ## 9. Exercises
#
# Each exercise starts blank and says "not answered yet" until you answer; `solution("...")` prints a
# worked answer.
#
# **1.** Write `row_parallel(x, weight, size)`: cut `weight` (`[out, in]`) into `size` slices of input
# columns and `x` to match, multiply each pair as one rank would, and add up the partial results, as the
# all-reduce does. It must equal `x @ weight.T`.

# %%
from inferlab.exercises.tp import check_all_reduce_bytes, check_kv_per_gpu, check_row_parallel, solution  # noqa: E402


def row_parallel(x, weight, size):
    # your code here
    raise NotImplementedError


check_row_parallel(row_parallel)

# %% [markdown]
# Solution: run `solution("row_parallel")`.
#
# **2.** Llama-3-70B has 80 layers and 8 KV heads of dimension 128. How many bytes of KV cache does one
# token cost on *each* GPU in bf16 at TP=16?

# %%
answer = None  # your answer, in bytes
check_kv_per_gpu(answer)

# %% [markdown]
# Solution: `solution("kv_per_gpu")`.
#
# **3.** Llama-3-8B has 32 layers and hidden size 4096. How many bytes does each rank all-reduce per
# token in bf16 (the payload, not the ring's traffic)?

# %%
answer = None  # your answer, in bytes
check_all_reduce_bytes(answer)

# %% [markdown]
# Solution: `solution("all_reduce_bytes")`.
#
# ## 10. Summary
#
# - Tensor parallelism cuts every weight matrix: column-parallel (outputs split, no communication),
#   then row-parallel (inputs split, partial sums), then one all-reduce: two per layer.
# - Attention splits by heads, and each GPU caches only its KV heads; more GPUs than KV heads replicate
#   heads, and the cache per GPU stops shrinking.
# - Our engine runs `LLM(model, tensor_parallel_size=2)`: rank 0 schedules and sends each step to the
#   workers; greedy output equals one process's, and each rank's KV pool is what `kv_cache_bytes(...,
#   tp_size=2)` predicts (§4).
# - Every token all-reduces $2 \times$ layers $\times$ hidden values. At small batch an all-reduce costs
#   a fixed latency, at large batch bandwidth (§5). TP pays for latency on big models over fast links, and
#   when a model does not fit on one GPU; for throughput on a model that fits, replicas win (§6).
#
# **References**
#
# - M. Shoeybi, M. Patwary, R. Puri, P. LeGresley, J. Casper, B. Catanzaro. *Megatron-LM: Training
#   Multi-Billion Parameter Language Models Using Model Parallelism.* 2019.
# - R. Pope, S. Douglas, A. Chowdhery, J. Devlin, J. Bradbury, A. Levskaya, J. Heek, K. Xiao, S. Agrawal,
#   J. Dean. *Efficiently Scaling Transformer Inference.* MLSys 2023.
# - P. Patarasuk, X. Yuan. *Bandwidth optimal all-reduce algorithms for clusters of workstations.* JPDC 2009.
# - vLLM documentation: *Distributed inference and serving*; Text Generation Inference: launcher arguments
#   (`--num-shard`, `--sharded`).
# - nano-vllm (`layers/linear.py`, `engine/model_runner.py`) and gpt-fast (`tp.py`), for the shape of
#   the code.
