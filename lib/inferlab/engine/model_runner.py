"""The model runner: builds the model, owns the paged KV pool, prepares each step's inputs, runs it.

One forward pass serves a whole engine step. The tokens of every scheduled sequence
(whole prompts, prompt *chunks* and single decode tokens alike) are flattened into one
``[num_tokens]`` batch with per-token positions and *slot mappings* (where each token's
K/V goes in the block pool), as in vLLM and nano-vllm; :func:`build_metadata` turns them
into the index tensors attention reads (:class:`~inferlab.attention.metadata.AttentionMetadata`).
The model comes from :mod:`inferlab.engine.models` with weights from
:mod:`inferlab.engine.loader`; attention runs on the backend named in the
:class:`~inferlab.engine.config.EngineConfig`. Capturing whole steps as CUDA graphs
belongs here too: fixed-size input buffers filled by :meth:`ModelRunner.execute` (:class:`DecodeGraphs`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from inferlab.attention.layer import Attention
from inferlab.attention.metadata import AttentionMetadata
from inferlab.attention.paged import PagedKVCache
from inferlab.engine.config import EngineConfig, ModelConfig
from inferlab.engine.loader import ModelSource, load_weights, resolve_source
from inferlab.engine.models import MODEL_CLASSES
from inferlab.paging import cdiv, slot_for

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- inputs
@dataclass
class ChunkInput:
    """One sequence's share of a step: ``token_ids`` at positions ``start..start+n-1``.

    ``block_table`` is None for tokens that must not touch the cache (a reference forward,
    or the padding rows of the static batcher).
    """

    token_ids: list[int]
    start: int
    block_table: list[int] | None
    sample: bool = True


def build_metadata(chunks: list[ChunkInput], block_size: int, device, slots: bool = True,
                   tables: bool = True) -> AttentionMetadata:
    """Flatten the step's chunks into what attention reads: gathered ``slots`` and/or block ``tables``."""
    meta = AttentionMetadata()
    if tables:
        _add_table_metadata(meta, chunks, block_size, device)
    if slots:
        _add_slot_metadata(meta, chunks, block_size, device)
    return meta


def _add_table_metadata(meta: AttentionMetadata, chunks: list[ChunkInput], block_size: int, device) -> None:
    """Block tables, lengths and per-token slots (what the kernels read), built with numpy, copied once."""
    import numpy as np

    sizes = np.array([len(c.token_ids) for c in chunks], dtype=np.int64)
    offsets = np.cumsum(sizes) - sizes
    cached = [i for i, c in enumerate(chunks) if c.block_table is not None]
    slot_mapping = np.full(int(sizes.sum()), -1, dtype=np.int64)
    width = max((len(chunks[i].block_table) for i in cached), default=1)
    table = np.zeros((len(cached), max(width, 1)), dtype=np.int32)
    lens = np.zeros((3, len(cached)), dtype=np.int32)  # query starts, query lengths, context lengths
    for row, i in enumerate(cached):
        c, n = chunks[i], int(sizes[i])
        table[row, :len(c.block_table)] = c.block_table
        pos = np.arange(c.start, c.start + n)
        slot_mapping[offsets[i]:offsets[i] + n] = slot_for(table[row], pos, block_size)
        lens[:, row] = (offsets[i], n, c.start + n)
    meta.uncached = [(int(offsets[i]), int(offsets[i] + sizes[i])) for i, c in enumerate(chunks) if c.block_table is None]
    meta.slot_mapping = torch.from_numpy(slot_mapping).to(device)
    if cached:
        meta.block_tables = torch.from_numpy(table).to(device)
        starts, qlens, ctx = torch.from_numpy(lens).to(device)
        meta.query_starts, meta.query_lens, meta.context_lens = starts, qlens, ctx
        meta.max_query_len = int(lens[1].max())
    meta.is_decode = bool(cached) and len(cached) == len(chunks) and meta.max_query_len == 1


