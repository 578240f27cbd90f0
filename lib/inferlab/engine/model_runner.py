"""The model runner: builds the model, owns the paged KV pool, prepares each step's inputs, runs it.

One forward pass serves a whole engine step. The tokens of every scheduled sequence
(whole prompts, prompt *chunks* and single decode tokens alike) are flattened into one
``[num_tokens]`` batch with per-token positions and *slot mappings* (where each token's
K/V goes in the block pool), as in vLLM and nano-vllm; :func:`build_metadata` turns them
into the index tensors attention reads (:class:`~inferlab.attention.metadata.AttentionMetadata`).
The model comes from :mod:`inferlab.engine.models` with weights from
:mod:`inferlab.engine.loader`; attention runs on the backend named in the
:class:`~inferlab.engine.config.EngineConfig`. Capturing whole steps as CUDA graphs
belongs here too: fixed-size input buffers filled by :meth:`ModelRunner.execute`.
"""

from __future__ import annotations

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


def build_metadata(chunks: list[ChunkInput], block_size: int, device) -> AttentionMetadata:
    """Flatten the step's chunks into the index tensors attention needs."""
    write_tokens, write_slots, decode_rows, prefills = [], [], [], []
    offset = 0
    for chunk in chunks:
        n = len(chunk.token_ids)
        if chunk.block_table is not None:
            table = torch.tensor(chunk.block_table, dtype=torch.long)
            write_tokens.append(torch.arange(offset, offset + n))
            write_slots.append(slot_for(table, torch.arange(chunk.start, chunk.start + n), block_size))
        if chunk.block_table is not None and n == 1:
            decode_rows.append((offset, chunk.start + 1, chunk.block_table))
        elif chunk.block_table is None or chunk.start == 0:
            prefills.append((offset, offset + n, None, None))
        else:
            ctx = chunk.start + n
            slots = slot_for(table, torch.arange(ctx), block_size).to(device)
            q_pos = torch.arange(chunk.start, ctx)[:, None]
            mask = (torch.arange(ctx)[None, :] <= q_pos).to(device)
            prefills.append((offset, offset + n, slots, mask))
        offset += n
    meta = AttentionMetadata(
        write_tokens=_cat(write_tokens).to(device), write_slots=_cat(write_slots).to(device), prefills=prefills
    )
    if decode_rows:
        _add_decode_metadata(meta, decode_rows, block_size, device)
    return meta


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)


def _add_decode_metadata(meta: AttentionMetadata, rows, block_size: int, device) -> None:
    max_ctx = max(ctx for _, ctx, _ in rows)
    tables = torch.zeros(len(rows), cdiv(max_ctx, block_size), dtype=torch.long)
    for i, (_, ctx, table) in enumerate(rows):
        used = cdiv(ctx, block_size)
        tables[i, :used] = torch.tensor(table[:used])
    ctx_lens = torch.tensor([ctx for _, ctx, _ in rows])
    positions = torch.arange(max_ctx)
    meta.decode_tokens = torch.tensor([off for off, _, _ in rows], device=device)
    meta.decode_slots = slot_for(tables, positions, block_size).to(device)
    meta.decode_mask = (positions[None, :] < ctx_lens[:, None])[:, None, None, :].to(device)


# --------------------------------------------------------------------------- runner
class ModelRunner:
    """Owns the model and the paged KV cache; runs one batched forward per engine step.

    ``model``: a name, folder or hub id; an already loaded transformers model (its weights
    are copied; device and dtype default to its own); or a config dict / ``ModelConfig``
    (random weights, built directly on the device, for timing). ``settings``: any
    :class:`EngineConfig` field (``device``, ``dtype``, ``block_size``, ``num_kv_blocks``, ...).
    """

    def __init__(self, model: Any = "tiny", config: EngineConfig | None = None, **settings: Any):
        from inferlab.device import pick_device, torch_dtype

        self.engine_config = config = EngineConfig.from_kwargs(config, **settings)
        source = resolve_source(model)
        self.device = pick_device(config.device or source.device)
        self.dtype = torch_dtype(config.dtype if config.dtype is not None else source.dtype, self.device)
        self.config: ModelConfig = source.config
        self.checkpoint = source.path  # the folder the weights came from, if any
        self.model = self._build_model(source, config)
        self.block_size = config.block_size
        self.num_blocks = config.num_kv_blocks or default_num_blocks(
            self.config, self.dtype, self.block_size, self.device,
            max_num_seqs=config.max_num_seqs, gpu_memory_utilization=config.gpu_memory_utilization,
            tp_size=config.tensor_parallel_size)
        c = self.config
        from inferlab.kvcache import kv_heads_per_gpu  # KV heads this rank keeps (all of them unless TP)

        kv_heads = kv_heads_per_gpu(c, config.tensor_parallel_size)
        self.kv_cache = PagedKVCache(c.num_layers, self.num_blocks, self.block_size, kv_heads, c.head_dim,
                                     self.dtype, self.device)
        attention = [m for m in self.model.modules() if isinstance(m, Attention)]
        for layer, attn in enumerate(attention):
            attn.k_cache, attn.v_cache = self.kv_cache.k_caches[layer], self.kv_cache.v_caches[layer]

    def _build_model(self, source: ModelSource, config: EngineConfig) -> torch.nn.Module:
        """The model on the device in the dtype: random weights built there, or loaded weights moved there."""
        cls = MODEL_CLASSES[source.config.model_type]
        if source.weights is None:
            from inferlab.hub import random_init

            model = random_init(source.config, self.device, self.dtype, config.seed,
                                build=lambda c: cls(c, config.attention_backend))
        else:
            model = cls(source.config, config.attention_backend)
            load_weights(model, source.weights())
        model = model.to(device=self.device, dtype=self.dtype).eval()
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
        """Run one step; returns fp32 logits ``[num_sampled, vocab]`` for chunks with ``sample``."""
        hidden = self._forward(chunks)
        rows, offset = [], 0
        for ch in chunks:
            offset += len(ch.token_ids)
            if ch.sample:
                rows.append(offset - 1)
        if not rows:
            return torch.empty(0, self.config.vocab_size, device=self.device)
        return self.model.compute_logits(hidden[torch.tensor(rows, device=self.device)])

    @torch.inference_mode()
    def reference_logits(self, token_ids: list[int]) -> torch.Tensor:
        """Logits at every position of one sequence, without touching the cache (for tests)."""
        return self.model.compute_logits(self._forward([ChunkInput(list(token_ids), 0, None)]))

    def _forward(self, chunks: list[ChunkInput]) -> torch.Tensor:
        ids = [t for ch in chunks for t in ch.token_ids]
        positions = [p for ch in chunks for p in range(ch.start, ch.start + len(ch.token_ids))]
        meta = build_metadata(chunks, self.block_size, self.device)
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        return self.model(input_ids, pos, meta)

    def copy_block(self, src: int, dst: int) -> None:
        """Copy-on-write: duplicate block ``src`` into ``dst`` in every layer."""
        self.kv_cache.copy_blocks([(src, dst)])


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
