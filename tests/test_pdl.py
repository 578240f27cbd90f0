"""Programmatic dependent launch (inferlab.pdl): off where it cannot run, and on a Hopper GPU a graphed
decode step launched with it gives exactly the logits of the same step launched one kernel after another."""

import copy

import pytest
import torch

from inferlab import pdl
from inferlab.device import capture_cuda_graph_output


def test_cpu_tensors_launch_without_pdl():
    assert pdl.launch_options(torch.zeros(1)) == {"PDL": False}
    assert not pdl.enabled(torch.zeros(1))


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_switch_turns_it_off(monkeypatch):
    x = torch.zeros(1, device="cuda")
    monkeypatch.setenv("INFERLAB_PDL", "0")
    assert pdl.launch_options(x) == {"PDL": False}
    monkeypatch.setenv("INFERLAB_PDL", "1")
    assert pdl.enabled(x) == (_hopper() and pdl.gdc_wait is not None)


def _graphed_logits(step) -> torch.Tensor:
    graph, out = capture_cuda_graph_output(step.step)
    results = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        results.append(out.clone())
    assert all(torch.equal(r, results[0]) for r in results), "replays differ"
    return results[0]


@pytest.mark.skipif(not _hopper(), reason="programmatic dependent launch needs a CUDA GPU of compute capability 9.0+")
def test_graphed_step_with_pdl_equals_the_serialized_step(monkeypatch):
    """Every kernel of the step (norms, RoPE, KV store, paged decode and its merge, int4/int8 gemv,
    split or not) waits for its predecessor before touching what it wrote: no result may change."""
    from inferlab.bench.quant import EngineStep
    from inferlab.engine.model_runner import ModelRunner
    from inferlab.quant import quantize

    runner = ModelRunner("tiny", device="cuda", dtype="bfloat16", enforce_eager=True)
    for name in ("bf16", "int8", "int4"):
        model = copy.deepcopy(runner.model)
        if name != "bf16":
            quantize(model, name, group_size=128, skip=("down_proj",))
        step = EngineStep(runner, batch=1, context=40, model=model)
        step.ids.fill_(7)
        logits = {}
        for flag in ("0", "1"):
            monkeypatch.setenv("INFERLAB_PDL", flag)
            logits[flag] = _graphed_logits(step)
        assert torch.equal(logits["0"], logits["1"]), name
