"""Roofline arithmetic against hand counts, and the measuring loop against transformers generate."""

from __future__ import annotations

import json

import pytest
import torch

from inferlab import roofline as rl
from inferlab.bench.peers import hf_generate_batch1
from inferlab.configs import gpu_roof, model_shape, param_count
from inferlab.kvcache import kv_bytes_per_token


@pytest.fixture(scope="module")
def tiny():
    import inferlab as il

    model, _ = il.load_model("tiny", device="cpu", dtype="float32")
    return model


def test_decode_intensity_is_about_batch_for_bf16():
    # bf16 weights: 2 FLOPs per parameter per token over 2 bytes per parameter -> ~1 FLOP/byte per sequence
    for batch in (1, 4, 16):
        c = rl.decode_cost("llama-3-8b", batch, 16)
        assert c["intensity"] == pytest.approx(batch, rel=0.1)
    # long contexts: the KV cache (read per sequence) caps the gain from batching
    assert rl.decode_cost("llama-3-8b", 64, 8192)["intensity"] < 0.5 * 64


def test_prefill_is_compute_bound_on_an_h200():
    peak, bw = gpu_roof("H200 141 GB")
    ridge = rl.ridge_point(peak, bw)
    assert rl.prefill_cost("llama-3.2-1b", 2048)["intensity"] > ridge > rl.decode_cost("llama-3.2-1b", 32, 1024)["intensity"]


def test_flops_hand_count_tiny():
    s = model_shape("tiny")
    # tied embeddings: the 4096 x 256 matrix is the LM head's matmul, so all params count
    matmul = param_count("tiny")
    c = rl.step_cost("tiny", 2, 1, 10, weight_dtype="float32", kv_dtype="float32")
    attn = 2 * s.n_layers * 4 * s.n_heads * s.head_dim * 10  # QK^T and PV over 10 keys, 2 sequences
    assert c["flops"] == 2 * matmul * 2 + attn
    assert c["bytes"] == matmul * 4 + 2 * 9 * kv_bytes_per_token("tiny", "fp32") + 2 * kv_bytes_per_token("tiny", "fp32")


def test_windowed_attention_flops_match_brute_force():
    s = model_shape("mistral-7b")
    w = s.windows[0]
    for new, ctx in [(1, 10_000), (300, 300), (5000, 5000), (10, 4100)]:
        brute = sum(min(ctx - new + 1 + i, w) for i in range(new)) * s.n_layers
        assert rl._attention_flops(s, new, ctx) == pytest.approx(4 * s.n_heads * s.head_dim * brute)


def test_h200_batch1_bound_matches_reference():
    # 1B-shaped model, bf16: 2.47 GB of weights per step; at 4.2 TB/s -> ~1,700 tokens/s
    weights = rl.weights_read_per_step("llama-3.2-1b") * 2
    assert weights == pytest.approx(2.47e9, rel=0.01)
    assert rl.decode_tokens_per_s_bound("llama-3.2-1b", 1, 1, 4.2e12) == pytest.approx(1700, rel=0.01)


def test_moe_reads_only_routed_experts():
    dense_equiv = rl.weights_read_per_step("mixtral-8x7b", 1000)
    one = rl.weights_read_per_step("mixtral-8x7b", 1)
    assert dense_equiv == param_count("mixtral-8x7b") - 32000 * 4096
    assert one < 0.3 * dense_equiv
    assert rl.active_params("mixtral-8x7b") == pytest.approx(12.75e9, rel=0.01)
    assert rl.active_params("deepseek-v3") == pytest.approx(37e9, rel=0.02)


def test_bad_step_arguments():
    with pytest.raises(ValueError):
        rl.step_cost("tiny", 1, 5, 4)
    with pytest.raises(ValueError, match="known"):
        gpu_roof("V100")


def test_decode_loop_matches_generate(tiny):
    ids = torch.randint(2, 4096, (2, 12), generator=torch.Generator().manual_seed(1))
    ours = torch.cat([tok for tok, _ in rl.greedy_decode_steps(tiny, ids, 4)], dim=1)
    with torch.inference_mode():
        ref = tiny.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=1,
                            eos_token_id=None)
    assert torch.equal(ours, ref[:, 12:])


def test_measurements_run(tiny):
    assert rl.measure_copy_bandwidth("cpu", 1 << 20, repeats=2)["bytes_per_s"] > 0
    assert rl.measure_matmul_flops("cpu", n=64, repeats=2)["flops_per_s"] > 0
    m = rl.measure_decode(tiny, 2, 8, steps=3, warmup=1)
    assert m["seconds_per_step"] > 0 and m["tokens_per_s"] == pytest.approx(2 / m["seconds_per_step"])
    assert hf_generate_batch1(tiny, 8, 2)["new_tokens"] == 2


def test_bench_main_writes_json(tmp_path):
    from inferlab.bench import roofline as bench

    model, raw = bench.build_model({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                    "num_key_value_heads": 1, "intermediate_size": 64, "vocab_size": 50},
                                   "cpu", "bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert sum(p.numel() for p in model.parameters()) == param_count(raw)
    assert bench.main(["--device", "cpu", "--quick", "--batch-sizes", "1", "--static-generate",
                       "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "roofline-cpu.json").read_text())
    assert data["benchmark"] == "roofline" and data["decode"][0]["bound_tokens_per_s"] > 0
    assert [r["batch_size"] for r in data["decode"]] == [1]
    assert data["weight_bytes_per_step"] == param_count("tiny") * 4
    assert data["generate_static"].get("new_tokens") == 2, data["generate_static"]
