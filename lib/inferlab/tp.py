"""Tensor parallelism: one model's matmuls split over several processes (Megatron-LM, Shoeybi et al. 2019).

A transformer block has two matmul pairs that split without talking in between:

* **column-parallel** (split the output rows): each rank computes its own slice of the
  outputs, e.g. its query/KV heads, or its slice of the MLP's gate and up columns;
* **row-parallel** (split the input columns): each rank multiplies its slice of the input
  (its heads' attention output, its slice of the MLP activation) and gets a *partial* sum
  of the full output, so one **all-reduce** adds the partial sums: after ``o_proj`` and
  after ``down_proj``, two per layer.

Attention shards by heads (each rank attends over its own heads and keeps only their KV
cache); when there are more ranks than KV heads, each KV head is *replicated* on
``tp / num_kv_heads`` ranks (vLLM does the same), so the cache per rank stops shrinking.
Embedding, norms and LM head stay replicated here (vLLM also shards the vocabulary).

The layers are swaps of :mod:`inferlab.engine.layers`'s linears (gpt-fast's module swap):
their ``weight_loader`` takes the *full* checkpoint tensor and keeps this rank's slice, so
:mod:`inferlab.engine.loader` loads a sharded model unchanged. :func:`shard_model` swaps a
built model's layers in place. The engine side (workers, the step broadcast) is in
:mod:`inferlab.engine.distributed`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from inferlab.engine.config import ModelConfig
from inferlab.engine.layers import Linear, MergedLinear, default_weight_loader


# --------------------------------------------------------------------------- the all-reduce and its meter
@dataclass
class AllReduceStats:
    """What the all-reduces of this process moved: calls and payload bytes (each rank's tensor)."""

    calls: int = 0
    bytes: int = 0


_METERS: list[AllReduceStats] = []


def all_reduce(x: torch.Tensor, group=None) -> torch.Tensor:
    """Sum ``x`` over the ranks of ``group`` in place (``torch.distributed``), counted by any open meter."""
    for meter in _METERS:
        meter.calls += 1
        meter.bytes += x.numel() * x.element_size()
    import torch.distributed as dist

    dist.all_reduce(x, group=group)
    return x


@contextlib.contextmanager
def count_all_reduce() -> Iterator[AllReduceStats]:
    """Count every :func:`all_reduce` of this process inside the block (a counting hook)."""
    meter = AllReduceStats()
    _METERS.append(meter)
    try:
        yield meter
    finally:
        _METERS.remove(meter)


def count_replayed(calls: int, nbytes: int) -> None:
    """Add all-reduces that ran inside a replayed CUDA graph to every open meter.

    A replay runs the captured NCCL kernels without calling :func:`all_reduce`, so the graph
    counts them once at capture (:class:`~inferlab.engine.model_runner.DecodeGraphs`) and
    reports them here on each replay.
    """
    for meter in _METERS:
        meter.calls += calls
        meter.bytes += nbytes


def all_reduce_bytes_per_token(config: ModelConfig, dtype: torch.dtype | str = "bfloat16") -> int:
    """Payload each rank all-reduces per token: two ``hidden``-vectors per layer (after o_proj and down_proj)."""
    from inferlab.device import torch_dtype

    size = torch_dtype(dtype, "cpu").itemsize
    return 2 * config.num_layers * config.hidden_size * size


def ring_bytes_per_rank(payload: int, tp_size: int) -> float:
    """Bytes each rank sends in a ring all-reduce of ``payload`` bytes: ``2 (p-1)/p`` of it (Patarasuk & Yuan 2009)."""
    return 2 * (tp_size - 1) / tp_size * payload


# --------------------------------------------------------------------------- who holds what
@dataclass(frozen=True)
class HeadShard:
    """The heads rank ``rank`` of ``size`` holds: query heads ``[q_start, q_start+num_heads)``, KV likewise."""

    num_heads: int
    num_kv_heads: int
    q_start: int
    kv_start: int
    kv_replicas: int


def check_shardable(config: ModelConfig, size: int) -> None:
    """Raise ValueError (naming the number) unless ``config`` splits evenly over ``size`` ranks."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"tensor_parallel_size must be a positive int, got {size!r}")
    if config.num_heads % size:
        raise ValueError(f"num_attention_heads={config.num_heads} is not divisible by tensor_parallel_size={size}")
    if config.num_kv_heads % size and size % config.num_kv_heads:
        raise ValueError(f"num_key_value_heads={config.num_kv_heads} and tensor_parallel_size={size}: "
                         "one must divide the other")
    if config.intermediate_size % size:
        raise ValueError(f"intermediate_size={config.intermediate_size} is not divisible by tensor_parallel_size={size}")


def head_shard(num_heads: int, num_kv_heads: int, rank: int, size: int) -> HeadShard:
    """Rank ``rank``'s heads; with more ranks than KV heads, ranks ``r // (size / kv)`` share a KV head."""
    heads = num_heads // size
    if size <= num_kv_heads:
        kv = num_kv_heads // size
        return HeadShard(heads, kv, rank * heads, rank * kv, 1)
    replicas = size // num_kv_heads
    return HeadShard(heads, 1, rank * heads, rank // replicas, replicas)


# --------------------------------------------------------------------------- the layers
class ColumnParallelLinear(Linear):
    """``y[:, slice] = x W[slice]^T``: this rank's block of output rows; no communication."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, rank: int = 0, size: int = 1):
        self.tp_rank, self.tp_size = rank, size
        super().__init__(in_features, out_features // size, bias=bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        rows = param.shape[0]
        default_weight_loader(param, loaded.narrow(0, self.tp_rank * rows, rows))


class MergedColumnParallelLinear(MergedLinear):
    """Fused column-parallel linears (gate | up): each checkpoint shard contributes its own slice of rows."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False, rank: int = 0, size: int = 1):
        self.tp_rank, self.tp_size = rank, size
        self.full_sizes = list(output_sizes)
        super().__init__(in_features, [s // size for s in output_sizes], bias=bias)

    def full_slice(self, shard_id) -> tuple[int, int]:
        """Where this rank's rows of checkpoint shard ``shard_id`` start in that shard, and how many."""
        _, size = self.shard_offset(shard_id)
        return self.tp_rank * size, size

    def full_ids(self) -> list:
        return list(range(len(self.full_sizes)))

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if shard_id is None:  # the whole fused tensor (e.g. our own unsharded model's state dict)
            for sid, part in zip(self.full_ids(), loaded.split(self.full_sizes), strict=True):
                self.weight_loader(param, part, sid)
            return
        offset, size = self.shard_offset(shard_id)
        start, n = self.full_slice(shard_id)
        default_weight_loader(param.narrow(0, offset, size), loaded.narrow(0, start, n))


class QKVParallelLinear(MergedColumnParallelLinear):
    """q/k/v fused, sharded by heads; KV heads replicated when ranks outnumber them."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, bias: bool = False,
                 rank: int = 0, size: int = 1):
        self.heads = head_shard(num_heads, num_kv_heads, rank, size)
        self.head_dim = head_dim
        h = self.heads
        full = [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
        self.tp_rank, self.tp_size, self.full_sizes = rank, size, full
        local = [h.num_heads * head_dim, h.num_kv_heads * head_dim, h.num_kv_heads * head_dim]
        MergedLinear.__init__(self, hidden_size, local, bias=bias)

    def shard_offset(self, shard_id) -> tuple[int, int]:
        return MergedLinear.shard_offset(self, "qkv".index(shard_id))

    def full_ids(self) -> list:
        return ["q", "k", "v"]

    def full_slice(self, shard_id) -> tuple[int, int]:
        h, d = self.heads, self.head_dim
        if shard_id == "q":
            return h.q_start * d, h.num_heads * d
        return h.kv_start * d, h.num_kv_heads * d


class RowParallelLinear(Linear):
    """``y = sum_ranks x[:, slice] W[:, slice]^T``: partial products, then one all-reduce, then the bias once."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, rank: int = 0, size: int = 1,
                 group=None):
        self.tp_rank, self.tp_size, self.group = rank, size, group
        super().__init__(in_features // size, out_features, bias=bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if param.dim() == 1:  # the bias is replicated and added after the sum
            return default_weight_loader(param, loaded)
        cols = param.shape[1]
        default_weight_loader(param, loaded.narrow(1, self.tp_rank * cols, cols))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.tp_size > 1:
            y = all_reduce(y, self.group)
        return y if self.bias is None else y + self.bias


# --------------------------------------------------------------------------- the swap
def _swap(old: nn.Linear, new: nn.Linear, copy: bool) -> nn.Linear:
    """``new`` on ``old``'s device and dtype, loaded from ``old``'s full weights when ``copy``."""
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    if copy:
        with torch.no_grad():
            for name, param in new.named_parameters():
                param.weight_loader(param, getattr(old, name).data)
    return new


def shard_attention(attn: nn.Module, c: ModelConfig, rank: int, size: int, group=None, copy: bool = True) -> None:
    """Swap a ``LlamaAttention``'s projections for sharded ones and give it this rank's heads."""
    qkv = QKVParallelLinear(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.qkv_bias, rank, size)
    attn.qkv_proj = _swap(attn.qkv_proj, qkv, copy)
    o = RowParallelLinear(c.num_heads * c.head_dim, c.hidden_size, c.o_bias, rank, size, group)
    attn.o_proj = _swap(attn.o_proj, o, copy)
    h = qkv.heads
    attn.num_heads, attn.num_kv_heads = h.num_heads, h.num_kv_heads
    attn.attn.num_heads, attn.attn.num_kv_heads = h.num_heads, h.num_kv_heads  # the backend reads shapes from q, k


def shard_mlp(mlp: nn.Module, c: ModelConfig, rank: int, size: int, group=None, copy: bool = True) -> None:
    """Swap a SwiGLU MLP's gate/up for column-parallel and down for row-parallel (one all-reduce)."""
    gate_up = MergedColumnParallelLinear(c.hidden_size, [c.intermediate_size] * 2, c.mlp_bias, rank, size)
    mlp.gate_up_proj = _swap(mlp.gate_up_proj, gate_up, copy)
    down = RowParallelLinear(c.intermediate_size, c.hidden_size, c.mlp_bias, rank, size, group)
    mlp.down_proj = _swap(mlp.down_proj, down, copy)


def shard_model(model: nn.Module, rank: int, size: int, group=None, copy: bool = True) -> nn.Module:
    """Make an engine Llama model rank ``rank``'s shard of ``size``, in place (and return it).

    ``copy``: fill the new layers from the model's current (full) weights; else leave them
    to be loaded from a checkpoint with :func:`inferlab.engine.loader.load_weights`.
    """
    c = model.config
    check_shardable(c, size)
    if not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank!r}")
    for layer in model.model.layers:
        shard_attention(layer.self_attn, c, rank, size, group, copy)
        shard_mlp(layer.mlp, c, rank, size, group, copy)
    return model


# --------------------------------------------------------------------------- who holds what, for drawings
def sharding_layout(config: ModelConfig, size: int) -> list[dict]:
    """Every sharded weight's slices: ``{"matrix", "axis", "start", "stop", "rank", "what"}`` in units of rows/columns.

    ``axis`` is ``"rows"`` (column-parallel: output rows) or ``"cols"`` (row-parallel: input
    columns). Replicated KV heads appear once per rank that holds them.
    """
    check_shardable(config, size)
    c, d, out = config, config.head_dim, []
    for rank in range(size):
        h = head_shard(c.num_heads, c.num_kv_heads, rank, size)
        q0, kv0, inter = h.q_start * d, h.kv_start * d, c.intermediate_size // size
        out += [
            {"matrix": "q_proj", "axis": "rows", "start": q0, "stop": q0 + h.num_heads * d, "rank": rank,
             "what": f"query heads {h.q_start}-{h.q_start + h.num_heads - 1}"},
            {"matrix": "k_proj, v_proj", "axis": "rows", "start": kv0, "stop": kv0 + h.num_kv_heads * d, "rank": rank,
             "what": f"KV heads {h.kv_start}-{h.kv_start + h.num_kv_heads - 1}"
                     + (f" (x{h.kv_replicas} replicas)" if h.kv_replicas > 1 else "")},
            {"matrix": "o_proj", "axis": "cols", "start": q0, "stop": q0 + h.num_heads * d, "rank": rank,
             "what": "its heads' outputs -> partial sum"},
            {"matrix": "gate_proj, up_proj", "axis": "rows", "start": rank * inter, "stop": (rank + 1) * inter,
             "rank": rank, "what": f"MLP columns {rank * inter}-{(rank + 1) * inter - 1}"},
            {"matrix": "down_proj", "axis": "cols", "start": rank * inter, "stop": (rank + 1) * inter, "rank": rank,
             "what": "its MLP slice -> partial sum"},
        ]
    return out


# --------------------------------------------------------------------------- when it pays: a two-term estimate
def projection_bytes(config: ModelConfig, dtype: torch.dtype | str = "bfloat16") -> int:
    """Bytes of every layer's q/k/v, o, gate/up and down weights: what a decode step's projections read."""
    from inferlab.device import torch_dtype

    c, size = config, torch_dtype(dtype, "cpu").itemsize
    qkv = c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    per_layer = qkv + c.num_heads * c.head_dim * c.hidden_size + 3 * c.hidden_size * c.intermediate_size
    return c.num_layers * per_layer * size


def decode_step_estimate(config: ModelConfig, tp_size: int, bytes_per_s: float, all_reduce_s: float,
                         dtype: torch.dtype | str = "bfloat16") -> float:
    """Seconds of a small-batch decode step's projections at ``tp_size``: weight bytes / bandwidth + 2 x layers all-reduces.

    Small batches only (memory-bound: Pope et al. 2022); ``bytes_per_s`` and ``all_reduce_s``
    should be measured on the machine (the notebook takes them from the recorded H200 run).
    """
    reduces = 2 * config.num_layers * all_reduce_s if tp_size > 1 else 0.0
    return projection_bytes(config, dtype) / tp_size / bytes_per_s + reduces
