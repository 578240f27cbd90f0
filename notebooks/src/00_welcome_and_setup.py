# %% [markdown]
# # 00 · Welcome: the inferlab series and your setup
#
# **What you will do here**
#
# - see the map of the series: which technique comes when, and why in that order;
# - check what your machine has (CPU or GPU, memory, library versions);
# - load the embedded `tiny` model, make it write Python, and time it;
# - learn how to swap in a real model with one parameter, and how to open the series on Colab and Binder.

# %% tags=["parameters"]
import os

MODEL = os.environ.get("INFERLAB_MODEL", "tiny")  # or "Qwen/Qwen2.5-0.5B", "HuggingFaceTB/SmolLM2-360M", a local folder
DEVICE = os.environ.get("INFERLAB_DEVICE") or None  # None: cuda, then mps, then cpu
MAX_NEW_TOKENS = 48

# %% [markdown]
# ## The series
#
# Every notebook runs one technique live, on whatever hardware you have, and measures it.
# The order follows the life of a request through an inference server: first what costs
# memory and time, then how a server packs many requests into that memory, then how it
# speaks to clients, then tricks that make each token cheaper.
#
# | # | notebook | the question it answers |
# | --- | --- | --- |
# | 00 | welcome and setup | what do I have, and does it run? |
# | 01 | bottlenecks and the KV cache | where do memory and time go when a model generates? |
# | 02 | paged attention | how does vLLM stop wasting KV-cache memory? |
# | 03 | continuous batching | how does a server keep the GPU busy with many requests? |
# | 04 | serving (OpenAI/TGI-compatible, streaming) | how do clients talk to the engine? |
# | 05 | speculative decoding | can a small model make a big one faster without changing its output? |
# | 06 | quantization | what do 8 and 4 bits cost in quality, and save in memory? |
# | 07 | FlashAttention | why is attention memory-bound, and how does tiling fix it? |
# | 08 | tensor parallelism | how is one model split over several GPUs? |
# | 09 | honest benchmarking | how to measure throughput, TTFT and TPOT without fooling yourself |
#
# Notebooks that are not in `notebooks/` yet are coming; each stands on the ones before it.

# %% [markdown]
# ## 1. Your environment
#
# `il.env_report()` prints what PyTorch sees. On a laptop that is the CPU; on Colab a T4
# (16 GB, no bfloat16); on the lent H200 used for the recorded benchmarks, 141 GB of HBM3e.

# %%
import inferlab as il

env = il.env_report()

# %% [markdown]
# ## 2. The embedded default model
#
# The series ships two small Llama-architecture models in `data/models/`, trained on the
# source code of the Python standard library (its model card, `data/models/README.md`, says
# how, and how well). They make every notebook run offline in seconds, and they are
# architecturally the real thing: the same attention, RoPE, RMSNorm and SwiGLU blocks as
# Llama 3, only smaller. `tiny` uses grouped-query attention (8 query heads share 2 KV heads),
# which will matter a great deal in notebook 01.

# %%
model, tok = il.load_model(MODEL, device=DEVICE)
n_params = sum(p.numel() for p in model.parameters())
cfg = model.config
print(f"{MODEL}: {n_params / 1e6:.1f} M parameters on {model.device} in {model.dtype}")
print(f"layers={cfg.num_hidden_layers} hidden={cfg.hidden_size} heads={cfg.num_attention_heads} "
      f"kv_heads={cfg.num_key_value_heads} vocab={cfg.vocab_size} context={cfg.max_position_embeddings}")

# %% [markdown]
# A byte-level BPE tokenizer turns text into integers and back **exactly**: every byte is in
# its alphabet, so spaces, tabs, newlines and any Unicode survive the round trip. Code is full
# of indentation; a tokenizer that lost it would break every program.

# %%
# NBVAL_CHECK_OUTPUT
tiny_tok = il.load_model("tiny", device="cpu")[1] if MODEL != "tiny" else tok
sample = "def area(r):\n    return 3.14159 * r ** 2\t# π r²\n"
ids = tiny_tok.encode(sample)
print(len(sample), "characters ->", len(ids), "tokens")
print([tiny_tok.decode([i]) for i in ids][:12])
print("round trip exact:", tiny_tok.decode(ids) == sample)

# %% [markdown]
# ## 3. Make it write Python
#
# Greedy decoding picks the most likely next token every step, so the output is the same on
# every run and every machine (up to floating-point ties).

# %%
import torch

prompt = "def fibonacci(n):"
inputs = tok(prompt, return_tensors="pt").to(model.device)
with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
print(tok.decode(out[0]))

# %% [markdown]
# Greedy text from a model this small soon repeats itself. Each step takes the single most likely
# token, and once a phrase has been written, the most likely continuation of that phrase is often
# the phrase again: the argmax walks into a loop it cannot leave. Larger models trained on far more
# text loop much less, but greedy decoding of any model can do it. The training report says why
# `tiny` is so prone to it:

# %%
from inferlab.tools.model_card import data_limit_sentence, load_report

print(data_limit_sentence(load_report()))

