# %% [markdown]
# # 01 · The two bottlenecks: KV-cache memory and memory bandwidth
#
# **What you will do here**
#
# - derive how many bytes the KV cache costs per token, for multi-head, grouped-query,
#   multi-query and latent attention, with sliding windows and quantized caches;
# - check the formula against the cache a real forward pass builds, byte for byte;
# - size a deployment with a calculator: weights vs KV vs free memory, and how many
#   concurrent users fit on a T4, an A100, an H100 or an H200;
# - measure prefill and decode live, place them on a roofline, and see why decoding one
#   token at a time leaves a GPU's arithmetic idle, next to a recorded H200 run.
#
# Papers behind it: Kwon et al. 2023 (vLLM / PagedAttention), Shazeer 2019 (multi-query
# attention), Ainslie et al. 2023 (grouped-query attention), DeepSeek-AI 2024 (multi-head latent
# attention, DeepSeek-V2 and V3), Williams, Waterman & Patterson 2009 (the roofline model).

# %% tags=["parameters"]
import os

MODEL = os.environ.get("INFERLAB_MODEL", "tiny")
DEVICE = os.environ.get("INFERLAB_DEVICE") or None  # None: cuda, then mps, then cpu
CALC_MODEL, CALC_GPU, CALC_CONTEXT, CALC_BATCH = "llama-3-8b", "H100 80 GB", 8192, 16
ROOFLINE_MODEL = MODEL  # what the live roofline runs
BATCH_SIZES = [1, 4, 16, 64]  # decode batch sizes measured live
CONTEXT = 128  # tokens in the KV cache while decoding
STEPS = 6  # timed decode steps per batch size
PROMPT_LENS = [32, 128, 512]  # prefill lengths measured live
COPY_BYTES, MATMUL_N = 1 << 26, 512  # sizes of the bandwidth and matmul probes

import torch  # noqa: E402

if torch.cuda.is_available():  # a GPU: the benchmark's 1B-shaped model with random bf16 weights
    ROOFLINE_MODEL = "llama-3.2-1b" if MODEL == "tiny" else MODEL
    BATCH_SIZES, CONTEXT, STEPS, PROMPT_LENS = [1, 4, 16, 64, 256], 1024, 16, [128, 512, 2048, 8192]
    COPY_BYTES, MATMUL_N = 1 << 31, 8192

# %% [markdown]
# ## 1. Intuition: what a decoder keeps, and why it adds up
#
# A causal LM writes one token at a time. To write token $t$, every layer's attention needs the
# keys and values of tokens $1 \dots t-1$. Recomputing them would redo the whole prompt at every
# step, so servers keep them: the **KV cache**. It grows by one entry per layer per token, and it
# belongs to one request: nothing in it is shared with the next user (until prefix caching,
# notebook 02).
#
# Per token, across the $L$ layers, with $b$ bytes per stored number:
#
# $$\text{bytes per token} = 2 \cdot L \cdot n_{kv} \cdot d_{head} \cdot b$$
#
# The 2 is one key and one value. What matters is $n_{kv}$, the number of **key/value heads**:
#
# | attention | K/V heads | example |
# | --- | --- | --- |
# | multi-head (MHA) | $n_{kv} = n_{heads}$ | Llama-2-7B: 32 of 32 |
# | grouped-query (GQA, Ainslie et al. 2023) | groups of query heads share one K/V head | Llama-3-8B: 8 for 32 query heads |
# | multi-query (MQA, Shazeer 2019) | $n_{kv} = 1$ | our `tiny-draft` |
# | multi-head latent (MLA, DeepSeek-V2/V3) | one compressed latent of width $d_c$ plus a shared RoPE key $d_R$ | DeepSeek-V3: $d_c + d_R = 512 + 64$ |
#
# For MLA the per-token cost is $L \cdot (d_c + d_R) \cdot b$: every head's keys and values are
# recovered from the latent by up-projections, which can be folded into the query and output
# projections, so the per-head vectors never need to be stored.
#
# Two refinements complete the picture:
#
# - **Sliding windows.** A layer that only attends to the last $W$ tokens never needs more than
#   $W$ of them: Mistral-7B v0.1 caps every layer at 4,096; Gemma-2 alternates capped (local)
#   and uncapped (global) layers. The cache of a $T$-token sequence is
#   $\sum_{\text{layers}} \min(T, W_\ell) \cdot$ (bytes per token per layer).
# - **Quantized caches.** fp8 halves the fp16 cache; int8 and int4 also store scales.
#   Our convention (stated in `inferlab.kvcache`): int8 keeps one fp16 scale per head per token;
#   int4 keeps an fp16 scale and zero point per 64 numbers; fp8 keeps one scale per layer.
#
# Multiply by the number of tokens and the number of sequences in the batch, and the cache,
# not the weights, decides how many users a GPU serves.

