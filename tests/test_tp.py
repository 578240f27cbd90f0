"""Tensor parallelism: shards reassemble into the full weights, partial sums add up, and the engine
over two processes (gloo on CPU; NCCL where two GPUs exist) gives TP=1's greedy tokens."""

from __future__ import annotations

import copy

import pytest
import torch

from inferlab import tp
from inferlab.engine.config import EngineConfig, ModelConfig
from inferlab.engine.loader import load_weights, resolve_source, safetensors_weights
from inferlab.engine.model_runner import ModelRunner
from inferlab.engine.models import LlamaForCausalLM

PROMPTS = ["def add(a, b):", "import os\n", "class Foo:", "for i in range("]


@pytest.fixture(scope="module")
def full():
    """The embedded tiny model (8 query heads, 2 KV heads) on the CPU in fp32."""
    return ModelRunner("tiny", device="cpu", dtype="float32", num_kv_blocks=8).model


def shards(model, size):
    return [tp.shard_model(copy.deepcopy(model), rank, size) for rank in range(size)]


# --------------------------------------------------------------------------- which heads go where
@pytest.mark.parametrize("heads,kv,size", [(8, 2, 1), (8, 2, 2), (8, 2, 4), (8, 2, 8), (32, 8, 4), (4, 1, 2), (8, 8, 2)])
def test_every_query_head_finds_its_kv_head_on_its_rank(heads, kv, size):
    group = heads // kv  # query heads per KV head (GQA)
    for rank in range(size):
        h = tp.head_shard(heads, kv, rank, size)
        assert h.num_heads * size == heads
        for q in range(h.q_start, h.q_start + h.num_heads):
            assert h.kv_start <= q // group < h.kv_start + h.num_kv_heads
    replicas = {tp.head_shard(heads, kv, r, size).kv_replicas for r in range(size)}
    assert replicas == {max(1, size // kv)}


@pytest.mark.parametrize("field,value,size", [("num_attention_heads", 6, 4), ("num_key_value_heads", 3, 2),
                                              ("intermediate_size", 705, 2)])
def test_unshardable_shapes_are_refused_by_name(field, value, size):
    cfg = {"hidden_size": 96, "intermediate_size": 704, "num_hidden_layers": 1, "num_attention_heads": 6,
           "num_key_value_heads": 6, "vocab_size": 64, field: value}
    with pytest.raises(ValueError, match=field):
        tp.check_shardable(ModelConfig.from_dict(cfg), size)


def test_tensor_parallel_size_is_validated():
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        EngineConfig(tensor_parallel_size=0)
    assert EngineConfig().tensor_parallel_size == 1


# --------------------------------------------------------------------------- the weight loaders
@pytest.mark.parametrize("size", [2, 4])
def test_column_shards_concatenate_to_the_full_weight(full, size):
    c, parts = full.config, shards(full, size)
    d, layer = c.head_dim, 0
    q, k, v = full.model.layers[layer].self_attn.qkv_proj.weight.split([c.num_heads * d, c.num_kv_heads * d, c.num_kv_heads * d])
    qkv = [p.model.layers[layer].self_attn.qkv_proj for p in parts]
    assert torch.equal(torch.cat([m.weight.split(m.output_sizes)[0] for m in qkv]), q)
    for m in qkv:  # k and v: this rank's KV heads (the same head on replicas)
        h = m.heads
        rows = slice(h.kv_start * d, (h.kv_start + h.num_kv_heads) * d)
        assert torch.equal(m.weight.split(m.output_sizes)[1], k[rows])
        assert torch.equal(m.weight.split(m.output_sizes)[2], v[rows])
    gate, up = full.model.layers[layer].mlp.gate_up_proj.weight.chunk(2)
    gu = [p.model.layers[layer].mlp.gate_up_proj.weight.chunk(2) for p in parts]
    assert torch.equal(torch.cat([g for g, _ in gu]), gate) and torch.equal(torch.cat([u for _, u in gu]), up)


@pytest.mark.parametrize("size", [2, 4])
def test_row_parallel_partial_sums_add_up_to_the_full_layer(full, size, monkeypatch):
    """Each rank's down_proj / o_proj gives a partial product; their sum (the all-reduce) is the full output."""
    monkeypatch.setattr(tp, "all_reduce", lambda x, group=None: x)  # see each rank's partial sum
    parts = shards(full, size)
    x = torch.randn(5, full.config.hidden_size)
    with torch.no_grad():
        mlp = sum(p.model.layers[1].mlp(x) for p in parts)
        torch.testing.assert_close(mlp, full.model.layers[1].mlp(x), rtol=1e-5, atol=1e-5)
        heads = torch.randn(5, full.config.num_heads * full.config.head_dim)
        chunks = heads.chunk(size, dim=-1)
        o = sum(p.model.layers[1].self_attn.o_proj(ch) for p, ch in zip(parts, chunks, strict=True))
        torch.testing.assert_close(o, full.model.layers[1].self_attn.o_proj(heads), rtol=1e-5, atol=1e-5)


def test_checkpoint_loads_straight_into_a_shard(full):
    """The loader's q/k/v and gate/up shard ids reach the sharded layers' weight_loaders unchanged."""
    source = resolve_source("tiny")
    empty = tp.shard_model(LlamaForCausalLM(source.config), 1, 2, copy=False)
    load_weights(empty, safetensors_weights(source.path))
    expected = tp.shard_model(copy.deepcopy(full), 1, 2).state_dict()
    for name, tensor in empty.state_dict().items():
        torch.testing.assert_close(tensor.float(), expected[name], rtol=0, atol=1e-3, msg=name)  # fp16 checkpoint


def test_all_reduce_bytes_per_token():
    c = resolve_source({"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256}).config
    assert tp.all_reduce_bytes_per_token(c, "bfloat16") == 2 * 16 * 2048 * 2  # 128 KiB: Llama-3.2-1B
    assert tp.ring_bytes_per_rank(1000, 2) == 1000 and tp.ring_bytes_per_rank(1000, 4) == 1500


# --------------------------------------------------------------------------- the engine over processes
DEVICES = [pytest.param("cpu", id="gloo"), pytest.param("cuda", id="nccl", marks=pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="NCCL tensor parallelism needs two CUDA GPUs"))]


def _generate(llm, prompts, n=24):
    from inferlab import SamplingParams

    return [o.outputs[0].token_ids for o in llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=n))]


@pytest.mark.parametrize("device", DEVICES)
def test_llm_tp2_greedy_equals_tp1_and_halves_the_kv_cache(device):
    from inferlab import LLM
    from inferlab.kvcache import kv_cache_bytes

    settings = dict(device=device, dtype="float32", num_kv_blocks=64, block_size=16,
                    enforce_eager=True, attention_backend="sdpa")  # the split under test, not the kernels
    one = LLM("tiny", **settings)
    two = LLM("tiny", tensor_parallel_size=2, **settings)
    try:
        assert _generate(two, PROMPTS) == _generate(one, PROMPTS)
        runner = two.engine.runner
        per_rank = runner.call("kv_cache_bytes", reply=True)
        predicted = kv_cache_bytes(runner.config, 64 * 16, dtype="float32", tp_size=2)
        assert per_rank == [predicted, predicted]
        assert 2 * predicted == one.engine.runner.kv_cache.nbytes()
        runner.call("meter_start", reply=True)
        prompt = one.tokenizer.encode(PROMPTS[0])
        _generate(two, [prompt], n=5)
        measured = runner.call("meter_stop", reply=True)
        tokens, steps, layers = len(prompt) + 4, 5, runner.config.num_layers  # prefill + 4 decodes
        per_token = tp.all_reduce_bytes_per_token(runner.config, "float32")
        assert measured == [(2 * layers * steps, tokens * per_token)] * 2
    finally:
        two.engine.runner.shutdown()


def test_kv_heads_are_replicated_when_ranks_outnumber_them():
    """One KV head over two ranks: both keep it (no halving), and the logits still equal TP=1's."""
    from inferlab import LLM
    from inferlab.bench.workloads import NullTokenizer
    from inferlab.kvcache import kv_cache_bytes

    cfg = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 1, "vocab_size": 512, "max_position_embeddings": 256}
    settings = dict(device="cpu", dtype="float32", num_kv_blocks=16, seed=3)
    one = LLM(cfg, NullTokenizer(), **settings)
    two = LLM(cfg, NullTokenizer(), tensor_parallel_size=2, **settings)
    try:
        ids = list(range(5, 60, 3))
        torch.testing.assert_close(two.engine.runner.reference_logits(ids), one.engine.runner.reference_logits(ids),
                                   rtol=1e-5, atol=1e-5)
        assert _generate(two, [ids], n=12) == _generate(one, [ids], n=12)
        per_rank = two.engine.runner.call("kv_cache_bytes", reply=True)
        config = two.engine.runner.config
        assert per_rank == [kv_cache_bytes(config, 16 * 16, dtype="float32", tp_size=2)] * 2
        assert per_rank[0] == one.engine.runner.kv_cache.nbytes()
    finally:
        two.engine.runner.shutdown()


