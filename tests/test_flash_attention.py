"""FlashAttention from scratch (notebook 07): every implementation equals SDPA.

References: ``torch.nn.functional.scaled_dot_product_attention`` (KV heads expanded for
grouped-query attention, an explicit mask for bottom-right causal alignment). Float64: relative
error (Frobenius norm) at most 1e-6; bfloat16: within bfloat16's rounding of the float64 result.
The Triton kernel runs on CUDA when there is a GPU, and in Triton's CPU interpreter (a
subprocess with TRITON_INTERPRET=1) when the triton package is installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from inferlab.attention.flash import flash_attention, online_softmax_steps, tile_schedule
from inferlab.attention.naive import attention_flops, naive_attention, visible_keys

# (batch, heads, kv_heads, q_len, kv_len, head_dim, causal): odd lengths 1, 17, 1000; head dims 32..128
CASES = [
    (1, 4, 4, 1, 1, 32, False),
    (2, 4, 2, 17, 17, 64, True),
    (2, 8, 2, 17, 17, 80, False),
    (1, 8, 2, 1, 1000, 128, False),
    (1, 4, 1, 1000, 1000, 96, True),
    (1, 2, 2, 1000, 1000, 128, False),
    (2, 4, 2, 17, 1000, 64, "bottom_right"),
    (2, 4, 2, 1, 17, 32, "bottom_right"),
    (1, 4, 2, 40, 17, 64, "bottom_right"),  # q_len > kv_len: the first 23 rows see nothing -> 0
    (1, 4, 2, 40, 17, 64, True),
    (1, 6, 3, 17, 1000, 128, True),
]
IDS = [f"b{b}h{h}kv{hk}-q{lq}k{lk}-d{d}-{c}" for b, h, hk, lq, lk, d, c in CASES]


def make_qkv(case, dtype=torch.float64, device="cpu", seed=0):
    b, h, hk, lq, lk, d, _ = case
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hk, lk, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hk, lk, d, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v)]


def sdpa(q, k, v, causal):
    """SDPA's output, with fully masked rows as zeros (the tiled kernels' convention)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if causal == "bottom_right":
        mask = visible_keys(q.shape[-2], k.shape[-2], causal, device=q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.masked_fill(~mask.any(-1)[:, None], 0.0)
    return F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal))


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-300)).item()


def assert_bf16_close(out, ref64):
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref64, atol=1.6e-2, rtol=1.6e-2)


