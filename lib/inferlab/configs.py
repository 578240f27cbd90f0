"""The known models and GPUs: published configs (data/configs), embedded models, datasheet numbers.

Every module that needs a model's shape reads it here, from any form a config comes in
(a shipped name, a path to a config.json, a dict, a transformers config, a dataclass),
and every GPU number (memory, bandwidth, peak throughput) comes from the one table
:data:`GPUS`. :func:`param_count` counts parameters from a config alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferlab.paths import configs_dir, models_dir
from inferlab.units import MiB

# ---------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------


def known_models() -> list[str]:
    """Names accepted wherever a ``config`` is: data/configs/*.json plus the embedded models."""
    names = {p.stem for p in configs_dir().glob("*.json")}
    names |= {p.parent.name for p in models_dir().glob("*/config.json")}
    return sorted(names)


def load_config(name: str) -> dict[str, Any]:
    """The published config ``data/configs/NAME.json`` (or an embedded model's) as a dict."""
    key = str(name).strip().lower()
    for path in (configs_dir() / f"{key}.json", models_dir() / key / "config.json"):
        if path.is_file():
            cfg = json.loads(path.read_text())
            cfg.setdefault("name", key)
            return cfg
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(known_models())}")


def as_dict(config: Any) -> dict[str, Any]:
    """A config as a plain dict: a name, a path to a config.json, a dict, a transformers config or a dataclass."""
    if isinstance(config, dict):
        return _text_part(dict(config))
    if isinstance(config, (str, Path)):
        path = Path(config)
        if path.suffix == ".json" and path.is_file():
            return _text_part(json.loads(path.read_text()))
        if (path / "config.json").is_file():
            return _text_part(json.loads((path / "config.json").read_text()))
        return _text_part(load_config(str(config)))
    if hasattr(config, "get_text_config"):  # a transformers PretrainedConfig (multimodal: its text part)
        config = config.get_text_config()
    if hasattr(config, "to_dict"):
        out = config.to_dict()
        # attributes set at runtime or computed (layer_types, head_dim) may not all be in to_dict
        for key in ("layer_types", "head_dim", "sliding_window", "num_key_value_heads"):
            if getattr(config, key, None) is not None:
                out[key] = getattr(config, key)
        return out
    if dataclasses.is_dataclass(config) and not isinstance(config, type):  # e.g. the engine's ModelConfig
        return dataclasses.asdict(config)
    raise TypeError(f"config must be a model name, a dict or a transformers config, not {type(config).__name__}")


def _text_part(cfg: dict[str, Any]) -> dict[str, Any]:
    """A multimodal config's language model (its ``text_config``), keeping the outer name; else ``cfg``."""
    text = cfg.get("text_config")
    if not isinstance(text, dict):
        return cfg
    name = cfg.get("name") or cfg.get("_name_or_path")
    return {**text, **({"name": name} if name and not text.get("name") else {})}


