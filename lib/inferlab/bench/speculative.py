"""Speculative decoding benchmark: the target alone vs ours vs transformers, in one run.

``python -m inferlab.bench speculative [--quick] [--device cuda] [--out DIR]``

For every prompt (batch size 1, the latency setting where speculation pays) and every
(k, temperature) of the sweep, it times:

- ``plain``        our target-only decoding: same KV cache, loop and sampler (the baseline);
- ``ours``         :class:`~inferlab.speculative.SpeculativeDecoder` with the draft;
- ``ours_adaptive`` the same with adaptive k;
- ``ours_lookup``  :class:`~inferlab.speculative.PromptLookupDecoder`;
- ``hf_plain``, ``hf_assisted`` (``assistant_model=draft``, constant k) and
  ``hf_lookup`` (``prompt_lookup_num_tokens=k``): transformers ``generate``.

Methods run interleaved, ``--reps`` times, and the median is kept, so background load hits
all of them alike. Each row reports the measured α, the cost ratio c (one draft step over
one plain target step), the speedup over ``plain`` and the speedup that Leviathan et al.
(2023) predict from those α and c. Prompts are the openings of functions from standard-
library modules that the embedded models never saw in training.
"""

from __future__ import annotations

import argparse
import inspect
import statistics

import torch

from inferlab.bench.peers import hf_generate
from inferlab.device import time_fn
from inferlab.speculative import (
    PromptLookupDecoder,
    SpeculativeDecoder,
    expected_speedup,
    expected_tokens_per_step,
    plain_generate,
)

# Functions from modules held out of the tiny models' training set (see data/models/README.md).
HELDOUT_FUNCTIONS = ("textwrap.dedent", "json.dumps", "heapq.nsmallest", "shlex.split", "difflib.get_close_matches",
                     "csv.DictReader.__next__", "statistics.median", "fractions.Fraction.limit_denominator")


def heldout_prompts(tokenizer, count: int = 4, prompt_tokens: int = 48) -> list[list[int]]:
    """The first ``prompt_tokens`` tokens of ``count`` held-out standard-library functions."""
    import importlib

    prompts = []
    for dotted in HELDOUT_FUNCTIONS[:count]:
        module, *attrs = dotted.split(".")
        obj = importlib.import_module(module)
        for attr in attrs:
            obj = getattr(obj, attr)
        prompts.append(tokenizer(inspect.getsource(obj)).input_ids[:prompt_tokens])
    return prompts


def methods(target, draft, tok, k: int, temperature: float, max_new_tokens: int, eos: int | None):
    """name -> function(prompt_ids, seed) returning (new tokens, SpeculativeOutput or None)."""
    common = {"max_new_tokens": max_new_tokens, "temperature": temperature, "eos_token_id": eos}
    ours = SpeculativeDecoder(target, draft, tok, k)
    adaptive = SpeculativeDecoder(target, draft, tok, k, adaptive_k=True)
    lookup = PromptLookupDecoder(target, tok, k, max_ngram=3)

    def of(decoder):
        return lambda ids, seed: _tokens(decoder.generate(ids, seed=seed, **common))

    assisted = {"assistant_model": draft, "num_assistant_tokens": k, "num_assistant_tokens_schedule": "constant"}
    return {
        "plain": lambda ids, seed: _tokens(plain_generate(target, tok, ids, seed=seed, **common)),
        "ours": of(ours),
        "ours_adaptive": of(adaptive),
        "ours_lookup": of(lookup),
        "hf_plain": lambda ids, seed: (hf_generate(target, ids, max_new_tokens, temperature, seed), None),
        "hf_assisted": lambda ids, seed: (hf_generate(target, ids, max_new_tokens, temperature, seed, **assisted), None),
        "hf_lookup": lambda ids, seed: (hf_generate(target, ids, max_new_tokens, temperature, seed,
                                                     prompt_lookup_num_tokens=k), None),
    }


def _tokens(out):
    return out.num_generated, out


