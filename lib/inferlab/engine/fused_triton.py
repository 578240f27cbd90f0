"""Fused elementwise kernels for the engine's model on a GPU: RMSNorm (alone, or after the
residual add), rotary embedding of q and k, and SiLU-and-multiply.

At batch 1 a decode step of a 1B model is a few hundred small kernels; written in PyTorch, an
RMSNorm is seven of them (cast, square, mean, add, rsqrt, multiply, scale) and a rotary
embedding six per tensor, each paying a launch and a round trip through memory even inside a
CUDA graph. One kernel each reads its rows once and writes them once, with the same arithmetic
(float32 statistics, rounding to the model's dtype where the PyTorch code rounds), so the outputs
match the readable versions in :mod:`inferlab.engine.layers` and :mod:`inferlab.engine.activation`
up to the order of a sum. The residual add is folded into the next RMSNorm and SiLU into the
multiply by its gate, as vLLM's ``fused_add_rms_norm`` and ``silu_and_mul`` do, and q and k are
rotated in one launch: four fewer kernels per layer.
Used on CUDA tensors only; :func:`fused_ok` checks them once against the PyTorch versions.
On Hopper GPUs they launch with programmatic dependent launch (:mod:`inferlab.pdl`): each lets
the next kernel start, then waits for the one before.
"""

from __future__ import annotations

import torch

from inferlab.pdl import launch_options, pdl_launch_then_wait

try:  # optional: kernel bodies refer to ``tl`` as a module global, as Triton requires
    import triton
    import triton.language as tl

    _jit = triton.jit
except ImportError:  # pragma: no cover - fused_ok() is then False
    tl = None

    def _jit(fn):
        return fn


@_jit
def _norm_and_store(x, W, out_row, offs, ok, eps, N: tl.constexpr):
    """Store ``w · x / rms(x)`` for the fp32 row ``x``, rounded to the output dtype before the weight
    multiplies, as the reference :class:`~inferlab.engine.layers.RMSNorm` rounds."""
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / N + eps)
    normed = (x * rstd).to(out_row.dtype.element_ty).to(tl.float32)
    w = tl.load(W + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_row + offs, (w * normed).to(out_row.dtype.element_ty), mask=ok)