def _first(cfg: dict, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return default


def _required(cfg: dict, *keys: str) -> int:
    """The first of ``keys`` that ``cfg`` has, as an int; a ValueError naming them when it has none."""
    value = _first(cfg, *keys)
    if value is None:
        raise ValueError(f"config has no {' / '.join(keys)} (got keys: {', '.join(sorted(cfg)) or 'none'})")
    return int(value)


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that memory depends on."""

    name: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int
    windows: tuple  # per layer: None (full attention) or the sliding window in tokens
    mla: tuple | None = None  # (kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim)
    max_context: int | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def attention(self) -> str:
        if self.mla:
            return "MLA"
        if self.n_kv_heads == 1 and self.n_heads > 1:
            return "MQA"
        return "GQA" if self.n_kv_heads < self.n_heads else "MHA"


def layer_windows(cfg: dict, n_layers: int) -> tuple:
    """Per layer, the sliding window in tokens or None (full attention), as transformers builds the cache.

    ``layer_types`` when the config lists them; else Qwen2/Qwen3's ``use_sliding_window`` with
    ``max_window_layers`` (layers from that index on slide); Gemma-3/Cohere2's
    ``sliding_window_pattern`` (every p-th layer is global); Gemma-2's even layers; otherwise
    (Mistral v0.1, Phi-3) every layer.
    """
    window = cfg.get("sliding_window")
    model_type = str(cfg.get("model_type", ""))
    if not window or cfg.get("use_sliding_window") is False:
        return (None,) * n_layers
    window = int(window)
    types = cfg.get("layer_types")
    if types:
        return tuple(window if "sliding" in str(t) else None for t in types[:n_layers])
    if "use_sliding_window" in cfg or model_type.startswith(("qwen2", "qwen3")):
        if not cfg.get("use_sliding_window"):
            return (None,) * n_layers
        first = int(_first(cfg, "max_window_layers", default=28))  # transformers' default
        return tuple(window if i >= first else None for i in range(n_layers))
    pattern = _first(cfg, "sliding_window_pattern", "_sliding_window_pattern",
                     default=_DEFAULT_PATTERN.get(model_type.removesuffix("_text")))
    if pattern:  # Gemma-3 (6), Cohere2 (4), Gemma-2 (2): every pattern-th layer is global
        return tuple(window if (i + 1) % int(pattern) else None for i in range(n_layers))
    return (window,) * n_layers


_DEFAULT_PATTERN = {"gemma2": 2, "gemma3": 6, "cohere2": 4}


def _kv_heads(cfg: dict, n_heads: int) -> int:
    """KV heads of the cache: Falcon-7B and GPT-BigCode's ``multi_query`` keep one (Falcon-40B's
    ``new_decoder_architecture`` uses ``num_kv_heads`` instead)."""
    multi_query = cfg.get("multi_query", str(cfg.get("model_type")) in {"falcon", "gpt_bigcode"})
    if multi_query and not cfg.get("new_decoder_architecture"):
        return 1
    return int(_first(cfg, "num_key_value_heads", "multi_query_group_num", "num_kv_heads", "n_head_kv",
                      default=n_heads))


def model_shape(config: Any) -> ModelShape:
    """Read layers, heads, KV heads, head_dim, MLA ranks and sliding windows from any config form."""
    if isinstance(config, ModelShape):
        return config
    cfg = as_dict(config)
    n_layers = _required(cfg, "num_hidden_layers", "n_layer", "num_layers")
    hidden = _required(cfg, "hidden_size", "n_embd", "d_model")
    n_heads = _required(cfg, "num_attention_heads", "n_head", "num_heads")
    if min(n_layers, hidden, n_heads) <= 0:
        raise ValueError(f"config has non-positive sizes: layers={n_layers}, hidden={hidden}, heads={n_heads}")
    n_kv = _kv_heads(cfg, n_heads)
    head_dim = int(_first(cfg, "head_dim", default=hidden // n_heads))
    mla = None
    if cfg.get("kv_lora_rank"):
        mla = (int(cfg["kv_lora_rank"]), int(cfg["qk_rope_head_dim"]),
               int(cfg.get("qk_nope_head_dim") or 128), int(cfg.get("v_head_dim") or 128))
    return ModelShape(
        name=str(cfg.get("name") or cfg.get("_name_or_path") or cfg.get("model_type") or "model"),
        n_layers=n_layers, hidden=hidden, n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim,
        vocab=int(_first(cfg, "vocab_size", default=0)),
        intermediate=int(_first(cfg, "intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size", default=4 * hidden)),
        windows=layer_windows(cfg, n_layers), mla=mla,
        max_context=_first(cfg, "max_position_embeddings", "n_positions"), raw=cfg,
    )


# ---------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------


def _attention_params(cfg: dict, s: ModelShape) -> int:
    h = s.hidden
    if s.mla:
        rank, rope, nope, v_dim = s.mla
        q_rank = cfg.get("q_lora_rank")
        q_out = s.n_heads * (nope + rope)
        q = h * q_rank + q_rank + q_rank * q_out if q_rank else h * q_out
        kv = h * (rank + rope) + rank + rank * s.n_heads * (nope + v_dim)
        return q + kv + s.n_heads * v_dim * h
    q_out, kv_out = s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim
    n = h * q_out + 2 * h * kv_out + q_out * h
    if cfg.get("model_type") == "opt" or cfg.get("enable_bias"):
        n += q_out + 2 * kv_out + h
    elif cfg.get("attention_bias") or cfg.get("model_type") in {"qwen2"}:
        n += q_out + 2 * kv_out  # Qwen2 has q/k/v biases, no output bias
    elif cfg.get("model_type") == "falcon" and cfg.get("bias"):
        n += q_out + 2 * kv_out + h
    if cfg.get("model_type") in _QK_NORM:
        n += 2 * s.head_dim  # q_norm and k_norm, one head_dim-sized RMSNorm each
    return n


_QK_NORM = {"gemma3", "gemma3_text", "qwen3"}


def _mlp_params(cfg: dict, s: ModelShape, layer: int) -> int:
    h = s.hidden
    if cfg.get("model_type") == "opt":  # fc1 -> ReLU -> fc2, with biases
        return 2 * h * s.intermediate + s.intermediate + h
    if cfg.get("model_type") == "falcon":  # dense_h_to_4h -> GELU -> dense_4h_to_h, not gated
        return 2 * h * s.intermediate + ((s.intermediate + h) if cfg.get("bias") else 0)
    gated = 3 * h  # gate, up and down projections (SwiGLU / GeGLU)
    n_routed = _first(cfg, "n_routed_experts", "num_local_experts", "num_experts", default=0)
    dense_first = int(cfg.get("first_k_dense_replace", 0) or 0)
    if not n_routed or layer < dense_first:
        return gated * s.intermediate
    expert = int(_first(cfg, "moe_intermediate_size", default=s.intermediate))
    shared = int(cfg.get("n_shared_experts", 0) or 0)
    router = h * n_routed + (n_routed if cfg.get("topk_method") == "noaux_tc" else 0)
    return (n_routed + shared) * gated * expert + router


def _norms_per_layer(cfg: dict) -> int:
    if cfg.get("model_type") in {"gemma2", "gemma3", "gemma3_text"}:
        return 4  # input, post-attention, pre- and post-feed-forward RMSNorms
    if cfg.get("model_type") == "falcon":  # parallel attention and MLP read one LayerNorm (40B: two)
        if cfg.get("new_decoder_architecture"):
            return 2 if cfg.get("num_ln_in_parallel_attn", 2) == 2 else 1
        return 1 if cfg.get("parallel_attn", True) else 2
    return 2


TIED_BY_DEFAULT = {"gemma2", "gemma3", "gemma3_text", "opt", "falcon"}  # transformers' default when the key is absent


def tied_embeddings(cfg: dict) -> bool:
    """True when the LM head shares the input embedding's matrix (``tie_word_embeddings``, or its default)."""
    return bool(cfg.get("tie_word_embeddings", cfg.get("model_type") in TIED_BY_DEFAULT))