# --------------------------------------------------------------------------- notebook 08's exercises and drawings
def test_exercise_solutions_pass_and_blanks_do_not():
    from inferlab.exercises import tp as ex

    def blank(x, weight, size):
        raise NotImplementedError

    ns: dict = {}
    exec(ex.SOLUTIONS["row_parallel"], ns)
    assert ex.check_row_parallel(ns["row_parallel"]) and not ex.check_row_parallel(blank)
    assert not ex.check_row_parallel(lambda x, w, s: x[:, : w.shape[1] // s] @ w[:, : w.shape[1] // s].T)
    for name, check in (("kv_per_gpu", ex.check_kv_per_gpu), ("all_reduce_bytes", ex.check_all_reduce_bytes)):
        ns = {}
        exec(ex.SOLUTIONS[name], ns)
        assert check(ns["answer"]) and not check(None) and not check(ns["answer"] // 2)


def test_sharding_layout_covers_every_weight_once_per_rank_set(full):
    layout = tp.sharding_layout(full.config, 4)
    c = full.config
    q = sorted((s["start"], s["stop"]) for s in layout if s["matrix"] == "q_proj")
    assert q[0][0] == 0 and q[-1][1] == c.num_heads * c.head_dim and all(a[1] == b[0] for a, b in zip(q, q[1:], strict=False))
    kv = [s for s in layout if s["matrix"] == "k_proj, v_proj"]
    assert len({(s["start"], s["stop"]) for s in kv}) == c.num_kv_heads  # 2 heads, each on 2 ranks
    from inferlab.viz.tp import sharding_figure

    assert len(sharding_figure(layout, "t").layout.shapes) == len(layout)


def test_projection_bytes_and_the_estimate():
    c = resolve_source({"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "head_dim": 64,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256}).config
    per_layer = 2048 * 3072 + 2048 * 2048 + 3 * 2048 * 8192
    assert tp.projection_bytes(c, "bfloat16") == 16 * per_layer * 2
    one = tp.decode_step_estimate(c, 1, 2e12, 1e-5)
    assert tp.decode_step_estimate(c, 2, 2e12, 1e-5) == pytest.approx(one / 2 + 32 * 1e-5)
    assert tp.decode_step_estimate(c, 2, 2e12, 0.0) == pytest.approx(one / 2)


def test_a_dead_worker_is_reported_not_waited_for():
    from inferlab import LLM

    llm = LLM("tiny", tensor_parallel_size=2, device="cpu", dtype="float32", num_kv_blocks=16)
    runner = llm.engine.runner
    runner.procs[0].kill()
    runner.procs[0].join()
    try:  # the engine reports a request whose step failed (issue 13) instead of hanging in a collective
        out = llm.generate(["def f(x):"])[0]
        assert out.outputs[0].finish_reason == "error" and "has exited" in str(out.error)
    finally:
        runner.shutdown()
