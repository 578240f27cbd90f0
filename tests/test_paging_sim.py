"""The allocators' memory simulator: contiguous first-fit baselines, paged serving, sharing savings;
and the length traces it serves."""

from __future__ import annotations

import pytest

from inferlab.bench.workloads import TraceEntry, generate_trace, load_trace, save_trace
from inferlab.paging_sim import (
    CATEGORIES,
    PAPER_FIG2_TOKEN_STATES,
    ContiguousAllocator,
    _Live,
    compare_allocators,
    prefix_sharing,
    sharing_savings,
    simulate,
)


def test_committed_traces_match_generator_and_published_means():
    for kind, seed, rate, means in (("sharegpt", 0, 4.0, (161, 338)), ("alpaca", 1, 30.0, (19, 58))):
        trace = load_trace(kind)
        assert trace == generate_trace(kind, 1000, rate=rate, seed=seed)
        mean_in = sum(r.prompt_len for r in trace) / len(trace)
        mean_out = sum(r.output_len for r in trace) / len(trace)
        assert mean_in == pytest.approx(means[0], rel=0.1) and mean_out == pytest.approx(means[1], rel=0.1)
        assert all(r.final_len <= 2048 for r in trace)
        gaps = [b.arrival - a.arrival for a, b in zip(trace, trace[1:], strict=False)]
        assert sum(gaps) / len(gaps) == pytest.approx(1 / rate, rel=0.15)  # Poisson rate


def test_trace_csv_roundtrip(tmp_path):
    trace = generate_trace("alpaca", 20, seed=3)
    assert load_trace(save_trace(trace, tmp_path / "t.csv")) == trace
    assert load_trace(save_trace(trace, tmp_path / "t.json")) == trace


def test_first_fit_leaves_real_gaps():
    a = ContiguousAllocator(100, "oracle")
    reqs = [_Live(TraceEntry(i, 0.0, n, 0)) for i, n in enumerate([30, 20, 30])]
    assert all(a.admit(r) for r in reqs)
    a.release(reqs[1])  # a 20-slot hole between two live ranges
    assert a.gaps() == [(30, 20), (80, 20)] and a.num_free() == 40
    big = _Live(TraceEntry(9, 0.0, 25, 0))
    assert a.fits_if_contiguous(big.req) and not a.admit(big)  # 40 free, no 25-slot gap
    small = _Live(TraceEntry(10, 0.0, 15, 0))
    assert a.admit(small) and a.ranges[1] == (30, 15, 10)  # first fit: the lowest gap


def test_reservation_sizes():
    r = TraceEntry(0, 0.0, 100, 29)
    assert ContiguousAllocator(4096, "max", 2048).reserve_size(r) == 2048
    assert ContiguousAllocator(4096, "pow2").reserve_size(r) == 256
    assert ContiguousAllocator(4096, "pow2").reserve_size(TraceEntry(0, 0.0, 100, 28)) == 128
    assert ContiguousAllocator(4096, "oracle").reserve_size(r) == 129


def test_fig2_ordering_and_shares_sum_to_one():
    trace = load_trace("sharegpt")[:150]
    res = compare_allocators(trace, memory_tokens=8192)
    for r in res.values():
        assert sum(r.shares[k] for k in CATEGORIES) == pytest.approx(1.0)
        assert r.finished == len(trace) and r.blocked_steps > 0
    ts = {n: r.shares["token_states"] for n, r in res.items()}
    assert ts["orca-max"] < ts["orca-pow2"] < ts["orca-oracle"] < ts["paged"]
    assert ts["paged"] >= 0.96 and set(ts) == set(PAPER_FIG2_TOKEN_STATES)
    assert res["paged"].shares["external_fragmentation"] == 0
    assert res["orca-oracle"].shares["internal_fragmentation"] == 0
    assert res["orca-oracle"].shares["external_fragmentation"] > 0
    assert res["paged"].mean_concurrent > 1.5 * res["orca-oracle"].mean_concurrent


def test_simulation_frames_and_impossible_request():
    trace = generate_trace("alpaca", 30, rate=50.0, max_len=256, seed=0)
    r = simulate(trace, "paged", 1024, block_size=8, max_len=256, frame_every=5, max_frames=4)
    assert len(r.frames) == 4 and len(r.frames[0]["rid"]) == 1024
    with pytest.raises(ValueError, match="never fit"):
        simulate([TraceEntry(0, 0.0, 100, 10)], "orca-max", 64, max_len=128)


def test_sharing_savings_in_the_papers_ballpark():
    trace = load_trace("alpaca")
    par = [sharing_savings(trace, "parallel", n, max_requests=60)["saving"] for n in (2, 4, 6)]
    beam = [sharing_savings(trace, "beam", n, max_requests=60)["saving"] for n in (2, 4, 6)]
    assert 0 < par[0] < par[1] < par[2] < 0.25
    assert 0.25 < beam[0] < beam[1] < beam[2] < 0.8


def test_prefix_sharing_saves_the_system_prompt():
    r = prefix_sharing(num_requests=16, system_prompt_len=256, block_size=16)
    assert r["hit_tokens"] == 15 * 256 and r["memory_saved"] > 0.7
    assert r["blocks_with_caching"] < r["blocks_without_caching"]


def test_cli_report(capsys):
    from inferlab.bench.__main__ import available
    from inferlab.bench.paging import main

    assert "paging" in available() and "workloads" not in available()  # `python -m inferlab.bench paging`
    assert main(["--num-requests", "60", "--memory-tokens", "8192"]) == 0
    out = capsys.readouterr().out
    assert "token states (paper)" in out and "20.4%" in out and "§6.3 beam" in out