def param_count(config: Any) -> int:
    """Parameters of a decoder-only LM from its config (embeddings, attention, MLP incl.
    all MoE experts, norms, and the LM head unless tied to the embeddings).

    Llama-3.2-1B: 1,235,814,400. Within ~0.1% of published totals for the shipped configs;
    DeepSeek-V3's multi-token-prediction module (14B) is not counted (671B main model).
    """
    s = model_shape(config)
    cfg = s.raw
    h = s.hidden
    layer_norm = cfg.get("model_type") in {"opt", "falcon"}  # LayerNorm has a bias, RMSNorm does not
    norm = 2 * h if layer_norm else h
    n = s.vocab * h
    if cfg.get("model_type") == "opt":
        n += (int(s.max_context) + 2) * h  # learned positions (OPT offsets them by 2)
    if not tied_embeddings(cfg):
        n += s.vocab * h
    for layer in range(s.n_layers):
        n += _attention_params(cfg, s) + _mlp_params(cfg, s, layer) + _norms_per_layer(cfg) * norm
    return n + norm  # final norm


# ---------------------------------------------------------------------------------------
# GPUs (datasheet numbers)
# ---------------------------------------------------------------------------------------

# Total memory as nvidia-smi reports it (the "16 GB" T4 is 15,360 MiB = 15 GiB),
# peak HBM bandwidth in bytes/s and dense bf16/fp16 tensor throughput in FLOP/s, from NVIDIA datasheets.
GPUS: dict[str, dict[str, float]] = {
    "T4 16 GB": {"memory": 15360 * MiB, "bandwidth": 320e9, "flops": 65e12},
    "A100 40 GB": {"memory": 40960 * MiB, "bandwidth": 1555e9, "flops": 312e12},
    "A100 80 GB": {"memory": 81920 * MiB, "bandwidth": 2039e9, "flops": 312e12},
    "H100 80 GB": {"memory": 81559 * MiB, "bandwidth": 3350e9, "flops": 989e12},
    "H200 141 GB": {"memory": 143771 * MiB, "bandwidth": 4800e9, "flops": 989e12},
}


def gpu_memory_bytes(gpu: str | int | float) -> int:
    """Bytes of memory of a GPU named in :data:`GPUS` (or a number of bytes passed through)."""
    if isinstance(gpu, (int, float)):
        return int(gpu)
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
    return int(GPUS[gpu]["memory"])


def gpu_roof(gpu: str) -> tuple[float, float]:
    """(peak dense bf16 FLOP/s, HBM bytes/s) of a GPU named in :data:`GPUS`."""
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
    return GPUS[gpu]["flops"], GPUS[gpu]["bandwidth"]
