"""inferlab.quant from scratch: formats, packed sizes, GPTQ/AWQ against RTN, the module swap, bad input."""

import pytest
import torch

import inferlab as il
from inferlab.quant import (
    Int4Linear,
    Int8Linear,
    NF4Linear,
    awq,
    gptq,
    model_weight_bytes,
    perplexity,
    quantize,
    rtn,
)
from inferlab.quant.calibration import as_windows, stdlib_text


def _correlated(n=1024, k=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) @ torch.randn(k, k, generator=g) * 0.3 + torch.randn(k, generator=g) * 2


# ------------------------------------------------------------------ formats
def test_int8_absmax_error_is_at_most_half_a_step():
    w = torch.randn(32, 128)
    q, s = rtn.quantize_int8_absmax(w)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    assert ((rtn.dequantize_int8_absmax(q, s) - w).abs() <= s[:, None] / 2 + 1e-7).all()


def test_int8_zeropoint_uses_the_whole_range_of_a_skewed_row():
    w = torch.rand(8, 64) * 3 + 0.5  # all positive: absmax wastes the negative half
    q, s, z = rtn.quantize_int8_zeropoint(w)
    err_zp = (rtn.dequantize_int8_zeropoint(q, s, z) - w).abs().mean()
    err_abs = (rtn.dequantize_int8_absmax(*rtn.quantize_int8_absmax(w)) - w).abs().mean()
    assert q.dtype == torch.uint8 and err_zp < 0.75 * err_abs


def test_pack_int4_round_trip_and_layout():
    codes = torch.randint(0, 16, (6, 10), dtype=torch.uint8)
    packed = rtn.pack_int4(codes)
    assert packed.shape == (6, 5) and torch.equal(rtn.unpack_int4(packed), codes)
    assert int(rtn.pack_int4(torch.tensor([[3, 12]], dtype=torch.uint8))) == 3 + (12 << 4)


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_kernel_order_puts_code_i_of_word_j_at_column_i_slices_apart(group_size):
    codes = torch.randint(0, 16, (3, 2 * group_size), dtype=torch.uint8)
    ordered = rtn.kernel_order(codes, group_size)
    assert torch.equal(rtn.natural_order(ordered, group_size), codes)
    words = rtn.pack_int4(ordered).view(torch.int32)  # what the decode kernel reads
    wg = group_size // 8
    for g, j, i in ((0, 0, 0), (1, wg - 1, 7), (0, 2, 5)):
        nibble = (int(words[1, g * wg + j]) >> (4 * i)) & 0xF
        assert nibble == int(codes[1, g * group_size + i * wg + j])
    layer = Int4Linear.from_codes(codes, torch.ones(3, 2), torch.zeros(3, 2, dtype=torch.uint8))
    assert torch.equal(layer.codes(), codes) and torch.equal(layer.dequantize(), codes.float())


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_grouped_error_and_packed_bytes(group_size):
    w = torch.randn(48, 256)
    layer = Int4Linear.from_float(w, group_size=group_size)
    groups = 256 // group_size
    assert layer.weight_bytes() == 48 * 128 + 48 * groups * 2 + 48 * groups  # codes + fp16 scales + zeros
    scales = layer.scales.float().repeat_interleave(group_size, 1)
    assert ((layer.dequantize() - w).abs() <= scales * 0.5 + 1e-3).all()


def test_nf4_levels_match_qlora_and_double_quant_size():
    levels = rtn.nf4_levels()
    published = [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
                 0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0]  # QLoRA appendix / bitsandbytes
    assert torch.allclose(levels, torch.tensor(published), atol=2e-4)
    w = torch.randn(64, 1024)
    dq, plain = NF4Linear.from_float(w, double_quant=True), NF4Linear.from_float(w, double_quant=False)
    bits_dq = dq.weight_bytes() * 8 / w.numel()
    assert 4.12 < bits_dq < 4.14 and plain.weight_bytes() * 8 / w.numel() == pytest.approx(4.5)
    assert (dq.dequantize() - w).abs().mean() < 0.1 and (dq.dequantize() - plain.dequantize()).abs().max() < 0.02


def test_error_falls_with_bits():
    w = torch.randn(64, 256)
    errors = [(rtn.fake_quantize(w, b, 64) - w).pow(2).mean() for b in (2, 3, 4, 6, 8)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False))


