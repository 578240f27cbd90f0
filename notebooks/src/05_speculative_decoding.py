# %% [markdown]
# # 05 · Speculative decoding, done right
#
# **What you will do here**
#
# - see why a small *draft* model can make a large *target* model faster without changing a
#   single output token (greedy) or the output distribution (sampling);
# - run `inferlab.speculative.SpeculativeDecoder`: KV caches on both models, rollback after a
#   rejection, the exact accept / resample / bonus rule, and watch each token's origin in color;
# - measure the acceptance rate α and the cost ratio c live, and compare the measured speedup with
#   the one the theory predicts from them;
# - run the rule of a widely copied tutorial side by side and see that its samples do **not**
#   follow the target's distribution;
# - speculate without any draft model, by copying from the prompt (prompt lookup), and let k adapt.
#
# Papers behind it: Leviathan, Kalman & Matias 2023 (*Fast Inference from Transformers via
# Speculative Decoding*); Chen et al. 2023 (*Accelerating Large Language Model Decoding with
# Speculative Sampling*); Saxena 2023 (*Prompt Lookup Decoding*).

# %% tags=["parameters"]
import os

MODEL = os.environ.get("INFERLAB_MODEL", "tiny")
DRAFT = os.environ.get("INFERLAB_DRAFT", "tiny-draft")
DEVICE = os.environ.get("INFERLAB_DEVICE") or None  # None: cuda, then mps, then cpu
K = 4  # draft tokens per round
REPS = 2  # timed runs of each method in the speed comparison (after one warm-up)
MAX_NEW_TOKENS = 32  # per generation in the live measurements
PROMPTS = 2  # held-out prompts in the live measurements
SAMPLES = 800  # first-token samples per sampler in the distribution comparison

import torch  # noqa: E402

if torch.cuda.is_available():
    MAX_NEW_TOKENS, PROMPTS, SAMPLES = 96, 4, 4000

# %%
import inferlab as il
from inferlab.bench import load_result
from inferlab.bench import speculative as bench
from inferlab.naive import tutorial_speculative_step
from inferlab.speculative import (
    PromptLookupDecoder,
    SpeculativeDecoder,
    expected_speedup,
    expected_tokens_per_step,
    first_step_samples,
    plain_generate,
    target_next_token_probs,
)
from inferlab.stats import chi_square_pvalue
from inferlab.stats import compare_runs
from inferlab.viz.speculative import (
    best_draft_sentence,
    distribution_figure,
    provenance_text,
    recorded_speedup_sentence,
    show_provenance,
)
from inferlab.viz import setup_plotly

setup_plotly()
if not torch.cuda.is_available():
    # The tiny models' matrices are small: synchronising two threads costs more than the math.
    torch.set_num_threads(1)
torch.manual_seed(0)
target, tok = il.load_model(MODEL, device=DEVICE)
draft, _ = il.load_model(DRAFT, device=DEVICE)
n_target = sum(p.numel() for p in target.parameters())
n_draft = sum(p.numel() for p in draft.parameters())
print(f"target {MODEL}: {n_target / 1e6:.1f} M parameters, draft {DRAFT}: {n_draft / 1e6:.2f} M, on {target.device}")

