"""bench tp's engine section on two gloo processes: every phase timed, the all-reduce bytes counted per
token equal the computed payload, the KV pool per rank is half TP=1's, and a hang is diagnosable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from inferlab import tp
from inferlab.bench import tp as bench
from inferlab.configs import load_config
from inferlab.engine.config import ModelConfig

PHASES = {"build engine", "warm-up", "batch-1 decode", "workload"}


@pytest.fixture(scope="module")
def runs():
    from inferlab.bench.workloads import synthetic_requests

    cfg = {k: v for k, v in load_config("tiny").items() if k != "name"}
    reqs = synthetic_requests(3, (16, 32), (4, 8), ModelConfig.from_dict(cfg).vocab_size)
    return bench._engine_runs(cfg, "cpu", "float32", reqs, {"num_kv_blocks": 64}, {}, sizes=(1, 2)), cfg


def test_engine_runs_record_every_phase_and_the_counted_bytes(runs):
    runs, cfg = runs
    one, two = runs["1"], runs["2"]
    assert set(one["phase_seconds"]) == PHASES and set(two["phase_seconds"]) == PHASES | {"shutdown"}
    assert one["all_reduce_bytes_per_token"] == 0
    assert two["all_reduce_bytes_per_token"] == tp.all_reduce_bytes_per_token(ModelConfig.from_dict(cfg), "float32")
    assert two["all_reduce_calls"] == 2 * ModelConfig.from_dict(cfg).num_layers * 64  # prefill + 63 decodes
    assert 2 * two["kv_cache_bytes_per_rank"] == one["kv_cache_bytes_per_rank"]
    assert len(two["decode_step_ms"]) == 62 and two["output_tokens"] > 0  # intervals between 63 decode steps
    assert not any(k.startswith("failed") for k in runs)


def test_summary_names_each_run(runs):
    runs, _ = runs
    text = bench.summary({"device": "cpu", "model": "tiny", "dtype": "float32",
                          "computed_all_reduce_bytes_per_token": 1, "engine": {"runs": runs}})
    assert "engine TP=1 (eager)" in text and "engine TP=2 (eager)" in text and "B/rank" in text


def test_sigusr1_dumps_the_stacks_of_both_ranks(tmp_path):
    """With INFERLAB_DIAGNOSE set, SIGUSR1 to the process group makes rank 0 and the worker write their stacks."""
    env = dict(os.environ, INFERLAB_DIAGNOSE="600", INFERLAB_DIAGNOSE_DIR=str(tmp_path), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "inferlab.bench", "tp", "--device", "cpu", "--skip", "equality", "all_reduce",
           "matmuls", "--tp", "2", "--requests", "64", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        for line in proc.stdout:  # wait until the worker is serving, then signal the whole group
            if "warm-up ..." in line:
                break
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGUSR1)
        time.sleep(2.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for rank in (0, 1):
        text = (tmp_path / f"stacks-rank{rank}.txt").read_text()
        assert f"== rank {rank}, pid" in text and "most recent call first" in text
    assert "distributed.py" in (tmp_path / "stacks-rank1.txt").read_text()  # the worker's loop
    assert not (tmp_path / "tp-cpu.json").exists() or "engine" not in json.loads((tmp_path / "tp-cpu.json").read_text())