# ------------------------------------------------------------------ GPTQ and AWQ on one layer
def test_gptq_with_identity_hessian_is_round_to_nearest():
    w = torch.randn(32, 128)
    r = gptq.gptq_quantize(w, torch.eye(128), 4, 64, percdamp=0.0)
    codes, _, _ = rtn.quantize_grouped(w, 4, 64)
    assert torch.equal(r["codes"], codes)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_halves_output_error_against_rtn(act_order):
    x, w = _correlated(), torch.randn(64, 256) * 0.05
    r = gptq.gptq_quantize(w, 2 * x.T @ x / x.shape[0], 4, 64, act_order=act_order)
    wq = rtn.dequantize_grouped(r["codes"], r["scales"], r["zeros"], r["g_idx"])
    err = lambda a: float(((x @ (w - a).T) ** 2).mean())
    assert err(wq) < 0.6 * err(rtn.fake_quantize(w, 4, 64))
    assert act_order or torch.equal(r["g_idx"].long(), torch.arange(256) // 64)


def test_awq_scale_search_never_loses_to_plain_rtn():
    x = torch.randn(512, 128) * torch.linspace(0.1, 8, 128)  # a few loud channels
    ws = [torch.randn(32, 128) * 0.05, torch.randn(16, 128) * 0.05]
    s, alpha, errors = awq.search_scale(x, ws, 64, n_grid=11)
    assert errors[0] == pytest.approx(max(errors[0], min(errors)))  # α = 0 is plain RTN
    assert min(errors) < errors[0] and s.shape == (128,) and 0 < alpha <= 1


# ------------------------------------------------------------------ the swap on a real model
@pytest.fixture(scope="module")
def tiny():
    return il.load_model("tiny", device="cpu", dtype="float32")


def _fresh():
    return il.load_model("tiny", device="cpu", dtype="float32")[0]


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def _same(model, snap):
    state, types = snap
    return [type(m) for m in model.modules()] == types and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("method,cls,ratio", [("int8", Int8Linear, 0.27), ("int8-zp", Int8Linear, 0.27),
                                              ("int4", Int4Linear, 0.17), ("nf4", NF4Linear, 0.15)])
def test_quantize_swaps_linears_and_counts_real_bytes(method, cls, ratio):
    model = _fresh()
    before = model_weight_bytes(model)
    linear_bytes = sum(m.weight.numel() * 4 for n, m in model.named_modules()
                       if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head"))
    quantize(model, method, group_size=64)
    layers = [m for m in model.modules() if isinstance(m, cls)]
    assert len(layers) == 8 * 7 and not any(isinstance(m, torch.nn.Linear) and m is not model.lm_head for m in model.modules())
    saved = before - model_weight_bytes(model)
    assert saved == pytest.approx(linear_bytes - sum(m.weight_bytes() for m in layers))
    assert sum(m.weight_bytes() for m in layers) < ratio * linear_bytes
    ids = torch.arange(10, 40)[None]
    out = model(ids).logits
    assert torch.isfinite(out).all() and model.model.embed_tokens.weight is model.lm_head.weight


@pytest.fixture(scope="module")
def ppl():
    """Held-out perplexity of the tiny model, full precision and quantized every way."""
    torch.manual_seed(0)
    held = stdlib_text("heldout", 40_000)
    _, tok = il.load_model("tiny", device="cpu", dtype="float32")
    cal = as_windows(stdlib_text("calibration", 60_000), tok, 256, 16)
    out = {"fp32": perplexity(_fresh(), tok, held, max_windows=16)}
    for name, kw in {"int8": {}, "int4": {}, "nf4": {}, "gptq": {"calibration": cal}, "awq": {"calibration": cal}}.items():
        out[name] = perplexity(quantize(_fresh(), name, group_size=64, **kw), tok, held, max_windows=16)
    return out


def test_perplexity_is_better_than_chance_and_int8_within_one_percent(ppl):
    assert 1 < ppl["fp32"] < 4096 / 10
    assert abs(ppl["int8"] - ppl["fp32"]) < 0.01 * ppl["fp32"]


def test_perplexity_ordering_gptq_and_awq_beat_rtn(ppl):
    rtn_loss = ppl["int4"] - ppl["fp32"]
    assert rtn_loss > 0 and ppl["nf4"] > ppl["fp32"]
    assert ppl["gptq"] - ppl["fp32"] <= 0.5 * rtn_loss, ppl  # GPTQ recovers at least half
    assert ppl["awq"] <= ppl["int4"], ppl


def test_awq_folds_scales_into_the_norms():
    model, tok = il.load_model("tiny", device="cpu", dtype="float32")
    norms = {n: p.clone() for n, p in model.named_parameters() if "layernorm" in n}
    quantize(model, "awq", group_size=64, calibration=stdlib_text("calibration", 20_000), tokenizer=tok, n_grid=5)
    changed = [n for n, p in model.named_parameters() if n in norms and not torch.equal(p, norms[n])]
    assert changed, "no RMSNorm weight absorbed an AWQ scale"
    assert not any(hasattr(m, "input_scale") for m in model.modules())


def test_quantize_works_on_the_engine_model(tiny):
    from inferlab.engine.model_runner import ModelRunner

    runner = ModelRunner("tiny", device="cpu", dtype="float32")
    ids = list(range(5, 40))
    ref = runner.reference_logits(ids)
    quantize(runner.model, "int8", skip=())
    assert isinstance(runner.model.model.layers[0].self_attn.qkv_proj, Int8Linear)
    assert isinstance(runner.model.lm_head, Int8Linear)
    out = runner.reference_logits(ids)
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    assert torch.allclose(out, ref, atol=0.05 * ref.abs().max().item())


# ------------------------------------------------------------------ bad input leaves the model unchanged
@pytest.mark.parametrize("kwargs,error,words", [
    ({"method": "int3"}, ValueError, "method"),
    ({"method": "int4", "group_size": 48}, ValueError, "group_size"),
    ({"method": "int4", "group_size": 128}, ValueError, "in_features=704"),
    ({"method": "int8", "bits": 4}, ValueError, "bits"),
    ({"method": "gptq", "group_size": 64}, ValueError, "calibration"),
    ({"method": "awq", "group_size": 64, "calibration": 3.5}, TypeError, "calibration"),
    ({"method": "gptq", "group_size": 64, "calibration": "def f(): pass"}, ValueError, "tokenizer"),
    ({"method": "int8", "skip": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                 "lm_head")}, ValueError, "no nn.Linear"),
])
def test_bad_input_is_a_clear_error_and_changes_nothing(kwargs, error, words):
    model = _fresh()
    snap = _snapshot(model)
    with pytest.raises(error, match=words):
        quantize(model, **kwargs)
    assert _same(model, snap)


def test_not_a_model_and_already_quantized():
    with pytest.raises(TypeError, match="model"):
        quantize("tiny", "int8")
    model = quantize(_fresh(), "int8")
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model, "int4", group_size=64)


def test_perplexity_rejects_bad_window(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="window"):
        perplexity(model, tok, "x = 1\n" * 50, window=1)
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(model, tok, "x = 1", window=256)