# %% [markdown]
# *Sampling* draws each token at random from the model's distribution instead (here with
# temperature 0.8, which sharpens it, and top-p 0.95, which drops the unlikely tail). A loop breaks
# as soon as one draw leaves it; the price is that each run writes something different. Three
# samples of the same prompt, beside the greedy line above:

# %%
torch.manual_seed(0)  # a random seed: the same three samples on every run
with torch.no_grad():
    samples = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=0.8, top_p=0.95,
                             num_return_sequences=3, pad_token_id=tok.pad_token_id)
for i, row in enumerate(samples):
    print(f"--- sample {i + 1}\n{tok.decode(row, skip_special_tokens=True)}")

# %% [markdown]
# ## 4. A first measurement
#
# How fast does it generate here? We time `generate` five times after one warm-up call (the first
# call pays for memory allocation and kernel selection) and print the median with the range: on a
# shared or busy machine one run alone can be off by a factor of two. This number is the starting
# line: the rest of the series is about moving it, and about measuring it honestly (notebook 09).

# %%
from inferlab.device import time_fn
from inferlab.stats import spread


def generate_once():
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=MAX_NEW_TOKENS,
                              do_sample=False, pad_token_id=tok.pad_token_id)


timing = spread(time_fn(generate_once, model.device, repeats=5, warmup=1))
rate = MAX_NEW_TOKENS / timing["median"]
print(f"{MAX_NEW_TOKENS} tokens in {timing['median'] * 1e3:.0f} ms (median of 5; runs {timing['min'] * 1e3:.0f}-"
      f"{timing['max'] * 1e3:.0f} ms) = {rate:.0f} tokens/s on {model.device}")
if timing["relative_spread"] > 0.5:
    print("The runs differ by more than 50%: the machine is busy, so read this number as rough.")

# %% [markdown]
# ## 5. Use a real model
#
# Everything in the series takes a model name. Set it once, in the parameters cell at the
# top (`MODEL = "Qwen/Qwen2.5-0.5B"`), or from outside without editing the notebook:
#
# ```bash
# INFERLAB_MODEL=Qwen/Qwen2.5-0.5B INFERLAB_DEVICE=cuda jupyter lab
# papermill 01_bottlenecks_and_kv_cache.ipynb out.ipynb -p MODEL HuggingFaceTB/SmolLM2-360M
# ```
#
# A hub model downloads once (it needs the network) and then loads from the cache. On a Colab
# T4, `HuggingFaceTB/SmolLM2-360M` and `Qwen/Qwen2.5-0.5B` fit comfortably in float16.
# `load_model` only reads safetensors weights and never runs code from the hub unless you pass
# `trust_remote_code=True` yourself.
#
# `make lab` leaves the network on, so a hub id downloads. Only the tests and the notebook build
# run offline (`HF_HUB_OFFLINE=1`), where just the embedded models load. A name that cannot be
# loaded fails with a message that says which case it is: offline mode was on, or the hub could not
# be reached or has no such model (with no network, the hub client retries for up to a minute first):

# %%
from inferlab.hub import ModelNotFound

try:
    il.load_model("no-such-org/no-such-model")
except ModelNotFound as err:
    print(err)
print("embedded models:", ", ".join(il.EMBEDDED_MODELS))

# %% [markdown]
# ## 6. Where to run the series
#
# - **Your machine**: `make lab` (creates `.venv`, installs, opens JupyterLab here); `make test`
#   runs the unit tests and re-executes every notebook.
# - **Google Colab**: the badge at the top of each notebook opens it there; its second cell
#   installs inferlab beside Colab's own torch, numpy and ipywidgets. Choose a T4 runtime for a GPU.
# - **Binder**: the Binder badge starts JupyterLab on a 2 GB CPU machine; every notebook runs
#   there on the embedded models.

# %% [markdown]
# ## Exercises
#
# **1.** How many tokens is four spaces of indentation followed by `return x`? Count them with
# the tokenizer, then check.

# %%
from inferlab.exercises.welcome import check_dtype_choice, check_token_count, solution

answer = None  # your count, e.g. 3
check_token_count("    return x", answer, tiny_tok)

# %% [markdown]
# Every exercise in the series works this way: replace `None` (or the body that raises
# `NotImplementedError`) with your answer and run the cell; the checker says right or wrong, and
# why. Stuck? `solution("token_count")` prints a worked answer.
#
# **2.** Which dtype does `load_model` pick on a Colab T4 (CUDA, no bfloat16)? Write it as a string
# (any name the library accepts: `"float16"`, `"fp16"`, ...).

# %%
answer = None  # your answer, a string
check_dtype_choice("cuda", has_bf16=False, answer=answer)

# %%
# Uncomment to see the worked answers:
# solution("token_count")
# solution("dtype")

# %% [markdown]
# ## Summary
#
# - inferlab runs every technique live; the embedded `tiny` models make that possible offline
#   and on a CPU, and any Hugging Face causal LM is one parameter away.
# - Tokenization is exact and byte-level; generation is a loop of forward passes, one token each.
# - You measured your first tokens per second. Notebook 01 asks why it is what it is.
#
# **References**: Sennrich et al. (2016), *Neural Machine Translation of Rare Words with
# Subword Units* (BPE); Touvron et al. (2023), *Llama 2*; Ainslie et al. (2023), *GQA*.
