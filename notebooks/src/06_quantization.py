# %% [markdown]
# # 06 · Quantization: 8 and 4 bits, built from scratch and loaded for real
#
# **What you will do here**
#
# - see why weights quantize easily and activations do not: the outliers that LLM.int8() was
#   built around, in the embedded model's own layers;
# - build the formats from their definitions (`inferlab.quant`): int8 absmax and zero-point,
#   int4 in groups packed two to a byte, NF4 with double quantization, then GPTQ and AWQ, and swap
#   them into the model the way gpt-fast does (one `nn.Linear` at a time);
# - measure what each costs in bytes and in held-out perplexity, live;
# - load the real formats: bitsandbytes through transformers, GPTQ/AWQ checkpoints in the Hub's
#   layout, GGUF through the `gguf` package;
# - read the decode speed recorded on an H200 and test the widely copied tutorial's comparison
#   table ("GPTQ ~1.5× faster, AWQ ~2×, GGUF ~2×, bitsandbytes ~1.2×") against it.
#
# Papers behind it: Dettmers et al. 2022 (*LLM.int8()*); Dettmers et al. 2023 (*QLoRA*, NF4);
# Frantar et al. 2023 (*GPTQ*); Lin et al. 2024 (*AWQ*); gpt-fast (PyTorch, 2023) for the module swap.

# %% tags=["parameters"]
import os

MODEL = os.environ.get("INFERLAB_MODEL", "tiny")
DEVICE = os.environ.get("INFERLAB_DEVICE") or None  # None: cuda, then mps, then cpu
WINDOWS = 16  # held-out windows of 256 tokens for each perplexity
CAL_WINDOWS = 16  # calibration windows of 256 tokens for GPTQ and AWQ

import torch  # noqa: E402

if torch.cuda.is_available():
    WINDOWS, CAL_WINDOWS = 32, 32
else:
    torch.set_num_threads(1)  # tiny matmuls: thread sync costs more than it saves on a shared 2-core CPU

# %%
import copy
import importlib.util
import itertools
import logging
import tempfile
import warnings

from IPython.display import Markdown, display

import inferlab as il
from inferlab.bench import load_result
from inferlab.bench.quant import EngineStep, time_step, weight_bytes
from inferlab.device import pick_device
from inferlab.quant import NF4Linear, gptq, perplexity, quantize, rtn
from inferlab.quant.calibration import as_windows, linear_inputs, stdlib_text
from inferlab.viz import setup_plotly
from inferlab.viz import quant as qviz

setup_plotly()
warnings.filterwarnings("ignore", message=".*(MatMul8bitLt|requires_grad).*")  # bitsandbytes' per-call notice
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
torch.set_grad_enabled(False)  # inference only
DEVICE = pick_device(DEVICE)
torch.manual_seed(0)
model, tok = il.load_model(MODEL, device=DEVICE)
HELD = stdlib_text("heldout", 120_000)  # modules the tiny models never saw
CAL = as_windows(stdlib_text("calibration", 120_000), tok, 256, CAL_WINDOWS)  # modules they trained on
print(f"device: {DEVICE} | {MODEL}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
      f"{model.dtype} | calibration {tuple(CAL.shape)} tokens")

# %% [markdown]
# ## 1. The idea: fewer bits per weight, because decoding reads every weight once per token
#
# A decode step multiplies one new token's activations by every weight matrix, so its time is
# the time to *read* the weights (notebook 01). Store them in 8 bits instead of 16 and there are
# half the bytes to read; in 4 bits, a quarter. The matmul itself can stay in 16-bit: the kernel
# turns the small integers back into floats in registers (*weight-only* quantization).
#
# Round-to-nearest (RTN) with a scale $s$ maps a weight to an integer and back:
#
# $$q = \mathrm{clamp}\big(\mathrm{round}(w / s) + z,\ 0,\ 2^b - 1\big), \qquad \hat w = (q - z)\,s .$$
#
# - **absmax** (symmetric, $z = 0$, codes $-127..127$): $s = \max|w| / 127$ per output row;
# - **zero-point** (asymmetric): $s = (\max w - \min w)/(2^b - 1)$, $z = \mathrm{round}(-\min w / s)$, so
#   a row that is mostly positive does not waste half of its codes;
# - **group-wise**: one $(s, z)$ for every $g$ consecutive weights of a row ($g$ = 32..128), the
#   layout GPTQ and AWQ checkpoints use; the error shrinks because one outlier only stretches
#   its own group's scale.
#
# What that means for memory, for a Llama-3-8B-shaped model (counted from its config; group 128
# with an fp16 scale and a zero byte per group, the layout of `inferlab.quant.Int4Linear`):

