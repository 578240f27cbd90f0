# %% [markdown]
# # 07 · FlashAttention from scratch
#
# **What you will do here**
#
# - see where attention's memory goes: a score for every (query, key) pair, and why that matrix,
#   not the arithmetic, is what makes textbook attention slow on a GPU;
# - work the *online softmax* by hand on five numbers, the trick that lets attention run one
#   tile at a time;
# - build FlashAttention's forward pass in PyTorch (`inferlab.attention.flash`), check it equals
#   `torch.nn.functional.scaled_dot_product_attention` (SDPA), and watch its tiles move through
#   fast memory step by step;
# - measure peak memory and time against sequence length live, and read the same sweep recorded
#   on an H200, where our Triton kernel runs beside SDPA's backends and FlexAttention;
# - test the widely copied tutorial's one line on the subject, "2-4x faster attention, less
#   memory", against what we measure.
#
# Papers behind it: Dao, Fu, Ermon, Rudra & Ré 2022 (*FlashAttention: Fast and Memory-Efficient
# Exact Attention with IO-Awareness*); Dao 2023 (*FlashAttention-2: Faster Attention with Better
# Parallelism and Work Partitioning*); Milakov & Gimelshein 2018 (*Online normalizer calculation
# for softmax*).

# %% tags=["parameters"]
import os

MODEL = os.environ.get("INFERLAB_MODEL", "tiny")  # whose attention layer is measured: heads, KV heads, head dim
DEVICE = os.environ.get("INFERLAB_DEVICE") or None  # None: cuda, then mps, then cpu
LENGTHS = [256, 512, 1024, 2048]  # sequence lengths of the live sweep
BLOCK = 64  # tile size of the drawings

import torch  # noqa: E402

if torch.cuda.is_available():  # a GPU: one Llama-3.2-1B layer, to 8k tokens
    LENGTHS = [1024, 2048, 4096, 8192]
    MODEL = "llama-3.2-1b" if MODEL == "tiny" else MODEL

# %%
import math

from IPython.display import Markdown, display

from inferlab.attention.flash import flash_attention, online_softmax_steps, tile_schedule
from inferlab.attention.naive import naive_attention, visible_keys
from inferlab.bench import attention as bench
from inferlab.bench import load_result
from inferlab.configs import model_shape
from inferlab.device import pick_device
from inferlab.viz import setup_plotly
from inferlab.viz.flash import memory_time_figure, speedup_static, tiling_animation, tiling_static

setup_plotly()
DEVICE = pick_device(DEVICE)
shape = model_shape(MODEL)  # a name in data/configs or an embedded model: no download
HEADS, KV_HEADS, HEAD_DIM = shape.n_heads, shape.n_kv_heads, shape.head_dim
print(f"device: {DEVICE} | torch {torch.__version__} | {MODEL}'s attention: {HEADS} query heads, "
      f"{KV_HEADS} KV heads, head dim {HEAD_DIM}")

# %% [markdown]
# ## 1. Intuition: attention's memory is a square
#
# For one head, attention is $O = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt d}\right)V$ with
# $Q$ of shape $[L, d]$ and $K, V$ of shape $[L, d]$. The middle of that formula,
# $S = QK^\top/\sqrt d$, has one entry per (query, key) pair: $L \times L$ numbers, per head,
# per layer. Written as the formula reads, it is built, written to memory, read back by the
# softmax, written again as probabilities $P$, and read again for $PV$. Everything else is
# $L \times d$: linear in the length.
#
# How big is that square for one layer of a small model? The cell prints it for Llama-3.2-1B's
# 32 query heads, in float32 as a careful implementation keeps scores.

# %%
# NBVAL_CHECK_OUTPUT
for length in (1024, 8192, 32768, 131072):
    scores = 32 * length * length * 4  # heads x L x L x 4 bytes
    qkv_out = 4 * 32 * length * 64 * 2  # Q, K, V, O in bf16 (32 heads of 64 dims)
    print(f"L = {length:>6}: scores {scores / 2**30:10.2f} GiB   Q, K, V and O {qkv_out / 2**30:6.3f} GiB")