# %% [markdown]
# ## 1. Intuition: guess cheaply, check in bulk
#
# Decoding one token at a time is slow because every step streams the whole model through the
# processor to produce a single token (notebook 01). A forward pass over **k + 1** positions costs
# about the same as over one, as long as the hardware is memory-bound. Speculative decoding uses
# that spare capacity:
#
# 1. the draft model proposes $x_1 \dots x_k$, one at a time (cheap: it is small);
# 2. the target scores all of them **in one forward pass**, getting its own distributions
#    $p_1 \dots p_{k+1}$ at every position;
# 3. a rule keeps a prefix of the proposal and adds **one token of the target's own**, so each
#    target call yields between 1 and $k+1$ tokens.
#
# ### The rule that keeps the output exact
#
# For draft token $x_i$ drawn from the draft's distribution $q_i$:
#
# - **accept** it with probability $\min\left(1, \frac{p_i(x_i)}{q_i(x_i)}\right)$;
# - at the **first rejection**, stop and sample a replacement from the *residual*
#   $\;r_i = \dfrac{\max(0,\, p_i - q_i)}{\sum_x \max(0,\, p_i(x) - q_i(x))}$;
# - if **all k are accepted**, sample a **bonus** token from $p_{k+1}$, which the target computed anyway.
#
# Why the residual: acceptance produces token $x$ with probability $q(x)\min(1, p(x)/q(x)) = \min(p(x), q(x))$.
# The missing mass, $p(x) - \min(p(x), q(x)) = \max(0, p(x) - q(x))$, is exactly what the residual
# adds back, scaled by the rejection probability $1 - \sum_x \min(p(x), q(x))$. The two parts sum to
# $p(x)$: the output is distributed **exactly** as the target's. With temperature 0 both
# distributions are one-hot and the rule becomes: keep the longest prefix that matches the target's
# argmax, then append the target's own next token.
#
# ### How much it buys
#
# Let α be the expected probability that a draft token is accepted. One target call then yields
#
# $$E[\text{tokens}] = 1 + \alpha + \alpha^2 + \dots + \alpha^k = \frac{1 - \alpha^{k+1}}{1 - \alpha},$$
#
# and if a draft step costs $c$ target steps, the expected speedup is
# (Leviathan et al. 2023, Theorem 3.8)
#
# $$S(\alpha, k, c) = \frac{1 - \alpha^{k+1}}{(1 - \alpha)(k c + 1)}.$$
#
# Speculation pays only when α is high **and** c is small; it assumes the verify pass costs one
# target step, which a CPU, unlike a memory-bound GPU, does not always grant.

# %%
for alpha in (0.5, 0.7, 0.9):
    row = "  ".join(f"k={k}: {expected_speedup(alpha, k, 0.05):.2f}x" for k in (1, 2, 4, 8))
    print(f"alpha={alpha}, c=0.05 -> {row}")

# %% [markdown]
# ## 2. Build it with the library
#
# `SpeculativeDecoder(target, draft, tokenizer, num_speculative_tokens=k)` keeps a KV cache for
# **each** model. After a verification, both caches are cropped back to the accepted length, so the
# accepted prefix is never recomputed: each round feeds the target exactly $k+1$ new tokens. For
# batches, rows accept different counts: slots of rejected tokens become masked holes in a shared
# cache, with each row's positions tracked separately.
#
# First check: with temperature 0, speculative decoding must be **token-for-token identical** to
# the target decoding alone (`plain_generate`, the same loop without drafts).

# %%
# NBVAL_CHECK_OUTPUT
prompts = bench.heldout_prompts(tok, count=max(PROMPTS, 2))
reference = plain_generate(target, tok, prompts, max_new_tokens=MAX_NEW_TOKENS, temperature=0)
for k in (1, 3, 7):
    out = SpeculativeDecoder(target, draft, tok, num_speculative_tokens=k).generate(
        prompts, max_new_tokens=MAX_NEW_TOKENS, temperature=0
    )
    print(f"k={k}: identical to the target's greedy output for all {len(prompts)} prompts:",
          out.new_tokens == reference.new_tokens)

# %% [markdown]
# ## 3. Watch it work: every token colored by where it came from
#
# Green tokens were proposed by the draft and accepted; red ones were drawn by the target after a
# rejection; blue ones are bonus tokens, drawn by the target after it accepted all k drafts.
# (Hover a token to see its label; the letters below repeat the colors as text:
# a = accepted, r = resampled, b = bonus.)

# %%
decoder = SpeculativeDecoder(target, draft, tok, num_speculative_tokens=K)
colored = decoder.generate(prompts[0], max_new_tokens=MAX_NEW_TOKENS, temperature=0.7, seed=0)
show_provenance(tok, colored)
print(provenance_text(colored))
print(f"alpha = {colored.alpha:.2f}, tokens per target call = {colored.tokens_per_target_call:.2f}, "
      f"acceptance by draft position = {[round(a, 2) for a in colored.acceptance_per_position]}")

# %% [markdown]
# ## 4. Measure α and c live
#
# α depends on how well the draft imitates the target **at the chosen temperature**, and on the
# position in the draft (a later draft token is only tried when all earlier ones were accepted, and
# its context is already a guess). c is measured: the mean time of one draft forward pass over the
# mean time of one target verification pass, in the same run.

# %%
import plotly.graph_objects as go  # noqa: E402

