"""Programmatic dependent launch (PDL): let a kernel start while the one before it finishes.

In a CUDA graph a batch-1 decode step is a few hundred kernels in a row, and between two of them
the GPU drains the first (its last blocks, the memory flush) before it starts the blocks of the
second, which then wait a full memory round trip for their first bytes. On Hopper and newer GPUs a
kernel launched with programmatic stream serialization (CUDA's "programmatic dependent launch",
CUDA C++ Programming Guide, section on PDL) may start as soon as its predecessor says so
(``griddepcontrol.launch_dependents``); it then runs whatever does not depend on that predecessor
(a linear layer loads its first weights) and stops at ``griddepcontrol.wait``, which returns once
the predecessor has finished and its writes are visible.

The rules every kernel here follows, so that correctness never depends on timing:

- each program waits unconditionally, before it reads anything an earlier kernel of this step
  wrote and before any store or atomic; only what no kernel of the step writes is loaded before
  the wait (weights; the step's lengths and block tables; the KV cache of earlier steps, read by
  the decode kernel that stores this step's K/V itself);
- what an earlier kernel wrote is read through coherent loads, never the read-only cache
  (``ld.global.nc``): a kernel can start while an older one still reads through the same L1, and
  in a CUDA graph that memory may hold the new activation, so a non-coherent load can return the
  old bytes (it did, in a first version of ``quant/gemv_int4.cu``: graphed logits 60% off);
- a kernel of many blocks (a linear layer, :func:`pdl_wait`) lets the next one launch only after
  its own wait, so the chain of early launches stops at every linear layer;
- a kernel of a few blocks (a norm, RoPE, the KV store, attention, :func:`pdl_launch_then_wait`)
  lets the next one launch at once, so the next linear layer is launched, and loading its weights,
  while the small kernels before it still run.

Because every wait comes before a kernel completes, kernel C waiting on B also waits on A; where
the trigger sits changes only when a kernel starts, never what it reads. A kernel starts only once
every block of the one before it has started, so waiting blocks never keep an earlier kernel's
blocks off the GPU. Kernels launched without the attribute (PyTorch's, cuBLAS's) are serialized as
usual.

Who uses it: the engine's fused norm/RoPE/activation kernels, the paged KV store and decode
attention, the one-row int8/int4 gemv kernels of :mod:`inferlab.quant.kernels`, and the CUDA
tensor-core int4 kernel of :mod:`inferlab.quant.cuda_gemv` (the same rules in inline PTX, launched
through ``cudaLaunchKernelEx``; :func:`enabled` decides for it too). The
tensor-core kernels for 2–64 rows do not: they have nothing to load before the wait, and with PDL
the batch-32 steps of the H200 record got slower (data/results/quant-pdl-ablation-h200.json). On
an H200 the graphed Llama-3-8B-shaped batch-1 decode step went from 2.46 to 2.13 ms in int4 and from
4.65 to 4.54 ms in bf16, with identical logits (data/results/quant-step-profile-h200.json as
recorded at 81e8989; at 1e8b7af, with the CUDA int4 kernel, 2.06 to 1.90 ms and 4.53 to 4.49 ms).
``INFERLAB_PDL=0`` turns it off (for comparison); without a Hopper GPU or without
``triton.language.extra.cuda.gdc_wait`` it is off, and the kernels compile without the two
instructions (the Triton interpreter never sees them).
"""

from __future__ import annotations

import os

import torch

try:  # optional: the jit helper refers to ``tl`` and the gdc intrinsics as module globals
    import triton
    import triton.language as tl

    try:
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    except ImportError:  # an older Triton: no grid dependency control
        gdc_wait = gdc_launch_dependents = None
    _jit = triton.jit
except ImportError:  # pragma: no cover - CPU wheels without triton
    tl = gdc_wait = gdc_launch_dependents = None

    def _jit(fn):
        return fn

__all__ = ["enabled", "launch_options", "pdl_launch", "pdl_launch_then_wait", "pdl_wait", "pdl_wait_previous"]

_STATE: dict = {}


def enabled(t: torch.Tensor) -> bool:
    """True when kernels on ``t``'s device launch with PDL: a CUDA tensor on a GPU of compute
    capability 9.0 or newer, a Triton with ``gdc_wait``, and ``INFERLAB_PDL`` not ``0``."""
    if not t.is_cuda or gdc_wait is None or os.environ.get("INFERLAB_PDL", "1") == "0":
        return False
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if index not in _STATE:
        _STATE[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return _STATE[index]


def launch_options(t: torch.Tensor) -> dict:
    """The keyword arguments of a launch that follows the rules above: ``PDL`` (the kernel's
    constexpr) and, when on, Triton's ``launch_pdl``."""
    return {"PDL": True, "launch_pdl": True} if enabled(t) else {"PDL": False}


@_jit
def pdl_wait(PDL: tl.constexpr):
    """Wait for the previous kernel (its writes visible), then let the next one start. No-op without PDL."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@_jit
def pdl_launch(PDL: tl.constexpr):
    """Let the next kernel start now; wait later (:func:`pdl_wait_previous`). No-op without PDL."""
    if PDL:
        gdc_launch_dependents()


@_jit
def pdl_wait_previous(PDL: tl.constexpr):
    """Wait for the previous kernel (its writes visible), after :func:`pdl_launch`. No-op without PDL."""
    if PDL:
        gdc_wait()


@_jit
def pdl_launch_then_wait(PDL: tl.constexpr):
    """Let the next kernel start now, then wait for the previous one. For kernels of a few blocks."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
