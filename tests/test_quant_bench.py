"""The quantization benchmark: its graphable decode step matches the engine, its CLI writes a sane table,
and the Triton dequantize-matmul is right (run by Triton's CPU interpreter where Triton is installed)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inferlab.bench.quant import StaticDecoder, decode_table, main
from inferlab.quant import quantize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runner():
    from inferlab.engine.model_runner import ModelRunner

    return ModelRunner("tiny", device="cpu", dtype="float32")


def test_static_decoder_matches_the_engine_reference(runner):
    ids = list(range(7, 47))
    ref = runner.reference_logits(ids)
    dec = StaticDecoder(runner.model, batch=2, max_len=64)
    assert torch.allclose(dec.logits_of(ids), ref, atol=1e-4)


def test_static_decoder_runs_a_quantized_engine_model(runner):
    import copy

    quantized = copy.deepcopy(runner)
    quantize(quantized.model, "int4", group_size=64, skip=())
    ids = list(range(3, 23))
    ref = quantized.reference_logits(ids)
    assert torch.allclose(StaticDecoder(quantized.model, batch=1, max_len=32).logits_of(ids), ref, atol=1e-4)
    assert not torch.allclose(ref, runner.reference_logits(ids), atol=1e-3)


def test_decode_table_on_the_cpu_counts_bytes():
    cfg = {"name": "mini", "model_type": "llama", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}
    rows = decode_table(cfg, "cpu", batches=(1,), variants=("bf16", "int8", "int4"))
    by = {r["variant"]: r for r in rows}
    assert by["int8"]["weight_bytes"] < 0.6 * by["bf16"]["weight_bytes"]
    assert by["int4"]["weight_bytes"] < by["int8"]["weight_bytes"]
    assert all(r["tok_s"] > 0 and r["graphed"] is False for r in rows)


def test_cli_writes_the_quality_table(tmp_path):
    assert main(["--device", "cpu", "--methods", "full,int8,int4", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "quant-cpu.json").read_text())
    rows = {r["method"]: r for r in data["quality"]}
    assert set(rows) == {"full", "int8", "int4"} and data["environment"]["torch"]
    assert rows["int8"]["weight_bytes"] < 0.5 * rows["full"]["weight_bytes"]
    assert abs(rows["int8"]["perplexity"] - rows["full"]["perplexity"]) < 0.01 * rows["full"]["perplexity"]
    assert rows["int4"]["perplexity"] > rows["full"]["perplexity"]


KERNEL_CHECK = """
import torch
from inferlab.quant import kernels
from inferlab.quant.linear import Int4Linear, Int8Linear
kernels._STATE["ok"] = True
torch.manual_seed(0)
worst = 0.0
for M in (1, 5, 20):
    for N, K, g in ((96, 512, 128), (64, 1024, 64), (80, 256, 32)):
        w, x = torch.randn(N, K), torch.randn(M, K).half()
        for layer, fast in ((Int8Linear.from_float(w), kernels.int8_linear), (Int4Linear.from_float(w, group_size=g), kernels.int4_linear)):
            kernels.available = lambda: True
            ref = x.float() @ layer.dequantize().T
            got = fast(x, layer).float()
            worst = max(worst, float((got - ref).abs().max() / ref.abs().max()))
print(worst)
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed (CUDA machines have it)")
def test_triton_kernels_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT / "lib")}
    out = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 2e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_kernels_on_cuda_match_the_reference():
    from inferlab.quant import Int4Linear, Int8Linear, kernels

    assert kernels.available()
    for M in (1, 7, 32):
        for N, K in ((4096, 4096), (1536, 14336), (6144, 4096)):
            w = torch.randn(N, K, device="cuda")
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            for layer in (Int8Linear.from_float(w), Int4Linear.from_float(w, group_size=128)):
                ref = x.float() @ layer.dequantize().T
                got = layer(x).float()
                assert (got - ref).abs().max() / ref.abs().max() < 1e-2, (type(layer).__name__, M, N, K)