sweep = []
for temperature in (0.0, 0.5, 1.0):
    for k in (1, 2, 4, 8):
        out = SpeculativeDecoder(target, draft, tok, k).generate(
            prompts[:PROMPTS], max_new_tokens=MAX_NEW_TOKENS, temperature=temperature, seed=0)
        sweep.append({"temperature": temperature, "k": k, "alpha": out.alpha,
                      "tokens_per_call": out.tokens_per_target_call, "c": out.cost_ratio})
        print(f"T={temperature:.1f} k={k}: alpha={out.alpha:.2f}  tokens/call={out.tokens_per_target_call:.2f}  "
              f"c={out.cost_ratio:.2f}")

fig = go.Figure()
for temperature in (0.0, 0.5, 1.0):
    rows = [r for r in sweep if r["temperature"] == temperature]
    ks = [r["k"] for r in rows]
    fig.add_scatter(x=ks, y=[r["tokens_per_call"] for r in rows], mode="markers+lines", name=f"measured, T={temperature}")
    alpha = sum(r["alpha"] for r in rows) / len(rows)
    fig.add_scatter(x=ks, y=[expected_tokens_per_step(alpha, k) for k in ks], mode="lines",
                    line={"dash": "dot"}, name=f"(1-α^(k+1))/(1-α), α={alpha:.2f}")
fig.update_layout(height=380, xaxis_title="k (draft tokens per round)", yaxis_title="tokens per target call",
                  title="Tokens per target call: measured vs the formula with the measured α")
fig.show()

# %% [markdown]
# ## 5. Measured vs predicted speedup, and transformers' own assisted generation
#
# `inferlab.bench.speculative` times, in one run and interleaved: the target alone (our loop, with
# its KV cache: a fair baseline), ours, ours with adaptive k, our prompt lookup, and transformers'
# `generate` plain, with `assistant_model=draft` and with `prompt_lookup_num_tokens=k`. The
# prediction uses the measured α and c; a second prediction also charges the verification pass its
# real cost (on a CPU, scoring k + 1 tokens is not free). Each method runs `REPS` times, interleaved
# with the others; the speedup is printed with its run-to-run range, and flagged when the runs
# disagree on whether it is a speedup at all.

# %%
live = []
for k in (K,):
    result = bench.measure(target, draft, tok, prompts[:PROMPTS], k, 0.0, MAX_NEW_TOKENS, reps=REPS,
                           device=str(target.device), only={"ours", "ours_lookup", "hf_plain", "hf_assisted", "hf_lookup"})
    live.append(result)
    plain_runs = result["methods"]["plain"]["seconds_per_run"]
    for name, row in result["methods"].items():
        extra = "" if name == "plain" else "  runs: " + compare_runs(plain_runs, row["seconds_per_run"])["text"]
        if "alpha" in row:
            extra += (f"\n{'':20s}  alpha={row['alpha']:.2f} c={row['cost_ratio_c']:.2f} predicted x{row['predicted_speedup']:.2f}"
                     f" (x{row['predicted_speedup_with_verify_cost']:.2f} with the verify cost)")
        print(f"k={k} {name:14s} {row['tokens_per_s']:7.1f} tok/s  x{row['speedup_vs_plain']:.2f}{extra}")

# %%
def speedup_figure(results, title):
    fig = go.Figure()
    names = [n for n in results[0]["methods"] if n != "plain"]
    for result in results:
        rows = result["methods"]
        fig.add_bar(name=f"measured, k={result['k']}", x=names, y=[rows[n]["speedup_vs_plain"] for n in names])
        fig.add_scatter(name=f"predicted, k={result['k']}", x=names, mode="markers", marker={"symbol": "x", "size": 11},
                        y=[rows[n].get("predicted_speedup") for n in names])
    fig.add_hline(y=1.0, line_dash="dot")
    fig.update_layout(barmode="group", height=380, yaxis_title="speedup over the target alone", title=title)
    return fig


speedup_figure(live, f"Live, greedy, on {target.device}").show()
recorded = load_result("speculative", "h200")
if recorded is None:
    print("No recorded H200 run yet (data/results/speculative-h200.json); scripts/gpu/speculative.sh makes one.")
else:
    greedy = [r for r in recorded["results"] if r["temperature"] == 0.0 and r["k"] in (2, 4)]
    speedup_figure(greedy, "Recorded on an H200 (embedded pair, greedy)").show()

