"""KV sizes for every attention layout: a dict and the transformers config object of one model give the
same bytes, equal to the cache a transformers forward pass builds (issue 13, points 4 and 6)."""

from __future__ import annotations

import json

import pytest
import torch

from inferlab import configs
from inferlab.kvcache import kv_bytes_per_token, kv_cache_bytes, measured_cache_bytes
from inferlab.paths import configs_dir

LAYOUTS = configs_dir() / "layouts"  # published configs of the layouts below (not in known_models)


def published(name: str) -> dict:
    return json.loads((LAYOUTS / f"{name}.json").read_text())


def _random_model(cls_name: str, config_cls: str | None = None, **cfg):
    import transformers

    config = getattr(transformers, config_cls or cls_name.replace("ForCausalLM", "Config"))(**cfg)
    torch.manual_seed(0)
    return config, getattr(transformers, cls_name)(config).eval()


def _measured(model, length: int, batch: int = 2) -> int:
    ids = torch.randint(1, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return measured_cache_bytes(model(ids, use_cache=True))


def _between_steps(cfg: dict) -> dict:
    """transformers keeps window - 1 tokens of a sliding layer between steps (the formula reserves the window)."""
    return {**cfg, "sliding_window": cfg["sliding_window"] - 1} if cfg.get("sliding_window") else cfg


# --- point 4: three layouts -------------------------------------------------------------------------


def test_falcon_7b_multi_query_is_one_kv_head():
    from transformers import FalconConfig

    raw = published("falcon-7b")
    assert kv_bytes_per_token(raw, "bf16") == 2 * 32 * 1 * 64 * 2 == 8192  # was 581,632 (71 heads)
    hf = FalconConfig(**{k: v for k, v in raw.items() if k not in {"name", "source", "notes"}})
    assert hf.num_kv_heads == 71  # the config object says 71; the model caches one head
    assert kv_bytes_per_token(hf, "bf16") == 8192


def test_falcon_layouts_match_transformers_cache():
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, vocab_size=64, bias=False, alibi=False)
    for layout in (dict(multi_query=True, new_decoder_architecture=False),
                   dict(multi_query=False, new_decoder_architecture=False)):
        config, model = _random_model("FalconForCausalLM", **base, **layout)
        raw = {**base, **layout, "model_type": "falcon"}
        real = _measured(model, 9)
        assert kv_cache_bytes(raw, 9, 2, "float32") == kv_cache_bytes(config, 9, 2, "float32") == real, layout


def test_falcon_40b_layout_counts_kv_heads_transformers_broadcasts_them():
    # new_decoder_architecture (Falcon-40B/180B): num_kv_heads K/V heads, as vLLM caches them;
    # transformers broadcasts them to every query head before caching, so its cache is n_heads/n_kv larger.
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, vocab_size=64, bias=False, alibi=False,
                new_decoder_architecture=True, num_kv_heads=2)
    config, model = _random_model("FalconForCausalLM", **base)
    ours = kv_cache_bytes({**base, "model_type": "falcon"}, 9, 2, "float32")
    assert ours == kv_cache_bytes(config, 9, 2, "float32") == 2 * 2 * 2 * 8 * 9 * 2 * 4
    assert _measured(model, 9) == ours * 8 // 2


def test_gpt_bigcode_multi_query_matches_transformers_cache():
    base = dict(n_embd=64, n_layer=2, n_head=8, vocab_size=64, n_positions=64)
    for multi_query in (True, False):
        config, model = _random_model("GPTBigCodeForCausalLM", **base, multi_query=multi_query)
        raw = {**base, "multi_query": multi_query, "model_type": "gpt_bigcode"}
        assert kv_cache_bytes(raw, 9, 2, "float32") == kv_cache_bytes(config, 9, 2, "float32") == _measured(model, 9)


def test_qwen2_dict_windows_only_from_max_window_layers():
    from transformers import Qwen2Config

    raw = {**configs.load_config("qwen2.5-7b"), "use_sliding_window": True, "sliding_window": 4096,
           "max_window_layers": 20}
    hf = Qwen2Config(**raw)
    assert configs.model_shape(raw).windows == (None,) * 20 + (4096,) * 8
    assert kv_cache_bytes(raw, 32768) == kv_cache_bytes(hf, 32768)
    per_layer = kv_bytes_per_token(raw) // 28
    assert kv_cache_bytes(raw, 32768) == per_layer * (20 * 32768 + 8 * 4096)
    # the default max_window_layers (28) windows no layer of this 28-layer model
    no_key = {k: v for k, v in raw.items() if k != "max_window_layers"}
    assert kv_cache_bytes(no_key, 32768) == kv_cache_bytes(Qwen2Config(**no_key), 32768) == 28 * per_layer * 32768


def test_qwen2_max_window_layers_matches_transformers_cache():
    cfg = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=64, use_sliding_window=True, sliding_window=6, max_window_layers=1)
    config, model = _random_model("Qwen2ForCausalLM", **cfg)
    raw = {**cfg, "model_type": "qwen2"}
    assert configs.model_shape(raw).windows == (None, 6, 6, 6) == configs.model_shape(config).windows
    for length in (4, 20):
        real = _measured(model, length)
        assert kv_cache_bytes(_between_steps(raw), length, 2, "float32") == real
        assert kv_cache_bytes(raw, length, 2, "float32") == kv_cache_bytes(config, length, 2, "float32")


