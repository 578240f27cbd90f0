"""load_model / env_report: offline embedded models, exact tokenization, safe defaults, clear errors."""

import json

import pytest
import torch

import inferlab as il
from inferlab.device import pick_device, time_fn, torch_dtype
from inferlab.hub import ModelNotFound, random_init, resolve_model_path
from inferlab.paths import models_dir


@pytest.fixture(scope="module")
def tiny():
    return il.load_model("tiny", device="cpu")


def test_embedded_models_load_offline_in_eval_mode(tiny):
    model, tok = tiny
    assert not model.training
    assert model.dtype == torch.float32  # CPU default
    assert model.device.type == "cpu"
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query attention
    assert tok.pad_token is not None


def test_draft_shares_the_tokenizer_and_is_about_ten_times_smaller(tiny):
    target, tok = tiny
    draft, draft_tok = il.load_model("tiny-draft", device="cpu")
    assert draft_tok.get_vocab() == tok.get_vocab()
    n_target = sum(p.numel() for p in target.parameters())
    n_draft = sum(p.numel() for p in draft.parameters())
    assert 5e6 <= n_target <= 10e6
    assert 6 <= n_target / n_draft <= 14


@pytest.mark.parametrize(
    "text",
    [
        "def f(x):\n    return x  + 1\n",
        "\t\tindented with tabs\r\nand CRLF\n\n\n",
        "unicode: π ≈ 3.14159, naïve café, 日本語, emoji 🐍",
        "   leading and trailing spaces   ",
        "",
    ],
)
def test_decoding_round_trips_text_exactly(tiny, text):
    _, tok = tiny
    assert tok.decode(tok.encode(text)) == text


def test_embedded_models_fit_the_size_budget():
    total = sum(p.stat().st_size for p in models_dir().rglob("*") if p.is_file())
    assert total <= 20 * 1024 * 1024
    for name in il.EMBEDDED_MODELS:
        files = {p.name for p in (models_dir() / name).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
        assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)


def test_the_model_writes_text_greedily_and_deterministically(tiny):
    model, tok = tiny
    ids = tok("def fibonacci(n):", return_tensors="pt")
    outs = [model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    assert outs[0].shape[1] > ids["input_ids"].shape[1]


def test_a_local_folder_loads(tmp_path, tiny):
    model, tok = tiny
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    again, _ = il.load_model(str(tmp_path), device="cpu")
    x = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(again(x).logits, model(x).logits)


def test_unknown_name_offline_says_so_and_lists_embedded(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound) as err:
        il.load_model("no-such-org/no-such-model-xyz")
    message = str(err.value)
    assert "offline" in message and "tiny" in message and "tiny-draft" in message


def test_trust_remote_code_defaults_to_false(monkeypatch):
    seen = {}
    import transformers

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    with pytest.raises(ModelNotFound):
        il.load_model("some/hub-id")
    assert seen["trust_remote_code"] is False


def test_weights_only_through_safetensors(tmp_path, tiny):
    model, tok = tiny
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    tok.save_pretrained(tmp_path)
    with pytest.raises(OSError):
        il.load_model(str(tmp_path), device="cpu")


def test_dtype_choice():
    assert torch_dtype(None, "cpu") == torch.float32
    assert torch_dtype(None, "mps") == torch.float16
    assert torch_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        torch_dtype("float12", "cpu")


def test_bad_device_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown device"):
        il.load_model("tiny", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            il.load_model("tiny", device="cuda")


def test_resolve_paths():
    assert resolve_model_path("tiny").endswith("tiny")
    assert resolve_model_path("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"


def test_env_report_has_the_essentials(capsys):
    info = il.env_report()
    printed = capsys.readouterr().out
    for key in ("torch", "transformers", "device", "python"):
        assert key in info and key in printed


def test_one_dtype_alias_table_and_device_env(monkeypatch):
    for alias in ("bf16", "bfloat16", "torch.bfloat16", torch.bfloat16):
        assert torch_dtype(alias) == torch.bfloat16
    assert torch_dtype("half") == torch_dtype("fp16") == torch.float16
    assert torch_dtype("float") == torch_dtype("fp32") == torch.float32
    monkeypatch.setenv("INFERLAB_DEVICE", "cpu")
    assert pick_device() == "cpu"
    monkeypatch.setenv("INFERLAB_DEVICE", "tpu")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device()


def test_time_fn_times_each_call_after_warmup():
    calls = []
    seconds = time_fn(lambda: calls.append(1), "cpu", repeats=3, warmup=2)
    assert len(seconds) == 3 and len(calls) == 5
    assert all(s >= 0 for s in seconds)


def test_random_init_builds_the_shape_on_the_device_in_the_dtype():
    shape = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
    a = random_init(shape, "cpu", "bf16", seed=3)
    b = random_init(shape, "cpu", torch.bfloat16, seed=3)
    assert not a.training and a.dtype == torch.bfloat16 and a.config.num_key_value_heads == 2
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)  # seeded: same weights
    assert torch.get_default_dtype() == torch.float32  # the default is restored