# %% [markdown]
# ## 2. Build it with the library
#
# `inferlab.kvcache` reads a config (a name from `data/configs/`, a dict, or a transformers
# config) and applies the formula, layer by layer. First, the classic example: the original
# LLaMA-7B (32 layers, 32 heads of 128) holding one 2,048-token sequence in fp16.

# %%
# NBVAL_CHECK_OUTPUT
from inferlab.kvcache import kv_bytes_per_token, kv_cache_bytes
from inferlab.units import format_bytes

n = kv_cache_bytes("llama-7b", seq_len=2048, batch_size=1, dtype="float16")
print(f"2 x 32 x 32 x 128 x 2048 x 2 = {2 * 32 * 32 * 128 * 2048 * 2:,} bytes")
print(f"kv_cache_bytes(...)          = {n:,} bytes = {format_bytes(n, 'GiB')} = {format_bytes(n, 'GB')}")
n32 = kv_cache_bytes("llama-7b", 2048, batch_size=32)
print(f"batch of 32                  = {format_bytes(n32, 'GiB')} = {format_bytes(n32, 'GB')}")

# %% [markdown]
# The same number is "1 GiB" and "1.07 GB": $2^{30}$ bytes is $1.074 \times 10^9$ bytes.
# GPU memory sizes are quoted in a mix of both (nvidia-smi reports MiB; datasheets say GB),
# so this notebook always names the unit: **GiB** = $2^{30}$ bytes, **GB** = $10^9$ bytes.

# %% [markdown]
# ## 3. Measure it: the formula against a real cache
#
# Predictions are cheap; let us check one. We run the embedded `tiny` model (a Llama with
# 8 layers, 8 query heads but only **2** K/V heads of 32 dimensions) on random prompts and count
# the bytes of the key and value tensors transformers actually stored.

# %%
# NBVAL_CHECK_OUTPUT
import inferlab as il
from inferlab.hf_compat import cache_of
from inferlab.kvcache import measured_cache_bytes

