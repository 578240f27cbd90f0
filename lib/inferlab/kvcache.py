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
* Decimal and binary units are never mixed (:func:`inferlab.units.format_bytes`).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

from inferlab.configs import ModelShape, gpu_memory_bytes, known_models, model_shape, param_count
from inferlab.device import DTYPE_ALIASES
from inferlab.hf_compat import cache_of

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
# Names of storage formats that are not torch dtypes (8- and 4-bit caches). Torch dtype
# names and their aliases ("bf16", "half", torch.float16...) come from inferlab.device.
_STORAGE_ALIASES = {
    "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "float8": "fp8", "e4m3": "fp8",
    "torch.float8_e4m3fn": "fp8", "torch.float8_e5m2": "fp8",
    "torch.int8": "int8", "q8": "int8", "q4": "int4",
}


def _storage_name(dtype: Any) -> str:
    """The canonical name of a storage format: a torch dtype alias or a KV/weight-only format."""
    key = str(dtype).lower()
    key = _STORAGE_ALIASES.get(key, key)
    return DTYPE_ALIASES.get(key.removeprefix("torch."), key)


# Weight storage in bytes per parameter. int4 assumes GPTQ/AWQ-style groups of 128 with an
# fp16 scale and an fp16 zero point per group: 4 + 32/128 = 4.25 bits per weight.
WEIGHT_BYTES: dict[str, float] = {
    "float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "fp8": 1.0, "int8": 1.0,
    "int4": 0.5 + 4 / 128,
}


def kv_dtype(dtype: Any) -> KVDtype:
    """Resolve ``"fp16"``, ``"bfloat16"``, ``torch.int8``... to a :class:`KVDtype`."""
    key = _storage_name(dtype)
    if key not in KV_DTYPES:
        raise ValueError(
            f"unknown KV dtype {dtype!r}; accepted: {', '.join(KV_DTYPES)} "
            f"(aliases: {', '.join(sorted({*DTYPE_ALIASES, *_STORAGE_ALIASES} - set(KV_DTYPES)))})"
        )
    return KV_DTYPES[key]


def weight_bytes_per_param(dtype: Any) -> float:
    """Bytes per stored weight for ``dtype`` (see :data:`WEIGHT_BYTES`)."""
    key = _storage_name(dtype)
    if key not in WEIGHT_BYTES:
        raise ValueError(f"unknown weight dtype {dtype!r}; accepted: {', '.join(WEIGHT_BYTES)}")
    return WEIGHT_BYTES[key]


# ---------------------------------------------------------------------------------------
# the formulas
# ---------------------------------------------------------------------------------------


def _check_tp(tp_size: int) -> int:
    if isinstance(tp_size, bool) or not isinstance(tp_size, int) or tp_size < 1:
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


def kv_bytes_per_block(config: Any, dtype: Any = "float16", block_size: int = 16, tp_size: int = 1) -> int:
    """Bytes of one paged KV block: ``block_size`` tokens of K and V in every layer (per GPU).

    The one home of this number: the engine's block pool, the allocator benchmarks and the
    notebooks all size blocks with it. ``config`` is any config form, the engine's
    ``ModelConfig`` included; ``dtype`` a KV dtype name or a ``torch.dtype``.
    """
    block_size = _check_positive("block_size", block_size)
    shape = config if isinstance(config, ModelShape) else model_shape(config)
    return math.ceil(block_size * shape.n_layers * layer_bytes_per_token(shape, dtype, tp_size))


# ---------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------


def weight_bytes(config: Any, dtype: Any = "bfloat16", tp_size: int = 1) -> int:
    """Bytes of the weights in ``dtype`` (per GPU: divided by ``tp_size``, as TP shards them)."""
    return math.ceil(param_count(config) * weight_bytes_per_param(dtype) / _check_tp(tp_size))


# ---------------------------------------------------------------------------------------
# what fits
# ---------------------------------------------------------------------------------------

def memory_plan(config: Any, gpu_memory_bytes: int, seq_len: int, dtype: Any = "float16",
                weight_dtype: Any = "bfloat16", reserve_fraction: float = 0.1,
                tp_size: int = 1, batch_size: int = 1) -> dict[str, Any]:
    """Split one GPU's memory into weights, reserve, KV for ``batch_size`` sequences, and free.

    ``gpu_memory_bytes``: bytes, or a GPU name of :data:`inferlab.configs.GPUS` ("H100 80 GB").
    ``reserve_fraction`` of the memory is held back for activations, CUDA context and
    fragmentation (vLLM's ``gpu_memory_utilization=0.9`` leaves the same 10 %).
    ``max_sequences`` is how many sequences of ``seq_len`` tokens the rest holds.
    """
    if not 0 <= reserve_fraction < 1:
        raise ValueError(f"reserve_fraction must be in [0, 1), got {reserve_fraction!r}")
    gpu_memory_bytes = _gpu_bytes(gpu_memory_bytes)
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


def _gpu_bytes(gpu: Any) -> int:
    """Bytes of GPU memory from a number of bytes or a name in :data:`inferlab.configs.GPUS`."""
    if isinstance(gpu, str):
        return gpu_memory_bytes(gpu)
    if isinstance(gpu, bool) or not isinstance(gpu, (int, float)) or not math.isfinite(gpu) or gpu < 1:
        raise ValueError(f"gpu_memory_bytes must be a positive number of bytes or a GPU name, got {gpu!r}")
    return int(gpu)


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
