"""GGUF export and load: llama.cpp's single-file format, written with the ``gguf`` package.

llama.cpp names tensors ``token_embd``, ``blk.N.attn_q``, ``ffn_gate``... and stores the Q and K
projections with their rows permuted (it pairs rotary dimensions (i, i+d/2) as adjacent rows;
transformers undoes the permutation on load). Q8_0 stores blocks of 32 weights as 32 int8 and
one fp16 scale (8.5 bits per weight); Q4_0 as 16 bytes of 4-bit codes and one fp16 scale
(4.5 bits). Norms stay in fp32, as llama.cpp keeps them.
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path

import numpy as np
import torch

QTYPES = ("Q8_0", "Q4_0", "F16")
_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def llama_cpp_name(hf_name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` → ``blk.3.attn_q.weight`` (and the top-level names)."""
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf_name in top:
        return top[hf_name]
    parts = hf_name.split(".")
    if parts[:2] != ["model", "layers"]:
        raise ValueError(f"no llama.cpp name for tensor {hf_name!r}")
    inner = ".".join(parts[3:-1])
    if inner not in _LAYER_NAMES:
        raise ValueError(f"no llama.cpp name for tensor {hf_name!r}")
    return f"blk.{parts[2]}.{_LAYER_NAMES[inner]}.{parts[-1]}"


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of each head reordered from (first half, second half) to interleaved pairs (llama.cpp)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_data(name: str, w: torch.Tensor, cfg, qtype: str):
    import gguf

    a = w.detach().float().cpu().numpy()
    if name.endswith("attn_q.weight"):
        a = permute_qk(a, cfg.num_attention_heads)
    elif name.endswith("attn_k.weight"):
        a = permute_qk(a, cfg.num_key_value_heads)
    if a.ndim == 1:
        return a.astype(np.float32), None
    if qtype == "F16" or a.shape[-1] % 32:
        return a.astype(np.float16), None
    kind = getattr(gguf.GGMLQuantizationType, qtype)
    return gguf.quants.quantize(a.astype(np.float32), kind), kind


def _write_tokenizer(writer, tokenizer) -> None:
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    model = data["model"]
    if model.get("type") != "BPE":
        raise ValueError("export_gguf writes byte-level BPE tokenizers only (a 'gpt2'-style tokenizer.json)")
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    added = {t["id"] for t in data.get("added_tokens", [])}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types([3 if i in added else 1 for _, i in vocab])  # 3: control, 1: normal
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])])
    for key, setter in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                        ("pad_token_id", writer.add_pad_token_id)):
        if getattr(tokenizer, key, None) is not None:
            setter(getattr(tokenizer, key))


def _write_config(writer, cfg) -> None:
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    writer.add_rope_freq_base(float(rope))
    writer.add_vocab_size(cfg.vocab_size)


def export_gguf(model, tokenizer, path, qtype: str = "Q8_0") -> Path:
    """Write a Llama-architecture transformers ``model`` (and its BPE ``tokenizer``) as GGUF."""
    from inferlab.quant.formats import require

    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {QTYPES}, got {qtype!r}")
    if getattr(model.config, "model_type", None) != "llama":
        raise ValueError(f"export_gguf writes Llama-architecture models, got {getattr(model.config, 'model_type', None)!r}")
    require("gguf", what="export_gguf")
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(Path(str(model.config.name_or_path or "model")).name)
    _write_config(writer, model.config)
    _write_tokenizer(writer, tokenizer)
    writer.add_file_type({"Q8_0": 7, "Q4_0": 2, "F16": 1}[qtype])
    seen = set()
    for name, w in model.state_dict().items():
        if w.data_ptr() in seen and name == "lm_head.weight":
            continue  # tied: llama.cpp reuses token_embd
        seen.add(w.data_ptr())
        gname = llama_cpp_name(name)
        data, kind = _tensor_data(gname, w, model.config, qtype)
        writer.add_tensor(gname, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def load_gguf(path, device: str | None = None, dtype=None):
    """``(model, tokenizer)`` from a GGUF file through transformers (weights dequantized on load)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from inferlab.device import pick_device, torch_dtype
    from inferlab.quant.formats import require

    hf_logging.disable_progress_bar()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    require("gguf", what="load_gguf")
    device = pick_device(device)
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:  # its per-tensor progress bar would land in every notebook's stored output
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch_dtype(dtype, device))
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, OSError, EOFError, KeyError, IndexError, struct.error) as err:
        raise ValueError(f"{path} is not a readable GGUF file (corrupt or truncated?): {err}") from err
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
    return model.to(device).eval(), tokenizer