# %% [markdown]
# At 32k tokens one layer's score matrix would not fit next to anything else on an H200 (141 GB
# by NVIDIA's datasheet). And size is only half of it. A GPU has a small, fast memory inside each
# streaming multiprocessor, its registers and shared memory, and a large, slower one, its HBM.
# Dao et al. 2022 (§2.1) give an A100's numbers: 40–80 GB of HBM at 1.5–2.0 TB/s against 192 KB
# of on-chip SRAM in each of 108 SMs at about 19 TB/s. Softmax and masking do a few operations per
# score, so when every score makes a round trip through HBM, attention is bound by memory
# traffic, not arithmetic.
#
# FlashAttention's idea is to keep the square on chip: cut $Q$ into tiles of rows, stream
# tiles of $K$ and $V$ past each query tile, and never write a score to HBM. The obstacle is
# the softmax: each row's normalizer $\sum_j e^{s_j}$ needs *every* score in the row, and a
# tile only sees some of them.
#
# ## 2. The online softmax, by hand
#
# Softmax is computed stably as $\mathrm{softmax}(x)_i = e^{x_i - m} / \ell$ with $m = \max_j x_j$
# and $\ell = \sum_j e^{x_j - m}$. Read the row a block at a time and keep two running numbers:
# the maximum so far $m$ and the sum so far $\ell$, relative to that maximum. When a new block
# raises the maximum from $m$ to $m'$, every term already in $\ell$ was computed against the
# wrong maximum; multiplying $\ell$ by $e^{m - m'}$ fixes all of them at once:
#
# $$m' = \max(m, \max_{j \in \text{block}} x_j), \qquad
#   \ell' = \ell \, e^{m - m'} + \sum_{j \in \text{block}} e^{x_j - m'}.$$
#
# Five scores, two at a time:

# %%
# NBVAL_CHECK_OUTPUT
x = [1.0, 3.0, 2.0, 5.0, 0.5]
steps = online_softmax_steps(x, block=2)
print(f"{'block':>12} {'m before':>9} {'m after':>8} {'rescale e^(m-m_new)':>20} {'l after':>9}")
for s in steps:
    print(f"{str(s['values']):>12} {s['m_old']:>9} {s['m_new']:>8} {s['rescale']:>20.4f} {s['l']:>9.4f}")
m, total = steps[-1]["m_new"], steps[-1]["l"]
online = [math.exp(v - m) / total for v in x]
print("online :", [round(p, 6) for p in online])
print("softmax:", [round(p, 6) for p in torch.softmax(torch.tensor(x, dtype=torch.float64), 0).tolist()])

# %% [markdown]
# By hand: after $[1, 3]$, $m = 3$ and $\ell = e^{-2} + e^{0} \approx 1.1353$. The block $[2, 5]$
# raises the maximum to 5, so the old sum is rescaled by $e^{3-5} = e^{-2}$ and the new terms
# $e^{-3} + e^{0}$ are added. The last block $[0.5]$ does not raise it (rescale 1). The two
# printed rows agree.
#
# Attention needs one more running quantity: the output. Each query row keeps an unnormalized
# accumulator $\mathrm{acc} = \sum_j e^{s_j - m} v_j$, rescaled by the same $e^{m - m'}$ whenever the
# maximum moves, and divided by $\ell$ once at the very end. That is the whole algorithm.
#
# ## 3. Build it: `flash_attention` equals SDPA
#
# `inferlab.attention.flash.flash_attention` is that loop in PyTorch (FlashAttention-2's order:
# query tiles outside, key/value tiles inside; causal attention skips the tiles above the
# diagonal). `naive_attention` is the textbook version that builds the whole square. Both take
# SDPA's layout `[batch, heads, length, head_dim]`, grouped-query KV heads included.

# %%
g = torch.Generator().manual_seed(0)
q = torch.randn(1, 8, 300, 64, generator=g, dtype=torch.float64)
k = torch.randn(1, 2, 300, 64, generator=g, dtype=torch.float64)  # 2 KV heads shared by 8 query heads
v = torch.randn(1, 2, 300, 64, generator=g, dtype=torch.float64)
ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
for name, fn in (("naive", naive_attention), ("flash", flash_attention)):
    out = fn(q, k, v, causal=True)
    print(f"{name:>5}: relative error vs SDPA = {float((out - ref).norm() / ref.norm()):.1e}")
print("tiles computed:", len(tile_schedule(300, 300, 64, 64, causal=True)), "of", 5 * 5)

# %% [markdown]
# Equal to float64 rounding. The test suite checks the same at lengths 1, 17 and 1000, head
# dimensions 32 to 128, with and without grouped-query heads, causal and not, in float64 and
# bfloat16, for the PyTorch loop and the Triton kernel.
#
# **Which causal?** When there are fewer queries than keys (decoding, or a prompt processed in
# chunks over a KV cache), "causal" can align the diagonal two ways. SDPA's `is_causal=True`
# aligns it top-left; the flash-attn package (from version 2.1, by its README) and every KV-cache
# step align it bottom-right, so the last query sees the last key. Our functions take `causal=True`
# (= `"top_left"`, SDPA's) or `causal="bottom_right"`:

# %%
# NBVAL_CHECK_OUTPUT
for align in ("top_left", "bottom_right"):
    print(f"{align}: 3 queries over 5 keys\n", visible_keys(3, 5, align).int())

# %% [markdown]
# ## 4. The tiling, drawn
#
# Below, a causal attention over 512 tokens in tiles of 64. Rows are query tiles, columns
# key/value tiles; the left strip marks the query tile held in fast memory and the top strip the
# key/value tile streaming past it. Drag the slider or press ▶: at every step exactly one tile of
# scores exists, on chip; once folded into $(m, \ell, \mathrm{acc})$ it is thrown away. Grey tiles,
# above the diagonal, are never computed at all.

# %%
schedule = tile_schedule(512, 512, BLOCK, BLOCK, causal=True)
tiling_animation(schedule, 512, 512).show()

# %%
fig = tiling_static(schedule, 512, 512)  # the static twin, for viewers without JavaScript

# %% [markdown]
# What sits in fast memory at each step, for head dimension 64 in bfloat16 (2 bytes) with the
# running statistics in float32:

# %%
# NBVAL_CHECK_OUTPUT
d, b = 64, BLOCK
parts = {"Q tile": b * d * 2, "K tile": b * d * 2, "V tile": b * d * 2, "scores tile (float32)": b * b * 4,
         "m and l (float32)": 2 * b * 4, "acc (float32)": b * d * 4}
for part, nbytes in parts.items():
    print(f"{part:>22}: {nbytes / 1024:5.1f} KiB")
print(f"{'total':>22}: {sum(parts.values()) / 1024:5.1f} KiB, whatever the sequence length")

# %% [markdown]
# On a GPU each query tile is one thread block, and all of them run at once; the Triton kernel in
# `inferlab.attention.flash_triton` is this picture with tiles of 128 query rows by 64 keys. On a
# machine without CUDA, the tests run that same kernel in Triton's CPU interpreter.

# %%
from inferlab.attention.flash_triton import flash_attention_triton, triton_available  # noqa: E402

if DEVICE.startswith("cuda") and triton_available():
    qc, kc, vc = (t.to("cuda", torch.bfloat16) for t in (q, k, v))
    out = flash_attention_triton(qc, kc, vc, causal=True)
    print(f"Triton kernel, bf16: relative error vs float64 SDPA = {float((out.double() - ref.cuda()).norm() / ref.norm()):.1e}")
else:
    print("No CUDA GPU here: the Triton kernel is measured in the recorded H200 run below.")

# %% [markdown]
# ## 5. Measure it live: memory and time against length
#
# `inferlab.bench.attention.run` times each variant on the same inputs and records its peak
# extra memory (what one call allocates beyond its inputs, output included): on a GPU from
# PyTorch's allocator, on a CPU from the allocator events of PyTorch's profiler. One CPU thread on
# a CPU, so that a busy machine's threads do not wait on each other. Variants: `naive` (ours,
# the square in memory), `sdpa-math` (SDPA's own unfused reference), `sdpa-flash` (SDPA's fused
# kernel: FlashAttention-2 on CUDA, a tiled C++ kernel on CPU) and `ours-torch` (the loop of §3).

# %%
variants = ["naive", "sdpa-math", "sdpa-flash", "ours-torch"] + (["ours-triton"] if DEVICE.startswith("cuda") else [])
live = bench.run(DEVICE, progress=False, lengths=LENGTHS, heads=HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                 variants=variants, repeats=5, block=256, triton_configs=[])
for row in live["rows"]:
    print(bench.format_row(row))

# %%
memory_time_figure(live, f"Live on {DEVICE}: one attention layer of {MODEL}, causal").show()

# %% [markdown]
# Doubling the length should multiply the square's memory by about 4, and the tiled versions' by
# at most 2: their output grows linearly, their workspace is a tile of fixed size (while that
# tile dominates, the growth is smaller still). The cell measures those ratios, and
# the run-to-run spread of the timings (the largest relative spread, (max - min) / min, of the
# five repeats), which says how much a single time can be trusted here:

# %%
by = {(r["variant"], r["seq_len"]): r for r in live["rows"] if "seconds_min" in r}
for name in variants:
    pairs = [(n, 2 * n) for n in LENGTHS if (name, n) in by and (name, 2 * n) in by]
    growth = [by[(name, n2)]["peak_bytes"] / by[(name, n)]["peak_bytes"] for n, n2 in pairs]
    spread = max((max(r["seconds"]) - min(r["seconds"])) / min(r["seconds"]) for (v, _), r in by.items() if v == name)
    print(f"{name:>12}: memory x{', x'.join(f'{g:.2f}' for g in growth)} per doubling; "
          f"largest timing spread {spread:.0%}" + ("  <- too noisy to compare times closely" if spread > 0.5 else ""))