def _add_slot_metadata(meta: AttentionMetadata, chunks: list[ChunkInput], block_size: int, device) -> None:
    """Gathered slot lists and masks per decode row and prefill chunk (the readable backends).

    Built with numpy on the host and copied once per tensor, as the table metadata is.
    """
    import numpy as np

    write_tokens, write_slots, decode_rows, prefills = [], [], [], []
    offset = 0
    for chunk in chunks:
        n = len(chunk.token_ids)
        if chunk.block_table is not None:
            table = np.asarray(chunk.block_table, dtype=np.int64)
            write_tokens.append(np.arange(offset, offset + n))
            write_slots.append(slot_for(table, np.arange(chunk.start, chunk.start + n), block_size))
        if chunk.block_table is not None and n == 1:
            decode_rows.append((offset, chunk.start + 1, table))
        elif chunk.block_table is None or chunk.start == 0:
            prefills.append((offset, offset + n, None, None))
        else:
            ctx = chunk.start + n
            slots = _to(slot_for(table, np.arange(ctx), block_size), device)
            mask = _to(np.arange(ctx)[None, :] <= np.arange(chunk.start, ctx)[:, None], device)
            prefills.append((offset, offset + n, slots, mask))
        offset += n
    meta.write_tokens, meta.write_slots = _to(_cat(write_tokens), device), _to(_cat(write_slots), device)
    meta.prefills = prefills
    if decode_rows:
        _add_decode_metadata(meta, decode_rows, block_size, device)


def _cat(parts: list):
    import numpy as np

    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _to(array, device) -> torch.Tensor:
    return torch.from_numpy(array).to(device)


def _add_decode_metadata(meta: AttentionMetadata, rows, block_size: int, device) -> None:
    import numpy as np

    max_ctx = max(ctx for _, ctx, _ in rows)
    tables = np.zeros((len(rows), cdiv(max_ctx, block_size)), dtype=np.int64)
    for i, (_, ctx, table) in enumerate(rows):
        used = cdiv(ctx, block_size)
        tables[i, :used] = table[:used]
    ctx_lens = np.array([ctx for _, ctx, _ in rows])
    positions = np.arange(max_ctx)
    meta.decode_tokens = _to(np.array([off for off, _, _ in rows], dtype=np.int64), device)
    meta.decode_slots = _to(slot_for(tables, positions, block_size), device)
    meta.decode_mask = _to(positions[None, :] < ctx_lens[:, None], device)[:, None, None, :]


