"""Two fused elementwise kernels for the engine's model on a GPU: RMSNorm and rotary embedding.

At batch 1 a decode step of a 1B model is a few hundred small kernels; written in PyTorch, an
RMSNorm is seven of them (cast, square, mean, add, rsqrt, multiply, scale) and a rotary
embedding six per tensor, each paying a launch and a round trip through memory even inside a
CUDA graph. One kernel each reads its row once and writes it once, with the same arithmetic
(float32 statistics, rounding to the model's dtype where the PyTorch code rounds), so the outputs
match the readable versions in :mod:`inferlab.engine.layers` up to the order of a sum.
Used on CUDA tensors only; :func:`fused_ok` checks them once against the PyTorch versions.
"""

from __future__ import annotations

import torch

try:  # optional: kernel bodies refer to ``tl`` as a module global, as Triton requires
    import triton
    import triton.language as tl

    _jit = triton.jit
except ImportError:  # pragma: no cover - fused_ok() is then False
    tl = None

    def _jit(fn):
        return fn


@_jit
def _rms_norm_kernel(X, W, Out, eps, sx, so, N: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    ok = offs < N
    x = tl.load(X + row * sx + offs, mask=ok, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / N + eps)
    normed = (x * rstd).to(Out.dtype.element_ty).to(tl.float32)
    w = tl.load(W + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(Out + row * so + offs, (w * normed).to(Out.dtype.element_ty), mask=ok)


@_jit
def _rope_kernel(X, Cos, Sin, Out, sxt, sxh, sct, sot, soh, HALF: tl.constexpr, BLOCK: tl.constexpr):
    t, h = tl.program_id(0), tl.program_id(1)
    d = tl.arange(0, BLOCK)
    ok = d < 2 * HALF
    x = tl.load(X + t * sxt + h * sxh + d, mask=ok, other=0.0).to(tl.float32)
    partner = tl.where(d < HALF, d + HALF, d - HALF)
    xr = tl.load(X + t * sxt + h * sxh + partner, mask=ok, other=0.0).to(tl.float32)
    rot = tl.where(d < HALF, -xr, xr)
    cos = tl.load(Cos + t * sct + d, mask=ok, other=0.0).to(tl.float32)
    sin = tl.load(Sin + t * sct + d, mask=ok, other=0.0).to(tl.float32)
    a = (x * cos).to(Out.dtype.element_ty).to(tl.float32)  # round where the PyTorch expression rounds
    b = (rot * sin).to(Out.dtype.element_ty).to(tl.float32)
    tl.store(Out + t * sot + h * soh + d, (a + b).to(Out.dtype.element_ty), mask=ok)


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x / rms(x))`` over the last dim, statistics in float32, one kernel."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x2.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    n = x2.shape[1]
    if x2.shape[0]:
        _rms_norm_kernel[(x2.shape[0],)](x2, weight, out, eps, x2.stride(0), out.stride(0), N=n, BLOCK=_pow2(n),
                                         num_warps=4 if n <= 4096 else 8)
    return out.view(*x.shape[:-1], n)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` for ``x`` ``[tokens, heads, d]``, ``cos``/``sin`` ``[tokens, 1, d]``."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    t, h, d = x.shape
    if t:
        _rope_kernel[(t, h)](x, cos, sin, out, x.stride(0), x.stride(1), cos.stride(0), out.stride(0), out.stride(1),
                             HALF=d // 2, BLOCK=_pow2(d), num_warps=1)
    return out


_STATE: dict = {}


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal up to a couple of units in the last place of the dtype (a sum's order differs)."""
    scale = want.float().abs().max().clamp_min(1.0)
    tol = 1e-5 if want.dtype == torch.float32 else 2e-2
    return bool((got.float() - want.float()).abs().max() <= tol * scale)


def fused_ok(device) -> bool:
    """True when both kernels run on ``device`` and agree with the PyTorch versions (checked once)."""
    key = str(device)
    if key not in _STATE:
        _STATE[key] = _self_check(device)
    return _STATE[key]


def _self_check(device) -> bool:
    from inferlab.engine.layers import RotaryEmbedding

    if tl is None or not str(device).startswith("cuda"):
        return False
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(5, 3, 64, generator=g).to(device, torch.bfloat16)
        w = torch.randn(64, generator=g).to(device, torch.bfloat16)
        cos, sin = (torch.randn(5, 1, 64, generator=g).to(device, torch.bfloat16) for _ in range(2))
        x32 = x.float()
        want = w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)
        ok = close(rms_norm(x, w, 1e-5), want) and close(rope(x, cos, sin), RotaryEmbedding.apply(x, cos, sin))
        return bool(ok)
    except Exception:  # a kernel that cannot compile here: keep the PyTorch versions
        return False