model, tok = il.load_model(MODEL, device="cpu", dtype="float32")
layer0 = None
lines = [f"{'dtype':<9} {'batch':>5} {'tokens':>6} {'formula':>12} {'measured':>12}  equal"]
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    m = model.to(dtype)
    for batch, length in [(1, 1), (1, 100), (4, 64), (8, 500)]:
        ids = torch.randint(2, m.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            cache = cache_of(m(ids, use_cache=True))
        predicted = kv_cache_bytes(m.config, length, batch, dtype=str(dtype))
        measured = measured_cache_bytes(cache)
        layer0 = layer0 or tuple(cache.layers[0].keys.shape)
        lines.append(f"{str(dtype)[6:]:<9} {batch:>5} {length:>6} {predicted:>12,} {measured:>12,}  {predicted == measured}")
model = model.to(torch.float32)
print("\n".join(lines))
print("layer 0 keys, shape [batch, K/V heads, tokens, head_dim]:", layer0)

# %% [markdown]
# Every row matches to the byte, and the shape shows why: the cache holds 2 heads per layer,
# not the 8 query heads. (The tests in `tests/test_kvcache.py` do the same for decode steps,
# for a Mistral-style sliding window, a Gemma-2-style local/global stack and DeepSeek's latent
# attention, built as small random transformers models.)
#
# One detail they surfaced: for a window of $W$, transformers keeps $W-1$ tokens between steps,
# because the next token brings its own key and value. Our formula reserves the full $W$, which
# is what a serving system must hold while that next token's attention runs.

# %% [markdown]
# ## 4. Every shipped config, per token
#
# The published shapes live in `data/configs/` (facts only: layers, heads, K/V heads, head
# size, windows, MLA ranks). The "one sequence" column fills each model's context up to 4,096
# tokens, with windows applied. For DeepSeek-V3 (MLA) the `kv` and `hdim` columns mean one
# latent of 512 + 64 numbers.

# %%
# NBVAL_CHECK_OUTPUT
from inferlab.kvcache import per_token_table
from inferlab.viz.kvcache import per_token_text

print(per_token_text(per_token_table(dtype="float16")))

# %% [markdown]
# ## 5. Myth vs measured
#
# The formula that circulates in tutorials, $2 \cdot L \cdot n_{heads} \cdot d_{head} \cdot
# \text{tokens} \cdot b$, is right for multi-head attention and wrong for almost every model
# released since 2023. Grouped-query attention was adopted precisely to shrink the cache.

# %%
# NBVAL_CHECK_OUTPUT
from inferlab.kvcache import naive_kv_cache_bytes

for name in ["llama-2-7b", "llama-3-8b", "llama-3-70b", "qwen2.5-7b"]:
    myth, real = naive_kv_cache_bytes(name, 1), kv_bytes_per_token(name)
    print(f"{name:<12} n_heads formula {format_bytes(myth, 'KiB'):>12}   cached {format_bytes(real, 'KiB'):>11}"
          f"   overstated {myth / real:.0f}x")

# %%
from inferlab.viz import setup_plotly
from inferlab.viz.kvcache import gqa_myth_figure

setup_plotly()
gqa_myth_figure(per_token_table(["llama-2-7b", "llama-3-8b", "mistral-7b", "qwen2.5-7b", "llama-3-70b",
                                 "llama-3.1-405b", "gemma-2-9b", "deepseek-v3"], "float16")).show()

# %% [markdown]
# | what is often said | what we measured |
# | --- | --- |
# | KV bytes $= 2 \cdot L \cdot n_{heads} \cdot d_{head} \cdot T \cdot b$ | Only for MHA. The cache stores $n_{kv}$ heads: Llama-3-8B caches **128 KiB** per fp16 token, not 512 KiB (4× less); Qwen2.5-7B 56 KiB, not 392 KiB (7× less). The tiny model's cache tensors above have 2 heads, not 8. |
# | "LLaMA-7B, 2,048 tokens, fp16: 1.07 GB per sequence" | It is exactly **1 GiB** ($2^{30}$ B); 1.07 GB is the same amount in decimal units. |
# | "batch 32: ~34 GB of KV" | 32 GiB (34.4 GB) for MHA LLaMA-7B; a GQA model of the same size (Llama-3-8B) needs 8 GiB. |
# | The cache grows linearly with context, always | Not with sliding windows: Mistral-7B v0.1 stops at 4,096 tokens per layer; Gemma-2 grows at half speed past 4,096 (the figure below). MLA (DeepSeek-V3) caches 69 KiB per token for a 671B model, less than Llama-3-8B's 128 KiB. |

# %% [markdown]
# ## 6. The calculator: weights vs KV vs free memory
#
# Pick a model, a context length, a batch, the cache's dtype, the tensor-parallel degree and a
# GPU. The bar shows one GPU: weights (bf16, sharded by TP), a 10% reserve for activations and
# the CUDA context (vLLM's default `gpu_memory_utilization=0.9` leaves the same), the KV cache of
# your batch, and what is left. The title says how many sequences of that length fit at once.
#
# Under tensor parallelism each GPU keeps $\lceil n_{kv} / TP \rceil$ K/V heads; beyond
# $TP = n_{kv}$ heads are replicated, so the per-GPU cache stops shrinking. (An MLA latent is
# replicated on every GPU.)

# (Read without a running kernel, on GitHub or nbviewer, the cell shows a picture of its default setting.)

# %%
from inferlab.viz.kvcache import calculator

calculator(model=CALC_MODEL, seq_len=CALC_CONTEXT, batch_size=CALC_BATCH, gpu=CALC_GPU)

# %% [markdown]
# How many 8K-token users fit, GPU by GPU, with the weights in bf16, for a GQA model and an
# MHA model of the same size, and what an fp8 cache buys:

# %%
# NBVAL_CHECK_OUTPUT
from inferlab.configs import GPUS, gpu_memory_bytes
from inferlab.kvcache import max_concurrent_sequences

print(f"{'GPU':<12} {'memory':>11}  {'Llama-2-7B fp16':>15} {'Llama-3-8B fp16':>15} {'Llama-3-8B fp8':>14}")
for gpu in GPUS:
    mem = gpu_memory_bytes(gpu)
    fits = [max_concurrent_sequences(m, mem, 8192, dtype=d) for m, d in
            [("llama-2-7b", "fp16"), ("llama-3-8b", "fp16"), ("llama-3-8b", "fp8")]]
    print(f"{gpu:<12} {format_bytes(mem, 'GiB'):>11}  {fits[0]:>15} {fits[1]:>15} {fits[2]:>14}")

# %% [markdown]
# Two more knobs, per token of Llama-3-70B (80 layers, 8 K/V heads of 128): the cache's dtype
# (with the scale overhead of our convention) and the tensor-parallel degree (bytes on each GPU).

# %%
# NBVAL_CHECK_OUTPUT
print("KV dtype   per token     vs fp16")
for d in ["float32", "float16", "fp8", "int8", "int4"]:
    b = kv_bytes_per_token("llama-3-70b", d)
    print(f"{d:<8} {format_bytes(b, 'KiB'):>11}   {b / kv_bytes_per_token('llama-3-70b', 'float16'):6.3f}x")
print("\nTP  K/V heads per GPU  per token per GPU")
for tp in [1, 2, 4, 8, 16]:
    b = kv_bytes_per_token("llama-3-70b", "float16", tp_size=tp)
    print(f"{tp:>2}  {-(-8 // tp):>17}  {format_bytes(b, 'KiB'):>17}")

# %% [markdown]
# int8 costs 2 bytes of scale per 128 numbers (1.6% over fp8); int4 stores a scale and a zero
# point per 64 numbers, so it saves 72%, not 75%. Past TP = 8 each GPU still holds one whole
# K/V head: the cache per GPU stops shrinking while the weights keep being split.

# %% [markdown]
# These are full-length reservations: a server that reserves 8,192 slots per request fits
# this many. Real requests are shorter and of unknown length; notebook 02 shows how paging
# (vLLM) stops reserving what a request has not yet used.
#
# And the cache of one sequence as it grows, for models with and without windows:

# %%
from inferlab.viz.kvcache import context_sweep_figure

contexts = [2**k for k in range(8, 18)]
sweep_models = ["llama-2-7b", "llama-3-8b", "mistral-7b", "gemma-2-9b", "qwen2.5-7b", "deepseek-v3"]
context_sweep_figure(contexts, {m: [kv_cache_bytes(m, c, 1, "float16") for c in contexts] for m in sweep_models}).show()

# %% [markdown]
# ## 7. The second bottleneck: bytes per FLOP
#
# Memory capacity decides how many sequences fit. Memory **bandwidth** decides how fast they go.
#
# A forward step does $F$ FLOPs and moves $B$ bytes. A device with peak $P$ FLOP/s and
# bandwidth $W$ bytes/s needs at least $\max(F/P,\ B/W)$ seconds. The **arithmetic intensity**
# $I = F/B$ says which term wins (Williams et al. 2009): below the *ridge point* $P/W$ the step
# waits on memory.
#
# - **Prefill** multiplies $T$ prompt tokens by each weight matrix: $F \approx 2 \cdot N \cdot T$
#   for $N$ parameters, while the weights ($N \cdot b$ bytes) are read once. $I$ grows with $T$.
# - **Decode** multiplies *one* token per sequence by every weight and reads the whole KV cache:
#   with bf16 weights $I \approx$ batch size (2 FLOPs per 2-byte weight per sequence), minus
#   what the cache adds.
#
# NVIDIA's H200 datasheet gives 989 dense bf16 TFLOP/s (1,979 with 2:4 sparsity) and 4.8 TB/s of
# HBM3e bandwidth; the ridge is their ratio (printed below). Here is the Llama-3.2-1B shape from its
# config (bf16 weights and cache):

# %%
# NBVAL_CHECK_OUTPUT
from inferlab import roofline as rl
from inferlab.configs import gpu_roof

peak, bw = gpu_roof("H200 141 GB")
print(f"H200 ridge point: {rl.ridge_point(peak, bw):.0f} FLOP/byte\n")
print(f"{'step':<28} {'GFLOP':>9} {'GB moved':>9} {'FLOP/byte':>10} {'bound':>7}")
for label, cost in [("prefill, 1 x 128 tokens", rl.prefill_cost("llama-3.2-1b", 128)),
                    ("prefill, 1 x 2048 tokens", rl.prefill_cost("llama-3.2-1b", 2048)),
                    ("decode, batch 1, 1K ctx", rl.decode_cost("llama-3.2-1b", 1, 1024)),
                    ("decode, batch 64, 1K ctx", rl.decode_cost("llama-3.2-1b", 64, 1024)),
                    ("decode, batch 64, 32K ctx", rl.decode_cost("llama-3.2-1b", 64, 32768))]:
    kind = "compute" if cost["intensity"] > rl.ridge_point(peak, bw) else "memory"
    print(f"{label:<28} {cost['flops'] / 1e9:>9,.1f} {cost['bytes'] / 1e9:>9.2f} {cost['intensity']:>10.1f} {kind:>7}")
print(f"\nbatch-1 decode ceiling: {rl.decode_tokens_per_s_bound('llama-3.2-1b', 1, 1024, bw, peak):,.0f} tokens/s at 4.8 TB/s")

# %% [markdown]
# Even a 128-token prefill is below the H200's ridge (short prompts do not fill it); 2,048 tokens
# are well above. Decode at batch 1 sits two hundred times below: the arithmetic units wait for
# weights to arrive. Batching reuses each weight read for many sequences, which is why servers
# batch; but at long contexts every sequence brings its own cache, and intensity falls again.

# %% [markdown]
# ## 8. Measure it live, next to a recorded H200
#
# `inferlab.bench.roofline` measures this device's two roofs (a large copy for bandwidth, a
# large matmul for compute), then times prefill at a few prompt lengths and decode steps with
# a KV cache at a few batch sizes, and pairs each decode step with its bound
# (weights + KV bytes) / measured bandwidth. `python -m inferlab.bench roofline` runs the same
# with bigger sizes and saves JSON.

# %%
from inferlab.bench import load_result
from inferlab.bench import roofline as bench
from inferlab.viz.kvcache import roofline_text

live = bench.run(DEVICE, progress=False, model=ROOFLINE_MODEL, batch_sizes=BATCH_SIZES, context=CONTEXT,
                 steps=STEPS, prompt_lens=PROMPT_LENS, copy_bytes=COPY_BYTES, matmul_n=MATMUL_N, generate_tokens=16)
recorded = load_result("roofline", "h200")
print(roofline_text(live, f"live ({live['device']})"))
if recorded:
    print()
    print(roofline_text(recorded, "recorded H200"))
else:
    print("\nNo recorded H200 run yet (data/results/roofline-h200.json): scripts/gpu/roofline.sh makes one.")

# %%
from inferlab.viz.kvcache import decode_batch_figure, roofline_figure

runs = {f"live {live['device']}": live, "recorded H200": recorded}
roofline_figure(runs).show()
decode_batch_figure(runs).show()

# %% [markdown]
# How to read the two figures:
#
# - In the roofline, prefill points (diamonds) move right with prompt length and climb toward
#   the flat compute roof; decode points (circles) sit on the left, under the bandwidth slope,
#   moving right as the batch grows.
# - On the GPU, batch-1 decode is far below even the bandwidth bound (the numbers are printed
#   below, from the recorded run). Each step launches hundreds of small kernels from Python; at
#   batch 1 that launch overhead, not memory, is the wall. Batching amortizes it (throughput
#   climbs with batch), and CUDA graphs and fused kernels, as in vLLM, remove most of it. The
#   recorded run also times `generate` with a static cache, which transformers compiles into CUDA
#   graphs on a GPU (the second star): the distance between the two stars is launch overhead, not
#   memory traffic. At large batches another cost appears that the bound leaves out:
#   transformers' `DynamicCache` grows by concatenation, so every step also copies the cache.
# - A CPU has a low ridge (a few FLOP per byte: modest arithmetic, decent bandwidth), so the tiny
#   model's decode crosses it after a handful of sequences and its bound turns into a compute
#   bound (the flat part of the dashed line). Its weights are small (the live line above prints
#   their size) and each step runs dozens of tiny PyTorch operations, so per-step Python overhead
#   dominates at small batches and the measured points sit far under the roof here too.

# %%
from inferlab.viz.kvcache import recorded_decode_sentence

print(recorded_decode_sentence(recorded) if recorded else "No recorded GPU run yet.")

# %% [markdown]
# | what is often said | what we measured |
# | --- | --- |
# | "Decode is memory-bound" | Its *ceiling* is set by bandwidth (weights + KV bytes per step). In eager PyTorch at batch 1 it does not even reach that ceiling: the recorded H200 run is launch-bound (the line above gives its numbers). |
# | "Generate one token at a time: low GPU utilization" | True, and batching is the remedy: more sequences per weight read raise the intensity until the KV cache, which is read per sequence, dominates the bytes. |

# %% [markdown]
# ### 8.1 What a real engine reaches: eager steps vs one CUDA graph per step
#
# The decode timings above run a model the way a first implementation does: Python calls each
# layer, and every layer launches a dozen small GPU kernels. At batch 1 each kernel moves only a
# few megabytes, so launching it can cost more than running it. inferlab's engine captures the
# whole decode step (embedding to logits) as a CUDA graph and replays it with one launch
# (`inferlab.engine.model_runner.DecodeGraphs`). Below: one decode step of the engine, eager,
# replayed as a graph (on a GPU), and the memory-bandwidth bound (weights + KV cache / copy bandwidth).

# %%
import torch

from inferlab.bench.engine import decode_modes
from inferlab.viz.engine import decode_modes_figure

ENGINE_MODEL = "llama-3.2-1b" if torch.cuda.is_available() else "tiny"  # random weights of the 1B shape on a GPU
modes = decode_modes(ENGINE_MODEL, DEVICE, batch=1, context=256 if torch.cuda.is_available() else 64)
for mode in ("eager", "graphed"):
    if mode in modes:
        print(f"{mode:8s} {modes[mode]['s_per_step'] * 1e3:8.2f} ms/step  {modes[mode]['tok_s']:9.1f} tok/s  "
              f"{100 * modes[mode]['tok_s'] / modes['bound_tok_s']:5.1f}% of the bound")
print(f"bound    {modes['bound_tok_s']:9.1f} tok/s at {modes['bandwidth_bytes_s'] / 1e9:.0f} GB/s measured copy bandwidth")
if "graphed" not in modes:
    print("(no CUDA here: CUDA graphs need a GPU; the recorded H200 run is in notebook 03)")
decode_modes_figure(modes)

# %% [markdown]
# On the H200 the recorded run (data/results/engine-h200.json) timed the same step of the 1B
# shape both ways, beside its bandwidth bound; the cell below prints them. The graph removes the
# launch overhead; what is left is kernel quality at batch 1 (matrix-vector products that do not
# reach full bandwidth, and a few hundred small kernels that each cost a few microseconds).

# %%
from inferlab.bench import load_result

recorded = load_result("engine", "h200")
if recorded:
    step = recorded["decode_step"]["1"]
    print(f"H200, batch 1, context {step['context']}: eager {1e3 * step['eager_s']:.2f} ms, "
          f"graphed {1e3 * step['graphed_s']:.2f} ms, bound {1e3 * step['bound_s']:.2f} ms "
          f"({100 * step['graphed_fraction_of_bandwidth']:.0f}% of copy bandwidth)")

# %% [markdown]
# ## 9. Exercises
#
# **Exercise 1.** Write `kv_per_token(config, bytes_per_element)` for a Hugging Face-style
# config dict (keys `num_hidden_layers`, `num_attention_heads`, `num_key_value_heads`,
# `head_dim`). The checker tries six models, MHA to MQA.

# %%
from inferlab.exercises.kvcache import check_decode_bound, check_kv_per_token, check_max_sequences, solution


def kv_per_token(config, bytes_per_element):
    raise NotImplementedError("your code here")  # stuck? solution("kv_per_token")


check_kv_per_token(kv_per_token)

# %% [markdown]
# **Exercise 2.** Llama-3-8B ($8.03 \times 10^9$ parameters, bf16 weights, 128 KiB of fp16 KV per
# token) on an A100 80 GB (81,920 MiB). Hold back 10% of the memory. How many 8,192-token
# sequences fit at once?

# %%
answer = None  # your answer, a whole number of sequences; stuck? solution("max_sequences")
check_max_sequences(answer, model="llama-3-8b", gpu="A100 80 GB", seq_len=8192)

# %% [markdown]
# **Exercise 3.** An H200 moves 4.8 TB/s. The Llama-3.2-1B shape streams 2.47 GB of bf16
# weights per decode step. What is the most tokens per second batch-1 decode can reach?

# %%
answer = None  # your answer, tokens per second; stuck? solution("decode_bound")
check_decode_bound(answer, model="llama-3.2-1b", bandwidth=4.8e12)

# %% [markdown]
# ## 10. Summary
#
# - The KV cache costs $2 \cdot L \cdot n_{kv} \cdot d_{head} \cdot b$ bytes per token: use the
#   K/V heads, not the query heads. GQA cuts it 4–8× for Llama-3 and Qwen2.5; MLA caches one
#   small latent per layer; sliding windows cap it.
# - Our formula matches the bytes transformers allocates, for every dtype, batch and length we
#   tried. It turns into a capacity plan: weights + reserve + KV per sequence → users that fit.
# - Prefill is compute-bound; decode has a memory-bandwidth ceiling, and at batch 1 in eager
#   PyTorch it falls far short even of that. Batching is the lever; notebooks 02–03 build the
#   memory manager and the scheduler that let a server batch many requests of unknown length.
#
# **References**
#
# - W. Kwon et al. *Efficient Memory Management for Large Language Model Serving with
#   PagedAttention.* SOSP 2023. [arXiv:2309.06180](https://arxiv.org/abs/2309.06180)
# - N. Shazeer. *Fast Transformer Decoding: One Write-Head is All You Need.* 2019.
#   [arXiv:1911.02150](https://arxiv.org/abs/1911.02150)
# - J. Ainslie et al. *GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
#   Checkpoints.* EMNLP 2023. [arXiv:2305.13245](https://arxiv.org/abs/2305.13245)
# - DeepSeek-AI. *DeepSeek-V2* (2024, [arXiv:2405.04434](https://arxiv.org/abs/2405.04434)) and
#   *DeepSeek-V3 Technical Report* (2024, [arXiv:2412.19437](https://arxiv.org/abs/2412.19437)).
# - S. Williams, A. Waterman, D. Patterson. *Roofline: An Insightful Visual Performance Model
#   for Multicore Architectures.* CACM 52(4), 2009.
# - A. Q. Jiang et al. *Mistral 7B.* 2023 ([arXiv:2310.06825](https://arxiv.org/abs/2310.06825));
#   Gemma Team. *Gemma 2.* 2024 ([arXiv:2408.00118](https://arxiv.org/abs/2408.00118)).