# %% [markdown]
# ## 6. Myth vs measured: a widely copied tutorial's speculative decoder
#
# The `SpeculativeDecoder` of a widely copied tutorial looks similar but, after a rejection, it samples the
# replacement **from the target's distribution itself** instead of the residual, reads that
# distribution **at the last draft position** instead of the rejected one, recomputes the draft's
# probabilities, keeps no KV cache and never adds a bonus token. The first two change *what* it
# generates. `tutorial_speculative_step` re-creates its rule (wrong on purpose); below, both rules
# run one draft-and-verify round `SAMPLES` times from the same prompt, and we compare the first
# generated token with the target's exact distribution.

# %%
probe = tok("    if not", return_tensors="pt").input_ids
T, TOP_P = 1.0, 0.9  # top-p keeps the support small enough to compare with a few hundred samples
p_exact = target_next_token_probs(target, probe, temperature=T, top_p=TOP_P)
ours_tokens = first_step_samples(target, draft, probe, SAMPLES, k=3, temperature=T, top_p=TOP_P, seed=1)
tutorial_tokens = first_step_samples(target, draft, probe, SAMPLES, k=3, temperature=T, top_p=TOP_P, seed=1,
                                 rule=tutorial_speculative_step)
torch.manual_seed(1)
target_tokens = torch.multinomial(p_exact, SAMPLES, replacement=True)
frequencies = {}  # observed share of each first token, per sampler
for label, tokens in (("target alone", target_tokens), ("ours", ours_tokens), ("tutorial's rule", tutorial_tokens)):
    counts = torch.bincount(tokens, minlength=p_exact.numel())
    frequencies[label] = counts.double() / len(tokens)
    total_variation = 0.5 * float((frequencies[label] - p_exact.double()).abs().sum())  # half the L1 distance
    print(f"{label:13s} total variation {total_variation:.3f}   "
          f"chi-square p-value {chi_square_pvalue(counts, p_exact):.2g}")
distribution_figure(tok, p_exact, frequencies).show()

# %% [markdown]
# Sampling noise alone leaves some total variation with a few hundred samples (the "target alone"
# line shows how much), and a chi-square p-value anywhere between 0 and 1. The tutorial's rule lands
# far beyond the noise, with a p-value that rules out the target's distribution: it over-produces the
# tokens the draft likes, because a rejected draft token is replaced by a fresh sample from p, in
# which the draft's favourite is likely again. `tests/test_speculative*.py` turns this into a
# chi-square test, on known small distributions and on this pair.
#
# The other myth is the tutorial's flat promise of a 2-3x speedup. The speedup is a function of
# α and c, and of what verification really costs. The recorded CPU sweep (from
# `python -m inferlab.bench speculative`, in `data/results/speculative-cpu.json`) and the live run of
# section 5 say how that works out for our embedded pair:

# %%
cpu_record = load_result("speculative", "cpu")
if cpu_record:
    print(recorded_speedup_sentence(cpu_record))
ours_live = live[0]["methods"]["ours"]
print(f"Live here: measured x{ours_live['speedup_vs_plain']:.2f} (runs: "
      f"{compare_runs(live[0]['methods']['plain']['seconds_per_run'], ours_live['seconds_per_run'])['verdict']}), "
      f"predicted x{ours_live['predicted_speedup']:.2f}, or x{ours_live['predicted_speedup_with_verify_cost']:.2f} "
      "charging the verify pass its measured cost.")

# %% [markdown]
# Large, well-matched pairs on memory-bound GPUs are where big speedups live (the recorded H200
# bars in section 5); a weak draft or a compute-bound device can make speculation slower than the
# target alone.

# %% [markdown]
# ## 7. No draft model at all: prompt lookup, on an editing task
#
# When the output copies from the input (edit this code, answer from this document), the input
# itself can be the draft: find the last few generated tokens earlier in the context and propose
# what followed them (Saxena 2023). Drafting costs nothing (c ≈ 0), and the same accept rule keeps
# the output exact. Whether it beats a trained draft model depends on how much of the output
# really is a copy; the line under the cell says which one won here. The prompt holds a function
# and the start of its rewrite.

# %%
import inspect  # noqa: E402
import statistics  # noqa: E402

