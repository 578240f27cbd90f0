"""The tensor-core int4 one-row kernel (inferlab/quant/gemv_int4.cu): which shapes it takes, that its
source builds with nvcc, and on a GPU that it matches the dequantize reference, eagerly, under
programmatic dependent launch and inside CUDA graphs, and in the engine's graphed decode step."""

import ctypes
import os

import pytest
import torch

from inferlab.quant import cuda_gemv, kernels
from inferlab.quant.linear import Int4Linear

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize(("N", "K", "gs", "expected"), [
    (28672, 4096, 4, 4),     # 8 warps of 4 groups
    (4096, 14336, 16, 16),   # 7 warps of 16 groups
    (4096, 14336, 4, None),  # 28 warps: more than a block may have
    (4096, 14336, 8, 8),     # 14 warps
    (4096, 4096, 16, 16),    # 2 warps
    (4100, 4096, 4, None),   # N not a multiple of 16 rows
    (4096, 32768, 16, None),  # x would not fit 48 KB of shared memory
])
def test_the_kernel_takes_only_shapes_it_can_tile(N, K, gs, expected):
    assert cuda_gemv.groups_per_warp(N, K, 128, gs) == expected


def test_only_group_128_and_a_default_for_every_llama_shape():
    assert cuda_gemv.groups_per_warp(4096, 4096, 64) is None
    for N, K in ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096), (3072, 2048), (2048, 8192)):
        assert cuda_gemv.groups_per_warp(N, K, 128) in cuda_gemv.GROUPS_PER_WARP


def test_the_swept_choice_is_used_where_it_fits_and_new_rows_replace_old_choices(monkeypatch):
    monkeypatch.setattr(kernels, "_STATE", {"rows": {}})  # this GPU's tuned.json rows: none
    kernels._cuda_groups.cache_clear()
    assert kernels._cuda_groups(4096, 14336, 128) == 8  # the first default that fits
    kernels.set_tuned_rows({"cuda-int4/4096/14336": 16, "cuda-int4/4096/4096": 32})
    assert kernels._cuda_groups(4096, 14336, 128) == 16
    assert kernels._cuda_groups(4096, 4096, 128) == 4  # 32 groups per warp is no choice: the default
    kernels.set_tuned_rows({"int4/1/4096/4096": ["gemv", 1, 8, 2048, 4, 1, 1]})
    assert kernels._tile_for("int4", 1, 4096, 4096, 128) == kernels.Tile("gemv", 1, 8, 2048, 4, 1, 1)
    assert kernels._cuda_groups(4096, 14336, 128) == 16  # earlier rows kept
    monkeypatch.undo()
    kernels.set_tuned_rows({})  # forget the choices made from the test's rows


@pytest.mark.skipif(CUDA, reason="checks the message on a machine without CUDA")
def test_without_cuda_it_says_why_and_the_layer_falls_back():
    assert not cuda_gemv.available()
    assert "CUDA" in cuda_gemv.unavailable_reason()
    layer = Int4Linear.from_float(torch.randn(32, 256), group_size=128)
    x = torch.randn(1, 256)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().T, rtol=1e-4, atol=1e-4)


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("INFERLAB_QUANT_CUDA", "0")
    assert not cuda_gemv.available()
    assert "INFERLAB_QUANT_CUDA=0" in cuda_gemv.unavailable_reason()


@pytest.mark.slow
@pytest.mark.skipif(cuda_gemv.nvcc() is None, reason="nvcc (the CUDA toolkit) not installed")
def test_the_source_builds_and_refuses_a_bad_shape_before_touching_the_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERLAB_CACHE", str(tmp_path))
    path = cuda_gemv.build("sm_90", cuda_gemv.nvcc())
    assert path.is_file() and path.parent == tmp_path / "cuda"
    assert cuda_gemv.build("sm_90", cuda_gemv.nvcc()) == path  # cached: same source, arch and nvcc
    lib = ctypes.CDLL(str(path))
    lib.inferlab_gemv_int4.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 5 + [ctypes.c_void_p]
    assert lib.inferlab_gemv_int4(None, None, None, None, None, 100, 4096, 4, 1, 0, None) == -1  # N % 16
    assert lib.inferlab_gemv_int4(None, None, None, None, None, 4096, 4096, 3, 1, 0, None) == -1  # groups per warp


