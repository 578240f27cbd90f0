"""Workload helpers, drawings and exercise checkers of notebook 03 (fast, no timing asserted)."""

from __future__ import annotations

import torch

from inferlab.bench.workloads import (
    NullTokenizer,
    run_engine,
    static_decode_waste,
    synthetic_requests,
)
from inferlab.engine import LLMEngine, ModelRunner
from inferlab.exercises.batching import (
    check_last_token_index,
    check_min_kv_blocks,
    check_preemption_victim,
    check_static_waste,
)
from inferlab.viz.batching import assign_slots, latency_vs_rate, pool_usage, slot_gantt

SMALL = {"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}


def _runner(num_blocks=64):
    return ModelRunner(SMALL, device="cpu", dtype=torch.float32, block_size=4, num_kv_blocks=num_blocks)


def test_static_and_continuous_do_the_same_useful_work():
    runner = _runner()
    reqs = synthetic_requests(10, (3, 12), (2, 15), vocab_size=100, seed=0)
    runs = {}
    for policy in ("static", "continuous"):
        engine = LLMEngine(runner, NullTokenizer(), max_num_seqs=3, policy=policy, enable_chunked_prefill=policy == "continuous")
        runs[policy] = run_engine(engine, reqs, name=policy, realtime=False)
    assert runs["static"].output_tokens == runs["continuous"].output_tokens == sum(r.max_tokens for r in reqs)
    assert runs["static"].steps > runs["continuous"].steps
    assert runs["static"].padding_tokens > 0 == runs["continuous"].padding_tokens
    slots = assign_slots(runs["continuous"].trace)
    assert max(slots.values()) < 3  # never more slots than max_num_seqs
    assert slot_gantt(runs["static"].trace).data and slot_gantt(runs["continuous"].trace, x="step").data
    summary = runs["continuous"].summary()
    assert summary["requests"] == 10 and "ttft_p50_ms" in summary and "ttft_p99_ms" not in summary


def test_poisson_arrivals_and_small_pool_drawings():
    runner = _runner(num_blocks=64)
    engine = LLMEngine(runner, NullTokenizer(), max_num_seqs=6, num_blocks=12)
    reqs = synthetic_requests(8, (4, 10), (10, 20), vocab_size=100, seed=1, rate=400.0)
    assert reqs[-1].arrival > 0
    res = run_engine(engine, reqs)
    assert any(r.preempted for r in res.trace)
    assert engine.block_manager.num_free_blocks == 12
    assert pool_usage(res.trace, 12).data
    assert latency_vs_rate([{"rate": 1.0, **res.summary()}]).data


def test_static_decode_waste():
    assert static_decode_waste([10, 10], 2) == 0
    assert abs(static_decode_waste([1, 3], 2) - 1 / 3) < 1e-12


def test_checkers_accept_right_and_reject_wrong(capsys):
    assert check_last_token_index(lambda lengths, width: [n - 1 for n in lengths])
    assert not check_last_token_index(lambda lengths, width: [width - 1] * len(lengths))
    assert check_static_waste(static_decode_waste([10, 80, 20, 30, 5, 5, 5, 60], 4), [10, 80, 20, 30, 5, 5, 5, 60], 4)
    assert not check_static_waste(0.0, [10, 80, 20, 30], 4)
    assert check_min_kv_blocks(19, 100, 200, 16, 1024) and not check_min_kv_blocks(7, 100, 200, 16, 1024)
    assert check_preemption_victim("d", list("abcd")) and not check_preemption_victim("a", list("abcd"))
    assert "right" in capsys.readouterr().out


def test_batching_benchmark_cli_writes_json(tmp_path):
    import json

    from inferlab.bench.batching import main

    threads = torch.get_num_threads()
    try:
        assert main(["--n", "4", "--no-online", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "batching-cpu.json").read_text())
    assert set(result["offline"]) == {"static", "continuous", "hf_generate_static", "hf_generate_per_prompt"}
    assert result["offline"]["static"]["output_tokens"] == result["offline"]["continuous"]["output_tokens"]
    assert result["environment"]["torch"]
