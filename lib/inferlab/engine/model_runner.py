"""The model runner: a compact Llama-family decoder whose KV cache lives in paged blocks.

One forward pass serves a whole engine step. The tokens of every scheduled sequence
(whole prompts, prompt *chunks* and single decode tokens alike) are flattened into one
``[num_tokens]`` batch with per-token positions and *slot mappings* (where each token's
K/V goes in the block pool), as in vLLM and nano-vllm. The linear layers and the MLP run
once over all tokens (that is where batching pays); only attention looks at sequences
separately, reading each sequence's earlier K/V through its block table.

Attention has two paths, like vLLM's prefill/decode split:

- *decode* rows (one new token each) are batched: the K/V slots of every row are gathered
  into a padded ``[rows, max_context]`` view with a length mask and one SDPA call runs;
- *prefill* chunks run per sequence: a chunk that starts at position 0 attends to its own
  fresh K/V (causal), a later chunk (chunked prefill, prefix-cache hit, recompute after
  preemption) gathers its context from the cache.

This gather-based attention is the correctness-first reference; a GPU kernel
(FlashAttention/FlashInfer paged decode) would read the blocks in place instead.

Supported families: Llama (incl. llama3 and linear RoPE scaling), Mistral, Qwen2
(attention bias). Weights load from Hugging Face safetensors checkpoints (single file or
sharded) or from an already loaded transformers model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inferlab.loading import random_init

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ModelConfig:
    """The few numbers of a Hugging Face ``config.json`` that a Llama-family decoder needs."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    rope_theta: float
    rope_scaling: dict = field(default_factory=dict)
    eos_token_ids: tuple[int, ...] = ()
    max_model_len: int = 0

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> ModelConfig:
        model_type = cfg.get("model_type", "llama")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {model_type!r} is not supported by inferlab's engine "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        rope = dict(cfg.get("rope_parameters") or {})  # transformers >= 5
        rope.update(cfg.get("rope_scaling") or {})  # transformers 4 style
        theta = rope.pop("rope_theta", None) or cfg.get("rope_theta", 10000.0)
        bias = bool(cfg.get("attention_bias", False))
        eos = cfg.get("eos_token_id")
        eos = () if eos is None else tuple(eos) if isinstance(eos, list) else (int(eos),)
        max_pos = int(cfg.get("max_position_embeddings", 2048))
        return cls(
            model_type=model_type,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bias or model_type == "qwen2",  # Qwen2 always has q/k/v bias, never o bias
            o_bias=bias and model_type != "qwen2",
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            rope_theta=float(theta),
            rope_scaling=rope,
            eos_token_ids=eos,
            max_model_len=_max_model_len(cfg, model_type, max_pos),
        )


def _max_model_len(cfg: dict, model_type: str, max_pos: int) -> int:
    """Context length we serve: a sliding window (Mistral v0.1, some Qwen2) caps it.

    Below the window, sliding-window attention equals full attention, so capping the
    context keeps our (full) attention exact instead of silently wrong.
    """
    window = cfg.get("sliding_window")
    uses_window = window and (model_type == "mistral" or cfg.get("use_sliding_window", False))
    return min(max_pos, int(window)) if uses_window else max_pos


# --------------------------------------------------------------------------- RoPE
def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Inverse frequencies of RoPE (Su et al. 2021) with the config's scaling, in fp32."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    raise NotImplementedError(f"RoPE scaling {kind!r} is not implemented (default, linear, llama3 are)")