def measure(target, draft, tok, prompts, k: int, temperature: float, max_new_tokens: int, reps: int,
            device: str, only: set[str] | None = None) -> dict:
    """Time every method on every prompt, interleaved, ``reps`` times; medians and statistics."""
    eos = tok.eos_token_id
    table = methods(target, draft, tok, k, temperature, max_new_tokens, eos)
    if only:
        table = {name: fn for name, fn in table.items() if name in only or name == "plain"}
    seconds = {name: [] for name in table}
    tokens = {name: 0 for name in table}
    stats = {name: [] for name in table}
    for rep in range(-1, reps):  # rep -1 warms every method up and is not recorded
        totals = {name: 0.0 for name in table}
        for i, ids in enumerate(prompts):
            for name, fn in table.items():  # methods interleaved per prompt: load spikes hit all alike
                seed = 1000 * max(rep, 0) + i
                done = []
                (s,) = time_fn(lambda fn=fn, ids=ids, seed=seed, done=done: done.append(fn(ids, seed)), device, repeats=1, warmup=0)
                n, out = done[0]
                totals[name] += s
                if rep == reps - 1:
                    tokens[name] += n
                    if out is not None:
                        stats[name].append(out)
        if rep >= 0:
            for name, total in totals.items():
                seconds[name].append(total)
    return _summarize(seconds, tokens, stats, k, temperature)


def _summarize(seconds, tokens, stats, k, temperature) -> dict:
    """Medians, tokens/s, speedups over ``plain``; for greedy runs, whether ours matched plain token for token."""
    med = {name: statistics.median(v) for name, v in seconds.items()}
    tps = {name: tokens[name] / med[name] for name in med}
    plain_step = _pooled(stats.get("plain", []), "target")
    rows = {}
    for name in med:
        row = {"seconds": med[name], "tokens": tokens[name], "tokens_per_s": tps[name],
               "speedup_vs_plain": tps[name] / tps["plain"], "seconds_per_run": list(seconds[name])}
        if stats[name] and name != "plain":
            row.update(_speculative_stats(stats[name], k, plain_step))
            if temperature == 0:
                row["greedy_identical_to_plain"] = all(
                    a.new_tokens == b.new_tokens for a, b in zip(stats[name], stats["plain"], strict=True))
        rows[name] = row
    return {"k": k, "temperature": temperature, "methods": rows}


def _pooled(outs, which: str) -> float:
    calls = sum(getattr(o, f"{which}_calls") for o in outs)
    secs = sum(getattr(o, f"{which}_time_s") for o in outs)
    return secs / calls if calls else float("nan")


def _speculative_stats(outs, k: int, plain_step_s: float) -> dict:
    attempted = [sum(col) for col in zip(*[o.attempted_per_position for o in outs], strict=True)]
    accepted = [sum(col) for col in zip(*[o.accepted_per_position for o in outs], strict=True)]
    alpha = sum(accepted) / sum(attempted) if sum(attempted) else 0.0
    generated = sum(o.num_generated for o in outs)
    calls = sum(o.target_calls for o in outs)
    draft_step, verify_step = _pooled(outs, "draft"), _pooled(outs, "target")
    c = draft_step / plain_step_s if draft_step == draft_step else 0.0  # nan-safe: lookup has no draft
    rounds = [x for o in outs for x in o.k_history] or [k]
    k_mean = statistics.mean(rounds)
    alpha_c = min(alpha, 1.0)
    # Rounds may use fewer drafts than k (adaptive k, lookup misses, the last round): predict round by round.
    # A round with k_r drafts yields E(α, k_r) tokens and costs k_r·c + 1 target steps (+ the verify surcharge).
    expected = sum(expected_tokens_per_step(alpha_c, r) if r > 0 else 1.0 for r in rounds)
    verify_ratio = verify_step / plain_step_s
    out = {
        "alpha": alpha,
        "acceptance_per_position": [a / t if t else None for a, t in zip(accepted, attempted, strict=True)],
        "tokens_per_target_call": generated / calls if calls else None,
        "draft_step_ms": 1e3 * draft_step if draft_step == draft_step else 0.0,
        "verify_step_ms": 1e3 * verify_step,
        "plain_step_ms": 1e3 * plain_step_s,
        "cost_ratio_c": c,
        "verify_over_plain_step": verify_ratio,
        "mean_k": k_mean,
        "k_varies": len(set(rounds[:-1])) > 1,
        "predicted_tokens_per_call": expected / len(rounds),
        # Leviathan et al. (2023), Theorem 3.8, with the measured α and c (verification = one target step)
        "predicted_speedup": expected / sum(r * c + 1.0 for r in rounds),
        # the same, charging each verification its measured cost instead of one step
        "predicted_speedup_with_verify_cost": expected / sum(r * c + verify_ratio for r in rounds),
        # the textbook number: every round uses exactly k drafts
        "predicted_speedup_at_k": expected_speedup(alpha_c, k, c),
    }
    return out