# %%
# NBVAL_CHECK_OUTPUT
from inferlab.configs import load_config, param_count  # noqa: E402

n = param_count(load_config("llama-3-8b"))
for name, bits in (("bf16", 16), ("int8 per-row", 8 + 16 / 4096), ("int4 group 128", 4 + 24 / 128),
                   ("NF4 + double quant", 4 + 8 / 64 + 32 / (64 * 256))):
    print(f"{name:20s} {bits:6.3f} bits/weight  {n * bits / 8 / 1e9:6.2f} GB")

# %% [markdown]
# ## 2. Outliers: why weights are easy and activations are not
#
# Weights of a trained layer are close to a bell curve. The *inputs* of a layer are not: a few
# feature dimensions carry values far larger than the rest, in every token (Dettmers et al. 2022
# found them in every layer of models above ~6.7B parameters). One absmax scale per row of
# activations would then spend its whole range on those few and round everything else to zero;
# that is why LLM.int8() keeps the outlier dimensions in fp16, and why most formats quantize only
# the weights. The histograms below are the embedded model's own: the weights of one MLP layer
# and the activations that enter it (log counts, so the rare large values are visible).

# %%
LAYER = "model.layers.3.mlp.down_proj"
acts = linear_inputs(model, [LAYER, "model.layers.3.self_attn.q_proj"], CAL[:4])
w = model.get_submodule(LAYER).weight.detach().float().cpu()
x = acts[LAYER]
hist = {}
for name, t in (("weights of " + LAYER, w), ("its inputs (activations)", x)):
    counts, edges = torch.histogram(t.flatten(), bins=80)
    hist[name] = ((edges[1:] + edges[:-1]) / 2, counts)
qviz.histogram_figure(hist, "Weights are a bell; activations have long tails").show()
for name, t in (("weights", w), ("activations", x)):
    t = t.abs().flatten()
    print(f"{name:12s} max/median |value| = {float(t.max() / t.median()):7.1f}   "
          f"share beyond 6 × median: {float((t > 6 * t.median()).float().mean()):.2%}")
chan = acts["model.layers.3.self_attn.q_proj"].abs().amax(0)
print(f"q_proj inputs: the loudest of {chan.numel()} channels peaks at {float(chan.max() / chan.median()):.1f}× "
      "the median channel's peak")

# %% [markdown]
# ## 3. Error against bits, per row and per group
#
# Every extra bit halves the step, so the error should halve too; groups buy about as much as
# a bit or more, for the price of their constants. The cell quantizes the layer above at 2..8 bits.

# %%
rows = []
for bits in (2, 3, 4, 5, 6, 8):
    for grouping, g in (("per row", None), ("group 64", 64), ("group 32", 32)):
        err = (rtn.fake_quantize(w, bits, g) - w).norm() / w.norm()
        rows.append({"bits": bits, "grouping": grouping, "rel_error": float(err)})
qviz.error_bits_figure(rows).show()
for r in rows:
    if r["bits"] in (4, 8):
        print(f"{r['bits']} bits, {r['grouping']:8s}: relative error {r['rel_error']:.4f}")

# %% [markdown]
# ## 4. NF4: sixteen levels placed where the weights are
#
# A uniform int4 grid spends as many codes on the rare large weights as on the crowded middle.
# QLoRA's NormalFloat4 puts its 16 levels at quantiles of a normal distribution instead (each
# level covers about the same share of weights), with an exact zero, and stores one absmax per
# block of 64 weights; *double quantization* then quantizes those absmax constants again to 8
# bits in blocks of 256, bringing the overhead from 0.5 to about 0.127 bits per weight.
# `rtn.nf4_levels()` computes the levels from the normal quantile function; they are QLoRA's:

# %%
# NBVAL_CHECK_OUTPUT
levels = rtn.nf4_levels()
print(" ".join(f"{v:+.4f}" for v in levels.tolist()))

# %%
int4_grid = torch.linspace(-1, 1, 16)
qviz.nf4_figure(levels, int4_grid).show()
normal = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))
nf4_layer = NF4Linear.from_float(normal)
blocks = normal.view(-1, 64)
step = blocks.abs().amax(1, keepdim=True) / 7  # symmetric int4 with the same absmax per block of 64
errors = {"NF4": nf4_layer.dequantize(),
          "int4 absmax (same blocks)": (torch.round(blocks / step).clamp(-8, 7) * step).view_as(normal),
          "int4 zero-point (min..max per block)": rtn.dequantize_grouped(*rtn.quantize_grouped(normal, 4, 64))}
for name, approx in errors.items():
    print(f"{name:38s} relative error {float((approx - normal).norm() / normal.norm()):.4f}")