def _llama3_inv_freq(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3.1's frequency-dependent scaling: long wavelengths / factor, short kept, smooth between."""
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


# --------------------------------------------------------------------------- modules
class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), computed in fp32 like transformers."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class DecoderLayer(nn.Module):
    """Pre-norm attention (fused q/k/v projection, GQA) + SwiGLU MLP (fused gate/up)."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.c = c
        qkv_out = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.qkv_proj = nn.Linear(c.hidden_size, qkv_out, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=c.o_bias)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.gate_up_proj = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x, cos, sin, meta: AttentionMetadata, k_cache, v_cache):
        c = self.c
        q, k, v = self.qkv_proj(self.input_layernorm(x)).split(
            [c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim], dim=-1
        )
        q = q.view(-1, c.num_heads, c.head_dim)
        k = k.view(-1, c.num_kv_heads, c.head_dim)
        v = v.view(-1, c.num_kv_heads, c.head_dim)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        attn = paged_attention(q, k, v, meta, k_cache, v_cache)
        x = x + self.o_proj(attn.reshape(-1, c.num_heads * c.head_dim))
        gate, up = self.gate_up_proj(self.post_attention_layernorm(x)).chunk(2, dim=-1)
        return x + self.down_proj(F.silu(gate) * up)


class LlamaFamilyModel(nn.Module):
    """Embedding, decoder layers, final norm and LM head; ``forward`` works on flattened tokens."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(c), persistent=False)

    def forward(self, input_ids, positions, meta: AttentionMetadata, kv_cache) -> torch.Tensor:
        """Hidden states ``[num_tokens, hidden]`` (before the final norm)."""
        x = self.embed_tokens(input_ids)
        freqs = positions.float()[:, None] * self.inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype)[:, None, :], emb.sin().to(x.dtype)[:, None, :]
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, meta, kv_cache[0, i], kv_cache[1, i])
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden)).float()


# --------------------------------------------------------------------------- attention
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


@dataclass
class AttentionMetadata:
    """Index tensors describing one step, built once and shared by every layer."""

    write_tokens: torch.Tensor  # token indices whose K/V are stored
    write_slots: torch.Tensor  # ... and where
    decode_tokens: torch.Tensor | None = None  # [rows] token index of each decode row
    decode_slots: torch.Tensor | None = None  # [rows, max_ctx] cache slots to read
    decode_mask: torch.Tensor | None = None  # [rows, 1, 1, max_ctx] True = attend
    prefills: list[tuple[int, int, torch.Tensor | None, torch.Tensor | None]] = field(default_factory=list)
    # (first token, end token, context slots or None when the chunk is its own context, mask)


def paged_attention(q, k, v, meta: AttentionMetadata, k_cache, v_cache) -> torch.Tensor:
    """Store this step's K/V in the block pool, then attend through the block tables.

    ``k_cache``/``v_cache``: ``[num_blocks, block_size, kv_heads, head_dim]``; token slot
    ``s`` is ``cache.view(-1, kv_heads, head_dim)[s]``.
    """
    k_flat = k_cache.view(-1, *k_cache.shape[2:])
    v_flat = v_cache.view(-1, *v_cache.shape[2:])
    if meta.write_slots.numel():
        k_flat.index_copy_(0, meta.write_slots, k.index_select(0, meta.write_tokens))
        v_flat.index_copy_(0, meta.write_slots, v.index_select(0, meta.write_tokens))
    out = torch.empty_like(q)
    if meta.decode_tokens is not None:
        qd = q.index_select(0, meta.decode_tokens).unsqueeze(2)  # [rows, heads, 1, d]
        kd = k_flat[meta.decode_slots].transpose(1, 2)  # [rows, kv_heads, ctx, d]
        vd = v_flat[meta.decode_slots].transpose(1, 2)
        od = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask, enable_gqa=True)
        out.index_copy_(0, meta.decode_tokens, od.squeeze(2))
    for start, end, slots, mask in meta.prefills:
        qs = q[start:end].transpose(0, 1)[None]  # [1, heads, n, d]
        if slots is None:
            ks, vs = k[start:end].transpose(0, 1)[None], v[start:end].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
        else:
            ks, vs = k_flat[slots].transpose(0, 1)[None], v_flat[slots].transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask[None, None], enable_gqa=True)
        out[start:end] = o[0].transpose(0, 1)
    return out


