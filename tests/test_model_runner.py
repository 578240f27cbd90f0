"""Our Llama-family decoder against transformers: same logits (fp32, CPU) within 1e-4."""

from __future__ import annotations

import pytest
import torch

from inferlab.engine.config import ModelConfig
from inferlab.engine.layers import rope_inv_freq
from inferlab.engine.model_runner import ChunkInput, ModelRunner

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    import inferlab as il

    return il.load_model("tiny", device="cpu", dtype="float32")


def _hf_logits(model, ids):
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].float()


def test_tiny_logits_match_transformers(tiny):
    model, tok = tiny
    from inferlab.paths import models_dir

    runner = ModelRunner(models_dir() / "tiny", device="cpu", dtype=torch.float32, block_size=16, num_kv_blocks=32)
    ids = tok.encode("import os\n\ndef walk(top, topdown=True):\n    \"\"\"Walk a tree.\"\"\"\n" * 3)
    ours = runner.reference_logits(ids)
    assert (ours - _hf_logits(model, ids)).abs().max().item() <= 1e-4


def test_paged_chunks_and_decodes_match_full_forward(tiny):
    """Chunked prefill through a scattered block table, then decodes, equal one full forward."""
    model, tok = tiny
    runner = ModelRunner(model, device="cpu", dtype=torch.float32, block_size=4, num_kv_blocks=40)
    ids = tok.encode("class Stack:\n    def push(self, item):\n        self.items.append(item)\n")
    ref = _hf_logits(model, ids)
    table = list(range(39, 39 - (len(ids) + 3) // 4, -1))  # blocks in reverse order on purpose
    cut = len(ids) - 3
    got = [runner.execute([ChunkInput(ids[:7], 0, table)])[0], runner.execute([ChunkInput(ids[7:cut], 7, table)])[0]]
    for pos in range(cut, len(ids)):
        got.append(runner.execute([ChunkInput([ids[pos]], pos, table)])[0])
    want = torch.stack([ref[6], ref[cut - 1], *ref[cut:]])
    assert (torch.stack(got) - want).abs().max().item() <= 1e-4


def _random_model(kind: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        kind, vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **extra,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    for p in model.parameters():  # random (not zero) biases and norms
        torch.nn.init.normal_(p, std=0.2)
    return model


@pytest.mark.parametrize(
    "kind,extra",
    [
        ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 32}}),
        ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
                   "attention_bias": True, "tie_word_embeddings": False}),
        ("qwen2", {"tie_word_embeddings": True}),
        ("mistral", {"sliding_window": None, "head_dim": 24}),
    ],
)
def test_families_match_transformers(kind, extra):
    model = _random_model(kind, **extra)
    runner = ModelRunner(model, device="cpu", dtype=torch.float32, block_size=8, num_kv_blocks=8)
    ids = torch.randint(0, 300, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    assert (runner.reference_logits(ids) - _hf_logits(model, ids)).abs().max().item() <= 1e-4


def test_llama3_rope_frequencies_match_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    hf_config = LlamaConfig(hidden_size=2048, num_attention_heads=32, head_dim=64, rope_parameters=rope,
                            max_position_embeddings=131072)
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    ours = rope_inv_freq(ModelConfig.from_dict(hf_config.to_dict()))
    assert torch.allclose(ours, want, rtol=1e-6, atol=0)


def test_unsupported_family_is_a_clear_error():
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        ModelConfig.from_dict({"model_type": "gpt2"})


def test_loads_a_saved_sharded_checkpoint(tmp_path):
    """A hub-style folder (config.json + sharded safetensors + index) of another family loads too."""
    model = _random_model("qwen2", tie_word_embeddings=False)
    model.save_pretrained(tmp_path, max_shard_size="100KB", safe_serialization=True)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    runner = ModelRunner(tmp_path, device="cpu", dtype=torch.float32, block_size=8, num_kv_blocks=8)
    ids = list(range(3, 40))
    assert (runner.reference_logits(ids) - _hf_logits(model, ids)).abs().max().item() <= 1e-4


def test_reference_backend_matches_transformers_too():
    """The backend is chosen once, at the runner; the reference one is exact as well."""
    model = _random_model("llama")
    runner = ModelRunner(model, device="cpu", dtype=torch.float32, block_size=8, num_kv_blocks=8,
                         attention_backend="reference")
    assert {m.backend for m in runner.model.modules() if hasattr(m, "backend")} == {"reference"}
    ids = torch.randint(0, 300, (30,), generator=torch.Generator().manual_seed(2)).tolist()
    assert (runner.reference_logits(ids) - _hf_logits(model, ids)).abs().max().item() <= 1e-4


def test_loader_names_a_missing_tensor_and_uses_each_parameters_loader():
    from inferlab.engine.loader import load_weights
    from inferlab.engine.models.llama import LlamaForCausalLM

    model = _random_model("llama", tie_word_embeddings=False)
    ours = LlamaForCausalLM(ModelConfig.from_dict(model.config.to_dict()))
    state = {k: v for k, v in model.state_dict().items() if k != "model.layers.1.mlp.down_proj.weight"}
    with pytest.raises(KeyError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        load_weights(ours, state.items())
    load_weights(ours, model.state_dict().items())
    qkv = ours.model.layers[0].self_attn.qkv_proj.weight
    hf_attn = model.model.layers[0].self_attn
    assert torch.equal(qkv, torch.cat([hf_attn.q_proj.weight, hf_attn.k_proj.weight, hf_attn.v_proj.weight]))


def test_weights_load_straight_in_the_target_dtype(tiny):
    """Built on the meta device, given bf16 storage, filled from the checkpoint: the same values as casting HF's."""
    model, _ = tiny
    runner = ModelRunner("tiny", device="cpu", dtype=torch.bfloat16, block_size=16, num_kv_blocks=8)
    ours = dict(runner.model.named_parameters())
    assert {p.dtype for p in ours.values()} == {torch.bfloat16}
    assert all(hasattr(p, "weight_loader") for n, p in ours.items() if "proj" in n)  # loaders survive the move
    hf = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    assert torch.equal(ours["model.layers.0.mlp.down_proj.weight"], hf["model.layers.0.mlp.down_proj.weight"])
    q, k = (hf[f"model.layers.1.self_attn.{n}_proj.weight"] for n in "qk")
    assert torch.equal(ours["model.layers.1.self_attn.qkv_proj.weight"][: q.shape[0] + k.shape[0]], torch.cat([q, k]))


def test_enforce_eager_is_a_setting_and_cpu_runs_eagerly():
    from inferlab.engine.config import EngineConfig

    with pytest.raises(TypeError, match="enforce_eager"):
        EngineConfig(enforce_eager="yes")
    runner = ModelRunner("tiny", device="cpu", dtype=torch.float32, block_size=16, num_kv_blocks=8)
    assert runner.graphs is None and runner.attention_backend == "sdpa"  # "auto" on a CPU


def test_decode_modes_reports_eager_and_the_bound_on_cpu():
    from inferlab.bench.engine import decode_modes

    out = decode_modes("tiny", "cpu", batch=2, context=24)
    assert "graphed" not in out and out["eager"]["tok_s"] > 0 and out["bound_tok_s"] > 0