@pytest.mark.parametrize("fn", [naive_attention, flash_attention], ids=["naive", "flash"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float64_equals_sdpa(fn, case):
    q, k, v = make_qkv(case)
    assert rel_err(fn(q, k, v, causal=case[-1]), sdpa(q, k, v, case[-1])) <= 1e-6


@pytest.mark.parametrize("fn", [naive_attention, flash_attention], ids=["naive", "flash"])
@pytest.mark.parametrize("case", CASES[1:3] + CASES[6:8], ids=IDS[1:3] + IDS[6:8])
def test_bfloat16_within_bfloat16_tolerance(fn, case):
    q, k, v = make_qkv(case, torch.bfloat16)
    ref = sdpa(*(t.double() for t in (q, k, v)), case[-1])
    assert_bf16_close(fn(q, k, v, causal=case[-1]), ref)


@pytest.mark.parametrize("blocks", [(1, 1), (7, 13), (64, 16), (2048, 2048)])
def test_any_tile_size_gives_the_same_answer(blocks):
    case = (1, 4, 2, 37, 37, 32, True)
    q, k, v = make_qkv(case)
    out = flash_attention(q, k, v, causal=True, block_q=blocks[0], block_k=blocks[1])
    assert rel_err(out, sdpa(q, k, v, True)) <= 1e-12


def test_lse_is_the_rows_log_sum_exp():
    q, k, v = make_qkv((2, 4, 2, 17, 30, 32, "bottom_right"))
    _, lse = flash_attention(q, k, v, causal="bottom_right", block_q=8, block_k=8, return_lse=True)
    scores = (q @ k.repeat_interleave(2, dim=1).transpose(-2, -1)) / math.sqrt(32)
    scores = scores.masked_fill(~visible_keys(17, 30, "bottom_right"), float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(scores, dim=-1), rtol=1e-12, atol=1e-12)


def test_heads_that_do_not_share_evenly_are_refused():
    q, k, v = make_qkv((1, 8, 2, 17, 17, 32, False))
    with pytest.raises(ValueError, match="evenly"):
        flash_attention(q[:, :7], k, v)
    with pytest.raises(ValueError, match="incompatible"):
        naive_attention(q, k, v[..., :16])


def test_causal_schedule_skips_tiles_above_the_diagonal():
    n = 8  # 8 x 8 tiles of 16
    full = tile_schedule(128, 128, 16, 16, causal=False)
    causal = tile_schedule(128, 128, 16, 16, causal=True)
    assert len(full) == n * n and not any(t.masked for t in full)
    assert len(causal) == n * (n + 1) // 2  # the lower triangle, diagonal included
    assert [t for t in causal if t.masked] == [t for t in causal if t.q_start == t.k_start]
    # bottom-right with 16 queries over 128 keys: the one query tile sees every key tile
    tail = tile_schedule(16, 128, 16, 16, causal="bottom_right")
    assert len(tail) == n and [t.masked for t in tail] == [False] * (n - 1) + [True]


def test_flops_count_visible_pairs():
    assert attention_flops(1, 1, 4, 4, 2) == 4 * 16 * 2
    assert attention_flops(1, 1, 4, 4, 2, causal=True) == 4 * 10 * 2
    assert attention_flops(1, 1, 2, 5, 2, causal="bottom_right") == 4 * (4 + 5) * 2


def test_online_softmax_by_hand_equals_softmax():
    x = [1.0, 3.0, 2.0, 5.0, 0.5]
    steps = online_softmax_steps(x, block=2)
    assert [s["m_new"] for s in steps] == [3.0, 5.0, 5.0]
    assert steps[1]["rescale"] == pytest.approx(math.exp(3.0 - 5.0))
    m, total = steps[-1]["m_new"], steps[-1]["l"]
    torch.testing.assert_close(torch.tensor([math.exp(v - m) / total for v in x]), torch.softmax(torch.tensor(x), 0))


def test_bad_causal_value_is_refused():
    q, k, v = make_qkv(CASES[0])
    with pytest.raises(ValueError, match="causal"):
        naive_attention(q, k, v, causal="diagonal")


# ---- the Triton kernel -------------------------------------------------------------------------

HAS_TRITON = importlib.util.find_spec("triton") is not None
LIB = str(Path(__file__).resolve().parents[1] / "lib")
INTERPRETED = [CASES[i] for i in (0, 1, 2, 3, 6, 8, 9)] + [(1, 2, 1, 200, 200, 128, True)]

_INTERPRETER_SCRIPT = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from inferlab.attention.flash_triton import flash_attention_triton
from test_flash_attention import make_qkv, sdpa, rel_err
out = []
for case, dtype in json.loads(sys.argv[2]):
    q, k, v = make_qkv(case, getattr(torch, dtype))
    ref = sdpa(q.double(), k.double(), v.double(), case[-1])
    got = flash_attention_triton(q, k, v, causal=case[-1])
    ok_bf16 = torch.allclose(got.double(), ref, atol=1.6e-2, rtol=1.6e-2)
    out.append({"case": case, "dtype": dtype, "rel_err": rel_err(got, ref), "bf16_close": ok_bf16,
                "out_dtype": str(got.dtype)})
print(json.dumps(out))
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install triton)")
@pytest.mark.slow
def test_triton_kernel_in_the_cpu_interpreter():
    jobs = [(c, "float64") for c in INTERPRETED] + [(c, "bfloat16") for c in INTERPRETED[1:4]]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": LIB + os.pathsep + str(Path(__file__).parent)}
    done = subprocess.run([sys.executable, "-c", _INTERPRETER_SCRIPT, LIB, json.dumps(jobs)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == len(jobs)
    for r in results:
        if r["dtype"] == "float64":
            assert r["rel_err"] <= 1e-6, r
        else:
            assert r["bf16_close"] and r["out_dtype"] == "torch.bfloat16", r


def test_triton_refuses_cpu_tensors_without_the_interpreter():
    pytest.importorskip("triton", reason="triton is not installed")
    from inferlab.attention.flash_triton import flash_attention_triton, interpreting

    if interpreting():
        pytest.skip("this process runs Triton's interpreter")
    q, k, v = make_qkv(CASES[0])
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        flash_attention_triton(q, k, v)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
def test_triton_kernel_on_cuda(case, dtype):
    pytest.importorskip("triton", reason="triton is not installed")
    from inferlab.attention.flash_triton import flash_attention_triton

    q, k, v = make_qkv(case, getattr(torch, dtype), device="cuda")
    ref = sdpa(q.double(), k.double(), v.double(), case[-1])
    out = flash_attention_triton(q, k, v, causal=case[-1])
    assert out.dtype == q.dtype
    if dtype == "float64":
        assert rel_err(out, ref) <= 1e-6
    elif dtype == "float32":  # IEEE matmuls, float32 accumulation
        assert rel_err(out, ref) <= 1e-5
    else:
        torch.testing.assert_close(out.double(), ref, atol=1.6e-2, rtol=1.6e-2)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES[1:5], ids=IDS[1:5])
def test_torch_flash_on_cuda_bf16(case):
    q, k, v = make_qkv(case, torch.bfloat16, device="cuda")
    ref = sdpa(q.double(), k.double(), v.double(), case[-1])
    assert_bf16_close(flash_attention(q, k, v, causal=case[-1]), ref)


# ---- notebook 07's exercises and drawings ------------------------------------------------------


def test_exercises_blank_is_not_answered_and_solutions_pass(capsys):
    from inferlab.exercises import flash as ex

    def blank(m_a, l_a, m_b, l_b):
        raise NotImplementedError

    namespace = {"math": math}
    exec(ex.SOLUTIONS["merge"], namespace)
    assert not ex.check_merge(blank) and "not answered" in capsys.readouterr().out
    assert ex.check_merge(namespace["merge"])
    assert not ex.check_merge(lambda m_a, l_a, m_b, l_b: (max(m_a, m_b), l_a + l_b))  # forgot to rescale
    for name, check in (("score_bytes", ex.check_score_bytes), ("causal_tiles", ex.check_causal_tiles)):
        assert not check(None) and "not answered" in capsys.readouterr().out
        solved: dict = {}
        exec(ex.SOLUTIONS[name], solved)
        assert check(solved["answer"])
        assert not check(solved["answer"] + 1)


def test_causal_tiles_exercise_agrees_with_the_schedule():
    from inferlab.exercises.flash import check_causal_tiles

    assert check_causal_tiles(len(tile_schedule(4096, 4096, 128, 128, causal=True)))


def test_tiling_drawing_marks_fast_memory_and_skipped_tiles():
    from inferlab.viz.flash import DONE, IN_SRAM, NOW, SKIPPED, TODO, tile_states, tiling_animation

    schedule = tile_schedule(64, 64, 16, 16, causal=True)  # 4 x 4 tiles, 10 computed
    grid = tile_states(schedule, 64, 64, step=4)  # the 5th tile: query tile 2, key tile 1
    assert (grid[1:, 1:] == SKIPPED).sum() == 6 and (grid[1:, 1:] == NOW).sum() == 1
    assert (grid[1:, 1:] == DONE).sum() == 4 and (grid[1:, 1:] == TODO).sum() == 5
    assert grid[3, 0] == IN_SRAM and grid[0, 2] == IN_SRAM and grid[3, 2] == NOW
    assert len(tiling_animation(schedule, 64, 64).frames) == len(schedule)


def test_bench_cli_smoke(tmp_path):
    from inferlab.bench import attention

    assert attention.main(["--quick", "--variants", "naive,sdpa-flash,ours-torch,ours-triton", "--out", str(tmp_path)]) == 0
    payload = json.loads(next(tmp_path.glob("attention-*.json")).read_text())
    rows = {(r["variant"], r["seq_len"]): r for r in payload["rows"]}
    assert rows[("naive", 64)]["peak_bytes"] > rows[("ours-torch", 64)]["peak_bytes"] > 0
    assert rows[("ours-torch", 64)]["max_abs_err"] < 1e-4
    assert "unavailable" in rows[("ours-triton", 32)] or "tflops" in rows[("ours-triton", 32)]
    assert {r["variant"] for r in attention.ratios(payload, "naive")} == {"sdpa-flash", "ours-torch"}


def test_flash_engine_backend_equals_sdpa_backend():
    """``attention.flash.attend`` (prefill through the tiled kernel) on a step mixing a decode, a first
    prefill and a later chunk over cached context gives the SDPA backend's output."""
    from inferlab.attention import Attention
    from inferlab.attention import flash as flash_module
    from inferlab.engine.model_runner import ChunkInput, build_metadata

    block, heads, kv_heads, dim = 4, 8, 2, 16
    chunks = [ChunkInput(token_ids=[0], start=9, block_table=[0, 1, 2]),
              ChunkInput(token_ids=[0] * 7, start=0, block_table=[3, 4]),
              ChunkInput(token_ids=[0] * 5, start=6, block_table=[5, 6, 7])]
    g = torch.Generator().manual_seed(0)
    cache = [torch.randn(8, block, kv_heads, dim, generator=g) for _ in range(2)]
    q, k, v = (torch.randn(13, h, dim, generator=g) for h in (heads, kv_heads, kv_heads))
    meta = build_metadata(chunks, block, "cpu")
    outs = []
    for attend in (None, flash_module.attend):
        layer = Attention(heads, kv_heads, dim, backend="sdpa")
        if attend is not None:
            layer.attend = attend
        layer.k_cache, layer.v_cache = cache[0].clone(), cache[1].clone()
        outs.append(layer(q, k, v, meta))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_engine_on_the_flash_backend_generates_what_sdpa_does(one_thread):
    """The whole engine, with prompts split into chunks (bottom-right causal over cached context)."""
    from inferlab import LLM, SamplingParams

    prompts = ["def fibonacci(n):", "import os\nimport sys\n" * 12]  # the second spans several 48-token chunks
    outs = {}
    for backend in ("sdpa", "flash"):
        llm = LLM(model="tiny", attention_backend=backend, device="cpu", max_num_batched_tokens=48, num_kv_blocks=64)
        outs[backend] = [o.outputs[0].token_ids for o in llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=8))]
    assert outs["flash"] == outs["sdpa"] and all(len(t) == 8 for t in outs["flash"])
