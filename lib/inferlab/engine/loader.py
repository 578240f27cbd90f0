"""Weights onto the engine's model: resolve a model source, then map checkpoint names to parameters.

A source is a name or folder (embedded, local, or a hub id resolved through
:mod:`inferlab.hub`), an already loaded transformers model (its state dict is copied), or a
bare config (random weights, for timing: only the shapes matter). Checkpoint tensors reach
their parameter by name, through the model's ``packed_modules_mapping`` for fused layers,
and load with the parameter's own ``weight_loader`` (nano-vllm's ``load_model``): a layer
with another storage (quantized, sharded) brings its own loader, this file does not change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inferlab.engine.config import ModelConfig
from inferlab.engine.layers import default_weight_loader

Weights = Iterable[tuple[str, torch.Tensor]]


@dataclass
class ModelSource:
    """What a source gives: the model's shape, its weights (None: random) and where it already lives."""

    config: ModelConfig
    weights: Callable[..., Weights] | None  # weights(device=None): the checkpoint's tensors
    device: str | None = None
    dtype: torch.dtype | None = None
    path: Path | None = None


def resolve_source(source: Any) -> ModelSource:
    """A :class:`ModelSource` for a name/path/hub id, a transformers model, or a config (dict or ModelConfig)."""
    if isinstance(source, ModelConfig):
        return ModelSource(source, None)
    if isinstance(source, dict):
        return ModelSource(ModelConfig.from_dict(source), None)
    if isinstance(source, (str, Path)):
        path = checkpoint_dir(str(source))
        config = ModelConfig.from_dict(json.loads((path / "config.json").read_text()))
        return ModelSource(config, lambda device=None: safetensors_weights(path, device), path=path)
    if isinstance(source, nn.Module) and hasattr(getattr(source, "config", None), "to_dict"):
        param = next(source.parameters())
        state = lambda device=None: ((k, v.detach()) for k, v in source.state_dict().items())  # noqa: E731
        return ModelSource(ModelConfig.from_dict(source.config.to_dict()), state, str(param.device), param.dtype)
    raise TypeError(f"model must be a name, a folder, a transformers model or a config, got {type(source).__name__}")


def checkpoint_dir(model: str) -> Path:
    """A local folder for an embedded name, a folder, or a hub id (downloaded or from the cache)."""
    from inferlab.hub import snapshot  # a clear ModelNotFound naming the model, as load_model gives

    return snapshot(model, ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"])


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder (the shards an index names, or every file)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / s for s in shards]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors checkpoint in {path}")
    return files


def safetensors_weights(path: Path, device=None) -> Iterator[tuple[str, torch.Tensor]]:
    """Every ``(name, tensor)`` of a (possibly sharded) safetensors checkpoint, file by file.

    ``device``: where the tensors are read to (default the CPU); on a GPU they go straight
    there, tensor by tensor, without a host copy of the whole file.
    """
    from safetensors import safe_open

    for file in checkpoint_files(path):
        with safe_open(str(file), framework="pt", device=str(device or "cpu")) as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, f.get_tensor(name)


def load_weights(model: nn.Module, weights: Weights) -> None:
    """Load checkpoint tensors into ``model`` by name; every parameter must be found (or tied).

    Names the model does not have (e.g. a stored ``rotary_emb.inv_freq``) are skipped.
    """
    params = dict(model.named_parameters())
    packed = getattr(model, "packed_modules_mapping", {})
    loaded: set[str] = set()
    for name, tensor in weights:
        target, shard = _target(name, params, packed)
        if target is None:
            continue
        param = params[target]
        loader = getattr(param, "weight_loader", None)
        if shard is not None:
            loader(param, tensor, shard)
        else:
            (loader or default_weight_loader)(param, tensor)
        loaded.add(target)
    _tie(model, params, loaded)
    missing = sorted(set(params) - loaded)
    if missing:
        raise KeyError(f"checkpoint has no tensor for {missing[:5]}{' ...' if len(missing) > 5 else ''}")


def _target(name: str, params: dict, packed: dict) -> tuple[str | None, Any]:
    """Our parameter name (and shard id) for a checkpoint tensor name."""
    shard = None
    for ckpt, (fused, shard_id) in packed.items():
        if f".{ckpt}." in name:
            name, shard = name.replace(f".{ckpt}.", f".{fused}."), shard_id
            break
    for candidate in (name, "model." + name):
        if candidate in params:
            return candidate, shard
    return None, None


def _tie(model: nn.Module, params: dict, loaded: set[str]) -> None:
    """Tied parameters (the LM head and the embedding) copy their source when tied or absent."""
    tie = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    tied = model.tied_weights() if hasattr(model, "tied_weights") else {}
    for target, source in tied.items():
        if tie or target not in loaded:
            params[target].data.copy_(params[source].data)
            loaded.add(target)