def _slots(table: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Slot of each position through a block table (``table`` may be batched: [rows, blocks])."""
    return table[..., positions // block_size] * block_size + positions % block_size


def build_metadata(chunks: list[ChunkInput], block_size: int, device) -> AttentionMetadata:
    """Flatten the step's chunks into the index tensors attention needs."""
    write_tokens, write_slots, decode_rows, prefills = [], [], [], []
    offset = 0
    for chunk in chunks:
        n = len(chunk.token_ids)
        if chunk.block_table is not None:
            table = torch.tensor(chunk.block_table, dtype=torch.long)
            pos = torch.arange(chunk.start, chunk.start + n)
            write_tokens.append(torch.arange(offset, offset + n))
            write_slots.append(_slots(table, pos, block_size))
        if chunk.block_table is not None and n == 1:
            decode_rows.append((offset, chunk.start + 1, chunk.block_table))
        elif chunk.block_table is None or chunk.start == 0:
            prefills.append((offset, offset + n, None, None))
        else:
            ctx = chunk.start + n
            slots = _slots(table, torch.arange(ctx), block_size).to(device)
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
    max_blocks = (max_ctx + block_size - 1) // block_size
    tables = torch.zeros(len(rows), max_blocks, dtype=torch.long)
    for i, (_, ctx, table) in enumerate(rows):
        used = (ctx + block_size - 1) // block_size
        tables[i, :used] = torch.tensor(table[:used])
    ctx_lens = torch.tensor([ctx for _, ctx, _ in rows])
    positions = torch.arange(max_ctx)
    meta.decode_tokens = torch.tensor([off for off, _, _ in rows], device=device)
    meta.decode_slots = _slots(tables, positions, block_size).to(device)
    meta.decode_mask = (positions[None, :] < ctx_lens[:, None])[:, None, None, :].to(device)


# --------------------------------------------------------------------------- weights
def _checkpoint_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / s for s in shards]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors checkpoint in {path}")
    return files


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint, on the CPU."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in _checkpoint_files(path):
        state.update(load_file(str(file)))
    return state


def load_hf_weights(model: LlamaFamilyModel, state: dict[str, torch.Tensor]) -> None:
    """Copy a transformers Llama/Mistral/Qwen2 state dict into our fused layout."""
    c = model.c
    state = {k.removeprefix("model."): v for k, v in state.items()}
    own = model.state_dict()

    def put(name: str, tensor: torch.Tensor) -> None:
        own[name].copy_(tensor)

    put("embed_tokens.weight", state["embed_tokens.weight"])
    put("norm.weight", state["norm.weight"])
    head = state.get("lm_head.weight")
    put("lm_head.weight", state["embed_tokens.weight"] if head is None or c.tie_word_embeddings else head)
    for i in range(c.num_layers):
        src, dst = f"layers.{i}.", f"layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            put(dst + norm + ".weight", state[src + norm + ".weight"])
        attn, mlp = src + "self_attn.", src + "mlp."
        for kind in ["weight"] + (["bias"] if c.qkv_bias else []):
            put(dst + "qkv_proj." + kind, torch.cat([state[attn + p + "_proj." + kind] for p in "qkv"]))
        put(dst + "o_proj.weight", state[attn + "o_proj.weight"])
        if c.o_bias:
            put(dst + "o_proj.bias", state[attn + "o_proj.bias"])
        for kind in ["weight"] + (["bias"] if c.mlp_bias else []):
            put(dst + "gate_up_proj." + kind, torch.cat([state[mlp + "gate_proj." + kind], state[mlp + "up_proj." + kind]]))
            put(dst + "down_proj." + kind, state[mlp + "down_proj." + kind])


