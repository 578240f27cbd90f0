"""Load a causal LM and its tokenizer the same way everywhere: laptop, Colab, Binder, H200.

``load_model("tiny")`` and ``load_model("tiny-draft")`` load the embedded default
models offline; any local folder or Hugging Face hub id in the same format loads too.
Weights load only through safetensors and ``trust_remote_code`` stays False unless
the caller asks for it (running code from the hub is a decision, not a default).
"""

from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from inferlab.paths import models_dir

EMBEDDED_MODELS = ("tiny", "tiny-draft")


class ModelNotFound(FileNotFoundError):
    """The name is neither embedded, nor a local folder, nor reachable on the hub."""


def pick_device(device: str | None = None) -> str:
    """``device`` if given (validated), else cuda, then mps, then cpu."""
    import torch

    if device is not None:
        device = str(device)
        kind = device.split(":")[0]
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but torch sees no CUDA GPU; use device='cpu' or None")
        if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("device='mps' was asked for but MPS is not available; use device='cpu' or None")
        if kind not in {"cpu", "cuda", "mps"}:
            raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or None")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


_DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}


def pick_dtype(device: str, dtype: Any = None):
    """``dtype`` if given, else the fastest one the device runs well.

    CPU: float32 (fp16/bf16 matmuls are slow or missing there). CUDA: bfloat16 where
    the GPU supports it (Ampere and newer), float16 otherwise (a T4 has no bf16).
    MPS: float16.
    """
    import torch

    if dtype is not None:
        if isinstance(dtype, torch.dtype):
            return dtype
        name = _DTYPES.get(str(dtype).replace("torch.", "").lower())
        if name is None:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(set(_DTYPES))}")
        return getattr(torch, name)
    kind = device.split(":")[0]
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "mps":
        return torch.float16
    return torch.float32


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in {"0", "", "false", "False"} or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ) not in {"0", "", "false", "False"}


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Map an embedded name or a local folder to a path; pass hub ids through."""
    name = str(name_or_path)
    if name in EMBEDDED_MODELS:
        path = models_dir() / name
        if not (path / "config.json").is_file():
            raise ModelNotFound(
                f"embedded model {name!r} is missing at {path}; train it with "
                "`python -m inferlab.tiny train` or restore data/models from the repository"
            )
        return str(path)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    return name


def load_model(
    name_or_path: str | os.PathLike = "tiny",
    device: str | None = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
):
    """Return ``(model, tokenizer)`` ready for inference (eval mode, on ``device``).

    ``name_or_path``: "tiny", "tiny-draft", a local folder, or a hub id such as
    "Qwen/Qwen2.5-0.5B". ``device``/``dtype`` default to :func:`pick_device` and
    :func:`pick_dtype`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep notebooks' stored outputs free of progress bars
    device = pick_device(device)
    torch_dtype = pick_dtype(device, dtype)
    path = resolve_model_path(name_or_path)
    local = Path(path).is_dir()
    common = {"trust_remote_code": trust_remote_code}
    if not local and _offline():
        common["local_files_only"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, use_safetensors=True, **common, **kwargs
        )
    except OSError as err:
        if local:
            raise
        where = "offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set)" if _offline() else "from the hub"
        raise ModelNotFound(
            f"could not load {str(name_or_path)!r} {where}: it is not an embedded model "
            f"({', '.join(EMBEDDED_MODELS)}) nor a local folder, and {err.__class__.__name__}: {err}. "
            "Use an embedded name, a folder with config.json + model.safetensors, or go online "
            "and pass a hub id such as 'Qwen/Qwen2.5-0.5B'."
        ) from err
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer


@contextmanager
def random_init(device: str, dtype, seed: int = 0):
    """Modules built inside are created on ``device`` in ``dtype`` with seeded random weights.

    For timing, where only the shapes matter: no fp32 copy on the CPU first, no download.
    """
    import torch

    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


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
    info["dtype"] = str(pick_dtype(info["device"])).replace("torch.", "")
    if print_it:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return info
