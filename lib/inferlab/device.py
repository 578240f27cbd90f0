"""Where a model runs and in which number format, and how long something takes there.

One home for the choices every module makes: the device (``None`` always means
:func:`pick_device`: cuda, then mps, then cpu), the torch dtype (one alias table, so
``"bf16"`` and ``torch.bfloat16`` mean the same everywhere), waiting for queued GPU work
(:func:`synchronize`) and timing (:func:`time_fn`: GPU kernels run asynchronously, so a
timing without a synchronize on both sides measures the launch, not the work).
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from typing import Any

# alias -> torch attribute name; the only table of torch dtype names in the library
# (KV-cache *storage* formats such as fp8/int4 are a different idea: inferlab.kvcache).
DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}


def _mps_available() -> bool:
    import torch

    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(device: str | None = None) -> str:
    """``device`` if given (validated), else ``$INFERLAB_DEVICE``, else cuda, then mps, then cpu."""
    import torch

    device = device if device is not None else (os.environ.get("INFERLAB_DEVICE") or None)
    if device is not None:
        device = str(device)
        kind = device.split(":")[0]
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but torch sees no CUDA GPU; use device='cpu' or None")
        if kind == "mps" and not _mps_available():
            raise ValueError("device='mps' was asked for but MPS is not available; use device='cpu' or None")
        if kind not in {"cpu", "cuda", "mps"}:
            raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or None")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if _mps_available():
        return "mps"
    return "cpu"


def torch_dtype(dtype: Any = None, device: str | None = None):
    """``dtype`` (a ``torch.dtype`` or any alias in :data:`DTYPE_ALIASES`) as a ``torch.dtype``.

    ``None`` picks the fastest format the device runs well: float32 on the CPU (fp16/bf16
    matmuls are slow or missing there), bfloat16 on CUDA GPUs that support it (Ampere and
    newer), float16 on older ones (a T4 has no bf16) and on MPS.
    """
    import torch

    if dtype is not None:
        if isinstance(dtype, torch.dtype):
            return dtype
        name = DTYPE_ALIASES.get(str(dtype).replace("torch.", "").lower())
        if name is None:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPE_ALIASES)}")
        return getattr(torch, name)
    kind = str(device if device is not None else pick_device()).split(":")[0]
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "mps":
        return torch.float16
    return torch.float32


def dtype_name(dtype: Any) -> str:
    """``"bfloat16"`` for ``torch.bfloat16`` or ``"bf16"``: the canonical name, for JSON and labels."""
    return str(torch_dtype(dtype)).replace("torch.", "")


def synchronize(device: Any = None) -> None:
    """Wait until the device has finished the work queued on it (a no-op on the CPU)."""
    import torch

    kind = str(device if device is not None else pick_device()).split(":")[0]
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def time_fn(fn, device: Any = None, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Seconds per call of ``fn()``, ``repeats`` times after ``warmup`` untimed calls.

    Each call is bracketed by :func:`synchronize`, so asynchronous GPU work is counted.
    Callers report the minimum (the run least disturbed by the machine) or the spread
    (:mod:`inferlab.stats`); one timing alone says little.
    """
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Run the block with ``n`` torch CPU threads (unchanged when ``n`` is None), then restore them."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(int(n) if n else saved)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def capture_cuda_graph(fn):
    """``fn()`` captured as a ``torch.cuda.CUDAGraph``, after one warm-up run on a side stream
    (so lazy initialisation and Triton compiles happen outside the capture)."""
    return capture_cuda_graph_output(fn)[0]


def capture_cuda_graph_output(fn):
    """``(graph, out)``: :func:`capture_cuda_graph` of ``fn``, and what ``fn()`` returned inside the
    capture, the tensors that every ``graph.replay()`` writes again (read them after a replay)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def time_cuda_graph(fn, repeats: int = 5) -> list[float]:
    """Seconds per replay of one CUDA graph of ``fn()``: the GPU's time, without Python's launches.

    ``fn`` is captured by :func:`capture_cuda_graph`, then replayed ``repeats`` times between CUDA
    events.
    """
    import torch

    graph = capture_cuda_graph(fn)
    graph.replay()
    seconds = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        seconds.append(start.elapsed_time(end) / 1e3)
    del graph
    return seconds


def env_report(print_it: bool = True) -> dict:
    """Versions and hardware, as a dict; printed as a short table unless ``print_it=False``."""
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": pick_device(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        info["transformers"] = None
    try:
        import psutil

        info["ram_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu_name=props.name,
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            bf16=torch.cuda.is_bf16_supported(),
        )
    info["dtype"] = dtype_name(torch_dtype(None, info["device"]))
    if print_it:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return info