def run(model: str = "tiny", draft_model: str = "tiny-draft", device: str | None = None, ks=(1, 2, 4, 8),
        temperatures=(0.0, 0.7, 1.0), sweep_k_temperature: float = 0.0, sweep_t_k: int = 4, prompts: int = 4,
        max_new_tokens: int = 64, reps: int = 3, log=None) -> dict:
    """The whole sweep: k at temperature ``sweep_k_temperature``, then temperature at k = ``sweep_t_k``."""
    import inferlab as il

    log = log or (lambda line: print(line, flush=True))
    target, tok = il.load_model(model, device=device)
    draft, _ = il.load_model(draft_model, device=device)
    device = str(target.device)
    ids = heldout_prompts(tok, prompts)
    results = []
    for k in ks:
        results.append(measure(target, draft, tok, ids, k, sweep_k_temperature, max_new_tokens, reps, device))
        log(_line(results[-1]))
    for temperature in temperatures:
        if temperature == sweep_k_temperature and sweep_t_k in ks:
            continue
        results.append(measure(target, draft, tok, ids, sweep_t_k, temperature, max_new_tokens, reps, device,
                               only={"ours", "hf_assisted", "ours_lookup", "hf_plain"}))
        log(_line(results[-1]))
    return {"model": model, "draft_model": draft_model, "device": device, "prompts": len(ids),
            "prompt_tokens": [len(x) for x in ids], "max_new_tokens": max_new_tokens, "reps": reps,
            "torch_threads": torch.get_num_threads(), "results": results}


def _line(result: dict) -> str:
    parts = [f"k={result['k']} T={result['temperature']}"]
    for name, row in result["methods"].items():
        extra = f" α={row['alpha']:.2f} pred={row['predicted_speedup']:.2f}" if "alpha" in row else ""
        parts.append(f"{name}: {row['tokens_per_s']:.0f} tok/s ×{row['speedup_vs_plain']:.2f}{extra}")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    from inferlab.bench import save_result

    parser = argparse.ArgumentParser(prog="python -m inferlab.bench speculative", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--draft", default="tiny-draft")
    parser.add_argument("--device", default=None)
    parser.add_argument("--ks", default="1,2,4,8", help="comma-separated k values (greedy sweep)")
    parser.add_argument("--temperatures", default="0,0.7,1.0", help="comma-separated temperatures (at k=4)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="k in {2, 4}, temperatures {0, 1}, 2 prompts, 1 rep")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: steadier on a busy machine, and as fast for the tiny models)")
    parser.add_argument("--out", default=None, help="folder for the JSON (default data/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ks = tuple(int(x) for x in args.ks.split(","))
    temps = tuple(float(x) for x in args.temperatures.split(","))
    prompts, reps = args.prompts, args.reps
    if args.quick:
        ks, temps, prompts, reps = (2, 4), (0.0, 1.0), 2, 1
    payload = run(args.model, args.draft, args.device, ks, temps, prompts=prompts,
                  max_new_tokens=args.max_new_tokens, reps=reps)
    path = save_result("speculative", payload, args.out)
    print(f"wrote {path}")
    return 0