# %% [markdown]
# ## 6. Recorded on an H200
#
# `scripts/gpu/attention.sh` ran the same sweep on an H200 in bfloat16, at the shape of one
# Llama-3.2-1B layer (32 query heads, 8 KV heads, head dimension 64, batch 1, causal), from 1k to
# 32k tokens, with every SDPA backend, FlexAttention and our Triton kernel. Times are the minimum
# of five CUDA-graph replays (the machine's host is slow to launch kernels), or of five eager calls
# for the unfused versions whose workspace fills a third of the GPU (a graph would double it).

# %%
recorded = load_result("attention", "h200")
if recorded is None:
    print("No recorded H200 run yet (data/results/attention-h200.json): scripts/gpu/attention.sh makes one.")
else:
    env = recorded["environment"]
    print(f"{env.get('gpu_name')}, torch {env.get('torch')}, {env.get('date')}")
    for row in recorded["rows"]:
        print(bench.format_row(row))
    memory_time_figure(recorded, "Recorded on an H200: one Llama-3.2-1B attention layer, bf16, causal").show()

# %% [markdown]
# Throughput in TFLOP/s counts the multiply-adds of $QK^\top$ and $PV$ over the visible (query,
# key) pairs only, as the FlashAttention papers do. Our Triton kernel against SDPA's
# FlashAttention-2 backend, per length, and a few launch configurations of ours at 8k tokens:

# %%
if recorded is not None:
    fractions = recorded["summary"].get("ours-triton_fraction_of_sdpa_flash", {})
    tflops = {(r["variant"], r["seq_len"]): r["tflops"] for r in recorded["rows"] if "tflops" in r}
    for n, frac in fractions.items():
        best = max((v for v in tflops if v[1] == int(n)), key=tflops.get)
        print(f"{int(n):>6} tokens: ours {tflops[('ours-triton', int(n))]:6.1f} TFLOP/s, sdpa-flash "
              f"{tflops[('sdpa-flash', int(n))]:6.1f}  -> {frac:.2f}x   (fastest here: {best[0]}, {tflops[best]:.1f})")
    for cfg in recorded.get("triton_configs", []):
        print(f"  ours at {cfg['seq_len']}: tiles {cfg['block_m']}x{cfg['block_n']}, {cfg['num_warps']} warps, "
              f"{cfg['num_stages']} stages: {cfg.get('tflops', float('nan')):.1f} TFLOP/s")

# %% [markdown]
# Read the lines above before the prose: on this H200, the short Triton kernel of
# `flash_triton.py` keeps pace with SDPA's FlashAttention-2 backend (a kernel designed for the
# previous GPU generation), and cuDNN's attention, built for Hopper's asynchronous matrix
# units, is the fastest. FlashAttention-3 (Shah et al. 2024) is the Hopper-specific follow-up.
# The unfused versions (`naive`, `sdpa-math`) run out of memory where the printout says so.
#
# ## 7. Myth vs measured: "2-4x faster attention, less memory"
#
# That is all the widely copied tutorial says about FlashAttention. The published figures are
# per workload: Dao et al. 2022 (abstract) report training speed-ups of 15% on BERT-large (length
# 512), 3× on GPT-2 (length 1k) and 2.4× on long-range arena (1k–4k); Dao 2023 (abstract) reports
# about 2× over the first FlashAttention, at 50–73% of an A100's peak. What do our measurements say, for
# attention alone? The table is generated from the recorded run and the live one.

# %%
def myth_rows(payload, where):
    """Speed-up and memory saving of the fused kernels over the square-in-memory baseline."""
    out = []
    for r in bench.ratios(payload, baseline="naive", variants=["sdpa-flash", "ours-triton", "ours-torch"]):
        out.append(f"| {where} | {r['seq_len']} | {r['variant']} | {r['speedup']:.1f}× | {r['memory_saving']:.0f}× |")
    return out


table = ["| where | tokens | variant | faster than naive | less peak memory |", "|---|---|---|---|---|"]
table += myth_rows(live, f"live, {DEVICE}")
if recorded is not None:
    table += myth_rows(recorded, "recorded, H200")
display(Markdown("\n".join(table)))

# %%
if recorded is not None:
    fig = speedup_static(bench.ratios(recorded, "naive", ["sdpa-flash", "ours-triton", "ours-torch"]),
                         "H200: fused attention vs the square in memory (naive)")

