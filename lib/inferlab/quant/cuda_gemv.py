"""The int4 one-row product on tensor cores (``gemv_int4.cu``): built with nvcc on first use.

Why a CUDA kernel beside the Triton ones: at batch 1 the Triton int4 kernel is bound by latency
and instruction issue, not by DRAM (:mod:`inferlab.quant.kernels`: 168 registers, 3.4
instructions per 4-bit code). Feeding the unpacked codes to ``mma.sync`` as the A operand, with the
activation as B, leaves 2.1-2.3 instructions per code and 75-128 registers. That needs the MMA's
register fragments, which Triton does not expose; the mapping and the reasoning are in the
source file. On an H200 the graphed Llama-3-8B-shaped batch-1 decode step went from 2.02 ms with
the Triton kernel to 1.80 ms (data/results/quant-cuda-h200.json).

The library is compiled once per source, GPU architecture and nvcc into ``INFERLAB_CACHE`` (default
``~/.cache/inferlab``; a few seconds) and called through ctypes with the current stream, so it works
inside CUDA graphs and launches with programmatic dependent launch like the Triton kernels
(:mod:`inferlab.pdl`). Without nvcc, or with ``INFERLAB_QUANT_CUDA=0``, :func:`available` is False
and the Triton kernel runs; :func:`unavailable_reason` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from inferlab import pdl

SOURCE = Path(__file__).with_name("gemv_int4.cu")
GROUP = 128  # the only group size the kernel takes (a lane owns a quarter of a group's 16 words)
ROWS = 16  # output rows per block (the MMA's A rows)
MAX_K = 24576  # a block stages its K activations in shared memory (48 KB at most without opting in)
MAX_WARPS = {2: 16, 4: 16, 8: 16, 16: 8}  # groups per warp -> warps per block at most (gemv_int4.cu)
GROUPS_PER_WARP = (4, 8, 16, 2)  # the kernel's choices, in the order tried
_STATE: dict = {}


def nvcc() -> str | None:
    """The nvcc to build with: ``$CUDA_HOME/bin/nvcc``, else the one on PATH, else /usr/local/cuda's."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    return "/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").is_file() else None


def cache_dir() -> Path:
    return Path(os.environ.get("INFERLAB_CACHE", Path.home() / ".cache" / "inferlab")) / "cuda"


def build(arch: str, compiler: str) -> Path:
    """The shared library for ``arch`` (e.g. ``sm_90``), compiled unless already cached."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + arch.encode() + version.encode()).hexdigest()[:16]
    target = cache_dir() / f"gemv_int4-{arch}-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [compiler, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", f"-arch={arch}", "-o", str(out),
               str(SOURCE)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"nvcc failed to build {SOURCE.name} ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
        os.replace(out, target)  # atomic: a concurrent build never loads half a file
    return target


def _library():
    if "lib" not in _STATE:
        _STATE["lib"], _STATE["why"] = None, None
        try:
            _STATE["lib"] = _load()
        except Exception as err:  # noqa: BLE001 - any failure means "use the Triton kernel", with the reason kept
            _STATE["why"] = f"{type(err).__name__}: {err}"
    return _STATE["lib"]


def _load():
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        raise RuntimeError(f"needs a GPU of compute capability 8.0 or newer (bf16 mma), this one is {major}.{minor}")
    compiler = nvcc()
    if compiler is None:
        raise RuntimeError("nvcc not found: install the CUDA toolkit or set CUDA_HOME")
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError("the int4 CUDA kernel was first needed inside CUDA-graph capture: "
                           "run the model once eagerly before capturing")
    lib = ctypes.CDLL(str(build(f"sm_{major}{minor}", compiler)))
    lib.inferlab_gemv_int4.restype = ctypes.c_int
    lib.inferlab_gemv_int4.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 5 + [ctypes.c_void_p]
    lib.inferlab_error_string.restype = ctypes.c_char_p
    lib.inferlab_error_string.argtypes = [ctypes.c_int]
    return lib


def available() -> bool:
    """True when ``INFERLAB_QUANT_CUDA`` is not ``0`` and the library is built and loaded (built on
    the first call)."""
    return os.environ.get("INFERLAB_QUANT_CUDA", "1") != "0" and _library() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    if os.environ.get("INFERLAB_QUANT_CUDA", "1") == "0":
        return "turned off by INFERLAB_QUANT_CUDA=0"
    _library()
    return _STATE["why"]


def groups_per_warp(N: int, K: int, group: int, gs: int | None = None) -> int | None:
    """The groups per warp for a layer (``gs``, else the first of :data:`GROUPS_PER_WARP` that fits),
    or None when the kernel does not take the shape: group 128, ``N`` a multiple of 16, ``K`` a whole
    number of at most :data:`MAX_WARPS` warps' groups. The swept choice per shape is
    :mod:`inferlab.quant.kernels`' (``cuda-int4`` rows of ``tuned.json``)."""
    if group != GROUP or N % ROWS or K > MAX_K:
        return None
    for g in (gs,) if gs else GROUPS_PER_WARP:
        if g in MAX_WARPS and K % (GROUP * g) == 0 and K // (GROUP * g) <= MAX_WARPS[g]:
            return g
    return None


def gemv_int4(x2: torch.Tensor, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, N: int, K: int,
              gs: int) -> torch.Tensor:
    """``y [1, N]`` for one activation row ``x2 [1, K]`` (bf16 or fp16) and one int4 layer: codes
    ``w`` (uint8 ``[N, K/2]``, kernel order), fp16 ``s`` and uint8 ``z`` ``[N, K/128]``, all contiguous."""
    lib = _library()
    if lib is None:
        raise RuntimeError(f"the int4 CUDA kernel is unavailable: {_STATE['why']}")
    if x2.dtype not in (torch.bfloat16, torch.float16) or x2.shape != (1, K) or not x2.is_contiguous():
        raise ValueError(f"x must be one contiguous bf16/fp16 row of {K}, got {x2.dtype} {tuple(x2.shape)}")
    if s.dtype != torch.float16 or z.dtype != torch.uint8 or w.dtype != torch.uint8:
        raise ValueError(f"expected uint8 codes, fp16 scales, uint8 zeros; got {w.dtype}, {s.dtype}, {z.dtype}")
    y = torch.empty((1, N), device=x2.device, dtype=x2.dtype)
    code = lib.inferlab_gemv_int4(x2.data_ptr(), w.data_ptr(), s.data_ptr(), z.data_ptr(), y.data_ptr(), N, K, gs,
                                  int(x2.dtype == torch.bfloat16), int(pdl.enabled(x2)),
                                  torch.cuda.current_stream(x2.device).cuda_stream)
    if code:
        why = "shape not taken" if code == -1 else lib.inferlab_error_string(code).decode()
        raise RuntimeError(f"gemv_int4 launch failed for N={N}, K={K}, groups per warp {gs}: {why}")
    return y