print(f"NF4 storage with double quantization: {8 * nf4_layer.weight_bytes() / normal.numel():.3f} bits/weight")

# %% [markdown]
# ## 5. Build it: quantize the model every way, and measure bytes and perplexity
#
# `quantize(model, method)` computes every replacement first and swaps the `nn.Linear` modules
# at the end, so a bad argument leaves the model untouched. The LM head stays in full precision
# (it is tied to the embedding in the tiny model). GPTQ and AWQ look at calibration text, taken
# from standard-library modules the model trained on; perplexity is measured on modules it never
# saw (`json`, `textwrap`, `heapq`, ...). The tiny model's widths (256 and 704) allow groups of 64.

# %%
GROUP = 64 if MODEL == "tiny" else 128
fresh = lambda: il.load_model(MODEL, device=DEVICE)[0]  # noqa: E731
quality = {"full precision": (model, weight_bytes(model))}
for method in ("int8", "int8-zp", "int4", "nf4", "gptq", "awq"):
    cal = {"calibration": CAL} if method in ("gptq", "awq") else {}
    m = quantize(fresh(), method, group_size=GROUP, **cal)
    quality[method] = (m, weight_bytes(m))
table = []
for name, (m, nbytes) in quality.items():
    table.append({"method": name, "weight_bytes": nbytes, "perplexity": perplexity(m, tok, HELD, max_windows=WINDOWS)})
    print(f"{name:15s} {nbytes / 1e6:6.2f} MB   perplexity {table[-1]['perplexity']:.3f}")
qviz.quality_figure(table).show()

# %%
ppl = {r["method"]: r["perplexity"] for r in table}
base, rtn_loss = ppl["full precision"], ppl["int4"] - ppl["full precision"]
display(Markdown(
    f"Measured above: int8 changes perplexity by {100 * (ppl['int8'] / base - 1):+.2f}% (the target is within 1%); "
    f"int4 round-to-nearest costs {rtn_loss:+.3f}; GPTQ recovers "
    f"{100 * (ppl['int4'] - ppl['gptq']) / rtn_loss:.0f}% of that loss and AWQ "
    f"{100 * (ppl['int4'] - ppl['awq']) / rtn_loss:.0f}%. For scale, the AWQ paper reports on Llama-2-7B "
    "(WikiText-2): FP16 5.47, RTN 5.73, GPTQ 5.69, AWQ 5.60."))

# %% [markdown]
# ## 6. GPTQ, column by column
#
# RTN rounds each weight on its own. GPTQ quantizes one input column at a time and pushes the
# error it just made onto the columns not yet quantized, weighted by the inverse Hessian
# $H^{-1}$ of the layer's squared output error ($H = 2X^\top X$ from calibration inputs):
#
# $$\delta = \frac{w_q - \hat w_q}{[H^{-1}]_{qq}}, \qquad W_{:, q:} \mathrel{-}= \delta\, [H^{-1}]_{q, q:}$$
#
# (the Optimal Brain Surgeon update; the paper's Cholesky form gives all rows of $H^{-1}$ at
# once). The result is counter-intuitive: GPTQ's weights end up *further* from the originals than
# RTN's, column after column, yet the layer's *outputs* are closer, which is all that matters.

# %%
report = gptq.column_report(w, x, GROUP, LAYER)
qviz.gptq_figure(report).show()
print(f"mean |w - q|: RTN {sum(report['rtn_col_error']) / len(w.T):.5f}, GPTQ {sum(report['gptq_col_error']) / len(w.T):.5f}; "
      f"relative output error: RTN {report['rtn_output_error']:.5f}, GPTQ {report['gptq_output_error']:.5f}")

# %% [markdown]
# ## 7. The real formats
#
# **bitsandbytes** through transformers: the tutorial's `BitsAndBytesConfig` call, with the
# double quantization and quant type set explicitly; it runs on CUDA and (bitsandbytes 0.50, as
# this cell shows where it is installed) on the CPU. Our NF4 and theirs should agree closely (both use blocks of 64).

# %%
from inferlab.quant import load_4bit_model, load_8bit_model  # noqa: E402