# ------------------------------------------------------------------ on the GPU
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def _layer(N, K, device="cuda"):
    q = torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, device=device)
    s = (torch.rand(N, K // 128, device=device) * 0.01 + 1e-3).half()
    z = torch.randint(0, 16, (N, K // 128), dtype=torch.uint8, device=device)
    return q, s, z


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("N", "K"), [(256, 4096), (512, 2048), (128, 14336), (6144, 4096)])
def test_matches_the_dequantize_reference(N, K, dtype):
    if not cuda_gemv.available():
        pytest.skip(f"the CUDA kernel is unavailable: {cuda_gemv.unavailable_reason()}")
    q, s, z = _layer(N, K)
    x = torch.randn(1, K, device="cuda", dtype=dtype)
    ref = x.float() @ Int4Linear(q, s, z).dequantize().T
    for gs in cuda_gemv.GROUPS_PER_WARP:
        if cuda_gemv.groups_per_warp(N, K, 128, gs) is None:
            continue
        y = cuda_gemv.gemv_int4(x, q, s, z, N, K, gs).float()
        assert float((y - ref).abs().max() / ref.abs().max()) < 1e-2, gs  # output rounding: ~4e-3 in bf16


@needs_cuda
@pytest.mark.gpu
def test_same_result_with_pdl_off_and_inside_a_cuda_graph(monkeypatch):
    if not cuda_gemv.available():
        pytest.skip(f"the CUDA kernel is unavailable: {cuda_gemv.unavailable_reason()}")
    from inferlab.device import capture_cuda_graph_output

    N, K = 1024, 4096
    q, s, z = _layer(N, K)
    x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
    eager = cuda_gemv.gemv_int4(x, q, s, z, N, K, 4)
    monkeypatch.setenv("INFERLAB_PDL", "0")
    assert torch.equal(cuda_gemv.gemv_int4(x, q, s, z, N, K, 4), eager)
    monkeypatch.setenv("INFERLAB_PDL", "1")
    graph, out = capture_cuda_graph_output(lambda: cuda_gemv.gemv_int4(x, q, s, z, N, K, 4))
    x.copy_(torch.randn_like(x))  # a new input between replays
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, cuda_gemv.gemv_int4(x, q, s, z, N, K, 4))


@needs_cuda
@pytest.mark.gpu
def test_the_graphed_engine_step_agrees_with_the_triton_kernel(monkeypatch):
    """The whole decode step captured as a CUDA graph: every int4 layer of a batch-1 step takes the
    CUDA kernel; its logits agree with the Triton kernel's step (a stale read of an activation, which
    only shows when kernels overlap in a graph, once made them differ by 60%)."""
    if not cuda_gemv.available():
        pytest.skip(f"the CUDA kernel is unavailable: {cuda_gemv.unavailable_reason()}")
    from inferlab.bench.quant import EngineStep, make_variant
    from inferlab.configs import load_config
    from inferlab.device import capture_cuda_graph_output
    from inferlab.engine.model_runner import ModelRunner

    runner = ModelRunner(load_config("llama-3.2-1b"), device="cuda", dtype="bfloat16", enforce_eager=True,
                         num_kv_blocks=16)
    step = EngineStep(runner, 1, 40, make_variant(runner.model, "int4"))
    logits = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("INFERLAB_QUANT_CUDA", flag)
        graph, out = capture_cuda_graph_output(step.step)
        graph.replay()
        torch.cuda.synchronize()
        logits[flag] = out.float().clone()
    assert os.environ["INFERLAB_QUANT_CUDA"] == "1" and kernels.available()
    rel = float((logits["1"] - logits["0"]).abs().max() / logits["0"].abs().max())
    assert rel < 3e-2, rel
    assert torch.equal(logits["1"].argmax(-1), logits["0"].argmax(-1))
