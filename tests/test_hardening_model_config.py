"""The engine runs a config as written or refuses it by name (issue 13, point 3; and point 4 for the engine)."""

from __future__ import annotations

import pytest
import torch

from inferlab.engine.activation import ACTIVATIONS
from inferlab.engine.config import ModelConfig
from inferlab.engine.model_runner import ModelRunner

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)


def _random_model(kind: str = "llama", **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(kind, **BASE, **extra)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model


def _max_error(model) -> float:
    runner = ModelRunner(model, device="cpu", dtype=torch.float32, block_size=8, num_kv_blocks=8)
    ids = torch.randint(0, 300, (24,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.inference_mode():
        want = model(torch.tensor([ids])).logits[0].float()
    return (runner.reference_logits(ids) - want).abs().max().item()


@pytest.mark.parametrize("act", ["gelu", "gelu_pytorch_tanh", "gelu_new"])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_gelu_configs_match_transformers(kind, act):
    # before: every config ran SiLU, and a gelu Llama's logits were off by up to ~1
    assert _max_error(_random_model(kind, hidden_act=act)) <= 1e-4


def test_every_listed_activation_matches_transformers_act2fn():
    from transformers.activations import ACT2FN

    x = torch.linspace(-6, 6, 1001)
    for name, fn in ACTIVATIONS.items():
        assert torch.allclose(fn(x), ACT2FN[name](x), atol=1e-6), name


def test_unimplemented_activation_is_refused_by_name():
    with pytest.raises(ValueError, match="hidden_act 'tanh'"):
        ModelConfig.from_dict({**BASE, "model_type": "llama", "hidden_act": "tanh"})


@pytest.mark.parametrize("field, value", [
    ("partial_rotary_factor", 0.5), ("attn_logit_softcapping", 50.0), ("final_logit_softcapping", 30.0),
    ("logits_scaling", 8.0), ("embedding_multiplier", 12.0), ("residual_multiplier", 0.22),
    ("quantization_config", {"quant_method": "gptq", "bits": 4}), ("use_qk_norm", True),
])
def test_unimplemented_fields_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig.from_dict({**BASE, "model_type": "llama", field: value})


def test_neutral_values_of_those_fields_are_accepted():
    cfg = ModelConfig.from_dict({**BASE, "model_type": "llama", "partial_rotary_factor": 1.0,
                                 "attn_logit_softcapping": None, "logits_scaling": 1.0, "pretraining_tp": 2})
    assert cfg.hidden_act == "silu"


@pytest.mark.parametrize("rope", [{"rope_type": "yarn", "factor": 4.0}, {"type": "dynamic", "factor": 2.0}])
def test_unimplemented_rope_scaling_is_refused_when_read(rope):
    with pytest.raises(ValueError, match="rope_type"):
        ModelConfig.from_dict({**BASE, "model_type": "llama", "rope_scaling": rope})


def test_missing_config_keys_and_bad_head_ratio_are_named():
    with pytest.raises(ValueError, match="intermediate_size"):
        ModelConfig.from_dict({k: v for k, v in BASE.items() if k != "intermediate_size"})
    with pytest.raises(ValueError, match="num_key_value_heads"):
        ModelConfig.from_dict({**BASE, "num_key_value_heads": 3})


def test_qwen2_context_is_capped_only_when_a_layer_slides():
    from transformers import Qwen2Config

    cfg = {**BASE, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 64, "max_window_layers": 2}
    assert ModelConfig.from_dict(cfg).max_model_len == 256  # max_window_layers >= layers: no layer slides
    assert ModelConfig.from_dict({**cfg, "max_window_layers": 1}).max_model_len == 64
    hf = Qwen2Config(**{**cfg, "max_window_layers": 1})
    assert ModelConfig.from_dict(hf.to_dict()).max_model_len == 64
    assert ModelConfig.from_dict({**cfg, "use_sliding_window": False}).max_model_len == 256


def test_llama_ignores_a_stray_sliding_window_as_transformers_does():
    assert ModelConfig.from_dict({**BASE, "model_type": "llama", "sliding_window": 64}).max_model_len == 256
    assert ModelConfig.from_dict({**BASE, "model_type": "mistral", "sliding_window": 64}).max_model_len == 64