@_jit
def _rms_norm_kernel(X, W, Out, eps, sx, so, N: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_launch_then_wait(PDL)
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    ok = offs < N
    x = tl.load(X + row * sx + offs, mask=ok, other=0.0).to(tl.float32)
    _norm_and_store(x, W, Out + row * so, offs, ok, eps, N)


@_jit
def _add_rms_norm_kernel(X, R, W, Out, Sum, eps, sx, sr, so, ss, N: tl.constexpr, BLOCK: tl.constexpr,
                         PDL: tl.constexpr):
    pdl_launch_then_wait(PDL)
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    ok = offs < N
    total = tl.load(X + row * sx + offs, mask=ok, other=0.0).to(tl.float32) + tl.load(
        R + row * sr + offs, mask=ok, other=0.0).to(tl.float32)
    total = total.to(Sum.dtype.element_ty)  # the residual stream, rounded as ``x + residual`` rounds
    tl.store(Sum + row * ss + offs, total, mask=ok)
    _norm_and_store(total.to(tl.float32), W, Out + row * so, offs, ok, eps, N)


@_jit
def _rope_head(X, Cos, Sin, Out, HALF: tl.constexpr, BLOCK: tl.constexpr):
    """One head of one token: ``x * cos + rotate_half(x) * sin``, rounded where PyTorch rounds."""
    d = tl.arange(0, BLOCK)
    ok = d < 2 * HALF
    x = tl.load(X + d, mask=ok, other=0.0).to(tl.float32)
    partner = tl.where(d < HALF, d + HALF, d - HALF)
    xr = tl.load(X + partner, mask=ok, other=0.0).to(tl.float32)
    rot = tl.where(d < HALF, -xr, xr)
    cos = tl.load(Cos + d, mask=ok, other=0.0).to(tl.float32)
    sin = tl.load(Sin + d, mask=ok, other=0.0).to(tl.float32)
    a = (x * cos).to(Out.dtype.element_ty).to(tl.float32)
    b = (rot * sin).to(Out.dtype.element_ty).to(tl.float32)
    tl.store(Out + d, (a + b).to(Out.dtype.element_ty), mask=ok)


@_jit
def _rope_qk_kernel(Q, K, Cos, Sin, QO, KO, sqt, sqh, skt, skh, sct, sot, soh, skot, skoh, NQ: tl.constexpr,
                    HALF: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_launch_then_wait(PDL)
    t, h = tl.program_id(0), tl.program_id(1)
    if h < NQ:
        _rope_head(Q + t * sqt + h * sqh, Cos + t * sct, Sin + t * sct, QO + t * sot + h * soh, HALF, BLOCK)
    else:
        _rope_head(K + t * skt + (h - NQ) * skh, Cos + t * sct, Sin + t * sct, KO + t * skot + (h - NQ) * skoh,
                   HALF, BLOCK)


@_jit
def _silu_and_mul_kernel(X, Out, sx, so, N, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_launch_then_wait(PDL)
    t, c = tl.program_id(0), tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = c < N
    gate = tl.load(X + t * sx + c, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(X + t * sx + N + c, mask=ok, other=0.0).to(tl.float32)
    act = (gate / (1.0 + tl.exp(-gate))).to(Out.dtype.element_ty).to(tl.float32)  # F.silu rounds here
    tl.store(Out + t * so + c, (act * up).to(Out.dtype.element_ty), mask=ok)


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
                                         num_warps=4 if n <= 4096 else 8, **launch_options(x2))
    return out.view(*x.shape[:-1], n)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(x + residual), x + residual)`` in one kernel: the norm and the new residual stream."""
    n = x.shape[-1]
    x2, r2 = x.reshape(-1, n).contiguous(), residual.reshape(-1, n).contiguous()
    out = torch.empty(x2.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    total = torch.empty_like(x2)
    if x2.shape[0]:
        _add_rms_norm_kernel[(x2.shape[0],)](x2, r2, weight, out, total, eps, x2.stride(0), r2.stride(0),
                                             out.stride(0), total.stride(0), N=n, BLOCK=_pow2(n),
                                             num_warps=4 if n <= 4096 else 8, **launch_options(x2))
    return out.view(*x.shape[:-1], n), total.view(*x.shape[:-1], n)


def rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
            sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x * cos + rotate_half(x) * sin`` of the queries ``[tokens, heads, d]`` and the keys
    ``[tokens, kv_heads, d]`` in one launch; ``cos``/``sin`` are ``[tokens, 1, d]``."""
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    qo, ko = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device)
    t, hq, d = q.shape
    if t:
        _rope_qk_kernel[(t, hq + k.shape[1])](q, k, cos, sin, qo, ko, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                                              cos.stride(0), qo.stride(0), qo.stride(1), ko.stride(0), ko.stride(1),
                                              NQ=hq, HALF=d // 2, BLOCK=_pow2(d), num_warps=1,
                                              **launch_options(q))
    return qo, ko


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of a fused ``[..., 2·I]`` tensor ``[gate | up]``, in one kernel."""
    n = gate_up.shape[-1] // 2
    x2 = gate_up.reshape(-1, 2 * n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty((x2.shape[0], n), dtype=gate_up.dtype, device=gate_up.device)
    block = min(1024, _pow2(n))
    if x2.shape[0]:
        _silu_and_mul_kernel[(x2.shape[0], -(-n // block))](x2, out, x2.stride(0), out.stride(0), n, BLOCK=block,
                                                           num_warps=4, **launch_options(x2))
    return out.view(*gate_up.shape[:-1], n)


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
    if tl is None or not str(device).startswith("cuda"):
        return False
    try:
        return all(check_against_pytorch(device, torch.bfloat16).values())
    except Exception:  # a kernel that cannot compile here: keep the PyTorch versions
        return False


def check_against_pytorch(device, dtype) -> dict[str, bool]:
    """Each fused kernel against the model's PyTorch expression, on strided inputs as a q/k/v or
    gate/up split gives them: ``{kernel name: equal up to rounding}``."""
    from inferlab.engine.layers import RotaryEmbedding

    g = torch.Generator().manual_seed(0)
    x, r = (torch.randn(9, 96, generator=g).to(device, dtype) for _ in range(2))
    w = torch.randn(96, generator=g).to(device, dtype)

    def norm(v):
        v32 = v.float()
        return w * (v32 * torch.rsqrt(v32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)

    heads = torch.randn(9, 14, 64, generator=g).to(device, dtype)
    q, k = heads[:, 2:10], heads[:, 10:12]
    cos, sin = (torch.randn(9, 1, 64, generator=g).to(device, dtype) for _ in range(2))
    gate_up = torch.randn(9, 2 * 3000, generator=g).to(device, dtype)  # several programs per row
    normed, total = add_rms_norm(x, r, w, 1e-5)
    got_q, got_k = rope_qk(q, k, cos, sin)
    gate, up = gate_up.chunk(2, dim=-1)
    return {
        "rms_norm": close(rms_norm(x, w, 1e-5), norm(x)),
        "add_rms_norm": close(normed, norm(x + r)) and torch.equal(total, x + r),
        "rope_qk": close(got_q, RotaryEmbedding.apply(q, cos, sin)) and close(got_k, RotaryEmbedding.apply(k, cos, sin)),
        "silu_and_mul": close(silu_and_mul(gate_up), torch.nn.functional.silu(gate) * up),
    }
