"""The engine's greedy tokens equal transformers' ``generate``, whatever the scheduling.

Reference: ``model.generate`` one prompt at a time (no batching, no padding): the slow,
obvious answer. The engine must reproduce it token for token with a roomy pool, a pool so
small that it preempts, chunked prefill, prefix caching and the static policy; and it must
give every KV block back afterwards.
"""

from __future__ import annotations

import pytest
import torch

from inferlab import LLM, SamplingParams

MAX_TOKENS = 24
HEADER = "import os\nimport sys\n\n\nclass Config:\n    \"\"\"Settings read from the environment.\"\"\"\n\n"


def make_prompts() -> list[str]:
    """16 prompts from 2 to ~170 tokens; half share a long prefix (for prefix caching)."""
    bodies = ["def ", "x = ", "for i in range(", "    return self.", "while True:\n    ", "print(", "if __name__ == '__main__':\n    ",
              "try:\n    import json\nexcept ImportError:\n    json = None\n\ndef load(path):\n    "]
    prompts = [b * (1 + i % 3) for i, b in enumerate(bodies)]
    prompts += [HEADER * (1 + i % 3) + "    # note\n" * (12 * (i // 4)) + f"    def method_{i}(self" for i in range(8)]
    return prompts


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference():
    """Per-prompt greedy continuations from transformers (fp32, CPU)."""
    import inferlab as il

    torch.set_num_threads(1)
    model, tok = il.load_model("tiny", device="cpu", dtype="float32")
    prompts = make_prompts()
    outs = []
    with torch.inference_mode():
        for p in prompts:
            ids = tok(p, return_tensors="pt").input_ids
            gen = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
            new = gen[0, ids.shape[1]:].tolist()
            if tok.eos_token_id in new:  # generate pads after EOS; the engine stops at it
                new = new[: new.index(tok.eos_token_id) + 1]
            outs.append(new)
    return prompts, outs, (model, tok)


def run_and_compare(reference, **llm_kwargs):
    prompts, want, _ = reference
    llm = LLM("tiny", device="cpu", dtype="float32", **llm_kwargs)
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    got = [o.outputs[0].token_ids for o in outs]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"prompt {i} ({len(outs[i].prompt_token_ids)} tokens) differs"
    bm = llm.engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks, "KV blocks leaked"
    assert not llm.engine.scheduler.running and not llm.engine.scheduler.waiting
    return llm, outs


def test_prompt_lengths_vary(reference):
    _, _, (_, tok) = reference
    lengths = [len(tok.encode(p)) for p in make_prompts()]
    assert len(lengths) >= 16 and min(lengths) <= 4 and max(lengths) >= 100


def test_default_pool_matches_generate(reference):
    llm, outs = run_and_compare(reference)
    assert all(o.outputs[0].finish_reason in ("stop", "length") for o in outs)
    assert outs[0].outputs[0].text == llm.tokenizer.decode(outs[0].outputs[0].token_ids, skip_special_tokens=True)
    m = outs[0].metrics
    assert m.arrival_time <= m.first_token_time <= m.finish_time


def test_small_pool_preempts_and_still_matches(reference):
    llm, _ = run_and_compare(reference, block_size=8, num_kv_blocks=28, max_num_batched_tokens=256)
    preempted = sum(len(s.preempted) for s in llm.engine.trace)
    assert preempted > 0, "the pool was meant to be small enough to force preemption"


def test_chunked_prefill_matches(reference):
    llm, _ = run_and_compare(reference, max_num_batched_tokens=24, enable_chunked_prefill=True)
    mixed = [s for s in llm.engine.trace if {k for _, k, _ in s.entries} == {"prefill", "decode"}]
    assert mixed, "expected steps that mix prefill chunks with decodes"
    assert max(s.num_tokens for s in llm.engine.trace) <= 24


def test_prefix_caching_matches(reference):
    llm, _ = run_and_compare(reference, enable_prefix_caching=True, max_num_seqs=4, max_num_batched_tokens=64)
    assert llm.engine.block_manager.allocator.stats["prefix_hit_tokens"] > 0


def test_static_policy_matches(reference):
    llm, _ = run_and_compare(reference, policy="static", max_num_seqs=5, enable_chunked_prefill=False)
    assert sum(s.num_padding_tokens for s in llm.engine.trace) > 0


def test_seeded_sampling_ignores_batch_composition():
    llm = LLM("tiny", device="cpu", dtype="float32")
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=1234, max_tokens=20)
    alone = llm.generate("def parse(text):", params)[0].outputs[0].token_ids
    others = [SamplingParams(temperature=1.0, max_tokens=5 + i) for i in range(5)]
    crowd = llm.generate(["x = 1", "import re", "def parse(text):", "class A:", "for k in d:", "print("],
                         [others[0], others[1], params, *others[2:]])
    assert crowd[2].outputs[0].token_ids == alone
    different_seed = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=99, max_tokens=20)
    assert llm.generate("def parse(text):", different_seed)[0].outputs[0].token_ids != alone


def test_logprobs_and_stop_strings():
    llm = LLM("tiny", device="cpu", dtype="float32")
    out = llm.generate("def main():", SamplingParams(temperature=0.0, max_tokens=8, logprobs=3))[0].outputs[0]
    assert len(out.logprobs) == len(out.token_ids)
    for token, top in zip(out.token_ids, out.logprobs, strict=True):
        assert top[token] == max(top.values()) and len(top) == 3  # greedy: the sampled one is the top one
    assert abs(out.cumulative_logprob - sum(t[tok] for t, tok in zip(out.logprobs, out.token_ids, strict=True))) < 1e-4
    full = llm.generate("def main():", SamplingParams(temperature=0.0, max_tokens=30))[0].outputs[0].text
    stop = full.strip().split()[2]
    cut = llm.generate("def main():", SamplingParams(temperature=0.0, max_tokens=30, stop=[stop]))[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert stop not in cut.text and full.startswith(cut.text)


def test_stream_equals_generate_text():
    llm = LLM("tiny", device="cpu", dtype="float32")
    params = SamplingParams(temperature=0.0, max_tokens=30)
    deltas = list(llm.stream("def main():", params))
    assert len(deltas) > 1
    assert "".join(deltas) == llm.generate("def main():", params)[0].outputs[0].text


def test_incremental_detokenizer_waits_for_whole_characters():
    from inferlab.engine.llm import IncrementalDetokenizer
    from inferlab.hub import load_model

    _, tok = load_model("tiny", device="cpu")
    text = "héllo wörld ✓ 日本"
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(lambda t: tok.decode(t))
    deltas = [detok.update(ids[:i]) for i in range(1, len(ids) + 1)]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_allocator_restored_after_mixed_workload():
    llm = LLM("tiny", device="cpu", dtype="float32", block_size=4, num_kv_blocks=40, enable_prefix_caching=True)
    prompts = [HEADER + f"def f{i}(" for i in range(6)]
    llm.generate(prompts, SamplingParams(temperature=0.7, seed=0, max_tokens=12))
    bm = llm.engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks and len(bm.allocator) == 0


def test_prefix_cache_hits_on_blocks_still_being_prefilled(reference):
    """Identical long prompts arriving together with a small chunk budget: a later request must
    not trust cached blocks whose K/V an earlier request has not computed yet."""
    prompts, want, _ = reference
    i = max(range(len(prompts)), key=lambda k: len(prompts[k]))
    llm = LLM("tiny", device="cpu", dtype="float32", block_size=8, enable_prefix_caching=True, max_num_batched_tokens=16)
    outs = llm.generate([prompts[i]] * 4, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    assert all(o.outputs[0].token_ids == want[i] for o in outs)
    again = llm.generate([prompts[i]], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))[0]
    assert again.outputs[0].token_ids == want[i]
    assert llm.engine.block_manager.allocator.stats["prefix_hit_tokens"] > 0
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks


def test_without_chunking_a_prompt_larger_than_the_budget_still_runs(reference):
    run_and_compare(reference, max_num_batched_tokens=16, enable_chunked_prefill=False)


def test_prefix_caching_with_preemption_mid_prefill(reference):
    """Preempted mid-prefill, a request leaves cached-but-never-computed blocks behind; whoever
    hits them (itself, when resumed) must recompute instead of reading garbage."""
    llm, _ = run_and_compare(reference, block_size=4, num_kv_blocks=40, max_num_batched_tokens=8,
                             enable_prefix_caching=True)
    assert sum(len(s.preempted) for s in llm.engine.trace) > 0


def test_parallel_samples_fork_the_prompt_blocks_and_match_seeded_singles():
    llm = LLM("tiny", device="cpu", dtype="float32", block_size=4, num_kv_blocks=120)
    prompt = HEADER + "def handle(request):"  # prompt ends mid-block: the first sample copies it on write
    stats = llm.engine.block_manager.allocator.stats
    forks, free = stats["forks"], llm.engine.block_manager.num_free_blocks
    group = llm.generate(prompt, SamplingParams(temperature=1.0, max_tokens=12, n=4, seed=5))[0]
    assert [o.index for o in group.outputs] == [0, 1, 2, 3]
    assert stats["forks"] - forks == 3 and llm.engine.block_manager.num_free_blocks == free
    for o in group.outputs:  # sample i draws from seed + i: as if it had run alone
        alone = llm.generate(prompt, SamplingParams(temperature=1.0, max_tokens=12, seed=5 + o.index))[0]
        assert o.token_ids == alone.outputs[0].token_ids
    assert len({tuple(o.token_ids) for o in group.outputs}) > 1


def test_parallel_samples_use_fewer_blocks_than_separate_requests():
    llm = LLM("tiny", device="cpu", dtype="float32", block_size=4, num_kv_blocks=400)
    bm = llm.engine.block_manager
    prompt = HEADER * 3
    llm.engine.add_request("g", prompt, SamplingParams(temperature=1.0, max_tokens=3, n=4, seed=0))
    llm.engine.step()  # prefill once, fork three siblings
    shared = bm.num_blocks - bm.num_free_blocks
    llm.engine.abort_request("g")
    assert bm.num_free_blocks == bm.num_blocks
    for i in range(4):
        llm.engine.add_request(f"s{i}", prompt, SamplingParams(temperature=1.0, max_tokens=3, seed=i))
    while bm.num_free_blocks == bm.num_blocks or llm.engine.scheduler.waiting:
        llm.engine.step()
    separate = bm.num_blocks - bm.num_free_blocks
    assert shared < separate / 2