# --------------------------------------------------------------------------- runner
class ModelRunner:
    """Owns the model and the paged KV cache; runs one batched forward per engine step."""

    def __init__(self, model: LlamaFamilyModel, device: str, dtype: torch.dtype, block_size: int, num_blocks: int):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.model.inv_freq = rope_inv_freq(model.c).to(device)  # keep RoPE frequencies in fp32
        self.config, self.device, self.dtype = model.c, device, dtype
        self.block_size, self.num_blocks = block_size, num_blocks
        c = model.c
        shape = (2, c.num_layers, num_blocks, block_size, c.num_kv_heads, c.head_dim)
        self.kv_cache = torch.zeros(shape, device=device, dtype=dtype)

    # ---- construction
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str, dtype: torch.dtype, block_size: int, num_blocks: int | None = None, **pool: Any) -> ModelRunner:
        """Load a Hugging Face folder; ``pool``: keyword arguments of :func:`default_num_blocks`."""
        path = Path(path)
        config = ModelConfig.from_dict(json.loads((path / "config.json").read_text()))
        model = LlamaFamilyModel(config)
        load_hf_weights(model, read_safetensors(path))
        model = model.to(device=device, dtype=dtype)  # weights first, so the pool sees what is left
        return cls(model, device, dtype, block_size, num_blocks or default_num_blocks(config, dtype, block_size, device, **pool))

    @classmethod
    def from_hf_model(cls, hf_model, device: str | None = None, dtype: torch.dtype | None = None, block_size: int = 16, num_blocks: int | None = None, **pool: Any) -> ModelRunner:
        """Share nothing with, but copy the weights of, an already loaded transformers model."""
        config = ModelConfig.from_dict(hf_model.config.to_dict())
        model = LlamaFamilyModel(config)
        load_hf_weights(model, {k: v.detach().cpu() for k, v in hf_model.state_dict().items()})
        device = device or str(next(hf_model.parameters()).device)
        dtype = dtype or next(hf_model.parameters()).dtype
        model = model.to(device=device, dtype=dtype)
        return cls(model, device, dtype, block_size, num_blocks or default_num_blocks(config, dtype, block_size, device, **pool))

    @classmethod
    def random(cls, config: dict | ModelConfig, device: str, dtype: torch.dtype, block_size: int = 16, num_blocks: int | None = None, seed: int = 0) -> ModelRunner:
        """A model of this shape with random weights, built on ``device`` in ``dtype`` (for timing)."""
        config = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
        with random_init(device, dtype, seed):
            model = LlamaFamilyModel(config)
        return cls(model, device, dtype, block_size, num_blocks or default_num_blocks(config, dtype, block_size, device))

    # ---- sizes
    @property
    def kv_bytes_per_block(self) -> int:
        return kv_bytes_per_block(self.config, self.dtype, self.block_size)

    # ---- running
    @torch.inference_mode()
    def execute(self, chunks: list[ChunkInput]) -> torch.Tensor:
        """Run one step; returns fp32 logits ``[num_sampled, vocab]`` for chunks with ``sample``."""
        ids = [t for ch in chunks for t in ch.token_ids]
        positions = [p for ch in chunks for p in range(ch.start, ch.start + len(ch.token_ids))]
        meta = build_metadata(chunks, self.block_size, self.device)
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        hidden = self.model(input_ids, pos, meta, self.kv_cache)
        rows, offset = [], 0
        for ch in chunks:
            offset += len(ch.token_ids)
            if ch.sample:
                rows.append(offset - 1)
        if not rows:
            return torch.empty(0, self.config.vocab_size, device=self.device)
        return self.model.logits(hidden[torch.tensor(rows, device=self.device)])

    @torch.inference_mode()
    def reference_logits(self, token_ids: list[int]) -> torch.Tensor:
        """Logits at every position of one sequence, without touching the cache (for tests)."""
        chunk = ChunkInput(list(token_ids), 0, None)
        meta = build_metadata([chunk], self.block_size, self.device)
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        hidden = self.model(ids, torch.arange(len(token_ids), device=self.device), meta, self.kv_cache)
        return self.model.logits(hidden)

    def copy_block(self, src: int, dst: int) -> None:
        """Copy-on-write: duplicate block ``src`` into ``dst`` in every layer."""
        self.kv_cache[:, :, dst].copy_(self.kv_cache[:, :, src])


def kv_bytes_per_block(config: ModelConfig, dtype: torch.dtype, block_size: int) -> int:
    """K and V, every layer, ``block_size`` tokens, ``num_kv_heads`` heads (not ``num_heads``)."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * elem


def default_num_blocks(config: ModelConfig, dtype, block_size: int, device: str, kv_cache_bytes: int | None = None,
                       max_num_seqs: int = 64, gpu_memory_utilization: float = 0.9) -> int:
    """How many blocks to allocate when the user does not say.

    Never more than ``max_num_seqs`` full-context sequences need. Within that, CUDA: the
    fraction ``gpu_memory_utilization`` of the free GPU memory (vLLM's knob, here applied
    to what is free after the weights); elsewhere at most 128 MiB, so a 2 GB Binder survives.
    """
    per_block = kv_bytes_per_block(config, dtype, block_size)
    want = max_num_seqs * -(-config.max_model_len // block_size)
    if kv_cache_bytes is None:
        if str(device).startswith("cuda") and torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info(torch.device(device))
            kv_cache_bytes = int(free * gpu_memory_utilization)
        else:
            kv_cache_bytes = 128 * 2**20
        return max(1, min(want, kv_cache_bytes // per_block))
    return max(1, kv_cache_bytes // per_block)
