"""The real formats: bitsandbytes on this CPU, GPTQ/AWQ checkpoints (our writer, our loader, the bit
layout), GGUF through the gguf package and transformers, and the errors for broken inputs."""

import importlib.util
import json

import pytest
import torch

import inferlab as il
from inferlab.quant import checkpoints as ck
from inferlab.quant import (
    export_gguf,
    load_4bit_model,
    load_8bit_model,
    load_awq_model,
    load_gguf,
    load_gptq_model,
    perplexity,
    quantize,
    save_awq,
    save_gptq,
)
from inferlab.quant.calibration import stdlib_text

PROMPT = "def f(x):\n    return"
needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None or importlib.util.find_spec("accelerate") is None,
                               reason="bitsandbytes/accelerate not installed (pip install 'inferlab[quant]')")
needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf not installed (pip install 'inferlab[quant]')")


@pytest.fixture(scope="module")
def fp():
    model, tok = il.load_model("tiny", device="cpu", dtype="float32")
    ids = tok(PROMPT, return_tensors="pt").input_ids
    return model, tok, ids, model(ids).logits


# ------------------------------------------------------------------ bit layouts
def test_gptq_packing_puts_code_8i_plus_j_at_bits_4j():
    codes = torch.arange(16, dtype=torch.uint8).view(16, 1) % 16
    packed = ck.pack_rows(codes)
    assert packed.dtype == torch.int32 and packed.shape == (2, 1)
    assert int(packed[0, 0]) == 0x76543210 and int(packed[1, 0]) & 0xFFFFFFFF == 0xFEDCBA98
    assert torch.equal(ck.unpack_rows(packed), codes)


def test_awq_packing_uses_the_interleaved_order():
    codes = torch.arange(8, dtype=torch.uint8).view(1, 8)
    packed = ck.pack_cols(codes, ck.AWQ_ORDER)
    assert int(packed[0, 0]) == 0x75316420  # nibble j holds column (0, 2, 4, 6, 1, 3, 5, 7)[j]
    assert torch.equal(ck.unpack_cols(packed, ck.AWQ_ORDER), codes)