source = inspect.getsource(statistics.median)
body = source.split('"""')[0].rstrip() + "\n" + source.split('"""')[2].lstrip("\n")
edit_prompt = tok(body + "\n\n# the same function, rewritten:\n" + "\n".join(body.split("\n")[:3]) + "\n").input_ids
edit_runs = {
    "target alone": plain_generate(target, tok, edit_prompt, max_new_tokens=MAX_NEW_TOKENS, temperature=0),
    "draft model, k=4": SpeculativeDecoder(target, draft, tok, 4).generate(edit_prompt, max_new_tokens=MAX_NEW_TOKENS,
                                                                           temperature=0),
    "prompt lookup, k=6": PromptLookupDecoder(target, tok, 6).generate(edit_prompt, max_new_tokens=MAX_NEW_TOKENS,
                                                                       temperature=0),
}
base_time = edit_runs["target alone"].wall_time_s
for name, out in edit_runs.items():
    same = out.new_tokens == edit_runs["target alone"].new_tokens
    print(f"{name:19s} tokens/call={out.tokens_per_target_call:.2f}  alpha={out.alpha:.2f}  "
          f"speedup x{base_time / out.wall_time_s:.2f}  same tokens: {same}")
print(best_draft_sentence({name: out.tokens_per_target_call for name, out in edit_runs.items() if name != "target alone"}))
print("(wall-clock speedups above are single runs: section 5 shows how much such numbers move)")
show_provenance(tok, edit_runs["prompt lookup, k=6"])

# %% [markdown]
# ### Adaptive k
#
# A fixed k wastes draft steps when the draft is wrong and leaves tokens on the table when it is
# right. `adaptive_k=True` grows k by 2 after a round where every draft was accepted and shrinks
# it by 1 otherwise (the schedule transformers uses for assisted generation).

# %%
adaptive = SpeculativeDecoder(target, draft, tok, num_speculative_tokens=2, adaptive_k=True, max_k=12).generate(
    edit_prompt, max_new_tokens=MAX_NEW_TOKENS, temperature=0)
fig = go.Figure(go.Scatter(y=adaptive.k_history, mode="lines+markers"))
fig.update_layout(height=280, xaxis_title="round", yaxis_title="k", title="k chosen round by round")
fig.show()
print("k per round:", adaptive.k_history)

# %% [markdown]
# ## 8. Exercises
#
# **1.** Write the residual distribution the target samples from after rejecting a draft token.

# %%
from inferlab.exercises.speculative import check_best_k, check_expected_tokens, check_residual, solution  # noqa: E402


def residual(p, q):
    raise NotImplementedError("your code here")  # (the tutorial returns p: not right); stuck? solution("residual")


check_residual(residual)

# %% [markdown]
# **2.** Write the expected number of tokens one target call yields, for acceptance rate α and k
# draft tokens (mind α = 1).

# %%
def expected_tokens(alpha, k):
    raise NotImplementedError("your code here")  # stuck? solution("expected_tokens")


check_expected_tokens(expected_tokens)

# %% [markdown]
# **3.** A draft with α = 0.8 costs c = 0.1 of a target step. Which k gives the largest expected
# speedup? (Try `expected_speedup(0.8, k, 0.1)` for a few k.)

# %%
answer = None  # your k; stuck? solution("best_k")
check_best_k(answer, alpha=0.8, c=0.1)

# %% [markdown]
# ## 9. Summary
#
# - Speculative decoding is **exact**: accept with min(1, p/q), resample from norm(max(0, p − q)),
#   add a bonus token when everything is accepted. Greedy output is identical to the target's;
#   sampled output follows the target's distribution. Anything else (the tutorial's rule) changes the
#   model's output.
# - Both models keep their KV caches; a rejection crops them back, and nothing is recomputed.
# - The gain is $S = \frac{1-\alpha^{k+1}}{(1-\alpha)(kc+1)}$ *if* verification costs one step.
#   Measure α and c before expecting a speedup: with a weak draft, or on hardware where verifying
#   k + 1 tokens costs more than one step, speculation can be slower than the target alone.
# - Prompt lookup needs no draft model and shines when outputs copy inputs; adaptive k tracks how
#   predictable the text currently is.
#
# **References**
#
# - Y. Leviathan, M. Kalman, Y. Matias. *Fast Inference from Transformers via Speculative Decoding.* ICML 2023.
# - C. Chen, S. Borgeaud, G. Irving, J.-B. Lespiau, L. Sifre, J. Jumper. *Accelerating Large Language Model
#   Decoding with Speculative Sampling.* 2023.
# - A. Saxena. *Prompt Lookup Decoding.* 2023, github.com/apoorvumang/prompt-lookup-decoding.
# - Hugging Face transformers: assisted generation (`assistant_model=`, `prompt_lookup_num_tokens=`).