# --------------------------------------------------------------------------- runner
class ModelRunner:
    """Owns the model and the paged KV cache; runs one batched forward per engine step.

    ``model``: a name, folder or hub id; an already loaded transformers model (its weights
    are copied; device and dtype default to its own); or a config dict / ``ModelConfig``
    (random weights, built directly on the device, for timing). ``settings``: any
    :class:`EngineConfig` field (``device``, ``dtype``, ``block_size``, ``num_kv_blocks``,
    ``attention_backend``, ``enforce_eager``, ...). On CUDA with the ``triton`` backend, decode
    steps replay CUDA graphs captured per batch-size bucket (:class:`DecodeGraphs`)
    unless ``enforce_eager``.
    """

    def __init__(self, model: Any = "tiny", config: EngineConfig | None = None, **settings: Any):
        from inferlab.attention.backends import resolve_backend
        from inferlab.device import pick_device, torch_dtype
        from inferlab.kvcache import kv_heads_per_gpu

        self.engine_config = config = EngineConfig.from_kwargs(config, **settings)
        source = resolve_source(model)
        self.device = pick_device(config.device or source.device)
        self.dtype = torch_dtype(config.dtype if config.dtype is not None else source.dtype, self.device)
        self.config: ModelConfig = source.config
        self.checkpoint = source.path  # the folder the weights came from, if any
        self.attention_backend = resolve_backend(config.attention_backend, self.device)
        self.model = self._build_model(source, config)
        self.block_size = config.block_size
        self.num_blocks = config.num_kv_blocks or default_num_blocks(
            self.config, self.dtype, self.block_size, self.device,
            max_num_seqs=config.max_num_seqs, gpu_memory_utilization=config.gpu_memory_utilization,
            tp_size=config.tensor_parallel_size)
        c = self.config
        kv_heads = kv_heads_per_gpu(c, config.tensor_parallel_size)  # KV heads this rank keeps (all unless TP)
        self.kv_cache = PagedKVCache(c.num_layers, self.num_blocks, self.block_size, kv_heads, c.head_dim,
                                     self.dtype, self.device)
        attention = [m for m in self.model.modules() if isinstance(m, Attention)]
        for layer, attn in enumerate(attention):
            attn.k_cache, attn.v_cache = self.kv_cache.k_caches[layer], self.kv_cache.v_caches[layer]
        self.uses_tables = bool(attention) and attention[0].tables
        self.graphs = None
        if self.uses_tables and str(self.device).startswith("cuda") and not getattr(config, "enforce_eager", False):
            self.graphs = DecodeGraphs(self, max_batch=min(config.max_num_seqs, 512))

    def _build_model(self, source: ModelSource, config: EngineConfig) -> torch.nn.Module:
        """The model on the device in the dtype: random weights built there, or loaded straight there.

        Loaded weights: the module is made on the ``meta`` device (no memory, no init), given
        uninitialized storage on the target device in the target dtype, and each checkpoint
        tensor is copied (and cast) into its parameter: no full-precision copy on the host.
        """
        cls = MODEL_CLASSES[source.config.model_type]
        build = lambda c: cls(c, self.attention_backend)  # noqa: E731
        if source.weights is None:
            from inferlab.hub import random_init

            model = random_init(source.config, self.device, self.dtype, config.seed, build=build)
        else:
            model = _materialize(build, source.config, self.device, self.dtype)
            load_weights(model, source.weights(self.device))
        model = model.eval()
        model.model.rotary_emb.reset_frequencies()  # keep RoPE frequencies in fp32
        return model

    # ---- sizes
    @property
    def kv_bytes_per_block(self) -> int:
        from inferlab.kvcache import kv_bytes_per_block

        return kv_bytes_per_block(self.config, self.dtype, self.block_size, self.engine_config.tensor_parallel_size)

    # ---- running
    @torch.inference_mode()
    def execute(self, chunks: list[ChunkInput]) -> torch.Tensor:
        """Run one step; returns fp32 logits ``[num_sampled, vocab]`` for chunks with ``sample``.

        A step of decode rows only, on CUDA graphs, returns a view of the graph's output buffer:
        valid until the next step.
        """
        if self.graphs is not None and self.graphs.can_run(chunks):
            return self.graphs.run(chunks)
        hidden = self._forward(chunks)
        rows, offset = [], 0
        for ch in chunks:
            offset += len(ch.token_ids)
            if ch.sample:
                rows.append(offset - 1)
        if not rows:
            return torch.empty(0, self.config.vocab_size, device=self.device)
        if len(rows) < hidden.shape[0]:
            hidden = hidden[torch.tensor(rows, device=self.device)]
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def reference_logits(self, token_ids: list[int]) -> torch.Tensor:
        """Logits at every position of one sequence, without touching the cache (for tests)."""
        return self.model.compute_logits(self._forward([ChunkInput(list(token_ids), 0, None)]))

    def _forward(self, chunks: list[ChunkInput]) -> torch.Tensor:
        import numpy as np

        ids = np.fromiter((t for ch in chunks for t in ch.token_ids), dtype=np.int64)
        positions = np.concatenate([np.arange(ch.start, ch.start + len(ch.token_ids)) for ch in chunks])
        meta = build_metadata(chunks, self.block_size, self.device, slots=not self.uses_tables,
                              tables=self.uses_tables)
        inputs = torch.from_numpy(np.stack([ids, positions.astype(np.int64)])).to(self.device)
        return self.model(inputs[0], inputs[1], meta)

    def copy_block(self, src: int, dst: int) -> None:
        """Copy-on-write: duplicate block ``src`` into ``dst`` in every layer."""
        self.kv_cache.copy_blocks([(src, dst)])


def _materialize(build, config: ModelConfig, device, dtype) -> torch.nn.Module:
    """``build(config)`` on the meta device, then uninitialized storage on ``device`` in ``dtype``.

    Moving off ``meta`` makes new parameter objects: the attributes layers attached to their
    parameters (``weight_loader``) are carried over.
    """
    with torch.device("meta"):
        model = build(config)
    attrs = {name: dict(p.__dict__) for name, p in model.named_parameters()}
    model = model.to(dtype=dtype).to_empty(device=device)
    for name, p in model.named_parameters():
        p.__dict__.update(attrs[name])
    return model


