"""A Llama-family decoder (Llama incl. llama3/linear RoPE scaling, Mistral, Qwen2) over flattened tokens.

Built from :mod:`inferlab.engine.layers` and one :class:`~inferlab.attention.layer.Attention`
per layer, with Hugging Face's parameter names (``model.layers.0.self_attn.qkv_proj``...), so
:mod:`inferlab.engine.loader` maps a checkpoint onto it by name. q/k/v and gate/up are fused
into one matmul each (``packed_modules_mapping`` says which checkpoint tensors go where).
The tokens of a whole engine step arrive as one ``[num_tokens]`` batch: the linear layers
run once over all of them and only attention looks at sequences separately.
"""

from __future__ import annotations

import torch
from torch import nn

from inferlab.attention.layer import Attention
from inferlab.attention.metadata import AttentionMetadata
from inferlab.engine.activation import act_and_mul
from inferlab.engine.config import ModelConfig
from inferlab.engine.layers import (
    Linear,
    MergedLinear,
    QKVLinear,
    RMSNorm,
    RotaryEmbedding,
    apply_rotary_qk,
)


class LlamaAttention(nn.Module):
    """Fused q/k/v projection, RoPE, paged attention (grouped-query), output projection."""

    def __init__(self, c: ModelConfig, attention_backend: str):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.qkv_proj = QKVLinear(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, bias=c.qkv_bias)
        self.o_proj = Linear(c.num_heads * c.head_dim, c.hidden_size, bias=c.o_bias)
        self.attn = Attention(c.num_heads, c.num_kv_heads, c.head_dim, backend=attention_backend)

    def forward(self, x, cos, sin, meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split(self.qkv_proj.output_sizes, dim=-1)
        q, k = apply_rotary_qk(q.view(-1, self.num_heads, self.head_dim),
                               k.view(-1, self.num_kv_heads, self.head_dim), cos, sin)
        out = self.attn(q, k, v.view(-1, self.num_kv_heads, self.head_dim), meta)
        return self.o_proj(out.reshape(-1, self.num_heads * self.head_dim))


class LlamaMLP(nn.Module):
    """Gated MLP (SwiGLU, or GeGLU for a GELU ``hidden_act``) with gate and up fused."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.gate_up_proj = MergedLinear(c.hidden_size, [c.intermediate_size] * 2, bias=c.mlp_bias)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)
        self.act_and_mul = act_and_mul(c.hidden_act)  # SwiGLU for "silu", GeGLU for the GELUs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm attention then pre-norm MLP, each with a residual connection.

    The residual stream travels beside the hidden states and each add happens inside the next
    norm (vLLM's layout): ``x + attn(norm(x))`` becomes ``h, residual = norm(attn_out, residual)``,
    the same sums in the same dtype, one kernel fewer per add on a GPU.
    """

    def __init__(self, c: ModelConfig, attention_backend: str):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = LlamaAttention(c, attention_backend)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = LlamaMLP(c)

    def forward(self, x, residual, cos, sin, meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mlp output, residual stream)``; the first layer gets ``residual=None`` and the embeddings."""
        if residual is None:
            h, residual = self.input_layernorm(x), x
        else:
            h, residual = self.input_layernorm(x, residual)
        h, residual = self.post_attention_layernorm(self.self_attn(h, cos, sin, meta), residual)
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    def __init__(self, c: ModelConfig, attention_backend: str):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.rotary_emb = RotaryEmbedding(c)
        self.layers = nn.ModuleList(LlamaDecoderLayer(c, attention_backend) for _ in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, input_ids, positions, meta: AttentionMetadata) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb.cos_sin(positions, x.dtype)
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, cos, sin, meta)
        return x if residual is None else x + residual


class LlamaForCausalLM(nn.Module):
    """The decoder and its LM head; ``forward`` gives hidden states, ``compute_logits`` the logits."""

    # checkpoint projection -> (our fused module, its shard)
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: ModelConfig, attention_backend: str = "sdpa"):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, attention_backend)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)

    def tied_weights(self) -> dict[str, str]:
        """Parameters that are a copy of another when tied or absent from the checkpoint."""
        return {"lm_head.weight": "model.embed_tokens.weight"}

    def forward(self, input_ids, positions, meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states ``[num_tokens, hidden]`` (before the final norm)."""
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model.norm(hidden)).float()