# %% [markdown]
# | the one line | what we measured |
# | --- | --- |
# | "2-4x faster attention" | Against attention that materializes the square, the fused kernels in the recorded rows of the table are far more than 4× faster on the H200, and the gap grows with length; the live rows show what a CPU gives. The papers' 2–4× figures are whole training runs, where attention is one part of the time. Between fused kernels the differences are smaller and go both ways: compare `sdpa-efficient`, `sdpa-flash`, `sdpa-cudnn`, `flex` and ours in §6. |
# | "less memory" | Peak extra memory stops growing with the square: the tiled versions need their output plus a tile, linear in length, while the naive one grows 4× per doubling until it runs out of memory. In a whole model this is the difference between a long prompt fitting or not; the KV cache and the weights are untouched by it. |
# | (unsaid) "a different, approximate attention" | No: the output equals SDPA's to float64 rounding (§3). Same arithmetic, different order, fewer bytes moved. |
# | (unsaid) "same trick for decoding" | One new query per step has no square to save: decode attention reads the KV cache once either way and is bound by that read (notebook 01). The win is in prefill and training. |
#
# Our PyTorch loop (`ours-torch`) has the memory of FlashAttention but not its speed: each tile is a
# handful of separate PyTorch operations whose intermediate results still travel through memory.
# Fusing them into one kernel, as the Triton version does, is where the time goes away.

# %% [markdown]
# ## 8. Exercises
#
# Each exercise starts blank and says "not answered yet" until you answer; `solution("...")`
# prints a worked answer.
#
# **1.** Two halves of one row were processed separately: half A has running maximum `m_a` and
# sum `l_a`, half B has `m_b`, `l_b` (each sum relative to its own maximum). Write `merge`
# returning the `(m, l)` of the whole row. (This is how FlashDecoding combines key splits.)

# %%
from inferlab.exercises.flash import check_causal_tiles, check_merge, check_score_bytes, solution  # noqa: E402


def merge(m_a, l_a, m_b, l_b):
    # your code here
    raise NotImplementedError


check_merge(merge)

# %% [markdown]
# Solution: run `solution("merge")`.
#
# **2.** How many bytes does one layer's float32 score matrix take for 32 heads at 32,768 tokens
# (batch 1)? Compare with the out-of-memory line of the recorded run.

# %%
answer = None  # your answer, an integer number of bytes
check_score_bytes(answer)

# %% [markdown]
# Solution: `solution("score_bytes")`.
#
# **3.** Causal attention over 4,096 tokens in tiles of 128 × 128: how many score tiles does
# FlashAttention compute? (`tile_schedule` can check you, after you have thought about it.)

# %%
answer = None  # your answer
check_causal_tiles(answer)

# %% [markdown]
# Solution: `solution("causal_tiles")`.
#
# ## 9. Summary
#
# - Textbook attention writes an $L \times L$ score matrix per head to memory and reads it back
#   several times: memory quadratic in length, time bound by memory traffic.
# - The online softmax keeps a running maximum $m$ and sum $\ell$ per row and rescales by
#   $e^{m - m'}$ when the maximum grows, so a row can be processed one tile at a time, exactly.
# - FlashAttention keeps a query tile, one key/value tile, one tile of scores and $(m, \ell,
#   \mathrm{acc})$ in fast memory; nothing quadratic touches slow memory, and causal attention
#   skips the tiles above the diagonal. The backward pass recomputes score tiles from $Q$, $K$ and
#   the saved log-sum-exp instead of storing $P$.
# - Measured: the same output as SDPA; memory linear in length instead of quadratic; on an H200 a
#   short Triton kernel runs level with SDPA's FlashAttention-2 backend, and the speed-up over the
#   unfused versions is far larger than the tutorial's 2-4x, for attention alone (§6, §7).
#
# **References**
#
# - T. Dao, D. Y. Fu, S. Ermon, A. Rudra, C. Ré. *FlashAttention: Fast and Memory-Efficient Exact
#   Attention with IO-Awareness.* NeurIPS 2022.
# - T. Dao. *FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning.* 2023.
# - J. Shah, G. Bikshandi, Y. Zhang, V. Thakkar, P. Ramani, T. Dao. *FlashAttention-3: Fast and
#   Accurate Attention with Asynchrony and Low-precision.* 2024.
# - M. Milakov, N. Gimelshein. *Online normalizer calculation for softmax.* 2018.
# - PyTorch: `torch.nn.functional.scaled_dot_product_attention`, `torch.nn.attention.sdpa_kernel`,
#   FlexAttention (`torch.nn.attention.flex_attention`).
# - Triton's fused-attention tutorial (triton-lang.org), for the kernel's shape.
