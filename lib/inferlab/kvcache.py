"""KV-cache sizing: how many bytes the keys and values of past tokens occupy, and what fits.

During decoding, every layer keeps the key and value vectors of every earlier token so
the next token's attention does not recompute them. That cache, not the weights, is what
limits how many requests a GPU serves at once (Kwon et al. 2023, "Efficient Memory
Management for Large Language Model Serving with PagedAttention", the vLLM paper).

Per token and per layer the cache holds, in elements:

* multi-head attention (MHA): ``2 * n_heads * head_dim`` (one K and one V per head);
* grouped-query attention (GQA, Ainslie et al. 2023) and multi-query attention (MQA,
  Shazeer 2019): ``2 * n_kv_heads * head_dim``. Query heads share K/V heads, so the cache
  shrinks by ``n_heads / n_kv_heads``. Using ``n_heads`` here overstates Llama-3-8B's cache 4x;
* multi-head latent attention (MLA, DeepSeek-V2 2024 and DeepSeek-V3 2024):
  ``kv_lora_rank + qk_rope_head_dim``: one compressed latent vector plus one small shared
  rotary key, from which every head's K and V are re-expanded. (Recent transformers cache
  the latent too; older releases cached the expanded per-head K/V, which
  ``mla_cache="expanded"`` counts.)

A sliding-window layer (Mistral-7B v0.1: every layer, window 4096; Gemma-2: every other
layer) keeps at most ``window`` tokens, so its share stops growing past the window.

Conventions (all results are integers of bytes):

* A sliding layer is counted as holding ``min(seq_len, window)`` tokens: the slots an
  allocator must reserve while the newest token attends to ``window`` positions.
  (transformers' ``DynamicSlidingWindowLayer`` keeps ``window - 1`` between steps, because
  the next token brings its own K/V; the tests check that, too.)
* Quantized KV dtypes carry their scales. ``int8``: one fp16 scale per cached vector
  (one head of one token, for K and for V separately), i.e. per-token, per-head absmax.
  ``int4``: groups of 64 elements along the vector, one fp16 scale and one fp16 zero point
  per group (the layout of transformers' quantized cache, ``q_group_size=64``).
  ``fp8`` (e4m3): one fp32 scale per layer for the whole K and V tensors (vLLM's
  ``kv_cache_dtype="fp8"``), which is constant in tokens and so counted as zero per token.
* Tensor parallelism (``tp_size``): KV heads are split across GPUs, ``ceil(n_kv/tp)`` per
  GPU; when ``tp > n_kv`` each KV head is replicated, so per-GPU bytes stop falling.
  MLA's latent is not split by heads: every GPU keeps the whole latent. Functions with a
  ``tp_size`` argument return bytes **per GPU**.
* Decimal and binary units are never mixed: ``format_bytes(n, "GiB")`` or ``"GB"``, always said.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferlab.paths import configs_dir, models_dir

# ---------------------------------------------------------------------------------------
# data types
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KVDtype:
    """How one cached element is stored: bits per element plus per-group scale overhead.

    ``group_size=None`` with ``scale_bytes>0`` means one group per cached vector (per head
    per token); ``scale_bytes=0`` means no per-token overhead.
    """

    name: str
    bits: int
    group_size: int | None = None
    scale_bytes: int = 0  # bytes of scale (+ zero point) per group

    def vector_bytes(self, length: int) -> float:
        """Bytes to store one cached vector of ``length`` elements, scales included."""
        data = length * self.bits / 8
        if self.scale_bytes == 0:
            return data
        groups = 1 if self.group_size is None else math.ceil(length / self.group_size)
        return data + groups * self.scale_bytes


KV_DTYPES: dict[str, KVDtype] = {
    "float32": KVDtype("float32", 32),
    "bfloat16": KVDtype("bfloat16", 16),
    "float16": KVDtype("float16", 16),
    "fp8": KVDtype("fp8", 8),
    "int8": KVDtype("int8", 8, group_size=None, scale_bytes=2),
    "int4": KVDtype("int4", 4, group_size=64, scale_bytes=4),
}
_DTYPE_ALIASES = {
    "fp32": "float32", "float": "float32", "torch.float32": "float32",
    "bf16": "bfloat16", "torch.bfloat16": "bfloat16",
    "fp16": "float16", "half": "float16", "torch.float16": "float16",
    "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "float8": "fp8", "e4m3": "fp8",
    "torch.float8_e4m3fn": "fp8", "torch.float8_e5m2": "fp8",
    "torch.int8": "int8", "q8": "int8", "q4": "int4",
}

# Weight storage in bytes per parameter. int4 assumes GPTQ/AWQ-style groups of 128 with an
# fp16 scale and an fp16 zero point per group: 4 + 32/128 = 4.25 bits per weight.
WEIGHT_BYTES: dict[str, float] = {
    "float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "fp8": 1.0, "int8": 1.0,
    "int4": 0.5 + 4 / 128,
}


def kv_dtype(dtype: Any) -> KVDtype:
    """Resolve ``"fp16"``, ``"bfloat16"``, ``torch.int8``... to a :class:`KVDtype`."""
    key = str(dtype).lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in KV_DTYPES:
        raise ValueError(
            f"unknown KV dtype {dtype!r}; accepted: {', '.join(KV_DTYPES)} "
            f"(aliases: {', '.join(sorted(_DTYPE_ALIASES))})"
        )
    return KV_DTYPES[key]


def weight_bytes_per_param(dtype: Any) -> float:
    """Bytes per stored weight for ``dtype`` (see :data:`WEIGHT_BYTES`)."""
    key = str(dtype).lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in WEIGHT_BYTES:
        raise ValueError(f"unknown weight dtype {dtype!r}; accepted: {', '.join(WEIGHT_BYTES)}")
    return WEIGHT_BYTES[key]


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
    """A config as a plain dict: a name, a path to a config.json, a dict, or a transformers config."""
    if isinstance(config, dict):
        return dict(config)
    if isinstance(config, (str, Path)):
        path = Path(config)
        if path.suffix == ".json" and path.is_file():
            return json.loads(path.read_text())
        if (path / "config.json").is_file():
            return json.loads((path / "config.json").read_text())
        return load_config(str(config))
    if hasattr(config, "get_text_config"):  # a transformers PretrainedConfig (multimodal: its text part)
        config = config.get_text_config()
    if hasattr(config, "to_dict"):
        out = config.to_dict()
        # attributes set at runtime or computed (layer_types, head_dim) may not all be in to_dict
        for key in ("layer_types", "head_dim", "sliding_window", "num_key_value_heads"):
            if getattr(config, key, None) is not None:
                out[key] = getattr(config, key)
        return out
    raise TypeError(f"config must be a model name, a dict or a transformers config, not {type(config).__name__}")


def _first(cfg: dict, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    return default


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


def _layer_windows(cfg: dict, n_layers: int) -> tuple:
    window = cfg.get("sliding_window")
    types = cfg.get("layer_types")
    if not window or cfg.get("use_sliding_window") is False:
        return (None,) * n_layers
    if types:
        return tuple(window if "sliding" in str(t) else None for t in types[:n_layers])
    if cfg.get("model_type") == "gemma2":  # older Gemma-2 configs: even layers local, odd global
        return tuple(window if i % 2 == 0 else None for i in range(n_layers))
    return (int(window),) * n_layers


def model_shape(config: Any) -> ModelShape:
    """Read layers, heads, KV heads, head_dim, MLA ranks and sliding windows from any config form."""
    if isinstance(config, ModelShape):
        return config
    cfg = as_dict(config)
    n_layers = int(_first(cfg, "num_hidden_layers", "n_layer", "num_layers"))
    hidden = int(_first(cfg, "hidden_size", "n_embd", "d_model"))
    n_heads = int(_first(cfg, "num_attention_heads", "n_head"))
    n_kv = int(_first(cfg, "num_key_value_heads", "multi_query_group_num", default=n_heads))
    head_dim = int(_first(cfg, "head_dim", default=hidden // n_heads))
    mla = None
    if cfg.get("kv_lora_rank"):
        mla = (int(cfg["kv_lora_rank"]), int(cfg["qk_rope_head_dim"]),
               int(cfg.get("qk_nope_head_dim") or 128), int(cfg.get("v_head_dim") or 128))
    return ModelShape(
        name=str(cfg.get("name") or cfg.get("_name_or_path") or cfg.get("model_type") or "model"),
        n_layers=n_layers, hidden=hidden, n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim,
        vocab=int(_first(cfg, "vocab_size", default=0)),
        intermediate=int(_first(cfg, "intermediate_size", "ffn_dim", "n_inner", default=4 * hidden)),
        windows=_layer_windows(cfg, n_layers), mla=mla,
        max_context=_first(cfg, "max_position_embeddings", "n_positions"), raw=cfg,
    )


# ---------------------------------------------------------------------------------------
# the formulas
# ---------------------------------------------------------------------------------------


def _check_tp(tp_size: int) -> int:
    if not isinstance(tp_size, int) or tp_size < 1:
        raise ValueError(f"tp_size must be a positive integer, got {tp_size!r}")
    return tp_size


def kv_heads_per_gpu(config: Any, tp_size: int = 1) -> int:
    """KV heads each GPU holds under tensor parallelism: ``ceil(n_kv / tp)``.

    With ``tp > n_kv`` a head cannot be split, so each one is replicated on ``tp / n_kv``
    GPUs and every GPU still holds one (vLLM does the same).
    """
    shape = config if isinstance(config, ModelShape) else model_shape(config)
    return math.ceil(shape.n_kv_heads / _check_tp(tp_size))


def layer_bytes_per_token(config: Any, dtype: Any = "float16", tp_size: int = 1,
                          mla_cache: str = "latent") -> float:
    """Bytes one layer caches for one token (K and V together), per GPU."""
    shape = config if isinstance(config, ModelShape) else model_shape(config)
    dt = kv_dtype(dtype)
    if shape.mla:
        rank, rope, nope, v_dim = shape.mla
        if mla_cache == "latent":
            return dt.vector_bytes(rank + rope)  # shared by all heads, replicated under TP
        if mla_cache != "expanded":
            raise ValueError(f"mla_cache must be 'latent' or 'expanded', got {mla_cache!r}")
        heads = math.ceil(shape.n_heads / _check_tp(tp_size))
        return heads * (dt.vector_bytes(nope + rope) + dt.vector_bytes(v_dim))
    heads = kv_heads_per_gpu(shape, tp_size)
    return 2 * heads * dt.vector_bytes(shape.head_dim)


def kv_bytes_per_token(config: Any, dtype: Any = "float16", tp_size: int = 1,
                       mla_cache: str = "latent") -> int:
    """Bytes of KV cache one token adds across all layers (per GPU), before any window caps it.

    Llama-2-7B in fp16: 2 x 32 layers x 32 heads x 128 x 2 B = 524,288 B = 512 KiB.
    Llama-3-8B (8 KV heads): 128 KiB. DeepSeek-V3 (MLA): 61 x (512 + 64) x 2 B = 70,272 B.
    """
    shape = config if isinstance(config, ModelShape) else model_shape(config)
    return math.ceil(shape.n_layers * layer_bytes_per_token(shape, dtype, tp_size, mla_cache))


def _check_positive(name: str, value: Any) -> int:
    """``value`` as an int when it is a whole number >= 1 (numpy integers too), else ValueError."""
    try:
        number = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        number = None
    if number is None or number <= 0:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value!r}")
    return number


def kv_cache_bytes(config: Any, seq_len: int, batch_size: int = 1, dtype: Any = "float16",
                   tp_size: int = 1, mla_cache: str = "latent") -> int:
    """Bytes of KV cache for ``batch_size`` sequences of ``seq_len`` tokens each (per GPU).

    Each layer counts ``min(seq_len, window)`` tokens when it has a sliding window.
    The original LLaMA-7B at 2048 tokens in fp16 needs exactly 2**30 B = 1 GiB (1.07 GB).
    """
    seq_len = _check_positive("seq_len", seq_len)
    batch_size = _check_positive("batch_size", batch_size)
    shape = config if isinstance(config, ModelShape) else model_shape(config)
    per_layer = layer_bytes_per_token(shape, dtype, tp_size, mla_cache)
    tokens = sum(seq_len if w is None else min(seq_len, w) for w in shape.windows)
    return math.ceil(per_layer * tokens * batch_size)


def naive_kv_cache_bytes(config: Any, seq_len: int, batch_size: int = 1, dtype: Any = "float16") -> int:
    """The textbook formula ``2 * layers * n_heads * head_dim * seq_len * batch * bytes``:
    ``n_heads`` where ``n_kv_heads`` belongs, no windows, no scales.

    Correct only for multi-head attention; kept to show by how much it overstates GQA,
    MQA and sliding-window models. For MLA it is what full multi-head K/V of the same heads
    would take (``mla_cache="expanded"``).
    """
    _check_positive("seq_len", seq_len)
    _check_positive("batch_size", batch_size)
    shape = config if isinstance(config, ModelShape) else model_shape(config)
    if shape.mla:
        _, rope, nope, v_dim = shape.mla
        per_head = nope + rope + v_dim
    else:
        per_head = 2 * shape.head_dim
    return math.ceil(shape.n_layers * shape.n_heads * per_head * seq_len * batch_size * kv_dtype(dtype).bits / 8)


# ---------------------------------------------------------------------------------------
# weights
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
    return n


def _mlp_params(cfg: dict, s: ModelShape, layer: int) -> int:
    h = s.hidden
    if cfg.get("model_type") == "opt":  # fc1 -> ReLU -> fc2, with biases
        return 2 * h * s.intermediate + s.intermediate + h
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
    if cfg.get("model_type") == "gemma2":
        return 4  # input, post-attention, pre- and post-feed-forward RMSNorms
    return 2


def param_count(config: Any) -> int:
    """Parameters of a decoder-only LM from its config (embeddings, attention, MLP incl.
    all MoE experts, norms, and the LM head unless tied to the embeddings).

    Llama-3.2-1B: 1,235,814,400. Within ~0.1% of published totals for the shipped configs;
    DeepSeek-V3's multi-token-prediction module (14B) is not counted (671B main model).
    """
    s = model_shape(config)
    cfg = s.raw
    h = s.hidden
    layer_norm = cfg.get("model_type") == "opt"  # LayerNorm has a bias, RMSNorm does not
    norm = 2 * h if layer_norm else h
    n = s.vocab * h
    if cfg.get("model_type") == "opt":
        n += (int(s.max_context) + 2) * h  # learned positions (OPT offsets them by 2)
    if not cfg.get("tie_word_embeddings", cfg.get("model_type") in {"gemma2", "opt"}):
        n += s.vocab * h
    for layer in range(s.n_layers):
        n += _attention_params(cfg, s) + _mlp_params(cfg, s, layer) + _norms_per_layer(cfg) * norm
    return n + norm  # final norm


def weight_bytes(config: Any, dtype: Any = "bfloat16", tp_size: int = 1) -> int:
    """Bytes of the weights in ``dtype`` (per GPU: divided by ``tp_size``, as TP shards them)."""
    return math.ceil(param_count(config) * weight_bytes_per_param(dtype) / _check_tp(tp_size))


# ---------------------------------------------------------------------------------------
# what fits
# ---------------------------------------------------------------------------------------

MiB = 1 << 20
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


def memory_plan(config: Any, gpu_memory_bytes: int, seq_len: int, dtype: Any = "float16",
                weight_dtype: Any = "bfloat16", reserve_fraction: float = 0.1,
                tp_size: int = 1, batch_size: int = 1) -> dict[str, Any]:
    """Split one GPU's memory into weights, reserve, KV for ``batch_size`` sequences, and free.

    ``reserve_fraction`` of the memory is held back for activations, CUDA context and
    fragmentation (vLLM's ``gpu_memory_utilization=0.9`` leaves the same 10 %).
    ``max_sequences`` is how many sequences of ``seq_len`` tokens the rest holds.
    """
    if not 0 <= reserve_fraction < 1:
        raise ValueError(f"reserve_fraction must be in [0, 1), got {reserve_fraction!r}")
    _check_positive("gpu_memory_bytes", int(gpu_memory_bytes))
    shape = model_shape(config)
    weights = weight_bytes(shape.raw | {"name": shape.name}, weight_dtype, tp_size)
    reserve = int(gpu_memory_bytes * reserve_fraction)
    per_seq = kv_cache_bytes(shape, seq_len, 1, dtype, tp_size)
    budget = gpu_memory_bytes - reserve - weights
    fits = max(0, budget // per_seq)
    kv = per_seq * batch_size
    return {
        "model": shape.name, "attention": shape.attention, "gpu_memory": int(gpu_memory_bytes),
        "weights": weights, "reserve": reserve, "kv_per_sequence": per_seq,
        "kv_for_batch": kv, "free": int(budget - kv), "max_sequences": int(fits),
        "weights_fit": budget > 0, "batch_fits": kv <= budget, "tp_size": tp_size,
        "seq_len": seq_len, "kv_dtype": kv_dtype(dtype).name, "weight_dtype": str(weight_dtype),
        "max_context": shape.max_context,
    }


def max_concurrent_sequences(config: Any, gpu_memory_bytes: int, seq_len: int,
                             dtype: Any = "float16", weight_dtype: Any = "bfloat16",
                             reserve_fraction: float = 0.1, tp_size: int = 1) -> int:
    """How many sequences of ``seq_len`` tokens fit beside the weights on one GPU (0 if none).

    Counts a full-length reservation per sequence, as a static allocator would; paging
    (vLLM) fits more when real sequences are shorter than ``seq_len``.
    """
    return memory_plan(config, gpu_memory_bytes, seq_len, dtype, weight_dtype,
                       reserve_fraction, tp_size)["max_sequences"]


# ---------------------------------------------------------------------------------------
# what transformers actually allocated
# ---------------------------------------------------------------------------------------


def _tensor_bytes(t: Any) -> int:
    return int(t.numel() * t.element_size()) if t is not None and hasattr(t, "numel") else 0


def cache_of(outputs: Any) -> Any:
    """The cache inside a model output (``.cache`` in transformers >= 5.2x, else ``.past_key_values``)."""
    for key in ("cache", "past_key_values"):
        value = getattr(outputs, key, None) if not isinstance(outputs, dict) else outputs.get(key)
        if value is not None:
            return value
    return outputs


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{"cache": cache}`` where ``model.forward`` takes that name (transformers >= 5.2x),
    else ``{"past_key_values": cache}``, so the same call runs on both sides of the rename."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"cache" if "cache" in params else "past_key_values": cache}


def measured_cache_bytes(cache: Any) -> int:
    """Bytes of the K/V tensors held by a real cache.

    Accepts a transformers 5.x ``DynamicCache``/``StaticCache`` (``.layers`` with ``.keys`` and
    ``.values``; quantized layers count their packed tensors too), a 4.x cache
    (``key_cache``/``value_cache`` lists), the legacy tuple of ``(k, v)`` per layer, or a model
    output holding one of these.
    """
    cache = cache_of(cache)
    if hasattr(cache, "layers"):
        total = 0
        for layer in cache.layers:
            for name in ("keys", "values", "_quantized_keys", "_quantized_values"):
                value = getattr(layer, name, None)
                if isinstance(value, (tuple, list)):
                    total += sum(_tensor_bytes(v) for v in value)
                else:
                    total += _tensor_bytes(value)
        return total
    if hasattr(cache, "key_cache"):
        return sum(_tensor_bytes(t) for t in list(cache.key_cache) + list(cache.value_cache))
    if isinstance(cache, (tuple, list)):
        return sum(measured_cache_bytes(x) if isinstance(x, (tuple, list)) else _tensor_bytes(x)
                   for x in cache)
    raise TypeError(f"don't know how to measure a {type(cache).__name__}")


# ---------------------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------------------

UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def format_bytes(n: float, unit: str = "GiB", digits: int = 2) -> str:
    """``format_bytes(2**30, "GiB") == "1.00 GiB"``; ``format_bytes(2**30, "GB") == "1.07 GB"``.

    ``unit="auto"`` picks the largest binary unit below ``n``; ``"auto10"`` the decimal one.
    """
    if unit in {"auto", "auto10"}:
        names = ["TiB", "GiB", "MiB", "KiB"] if unit == "auto" else ["TB", "GB", "MB", "KB"]
        unit = next((u for u in names if abs(n) >= UNITS[u]), "B")
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; accepted: {', '.join(UNITS)}, auto, auto10")
    if unit == "B":
        return f"{int(n):,} B"
    return f"{n / UNITS[unit]:,.{digits}f} {unit}"


def per_token_table(names: list[str] | None = None, dtype: Any = "float16",
                    seq_len: int = 4096) -> list[dict[str, Any]]:
    """One row per config: attention kind, per-token bytes (true vs ``n_heads`` formula), and the
    cache of one ``seq_len``-token sequence (context-capped, windows applied)."""
    rows = []
    for name in names or known_models():
        shape = model_shape(name)
        length = min(seq_len, int(shape.max_context or seq_len))
        rows.append({
            "model": name, "attention": shape.attention, "layers": shape.n_layers,
            "heads": shape.n_heads, "kv_heads": 1 if shape.mla else shape.n_kv_heads,
            "head_dim": shape.mla[0] + shape.mla[1] if shape.mla else shape.head_dim,
            "per_token": kv_bytes_per_token(shape, dtype),
            "naive_per_token": naive_kv_cache_bytes(shape, 1, 1, dtype),
            "seq_len": length, "per_sequence": kv_cache_bytes(shape, length, 1, dtype),
            "params": param_count(name),
        })
    return rows