def test_gemma3_1b_pattern_without_layer_types():
    raw = published("gemma-3-1b")
    assert "layer_types" not in raw
    # 22 local layers of 512 tokens, 4 global ones (layers 5, 11, 17, 23) of 32k; 1 KV head of 256
    assert kv_cache_bytes(raw, 32768, dtype="bf16") == 1024 * (22 * 512 + 4 * 32768) == 145_752_064
    wrapped = {"model_type": "gemma3", "text_config": raw}  # the multimodal sizes (4B+) nest it
    assert kv_cache_bytes(wrapped, 32768, dtype="bf16") == 145_752_064


def test_gemma3_pattern_matches_config_object_and_transformers_cache():
    cfg = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=5, num_attention_heads=4,
               num_key_value_heads=1, head_dim=16, vocab_size=64, sliding_window=6, sliding_window_pattern=3)
    config, model = _random_model("Gemma3ForCausalLM", "Gemma3TextConfig", **cfg)
    raw = {**cfg, "model_type": "gemma3_text"}
    assert configs.model_shape(raw).windows == (6, 6, None, 6, 6)
    for length in (4, 20):
        assert kv_cache_bytes(raw, length, 2, "float32") == kv_cache_bytes(config, length, 2, "float32")
        assert kv_cache_bytes(_between_steps(raw), length, 2, "float32") == _measured(model, length)


def test_cohere2_default_pattern_and_gemma2_unchanged():
    assert configs.layer_windows({"model_type": "cohere2", "sliding_window": 8}, 4) == (8, 8, 8, None)
    assert configs.layer_windows({"model_type": "gemma2", "sliding_window": 8}, 4) == (8, None, 8, None)
    assert configs.layer_windows({"model_type": "mistral", "sliding_window": 8}, 2) == (8, 8)
    assert configs.layer_windows({"model_type": "qwen2", "sliding_window": 8}, 2) == (None, None)


# --- point 6: clear errors --------------------------------------------------------------------------


@pytest.mark.parametrize("cfg, missing", [
    ({}, "num_hidden_layers"),
    ({"num_hidden_layers": 2, "hidden_size": 64}, "num_attention_heads"),
    ({"num_hidden_layers": 2, "num_attention_heads": 4}, "hidden_size"),
])
def test_missing_keys_are_named(cfg, missing):
    with pytest.raises(ValueError, match=missing):
        kv_cache_bytes(cfg, 16)


def test_multimodal_config_reads_text_config():
    from transformers import Gemma3Config

    text = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, vocab_size=64, sliding_window=6, sliding_window_pattern=2)
    nested = {"model_type": "gemma3", "text_config": {**text, "model_type": "gemma3_text"}}
    hf = Gemma3Config(text_config=text)
    assert kv_cache_bytes(nested, 30) == kv_cache_bytes(hf, 30) == kv_cache_bytes({**text, "model_type": "gemma3_text"}, 30)


# --- the same class nearby: parameter counts of these layouts ------------------------------------------


@pytest.mark.parametrize("cls_name, config_cls, cfg", [
    ("FalconForCausalLM", None, dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, vocab_size=100,
                                     multi_query=True, new_decoder_architecture=False, parallel_attn=True)),
    ("FalconForCausalLM", None, dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, vocab_size=100,
                                     new_decoder_architecture=True, num_kv_heads=2, bias=True)),
    ("FalconForCausalLM", None, dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, vocab_size=100,
                                     multi_query=False, parallel_attn=False)),
    ("Gemma3ForCausalLM", "Gemma3TextConfig", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                   num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                                   vocab_size=100)),
    ("Qwen3ForCausalLM", None, dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=16, vocab_size=100)),
])
def test_param_count_of_these_layouts_matches_transformers(cls_name, config_cls, cfg):
    config, model = _random_model(cls_name, config_cls, **cfg)
    assert configs.param_count(config) == sum(p.numel() for p in model.parameters())
    assert configs.param_count({**cfg, "model_type": config.model_type}) == sum(p.numel() for p in model.parameters())


def test_falcon_7b_and_gemma_3_1b_param_counts():
    assert configs.param_count(published("falcon-7b")) == pytest.approx(6.92e9, rel=1e-3)  # was 9.86e9
    assert configs.param_count(published("gemma-3-1b")) == pytest.approx(1.0e9, rel=1e-2)


def test_gpu_memory_by_name_and_bad_values_named():
    from inferlab.kvcache import max_concurrent_sequences

    by_name = max_concurrent_sequences("llama-3-8b", "H100 80 GB", 4096)
    assert by_name == max_concurrent_sequences("llama-3-8b", configs.gpu_memory_bytes("H100 80 GB"), 4096) > 0
    for bad in (float("nan"), True, -5, None):
        with pytest.raises(ValueError, match="gpu_memory_bytes"):
            max_concurrent_sequences("llama-3-8b", bad, 4096)
    with pytest.raises(ValueError, match="tp_size"):
        kv_bytes_per_token("llama-3-8b", tp_size=True)
