"""The real formats: bitsandbytes through transformers, GPTQ/AWQ checkpoints, and GGUF.

- bitsandbytes (Dettmers et al.): :func:`load_8bit_model` (LLM.int8()) and
  :func:`load_4bit_model` (QLoRA's NF4 or FP4, double quantization set explicitly), through
  transformers' ``BitsAndBytesConfig``; it runs on CUDA and on the CPU.
- GPTQ/AWQ checkpoints: the layout every GPTQ and AWQ model on the Hub uses (``qweight``,
  ``qzeros``, ``scales``, ``g_idx``, 4-bit codes packed eight to an int32, and a
  ``quantization_config`` in ``config.json``), written from our quantized layers
  (:mod:`inferlab.quant.checkpoints`) and read back by our own loader, or by transformers'
  ``GPTQConfig``/``AwqConfig`` where its backend (gptqmodel) is installed.
- GGUF (llama.cpp's file format): :func:`export_gguf` writes Q8_0 or Q4_0 with the ``gguf``
  package, under llama.cpp's tensor names and with its Q/K row permutation;
  :func:`load_gguf` loads it back through transformers' ``gguf_file=``.
"""

from __future__ import annotations

import importlib.util

import torch

from inferlab.quant.checkpoints import load_awq_model, load_gptq_model, save_awq, save_gptq
from inferlab.quant.gguf_io import export_gguf, load_gguf

__all__ = ["export_gguf", "load_4bit_model", "load_8bit_model", "load_awq_model", "load_gguf",
           "load_gptq_model", "require", "save_awq", "save_gptq"]

INSTALL_HINT = "pip install 'inferlab[quant]'"


def require(*packages: str, what: str) -> None:
    """ImportError naming exactly the missing packages (and the extra that brings them)."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ImportError(f"{what} needs {', '.join(missing)}: `pip install {' '.join(missing)}` "
                          f"(or `{INSTALL_HINT}`)")


def _check_bnb_backend(device: str) -> None:
    """A clear error when bitsandbytes has no kernels for ``device`` (tried on a tiny tensor)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bf

    try:
        bf.quantize_4bit(torch.zeros(64, device=device), quant_type="nf4")
    except (RuntimeError, NotImplementedError, AttributeError) as err:
        raise RuntimeError(f"bitsandbytes {bnb.__version__} has no backend for device {device!r} "
                           f"({type(err).__name__}: {str(err).splitlines()[0][:120]}); use device='cuda' "
                           "or 'cpu', or a bitsandbytes build for this device") from err


def _load_bnb(name_or_path, config, device, dtype):
    from transformers import AutoModelForCausalLM

    from inferlab.device import pick_device, torch_dtype
    from inferlab.hub import load_tokenizer, resolve_model_path

    require("bitsandbytes", "accelerate", what="loading with BitsAndBytesConfig")
    device = pick_device(device)
    _check_bnb_backend(device)
    path = resolve_model_path(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config, device_map=device,
                                                 dtype=torch_dtype(dtype, device))
    return model.eval(), load_tokenizer(name_or_path)


def load_8bit_model(name_or_path="tiny", device: str | None = None, dtype=None, threshold: float = 6.0):
    """``(model, tokenizer)`` with every linear layer in bitsandbytes' LLM.int8() format.

    ``threshold``: activations above it take the fp16 outlier path (LLM.int8()'s mixed decomposition).
    """
    from transformers import BitsAndBytesConfig

    return _load_bnb(name_or_path, BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold),
                     device, dtype)


def load_4bit_model(name_or_path="tiny", quant_type: str = "nf4", double_quant: bool = True,
                    compute_dtype=None, device: str | None = None):
    """``(model, tokenizer)`` with bitsandbytes 4-bit weights: ``quant_type`` "nf4" or "fp4",
    ``double_quant`` (QLoRA's second quantization of the block constants), matmuls in ``compute_dtype``."""
    from transformers import BitsAndBytesConfig

    from inferlab.device import pick_device, torch_dtype

    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
    if not isinstance(double_quant, bool):
        raise TypeError(f"double_quant must be True or False, got {double_quant!r}")
    compute = torch_dtype(compute_dtype, pick_device(device))
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute)
    return _load_bnb(name_or_path, config, device, compute)
