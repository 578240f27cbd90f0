"""Every model and tokenizer comes from here: embedded, a local folder, the Hugging Face hub, or random.

``load_model("tiny")`` and ``load_model("tiny-draft")`` load the embedded default
models offline; any local folder or Hugging Face hub id in the same format loads too.
Weights load only through safetensors and ``trust_remote_code`` stays False unless
the caller asks for it (running code from the hub is a decision, not a default).
:func:`random_init` builds a model of a given shape with random weights, for timing.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from inferlab.device import pick_device, torch_dtype
from inferlab.paths import models_dir

EMBEDDED_MODELS = ("tiny", "tiny-draft")

# the fields of a published config that fix a Llama-family model's shape
_LLAMA_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                     "intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings")


class ModelNotFound(FileNotFoundError):
    """The name is neither embedded, nor a local folder, nor reachable on the hub."""


def offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE asks for no network."""
    return any(os.environ.get(var, "0") not in {"0", "", "false", "False"}
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Map an embedded name or a local folder to a path; pass hub ids through."""
    name = str(name_or_path)
    if name in EMBEDDED_MODELS:
        path = models_dir() / name
        if not (path / "config.json").is_file():
            raise ModelNotFound(
                f"embedded model {name!r} is missing at {path}; train it with "
                "`python -m inferlab.tools.train_tiny train` or restore data/models from the repository"
            )
        return str(path)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    return name


def _hub_kwargs(path: str, trust_remote_code: bool) -> dict[str, Any]:
    common: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if not Path(path).is_dir() and offline():
        common["local_files_only"] = True
    return common


def _not_found(name_or_path, err: OSError) -> ModelNotFound:
    """Say which of the two cases it is: offline mode was asked for, or the hub could not be reached / had no such id."""
    head = (f"could not load {str(name_or_path)!r}: it is not an embedded model ({', '.join(EMBEDDED_MODELS)}) "
            "nor a local folder")
    if offline():
        return ModelNotFound(f"{head}, and offline mode is on (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set), so the "
                             "hub was not asked; it is not in the local cache either. Unset those variables to "
                             f"download it. ({err.__class__.__name__}: {err})")
    return ModelNotFound(f"{head}, and fetching it from the Hugging Face hub failed: no network, a misspelled id, or "
                         "a gated model that needs `hf auth login`. Check the id on huggingface.co, or use an "
                         f"embedded name or a folder with config.json + model.safetensors. ({err.__class__.__name__}: {err})")


def snapshot(name_or_path: str | os.PathLike, allow_patterns: list[str] | None = None) -> Path:
    """A local folder with the model's files: embedded, a folder, or a hub id (downloaded, or from the cache).

    The one path from a name to files for the engine: anything that cannot be found is a
    :class:`ModelNotFound` naming it, as :func:`load_model` says it, not the hub client's error.
    """
    path = Path(resolve_model_path(name_or_path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{str(name_or_path)!r} is a folder without a config.json, not a model checkpoint")
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=allow_patterns, local_files_only=offline()))
    except (OSError, ValueError) as err:  # not cached offline, no such repo, no network, not a valid id
        raise _not_found(name_or_path, err) from err


def load_tokenizer(name_or_path: str | os.PathLike = "tiny", trust_remote_code: bool = False):
    """The tokenizer of a model name or path, with a pad token (the EOS token when it has none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **_hub_kwargs(path, trust_remote_code))
    except OSError as err:
        if Path(path).is_dir():
            raise
        raise _not_found(name_or_path, err) from err
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str | os.PathLike = "tiny",
    device: str | None = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
):
    """Return ``(model, tokenizer)`` ready for inference (eval mode, on ``device``).

    ``name_or_path``: "tiny", "tiny-draft", a local folder, or a hub id such as
    "Qwen/Qwen2.5-0.5B". ``device``/``dtype`` default to :func:`inferlab.device.pick_device`
    and :func:`inferlab.device.torch_dtype`.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep notebooks' stored outputs free of progress bars
    device = pick_device(device)
    dtype = torch_dtype(dtype, device)
    path = resolve_model_path(name_or_path)
    tokenizer = load_tokenizer(name_or_path, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=True, **_hub_kwargs(path, trust_remote_code), **kwargs
        )
    except OSError as err:
        if Path(path).is_dir():
            raise
        raise _not_found(name_or_path, err) from err
    model.to(device)
    model.eval()
    return model, tokenizer


@contextmanager
def _created_on(device: str, dtype, seed: int):
    """Modules built inside are created on ``device`` in ``dtype`` with seeded random weights."""
    import torch

    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def _hf_llama(config: Any):
    from transformers import LlamaConfig, LlamaForCausalLM

    from inferlab.configs import as_dict

    raw = as_dict(config)
    return LlamaForCausalLM(LlamaConfig(**{k: raw[k] for k in _LLAMA_SHAPE_KEYS if k in raw}))


def random_init(config: Any, device: str | None = None, dtype: Any = None, seed: int = 0, build=None):
    """A model of ``config``'s shape with seeded random weights, created on ``device`` in ``dtype``.

    For timing, where only the shapes matter: no fp32 copy on the CPU first, no download.
    ``build(config)`` makes the module (default: a transformers ``LlamaForCausalLM`` from a
    config dict, a shipped config name or an HF config); the engine passes its own model class.
    """
    device = pick_device(device)
    with _created_on(device, torch_dtype(dtype, device), seed):
        model = (build or _hf_llama)(config)
    return model.eval()