# --------------------------------------------------------------------------- CUDA graphs
def graph_batch_sizes(max_batch: int) -> list[int]:
    """The decode batch sizes captured: 1, 2, 4, 8, then every multiple of 16 (nano-vllm's buckets)."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch] + list(range(16, max_batch + 1, 16))
    return sorted(set(sizes + [max_batch]))


class DecodeGraphs:
    """Decode steps replayed as CUDA graphs, one per batch-size bucket, over persistent input buffers.

    A decode step of a 1B model is ~400 kernel launches; on a slow host, launching them costs
    far more than running them. A CUDA graph replays the whole step (embedding to logits) with
    one launch. Inputs live in fixed device buffers (token ids, positions, slot mapping, block
    tables, context lengths) that each step overwrites; a batch of ``n`` rows runs the graph of
    the smallest bucket ``>= n``, whose extra rows have slot -1 (nothing stored) and context 0.
    Captured largest first, sharing one memory pool, as nano-vllm does.
    """

    def __init__(self, runner: ModelRunner, max_batch: int):
        from inferlab.attention.paged_triton import decode_splits
        from inferlab.tp import count_all_reduce, count_replayed

        self.count_replayed = count_replayed
        self.runner, self.max_batch, self.reduces = runner, max_batch, {}
        dev, c = runner.device, runner.config
        self.width = cdiv(c.max_model_len or c.max_position_embeddings, runner.block_size)
        self.vectors = torch.zeros(4, max_batch, dtype=torch.long, device=dev)  # ids, positions, slots, context
        self.tables = torch.zeros(max_batch, self.width, dtype=torch.int32, device=dev)
        self.sizes = graph_batch_sizes(max_batch)
        self.graphs, self.outputs, pool = {}, {}, None
        for bs in reversed(self.sizes):
            meta = AttentionMetadata(slot_mapping=self.vectors[2, :bs], is_decode=True, block_tables=self.tables[:bs],
                                     context_lens=self.vectors[3, :bs], max_query_len=1,
                                     num_splits=decode_splits(bs, runner.kv_cache.num_kv_heads))
            self._reset(bs)
            log.info("decode graph for batch %d: warm-up, then capture", bs)
            self._step(bs, meta)  # warm-up: compiles the kernels outside the capture
            graph = torch.cuda.CUDAGraph()
            with count_all_reduce() as captured, torch.cuda.graph(graph, pool):
                self.outputs[bs] = self._step(bs, meta)
            self.reduces[bs] = (captured.calls, captured.bytes)  # replayed each step, counted by count_replayed
            log.info("decode graph for batch %d captured (%d all-reduces)", bs, captured.calls)
            pool = graph.pool() if pool is None else pool
            self.graphs[bs] = graph
        torch.cuda.synchronize(dev)

    @torch.inference_mode()
    def _step(self, bs: int, meta: AttentionMetadata) -> torch.Tensor:
        model = self.runner.model
        return model.compute_logits(model(self.vectors[0, :bs], self.vectors[1, :bs], meta))

    def _reset(self, bs: int) -> None:
        self.vectors[:, :bs] = 0
        self.vectors[2, :bs] = -1

    def can_run(self, chunks: list[ChunkInput]) -> bool:
        return 0 < len(chunks) <= self.max_batch and all(
            len(c.token_ids) == 1 and c.block_table is not None and c.sample for c in chunks)

    def run(self, chunks: list[ChunkInput]) -> torch.Tensor:
        """Copy the step's inputs into the buffers (two host-to-device copies) and replay."""
        import numpy as np

        n, bs = len(chunks), next(b for b in self.sizes if b >= len(chunks))
        bsz = self.runner.block_size
        host = np.zeros((4, bs), dtype=np.int64)
        host[2, n:] = -1
        host[0, :n] = [c.token_ids[0] for c in chunks]
        host[1, :n] = pos = np.array([c.start for c in chunks], dtype=np.int64)
        used = [cdiv(c.start + 1, bsz) for c in chunks]
        table = np.zeros((n, max(used)), dtype=np.int32)
        for i, c in enumerate(chunks):
            table[i, :used[i]] = c.block_table[:used[i]]
        host[2, :n] = table[np.arange(n), pos // bsz].astype(np.int64) * bsz + pos % bsz
        host[3, :n] = pos + 1
        self.vectors[:, :bs].copy_(torch.from_numpy(host), non_blocking=False)
        self.tables[:n, :table.shape[1]].copy_(torch.from_numpy(table))
        self.graphs[bs].replay()
        if self.reduces[bs][0]:  # a tensor-parallel step: its all-reduces ran inside the graph
            self.count_replayed(*self.reduces[bs])  # (imported in __init__: inferlab.tp imports the engine)
        return self.outputs[bs][:n]


def default_num_blocks(config: ModelConfig, dtype, block_size: int, device: str, max_num_seqs: int = 64,
                       gpu_memory_utilization: float = 0.9, tp_size: int = 1) -> int:
    """How many blocks to allocate when the user does not say.

    Never more than ``max_num_seqs`` full-context sequences need. Within that, CUDA: the
    fraction ``gpu_memory_utilization`` of the free GPU memory (vLLM's knob, here applied
    to what is free after the weights); elsewhere at most 128 MiB, so a 2 GB Binder survives.
    """
    from inferlab.kvcache import kv_bytes_per_block

    per_block = kv_bytes_per_block(config, dtype, block_size, tp_size)  # per rank under tensor parallelism
    want = max_num_seqs * cdiv(config.max_model_len, block_size)
    if str(device).startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        kv_cache_bytes = int(free * gpu_memory_utilization)
    else:
        kv_cache_bytes = 128 * 2**20
    return max(1, min(want, kv_cache_bytes // per_block))