# ------------------------------------------------------------------ GPTQ / AWQ checkpoints
@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_checkpoint_round_trip_is_exact(fmt, tmp_path):
    model, tok = il.load_model("tiny", device="cpu", dtype="float32")
    cal = stdlib_text("calibration", 20_000)
    quantize(model, fmt, group_size=64, calibration=cal, tokenizer=tok, n_grid=5)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    (save_gptq if fmt == "gptq" else save_awq)(model, tmp_path, tok)
    cfg = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == fmt and cfg["bits"] == 4 and cfg["group_size"] == 64
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "model.safetensors"))
    q = state["model.layers.0.mlp.down_proj.qweight"]
    assert q.dtype == torch.int32 and q.shape == ((704 // 8, 256) if fmt == "gptq" else (704, 256 // 8))
    loaded, tok2 = (load_gptq_model if fmt == "gptq" else load_awq_model)(tmp_path, device="cpu", dtype="float32")
    assert torch.equal(loaded(ids).logits, model(ids).logits) and tok2 is not None


def test_gptq_act_order_round_trip_keeps_g_idx(tmp_path):
    model, tok = il.load_model("tiny", device="cpu", dtype="float32")
    quantize(model, "gptq", group_size=64, calibration=stdlib_text("calibration", 20_000), tokenizer=tok, act_order=True)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    save_gptq(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"]["desc_act"] is True
    loaded, _ = load_gptq_model(tmp_path, device="cpu", dtype="float32")
    assert loaded.model.layers[0].self_attn.q_proj.g_idx is not None
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    with pytest.raises(ValueError, match="g_idx"):
        save_awq(model, tmp_path / "awq")


def test_corrupt_truncated_or_mismatched_checkpoints_are_clear_errors(tmp_path):
    model, tok = il.load_model("tiny", device="cpu", dtype="float32")
    save_gptq(quantize(model, "int4", group_size=64), tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_gptq_model(tmp_path, device="cpu")
    weights.write_bytes(data)
    with pytest.raises(ValueError, match="'awq'"):
        load_awq_model(tmp_path, device="cpu")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_gptq_model(tmp_path / "nowhere", device="cpu")
    with pytest.raises(TypeError, match="int4"):
        save_gptq(il.load_model("tiny", device="cpu")[0], tmp_path / "x")
    with pytest.raises(ValueError, match="backend"):
        load_gptq_model(tmp_path, backend="autogptq")


@pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is not None, reason="gptqmodel is installed")
def test_transformers_gptq_backend_names_what_to_install(tmp_path):
    model, _ = il.load_model("tiny", device="cpu", dtype="float32")
    save_gptq(quantize(model, "int4", group_size=64), tmp_path)
    with pytest.raises(ImportError, match="gptqmodel"):
        load_gptq_model(tmp_path, device="cpu", backend="transformers")


# ------------------------------------------------------------------ bitsandbytes, for real, on this CPU
@needs_bnb
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_bnb_4bit_loads_and_generates(quant_type, fp):
    import bitsandbytes as bnb

    model, tok = load_4bit_model("tiny", quant_type=quant_type, double_quant=True, device="cpu")
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.quant_state.quant_type == quant_type and layer.weight.quant_state.nested
    ids = tok(PROMPT, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 8
    logits = model(ids).logits.float()
    assert torch.corrcoef(torch.stack([logits.flatten(), fp[3].flatten()]))[0, 1] > 0.95


@needs_bnb
def test_bnb_8bit_loads_and_generates(fp):
    import bitsandbytes as bnb

    model, tok = load_8bit_model("tiny", device="cpu")
    assert isinstance(model.model.layers[0].mlp.down_proj, bnb.nn.Linear8bitLt)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id).shape[1] == ids.shape[1] + 8
    assert torch.corrcoef(torch.stack([model(ids).logits.float().flatten(), fp[3].flatten()]))[0, 1] > 0.99


@needs_bnb
def test_our_nf4_matches_bitsandbytes_nf4_perplexity():
    held = stdlib_text("heldout", 20_000)
    theirs, tok = load_4bit_model("tiny", quant_type="nf4", double_quant=True, device="cpu")
    ours = quantize(il.load_model("tiny", device="cpu", dtype="float32")[0], "nf4")
    p_theirs, p_ours = perplexity(theirs, tok, held, max_windows=8), perplexity(ours, tok, held, max_windows=8)
    assert abs(p_ours - p_theirs) < 0.01 * p_theirs


def test_bnb_missing_or_without_backend_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        load_4bit_model("tiny", device="cpu")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="quant_type"):
        load_4bit_model("tiny", quant_type="int4", device="cpu")
    if real("bitsandbytes") is None or real("accelerate") is None:
        pytest.skip("bitsandbytes/accelerate not installed: the backend check needs them")
    import bitsandbytes.functional as bf

    def no_backend(*args, **kwargs):
        raise NotImplementedError("no kernel registered for this device")

    monkeypatch.setattr(bf, "quantize_4bit", no_backend)
    with pytest.raises(RuntimeError, match="no backend for device 'cpu'"):
        load_8bit_model("tiny", device="cpu")


# ------------------------------------------------------------------ GGUF
def _expected_gguf_logits(model, ids, qtype):
    """What the GGUF file should hold: every 2-D weight through gguf's own quantize/dequantize."""
    import copy

    import gguf

    ref = copy.deepcopy(model)
    kind = getattr(gguf.GGMLQuantizationType, qtype)
    with torch.no_grad():
        for p in ref.parameters():
            if p.dim() == 2:
                a = p.detach().numpy()
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(a, kind), kind).reshape(a.shape)))
    return ref(ids).logits


@needs_gguf
@pytest.mark.parametrize("qtype,bits", [("Q8_0", 8.5), ("Q4_0", 4.5)])
def test_gguf_round_trip_through_transformers(qtype, bits, fp, tmp_path):
    model, tok, ids, _ = fp
    path = export_gguf(model, tok, tmp_path / f"tiny-{qtype}.gguf", qtype)
    params = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2)
    assert path.stat().st_size < params * bits / 8 * 1.15
    loaded, tok2 = load_gguf(path, device="cpu", dtype="float32")
    assert tok2(PROMPT).input_ids == tok(PROMPT).input_ids
    expected = _expected_gguf_logits(model, ids, qtype)
    assert torch.allclose(loaded(ids).logits, expected, atol=1e-3), "names or the Q/K permutation are wrong"


@needs_gguf
def test_gguf_bad_input(fp, tmp_path):
    model, tok, _, _ = fp
    with pytest.raises(ValueError, match="qtype"):
        export_gguf(model, tok, tmp_path / "x.gguf", "Q3_K")
    path = export_gguf(model, tok, tmp_path / "t.gguf", "Q8_0")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_gguf(path, device="cpu")
    with pytest.raises(FileNotFoundError):
        load_gguf(tmp_path / "none.gguf")