prompt = tok("def is_prime(n):", return_tensors="pt").input_ids.to(DEVICE)
if importlib.util.find_spec("bitsandbytes") and importlib.util.find_spec("accelerate"):
    for label, (bm, _) in (("bnb LLM.int8()", load_8bit_model(MODEL, device=DEVICE)),
                           ("bnb NF4 + double quant", load_4bit_model(MODEL, "nf4", True, device=DEVICE))):
        out = bm.generate(prompt, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
        print(f"{label:24s} {weight_bytes(bm) / 1e6:5.2f} MB  perplexity {perplexity(bm, tok, HELD, max_windows=WINDOWS):.3f}")
        print("   ", repr(tok.decode(out[0, prompt.shape[1]:])))
else:
    print("bitsandbytes is not installed here: pip install 'inferlab[quant]'")

# %% [markdown]
# **GPTQ and AWQ checkpoints.** The tutorial loads them through `auto_gptq` and `awq`, both since
# abandoned by their authors. The format outlived them: `qweight` holds eight 4-bit codes per
# int32 (GPTQ packs along the input dimension, AWQ along the output in the order 0, 2, 4, 6, 1, 3,
# 5, 7), `qzeros` and fp16 `scales` one per group, `g_idx` each column's group, and
# `quantization_config` in `config.json` says which. We write our GPTQ and AWQ results in that
# layout and read them back with our own loader (transformers reads them too when `gptqmodel` is
# installed).

# %%
from inferlab.quant import export_gguf, load_awq_model, load_gguf, load_gptq_model, save_awq, save_gptq  # noqa: E402

tmp = tempfile.mkdtemp()
ids = tok(HELD[:400], return_tensors="pt").input_ids[:, :64].to(DEVICE)
for fmt, save, load in (("gptq", save_gptq, load_gptq_model), ("awq", save_awq, load_awq_model)):
    src = quality[fmt][0]
    path = save(src, f"{tmp}/{fmt}", tok)
    back, _ = load(path, device=DEVICE, dtype=src.dtype)
    same = torch.equal(back(ids).logits, src(ids).logits)
    print(f"{fmt}: {(path / 'model.safetensors').stat().st_size / 1e6:.2f} MB on disk; reloaded logits identical: {same}")

# %% [markdown]
# **GGUF**, llama.cpp's single-file format: `export_gguf` writes llama.cpp's tensor names, its
# Q/K row permutation and the tokenizer, quantizing with the `gguf` package (Q8_0: 32 int8 + one
# fp16 scale per block, 8.5 bits; Q4_0: 4.5 bits). transformers reads it back with `gguf_file=`,
# *dequantizing to full precision on load*: a GGUF file saves disk and download, not memory or
# time, unless a GGUF runtime (llama.cpp) executes it.

# %%
if importlib.util.find_spec("gguf"):
    ref = model(ids).logits
    for qtype in ("Q8_0", "Q4_0"):
        path = export_gguf(model, tok, f"{tmp}/{MODEL}-{qtype}.gguf", qtype)
        back, _ = load_gguf(path, device=DEVICE, dtype=model.dtype)
        gap = float((back(ids).logits - ref).abs().max() / ref.abs().max())
        print(f"{qtype}: {path.stat().st_size / 1e6:.2f} MB file; in memory after loading {weight_bytes(back) / 1e6:.2f} MB; "
              f"max logit gap {gap:.4f} of the largest logit")
else:
    print("gguf is not installed here: pip install 'inferlab[quant]'")

# %% [markdown]
# ## 8. Speed: fewer bytes only help if a kernel reads them directly
#
# Live, on this machine: one decode step of the engine's model (the same model, its linears
# swapped) in full precision, int8 and int4. On a CPU our layers take the reference path: they
# unpack and dequantize the whole weight every step, so they are *slower*, even though they read
# fewer bytes. On a GPU they run our kernels (Triton, and for int4 at batch 1 a CUDA tensor-core
# kernel where nvcc can build it; see below), but this model's weights (the sizes printed
# above) fit in the GPU's L2 cache, so its step is bound by kernel launches rather than by bytes:
# expect the three to come out close. The recorded 8B rows below are where bytes decide. Median of
# 30 steps, with the fastest and slowest beside it.

# %%
from inferlab.engine.model_runner import ModelRunner  # noqa: E402

runner = ModelRunner(MODEL, device=DEVICE)
live = {}
for variant in ("full", "int8", "int4"):
    em = copy.deepcopy(runner.model)
    if variant != "full":
        quantize(em, variant, group_size=GROUP, skip=())
    live[variant] = time_step(EngineStep(runner, 1, model=em), graphed=DEVICE.startswith("cuda"))
    r = live[variant]
    print(f"{variant:5s} {r['ms_per_step']:7.2f} ms/step (spread {r['spread_ms'][0]:.2f}–{r['spread_ms'][1]:.2f})  "
          f"{r['tok_s']:8.1f} tok/s")

# %% [markdown]
# On an H200 (recorded with `python -m inferlab.bench quant` by `scripts/gpu/quant.sh`): random
# weights in Llama-3-8B and Llama-3.2-1B shapes, one decode step of the engine (its paged KV
# cache and attention kernel, its fused norm, RoPE and activation kernels; 128 tokens already
# cached) captured as a CUDA graph, our int8 and int4 layers running our dequantize-matmul kernels
# (int4 at batch 1: the CUDA tensor-core kernel described below; otherwise Triton), and
# bitsandbytes' NF4 and LLM.int8() swapped into the same model.

# %%
h200 = load_result("quant", "h200")
if h200 is None:
    print("no H200 record yet (data/results/quant-h200.json)")
else:
    dec = [r for r in h200["decode"] if "tok_s" in r]
    qviz.decode_figure(dec, "H200 decode step, CUDA-graphed (log scale)").show()
    bf = {(r["shape"], r["batch"]): r["tok_s"] for r in dec if r["variant"] == "bf16"}
    for r in dec:
        print(f"{r['shape']:13s} {r['variant']:9s} batch {r['batch']:2d}: {r['tok_s']:8.1f} tok/s  "
              f"{r['tok_s'] / bf[(r['shape'], r['batch'])]:5.2f}× bf16  weights {r['weight_bytes'] / 1e9:5.2f} GB"
              + ("" if r.get("graphed") else "  (eager: not graphable)"))

# %% [markdown]
# ## 9. Myth vs measured
#
# The widely copied tutorial's table gives every 4-bit format a speed-up (GPTQ ~1.5×, AWQ ~2×,
# GGUF ~2×, bitsandbytes ~1.2×) at 98–99% quality and a quarter of the memory. The numbers it
# quotes depend on a kernel, a batch size and a runtime it does not name. Measured here (speed:
# the H200 record, 8B shape; quality: perplexity of full precision ÷ quantized, tiny model, live):

# %%
def _speed(variant, batch):
    if h200 is None:
        return "not recorded"
    rows = {(r["variant"], r["batch"]): r["tok_s"] for r in h200["decode"] if r.get("shape") == "llama-3-8b" and "tok_s" in r}
    return f"{rows[(variant, batch)] / rows[('bf16', batch)]:.2f}×" if (variant, batch) in rows else "not recorded"


fp16_b = quality["full precision"][1] * 2 // model.dtype.itemsize  # the model's weights stored in 16 bits
claims = [
    ("GPTQ 4-bit", "~1.5× faster, 98–99%, 0.25× memory",
     f"our int4 kernel: {_speed('int4', 1)} at batch 1, {_speed('int4', 32)} at batch 32; quality "
     f"{100 * base / ppl['gptq']:.1f}%; {quality['gptq'][1] / fp16_b:.2f}× the 16-bit bytes (embedding kept in {str(model.dtype)[6:]})"),
    ("AWQ 4-bit", "~2× faster, 98–99%", f"same int4 layout and kernel as GPTQ ({_speed('int4', 1)}); quality {100 * base / ppl['awq']:.1f}%"),
    ("GGUF", "~2× faster, 95–99%", "through transformers: dequantized on load, so full-precision speed and memory"),
    ("bitsandbytes", "~1.2× faster, 97–99%",
     f"NF4 {_speed('bnb-nf4', 1)} at batch 1, {_speed('bnb-nf4', 32)} at batch 32; LLM.int8() {_speed('bnb-int8', 1)} / {_speed('bnb-int8', 32)}"),
    ("int8 (ours)", "—", f"{_speed('int8', 1)} at batch 1, {_speed('int8', 32)} at batch 32; quality {100 * base / ppl['int8']:.1f}%"),
]
display(Markdown(qviz.myth_table(claims)))

# %% [markdown]
# Where the time goes, one linear layer at a time: the kernel sweep recorded on the H200
# (`scripts/gpu/quant_sweep.py`: every tile of our kernels on every 8B layer shape at 1 and 32
# rows, each timed as a CUDA graph over more weight copies than the 50 MB L2 holds), the fastest
# of each format beside cuBLAS bf16, with the rate at which each reads its own bytes. The one-row
# kernels launch with *programmatic dependent launch* (PDL, `inferlab.pdl`): on Hopper GPUs a
# kernel may start while the one before it is finishing, load the weights it will need (they do
# not depend on that kernel), and only then wait for the previous kernel's output. In the sweep
# each launch follows another launch of the same layer, so these per-layer times are the best case
# of that overlap; the whole step below is the honest test.

# %%
sweep = load_result("quant-sweep", "h200")
if sweep is None:
    print("no kernel sweep recorded yet (data/results/quant-sweep-h200.json)")
else:
    best = {}
    for r in sweep["rows"]:
        if r["model"] == "llama-3-8b" and "us" in r and r.get("rel_err", 0) < 1e-2:
            key = (r["rows"], r["layer"], r["fmt"])
            best[key] = min(best.get(key, r), r, key=lambda q: q["us"])
    for rows, layer in itertools.product((1, 32), ("qkv", "o", "gate_up", "down", "lm_head")):
        print(f"{rows:2d} rows {layer:8s}" + "".join(
            f" | {f} {best[(rows, layer, f)]['us']:6.1f} µs {best[(rows, layer, f)]['GBps'] / 1e3:4.2f} TB/s"
            for f in ("bf16", "int8", "int4")))

# %% [markdown]
# And one whole 8B decode step, kernel by kernel (`scripts/gpu/step_profile.py`: the graphed
# step replayed under the PyTorch profiler): the linear layers' kernels, every other kernel
# (attention, norms, RoPE, residual adds, the activation), and the gaps between kernels. The
# kernels are profiled with PDL off, where each kernel's time is its own; the step is timed both
# ways, and its logits are checked to be identical with and without PDL.

# %%
profile = load_result("quant-step-profile", "h200")
if profile is None:
    print("no step profile recorded yet (data/results/quant-step-profile-h200.json)")
else:
    for variant, rec in profile.items():
        linear = sum(us for name, _, us in rec["kernels"] if name.startswith(("nvjet", "gemv", "dot"))
                     or "splitK" in name or "gemv_int4_kernel" in name)  # the last: the CUDA kernel
        serial = rec["step_us_without_pdl"]
        print(f"{variant:5s} without PDL: step {serial:6.0f} µs = linear layers {linear:6.0f} µs"
              f" + other kernels {rec['kernel_us'] - linear:4.0f} µs + gaps {serial - rec['kernel_us']:4.0f} µs;"
              f" with PDL: step {rec['step_us']:6.0f} µs (logits identical: {rec['pdl_logits_identical']})")

# %% [markdown]
# How our int4 kernel turns a code into a number: a float32 whose exponent bits are all zero is a
# *denormal*, worth its mantissa times 2⁻¹⁴⁹. So masking the 4 bits of a code where they already
# sit in a 32-bit word leaves a float equal to the code times a known power of two: one AND, no
# shift and no integer-to-float conversion. The activations are pre-scaled by that power of two,
# and the codes are stored in an order (`rtn.kernel_order`) where the code at each bit position
# meets a contiguous slice of them.

# %%
word = rtn.pack_int4(torch.tensor([[3, 12, 7, 1, 9, 15, 0, 6]], dtype=torch.uint8)).view(torch.int32)
for position in (0, 4, 8, 12, 16):  # the codes at bits 0..19 sit inside the 23-bit mantissa
    denormal = (word & (0xF << position)).view(torch.float32)
    print(f"bits {position:2d}..{position + 3:2d}: denormal {float(denormal):.3e} × 2^{149 - position} = "
          f"{float(denormal.double() * 2.0 ** (149 - position)):.0f}")

# %% [markdown]
# Why does our int4 kernel read its bytes more slowly than cuBLAS reads bf16? Hardware counters
# answer it (`scripts/gpu/quant_ncu.py`: Nsight Compute, one cold launch per 8B layer with its
# tuned tile, PDL off). A scheduler issues at most one instruction per cycle from the warps it
# holds; a warp waiting for its loads (a "long scoreboard" stall) cannot issue. To keep DRAM busy,
# enough bytes must be in flight to cover its latency (Little's law: bytes in flight = bandwidth ×
# latency), so either many warps with loads outstanding or loads issued long before they are used.

# %%
ncu = load_result("quant-ncu", "h200")
if ncu is None:
    print("no counters recorded yet (data/results/quant-ncu-h200.json)")
else:
    for r in ncu["layers"]:
        stalls = sorted(((v, k) for k, v in r["stalls_per_issue"].items() if k != "selected"), reverse=True)[:2]
        print(f"{r['layer']:8s} {r['us']:5.1f} µs  DRAM {r['dram_pct_of_peak']:3.0f}% of peak  "
              f"{r['registers_per_thread']:3.0f} registers/thread  warps per scheduler: {r['warps_active_per_scheduler']:.1f}"
              f" resident, {r['warps_eligible_per_scheduler']:.1f} ready  issuing in {r['issue_active_pct']:2.0f}% of cycles"
              "  stalled warps per issue: " + ", ".join(f"{k} {v:.1f}" for v, k in stalls))

# %% [markdown]
# These are the counters of the Triton int4 kernel. Each program keeps its whole weight tile in registers, so only a few programs fit on a
# multiprocessor (the registers column) and, of the few warps resident, about one or fewer is
# ready to issue: most wait on memory ("long_scoreboard"). The two longest layers (gate/up, the LM
# head) keep DRAM busiest; the short ones are over before the memory system fills, and the down
# projection (its K split over programs, each taking more than one step) also waits at barriers.
# Making the arithmetic cheaper does not fix that, nor does streaming the tile through shared
# memory: the kernel's docstring (`inferlab.quant.kernels`) lists the rewrites that lost on this
# GPU, with their timings in `data/results/quant-int4-variants-h200.json`. Kernels that go further
# (Marlin, Frantar et al. 2024) keep loads in flight with asynchronous copies *and* pre-arrange the
# weights so that the unpacked codes feed the tensor cores directly.
#
# We took the second half of that idea (`lib/inferlab/quant/gemv_int4.cu`, built with nvcc on first
# use by `inferlab.quant.cuda_gemv`). A warp hands 16 weight rows to the tensor cores' `mma`
# instruction as its first operand and the activation as the second, whose 8 columns all hold the
# same vector: 7/8 of the multiply is wasted, and it does not matter, since the multiplies were never
# the cost. What remains per code is the unpacking: write two codes into the mantissas of a pair of
# bf16 128s (one AND-OR), subtract the zero point (one packed add), and that pair *is* the operand.
# No weight shuffle is needed, because a dot product may visit K in any order as long as both
# operands agree. The same counters, and the same 8B step with each int4 kernel:

# %%
ncu_cuda = load_result("quant-ncu-cuda", "h200")
steps = load_result("quant-cuda", "h200")
if ncu_cuda is None or steps is None:
    print("no record of the CUDA kernel yet (data/results/quant-ncu-cuda-h200.json, quant-cuda-h200.json)")
else:
    triton_rows = {r["layer"]: r for r in (ncu or {"layers": []})["layers"]}
    for r in ncu_cuda["layers"]:
        tri = triton_rows.get(r["layer"], {})
        print(f"{r['layer']:8s} {r['us']:5.1f} µs (Triton {tri.get('us', float('nan')):5.1f})  "
              f"DRAM {r['dram_pct_of_peak']:3.0f}% of peak (Triton {tri.get('dram_pct_of_peak', float('nan')):3.0f}%)  "
              f"{r['instructions_per_code']:.1f} instructions per code (Triton {tri.get('instructions_per_code', float('nan')):.1f})  "
              f"{r['registers_per_thread']:3.0f} registers")
    timed = [r for r in steps["steps"] if "step_us" in r]
    for name, kernel in (("bf16", "cublas"), ("int4", "triton"), ("int4", "cuda")):
        us = [r["step_us"] for r in timed if r["variant"] == name and r["kernel"] == kernel]
        print(f"8B batch-1 step, {name} ({kernel}): {min(us):6.0f}–{max(us):6.0f} µs over {len(us)} runs")

# %% [markdown]
# Fewer instructions per code let the kernel issue its work between loads, and the large layers now
# keep DRAM busier; the step gains more than the layers alone suggest, because under PDL the
# weights of the next layer are requested while the small kernels before it run. The short layers
# (q/k/v, o) are still over before the memory system fills: a 12 MB read is a few microseconds
# however it is done. Two bugs found on the way are worth knowing. Under PDL a kernel can start
# while the kernel *before the previous one* is still reading through the same L1 cache, so a
# read-only-cache load (`ld.global.nc`) of the activation returned stale bytes, but only in the
# CUDA graph, where kernels overlap: the graphed logits were 60% off while every layer tested
# alone was right. And the compiler moved read-only-cache loads of the weights to after the wait
# for the previous kernel, which undid the point of loading them early.

# %% [markdown]
# What the table teaches: a 4-bit format makes decoding faster only through a kernel that reads
# the packed weights and does the arithmetic well, and only while the step is bound by weight
# bytes. Our int8 kernel reads its bytes about as fast as cuBLAS reads bf16, so it takes about
# half the time per layer. Our int4 kernels read a quarter of bf16's bytes, but at a lower rate
# (the lines above): every code still costs its unpacking (the Triton kernel also a multiply-add),
# a warp can issue that only once its loads arrive, too few warps fit on a multiprocessor to keep
# other loads in flight meanwhile, and the small layers are too short to fill the memory system.
# Whole steps gain less than the layers do, because attention, norms and the
# gaps between kernels take the same time in every format. At batch 32 a step does 32× the
# arithmetic on the same bytes, and the lead shrinks or turns around: bitsandbytes' NF4 falls well
# below bf16, and our int4 stays near bf16. At 32 rows our int4 kernel reads its bytes far more
# slowly than at one row (the TB/s in the lines above): the bytes no longer set its time, the
# unpacking and the arithmetic do. It only got that far by computing $W x^\top$ instead of
# $x W^\top$, so that the weight rows fill the large side of the tensor-core instruction and the 32
# activation rows its small side, and by splitting K across programs on the small layers.
# gpt-fast reports 1.48× (int8) and 1.88× (int4) on an A100 with other kernels: treat every "×"
# in a table as a property of a kernel on a machine, not of a format.
#
# PDL helps the int4 step far more than the bf16 one (the step lines above): our gemv loads its
# weights before it waits, so its memory traffic overlaps the small kernels before it, while
# cuBLAS's kernels do not take part. It is no free lunch either. The four H200 runs that settled
# how it is used (`data/results/quant-pdl-ablation-h200.json`; 8B step in ms, batch 1 and 32):
# with PDL on every kernel the batch-32 steps got slower. A tensor-core kernel launched early has
# nothing to load before it waits; our reading is that it only holds the multiprocessor's resources
# meanwhile. So the kernels for 2–64 rows launch without it (each run's full description is in the
# file).

# %%
ablation = load_result("quant-pdl-ablation", "h200")
if ablation is not None:
    for config in ablation["configs"]:
        ms = {(r["variant"], r["batch"]): r["ms_per_step"] for r in config["decode"] if r["shape"] == "llama-3-8b"}
        print(" ".join(f"{v} b{b} {ms[(v, b)]:.2f}" for b in (1, 32) for v in ("bf16", "int8", "int4")),
              "|", config["name"])

# %% [markdown]
# ## 10. Exercises
#
# Each exercise starts blank and says "not answered yet" until you answer; `solution("...")`
# prints a worked answer.
#
# **1.** Write `absmax_int8(w)`: int8 codes and one scale per output row.

# %%
from inferlab.exercises.quant import check_absmax, check_bound, check_int4_bytes, solution  # noqa: E402


def absmax_int8(w):
    raise NotImplementedError  # your code: return q (int8, w's shape), scale (one per row)


check_absmax(absmax_int8)

# %% [markdown]
# Solution: run `solution("absmax")`.
#
# **2.** How many bytes does a 4096 × 4096 layer take in our int4 format with groups of 128
# (4-bit codes, an fp16 scale and a one-byte zero point per group)?

# %%
answer = None  # your answer: an int
check_int4_bytes(answer)

# %% [markdown]
# Solution: `solution("int4_bytes")`.
#
# **3.** At batch 1, what is the largest speed-up int4 can give over bf16 on the recorded 8B
# shape? Use the recorded weight bytes below.

# %%
rec = {r["variant"]: r for r in (h200 or {}).get("decode", []) if r.get("shape") == "llama-3-8b" and r.get("batch") == 1}
bf16_bytes = rec.get("bf16", {}).get("weight_bytes", n * 2)  # no record: the section 1 estimate
int4_bytes = rec.get("int4", {}).get("weight_bytes", int(n * (4 + 24 / 128) / 8))
print(f"bf16 weights {bf16_bytes / 1e9:.2f} GB, int4 weights {int4_bytes / 1e9:.2f} GB")
answer = None  # your answer: a float
measured = rec["int4"]["tok_s"] / rec["bf16"]["tok_s"] if {"int4", "bf16"} <= set(rec) else None
check_bound(answer, bf16_bytes, int4_bytes, measured)

# %% [markdown]
# Solution: `solution("bound")`.
#
# ## Summary
#
# - Quantization stores weights in fewer bits; decoding reads every weight once per token, so
#   bytes saved *can* become time saved, through a kernel that reads the packed form directly.
# - int8 per row is nearly free in quality; 4-bit needs groups, a better codebook (NF4) or a
#   smarter rounding (GPTQ's error compensation, AWQ's activation-aware scales).
# - The real formats are layouts: bitsandbytes, GPTQ/AWQ `qweight`/`qzeros`/`scales`, GGUF blocks.
#   Which one is fast depends on the kernel and the batch size, not on the name.
#
# **References.** Dettmers, Lewis, Belkada, Zettlemoyer 2022, *LLM.int8(): 8-bit Matrix
# Multiplication for Transformers at Scale*; Dettmers, Pagnoni, Holtzman, Zettlemoyer 2023,
# *QLoRA*; Frantar, Ashkboos, Hoefler, Alistarh 2023, *GPTQ*; Lin et al. 2024, *AWQ*; PyTorch
# team 2023, *gpt-fast* and "Accelerating Generative AI with PyTorch II"; llama.cpp's GGUF
# specification (ggml-org/ggml, docs/gguf.md); Frantar, Castro, Chen, Hoefler, Alistarh 2024, *MARLIN:
# Mixed-Precision Auto-Regressive Parallel Inference on Large Language Models*.
