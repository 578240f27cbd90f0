"""The KV-cache formulas against the caches real transformers forward passes build, and
against published per-token figures."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from inferlab import configs, hf_compat
from inferlab import kvcache as kv
from inferlab.kvcache import (
    kv_bytes_per_token,
    kv_cache_bytes,
    max_concurrent_sequences,
    measured_cache_bytes,
)
from inferlab.paths import configs_dir
from inferlab.units import format_bytes

KiB, GiB = 1 << 10, 1 << 30


@pytest.fixture(scope="module")
def tiny():
    import inferlab as il

    model, _ = il.load_model("tiny", device="cpu", dtype="float32")
    return model


def prefill(model, batch, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, model.config.vocab_size, (batch, length), generator=g)
    with torch.no_grad():
        out = model(ids, use_cache=True)
    return out, ids


# --- the formula equals what a real forward pass allocates -------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_formula_matches_real_cache(tiny, dtype):
    model = tiny if dtype == "float32" else copy.deepcopy(tiny).to(getattr(torch, dtype))
    for batch, length in [(1, 1), (1, 37), (3, 16), (2, 129)]:
        out, _ = prefill(model, batch, length)
        assert measured_cache_bytes(out) == kv_cache_bytes("tiny", length, batch, dtype=dtype)
        assert measured_cache_bytes(hf_compat.cache_of(out)) == kv_cache_bytes(model.config, length, batch, dtype)


def test_formula_matches_after_decode_steps(tiny):
    out, ids = prefill(tiny, 2, 20)
    cache = hf_compat.cache_of(out)
    nxt = out.logits[:, -1:].argmax(-1)
    with torch.no_grad():
        for _ in range(5):
            out = tiny(nxt, use_cache=True, **hf_compat.cache_kwargs(tiny, cache))
            cache = hf_compat.cache_of(out)
            nxt = out.logits[:, -1:].argmax(-1)
    assert measured_cache_bytes(cache) == kv_cache_bytes("tiny", 25, 2, "float32")


def test_legacy_tuple_cache():
    legacy = tuple((torch.zeros(2, 2, 10, 32, dtype=torch.float16),) * 2 for _ in range(8))
    assert measured_cache_bytes(legacy) == kv_cache_bytes("tiny", 10, 2, "fp16")


def _tiny_random(cls_name, **cfg):
    import transformers

    config = getattr(transformers, cls_name.replace("ForCausalLM", "Config"))(**cfg)
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(config).eval()


def test_sliding_window_matches_transformers():
    # Mistral-style: every layer windowed. transformers keeps window-1 tokens between steps
    # (the next query brings its own K/V); the formula reserves the full window.
    model = _tiny_random("MistralForCausalLM", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=64,
                         sliding_window=8)
    for length in (5, 7, 20):
        out, _ = prefill(model, 2, length)
        kept = {**configs.as_dict(model.config), "sliding_window": 7}
        assert measured_cache_bytes(out) == kv_cache_bytes(kept, length, 2, "float32")
    full = kv_cache_bytes(model.config, 20, 2, "float32")
    assert full == 2 * 2 * 8 * 2 * 2 * 16 * 4  # 2 layers x window 8 x batch 2 x K,V x 2 heads x 16 x 4 B


def test_alternating_local_global_matches_transformers():
    model = _tiny_random("Gemma2ForCausalLM", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=64,
                         sliding_window=8)
    shape = configs.model_shape(model.config)
    assert shape.windows == (8, None, 8, None)
    out, _ = prefill(model, 1, 30)
    kept = {**configs.as_dict(model.config), "sliding_window": 7}
    assert measured_cache_bytes(out) == kv_cache_bytes(kept, 30, 1, "float32")


def test_mla_matches_transformers():
    model = _tiny_random("DeepseekV3ForCausalLM", hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4,
                         n_shared_experts=1, num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1,
                         q_lora_rank=24, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16,
                         v_head_dim=16, vocab_size=64)
    out, _ = prefill(model, 2, 11)
    latent = kv_cache_bytes(model.config, 11, 2, "float32")
    expanded = kv_cache_bytes(model.config, 11, 2, "float32", mla_cache="expanded")
    assert latent == 2 * 11 * 2 * (16 + 8) * 4 < expanded
    # recent transformers cache the compressed latent (one "head" of kv_lora_rank + a RoPE key);
    # older releases cached every head's expanded K and V
    one_head = hf_compat.cache_of(out).layers[0].keys.shape[1] == 1
    assert measured_cache_bytes(out) == (latent if one_head else expanded)


@pytest.mark.parametrize("cls_name, cfg", [
    ("LlamaForCausalLM", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=100, tie_word_embeddings=False)),
    ("Qwen2ForCausalLM", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=100, tie_word_embeddings=False)),
    ("Gemma2ForCausalLM", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=32, vocab_size=100)),
    ("MixtralForCausalLM", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=100, num_local_experts=4)),
    ("OPTForCausalLM", dict(hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=100, max_position_embeddings=50, word_embed_proj_dim=64)),
    ("DeepseekV3ForCausalLM", dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                                   num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
                                   n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, n_group=1,
                                   topk_group=1, first_k_dense_replace=1, q_lora_rank=24, kv_lora_rank=16,
                                   qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, vocab_size=100)),
])
def test_param_count_matches_real_models(cls_name, cfg):
    model = _tiny_random(cls_name, **cfg)
    real = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    assert configs.param_count(model.config) == real


def test_param_count_tiny(tiny):
    assert configs.param_count("tiny") == sum(p.numel() for p in tiny.parameters())


# --- published figures ------------------------------------------------------------------


def test_published_per_token_figures():
    assert kv_bytes_per_token("llama-2-7b", "fp16") == 512 * KiB
    assert kv_bytes_per_token("llama-3-8b", "bf16") == 128 * KiB
    # vLLM paper (Kwon et al. 2023, sec. 3): OPT-13B needs "800 KB" per token = 2*40*5120*2 B = 800 KiB
    assert kv_bytes_per_token("opt-13b", "fp16") == 819_200 == 800 * KiB
    assert kv_bytes_per_token("deepseek-v3", "bf16") == 61 * (512 + 64) * 2


def test_llama_7b_2048_tokens_is_one_gib():
    n = kv_cache_bytes("llama-7b", 2048, 1, "float16")
    assert n == GiB == 2 * 32 * 32 * 128 * 2048 * 2
    # the often-quoted "1.07 GB" is the same number in decimal gigabytes
    assert format_bytes(n, "GiB") == "1.00 GiB" and format_bytes(n, "GB") == "1.07 GB"


def test_gqa_myth_n_heads_overstates():
    assert kv.naive_kv_cache_bytes("llama-3-8b", 1) == 512 * KiB
    assert kv.naive_kv_cache_bytes("llama-3-8b", 1) == 4 * kv_bytes_per_token("llama-3-8b")
    assert kv.naive_kv_cache_bytes("llama-2-7b", 1) == kv_bytes_per_token("llama-2-7b")  # MHA: same


def test_sliding_windows_cap_published_models():
    per_tok = kv_bytes_per_token("mistral-7b")
    assert kv_cache_bytes("mistral-7b", 3000) == 3000 * per_tok
    assert kv_cache_bytes("mistral-7b", 32768) == 4096 * per_tok
    per_layer = kv_bytes_per_token("gemma-2-9b") // 42
    assert kv_cache_bytes("gemma-2-9b", 8192) == per_layer * (21 * 8192 + 21 * 4096)


def test_quantized_dtypes_include_scales():
    vectors = 2 * 32 * 32  # llama-2-7b: K and V, 32 layers, 32 heads, per token
    assert kv_bytes_per_token("llama-2-7b", "int8") == vectors * (128 + 2)
    assert kv_bytes_per_token("llama-2-7b", "int4") == vectors * (64 + 2 * 4)
    assert kv_bytes_per_token("llama-2-7b", "fp8") == vectors * 128
    assert kv_bytes_per_token("llama-2-7b", "fp32") == 2 * kv_bytes_per_token("llama-2-7b", "fp16")


def test_tensor_parallel_sharding_and_replication():
    one = kv_bytes_per_token("llama-3-8b")
    assert kv_bytes_per_token("llama-3-8b", tp_size=2) == one // 2
    assert kv_bytes_per_token("llama-3-8b", tp_size=8) == one // 8
    assert kv_bytes_per_token("llama-3-8b", tp_size=16) == one // 8  # 8 KV heads: replicated beyond TP 8
    assert kv.kv_heads_per_gpu("llama-3-8b", 3) == 3  # ceil(8/3)
    assert kv_bytes_per_token("deepseek-v3", tp_size=8) == kv_bytes_per_token("deepseek-v3")  # latent replicated


def test_max_concurrent_sequences():
    mem = configs.gpu_memory_bytes("A100 80 GB")
    weights = configs.param_count("llama-2-7b") * 2
    expect = math.floor((mem - int(0.1 * mem) - weights) / (4096 * 512 * KiB))
    got = max_concurrent_sequences("llama-2-7b", mem, 4096, "fp16", "bf16", 0.1)
    assert got == expect > 0
    assert max_concurrent_sequences("llama-3-8b", mem, 4096) > 3 * got  # GQA: 4x smaller cache
    assert max_concurrent_sequences("llama-3.1-405b", configs.gpu_memory_bytes("T4 16 GB"), 1024) == 0
    assert max_concurrent_sequences("llama-3-70b", mem, 4096, tp_size=4) > 0


def test_config_forms_agree():
    from transformers import LlamaConfig

    raw = json.loads((configs_dir() / "llama-3-8b.json").read_text())
    fields = {k: raw[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                  "num_key_value_heads", "intermediate_size", "vocab_size")}
    hf = LlamaConfig(**fields)
    assert kv_cache_bytes(hf, 100) == kv_cache_bytes(raw, 100) == kv_cache_bytes("Llama-3-8B", 100)


def test_every_shipped_config_loads():
    for name in configs.known_models():
        shape = configs.model_shape(name)
        assert shape.n_layers > 0 and kv_bytes_per_token(name) > 0 and configs.param_count(name) > 0
        published = configs.as_dict(name).get("published_params")
        if published:
            assert configs.param_count(name) == pytest.approx(published, rel=3e-3), name


# --- bad input --------------------------------------------------------------------------


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="llama-2-7b") as err:
        kv_cache_bytes("llama-9-1t", 10)
    assert "known models" in str(err.value) and "tiny" in str(err.value)


@pytest.mark.parametrize("seq_len, batch", [(0, 1), (-5, 1), (10, 0), (10, -1), (2.5, 1)])
def test_bad_lengths(seq_len, batch):
    with pytest.raises(ValueError, match="positive integer"):
        kv_cache_bytes("tiny", seq_len, batch)


def test_numpy_integers_are_accepted():
    import numpy as np

    assert kv_cache_bytes("tiny", np.int64(10), np.int32(2)) == kv_cache_bytes("tiny", 10, 2)
    with pytest.raises(ValueError):
        kv_cache_bytes("tiny", True)


def test_unknown_dtype_lists_accepted():
    with pytest.raises(ValueError, match="int4") as err:
        kv_bytes_per_token("tiny", "fp7")
    assert "float16" in str(err.value)
    with pytest.raises(ValueError, match="tp_size"):
        kv_bytes_per_token("tiny", tp_size=0)
    with pytest.raises(ValueError, match="unit"):
        format_bytes(10, "GiG")


def test_format_bytes():
    assert format_bytes(512 * KiB, "KiB") == "512.00 KiB"
    assert format_bytes(819_200, "KB") == "819.20 KB"
    assert format_bytes(3 * GiB, "auto") == "3.00 GiB"
    assert format_bytes(1234, "B") == "1,234 B"


def test_kv_bytes_per_block_is_block_size_tokens_of_every_layer():
    from dataclasses import dataclass

    from inferlab.kvcache import kv_bytes_per_block

    # Llama-3-8B in fp16: 128 KiB per token, so a 16-token block is 2 MiB
    assert kv_bytes_per_block("llama-3-8b", "float16", 16) == 16 * 128 * KiB
    assert kv_bytes_per_block("llama-3-8b", torch.bfloat16, 16) == kv_bytes_per_block("llama-3-8b", "bf16", 16)
    assert kv_bytes_per_block("llama-3-8b", "float32", 16) == 2 * kv_bytes_per_block("llama-3-8b", "float16", 16)

    @dataclass
    class EngineShape:  # the engine's ModelConfig names its fields this way
        num_layers: int = 2
        hidden_size: int = 32
        num_heads: int = 4
        num_kv_heads: int = 2
        head_dim: int = 8

    # K and V, every layer, block_size tokens, num_kv_heads heads (not num_heads)
    assert kv_bytes_per_block(EngineShape(), torch.float32, 4) == 2 * 2 * 4 * 2 * 8 * 4
    with pytest.raises(ValueError, match="block_size"):
        kv_bytes_per_block("llama-3-8b", "float16", 0)
