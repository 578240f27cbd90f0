"""The engine's settings, listed once: :class:`EngineConfig`; and the model shape it runs, :class:`ModelConfig`.

``LLM(...)``, :func:`~inferlab.engine.llm.build_engine` and
:class:`~inferlab.engine.llm_engine.LLMEngine` all take these keyword arguments and build
an ``EngineConfig`` (as nano-vllm's ``Config`` and vLLM's ``EngineArgs``); the checks live in
``__post_init__``, so a bad value fails before anything loads, with its argument's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
POLICIES = ("continuous", "static")


@dataclass
class EngineConfig:
    """Every engine setting, with its default.

    ``num_kv_blocks``: size of the KV pool in blocks of ``block_size`` tokens (default: a
    ``gpu_memory_utilization`` share of free GPU memory, or up to 128 MiB elsewhere).
    ``max_num_seqs`` and ``max_num_batched_tokens`` bound each step (Orca's iteration-level
    scheduling); ``enable_chunked_prefill`` lets long prompts be split across steps (Sarathi);
    ``enable_prefix_caching`` reuses the KV of shared prompt prefixes; ``policy="static"``
    is classic static batching, for comparison. ``attention_backend`` picks the attention
    implementation once (:data:`inferlab.attention.backends.BACKENDS`; ``"auto"``: ``triton`` on CUDA
    when installed, else ``sdpa``); ``enforce_eager`` turns off CUDA graphs for decode steps. ``seed`` seeds the
    random weights when the model is given as a bare config. ``max_logprobs`` caps a request's
    ``SamplingParams.logprobs`` (vLLM's default, 20). ``tensor_parallel_size``: shard
    the model over that many processes (:mod:`inferlab.tp`, :mod:`inferlab.engine.distributed`).
    """

    device: str | None = None
    dtype: Any = None
    block_size: int = 16
    num_kv_blocks: int | None = None
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    enable_prefix_caching: bool = False
    enable_chunked_prefill: bool = True
    policy: str = "continuous"
    attention_backend: str = "auto"  # "auto": triton on CUDA when installed, else sdpa
    enforce_eager: bool = False  # True: never replay decode steps as CUDA graphs (vLLM's switch)
    record_trace: bool = True
    trust_remote_code: bool = False
    seed: int = 0
    max_logprobs: int = 20
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        for name in ("enable_prefix_caching", "enable_chunked_prefill", "record_trace", "trust_remote_code",
                     "enforce_eager"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.trust_remote_code:
            raise ValueError("trust_remote_code=True is not supported: the engine runs its own model code")
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens", "max_logprobs", "tensor_parallel_size"):
            _check_positive_int(name, getattr(self, name))
        if self.num_kv_blocks is not None:
            _check_positive_int("num_kv_blocks", self.num_kv_blocks)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        if isinstance(self.gpu_memory_utilization, bool) or not isinstance(self.gpu_memory_utilization, (int, float)) \
                or not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be 'continuous' or 'static', got {self.policy!r}")
        from inferlab.attention.backends import BACKENDS

        if self.attention_backend not in (*BACKENDS, "auto"):
            raise ValueError(f"attention_backend must be one of {sorted(BACKENDS)}, got {self.attention_backend!r}")

    @classmethod
    def from_kwargs(cls, config: EngineConfig | None = None, **settings: Any) -> EngineConfig:
        """``config`` (or the defaults) with ``settings`` replacing fields; unknown names are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"unknown engine setting(s) {unknown}; EngineConfig has {sorted(known)}")
        base = {f.name: getattr(config, f.name) for f in fields(cls)} if config is not None else {}
        return cls(**{**base, **settings})


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


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
    hidden_act: str = "silu"

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> ModelConfig:
        """The engine's view of a config.json; a field whose value the engine does not implement is refused by name."""
        model_type = cfg.get("model_type", "llama")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {model_type!r} is not supported by inferlab's engine "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        missing = [k for k in _REQUIRED_KEYS if cfg.get(k) is None]
        if missing:
            raise ValueError(f"model config is missing {', '.join(missing)}")
        heads = cfg["num_attention_heads"]
        rope = dict(cfg.get("rope_parameters") or {})  # transformers >= 5
        rope.update(cfg.get("rope_scaling") or {})  # transformers 4 style
        theta = rope.pop("rope_theta", None) or cfg.get("rope_theta", 10000.0)
        check_implemented(cfg, rope)
        bias = bool(cfg.get("attention_bias", False))
        eos = cfg.get("eos_token_id")
        max_pos = int(cfg.get("max_position_embeddings", 2048))
        kv_heads = cfg.get("num_key_value_heads") or heads
        if heads % kv_heads:
            raise ValueError(f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")
        return cls(
            model_type=model_type,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bias or model_type == "qwen2",  # Qwen2 always has q/k/v bias, never o bias
            o_bias=bias and model_type != "qwen2",
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            rope_theta=float(theta),
            rope_scaling=rope,
            eos_token_ids=() if eos is None else tuple(eos) if isinstance(eos, list) else (int(eos),),
            max_model_len=_max_model_len(cfg, model_type, max_pos),
            hidden_act=cfg.get("hidden_act") or cfg.get("hidden_activation") or "silu",
        )


_REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")

ROPE_TYPES = ("default", "linear", "llama3")
# Fields of related architectures that change the forward pass, with the value that means "off".
# A config that sets one of them to anything else would run silently wrong, so it is refused.
_UNIMPLEMENTED: dict[str, Any] = {
    "partial_rotary_factor": 1.0, "attn_logit_softcapping": None, "final_logit_softcapping": None,
    "query_pre_attn_scalar": None, "logits_scaling": 1.0, "embedding_multiplier": 1.0,
    "residual_multiplier": 1.0, "attention_multiplier": None, "use_qk_norm": False, "qk_layernorm": False,
    "use_parallel_residual": False, "parallel_attn": False, "alibi": False, "quantization_config": None,
}


def check_implemented(cfg: dict[str, Any], rope: dict[str, Any]) -> None:
    """Refuse, by name, a config field whose value the engine's Llama-family model does not implement."""
    from inferlab.engine.activation import ACTIVATIONS

    act = cfg.get("hidden_act") or cfg.get("hidden_activation") or "silu"
    if act not in ACTIVATIONS:
        raise ValueError(f"hidden_act {act!r} is not implemented by inferlab's engine (implemented: {', '.join(ACTIVATIONS)})")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_scaling / rope_parameters rope_type {kind!r} is not implemented "
                         f"(implemented: {', '.join(ROPE_TYPES)})")
    for name, off in _UNIMPLEMENTED.items():
        value = rope.get(name, cfg.get(name)) if name == "partial_rotary_factor" else cfg.get(name)
        if value is not None and value != off and value != {}:
            raise ValueError(f"config field {name}={value!r} is not implemented by inferlab's engine "
                             f"(only {off!r} is); this model would run wrong")


def _max_model_len(cfg: dict, model_type: str, max_pos: int) -> int:
    """Context length we serve: a sliding window on any layer (Mistral v0.1, some Qwen2) caps it.

    Below the window, sliding-window attention equals full attention, so capping the
    context keeps our (full) attention exact instead of silently wrong. Which layers slide
    (Qwen2's ``max_window_layers``, ``layer_types``) is read by :func:`inferlab.configs.layer_windows`.
    """
    from inferlab.configs import layer_windows

    if model_type == "llama":  # transformers' Llama has no sliding window, whatever the config says
        return max_pos
    windows = [w for w in layer_windows({"model_type": model_type, **cfg}, int(cfg["num_hidden_layers"])) if w]
    return min(max_pos, *windows) if windows else max_pos
