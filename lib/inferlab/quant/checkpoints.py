"""GPTQ and AWQ checkpoints: the Hub's on-disk layout, written from and read into our layers.

Both store 4-bit codes eight to an int32 plus fp16 ``scales [groups, out]``:

- GPTQ (AutoGPTQ / GPTQModel "gptq" format): ``qweight [in/8, out]`` packs along the *input*
  dimension, ``qzeros [groups, out/8]`` along the output dimension and holds ``zero − 1``
  (a historical quirk: the loader adds the 1 back), ``g_idx [in]`` gives each input column's
  group (act-order permutes it).
- AWQ (AutoAWQ "gemm" version): ``qweight [in, out/8]`` packs along the *output* dimension in
  the interleaved order 0, 2, 4, 6, 1, 3, 5, 7 (what its GEMM kernel reads), ``qzeros`` the
  same way with the zero points as they are; no ``g_idx``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from inferlab.quant.linear import Int4Linear, QuantLinear, swap_modules

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def pack_rows(codes: torch.Tensor) -> torch.Tensor:
    """Eight 4-bit codes per int32 along dim 0: ``[8n, m] → [n, m]``, code ``8i + j`` at bits 4j."""
    c = codes.to(torch.int64).view(-1, 8, codes.shape[1])
    packed = sum(c[:, j] << (4 * j) for j in range(8))
    return (packed - ((packed >> 31) << 32)).to(torch.int32)  # wrap to signed int32


def unpack_rows(packed: torch.Tensor) -> torch.Tensor:
    p = packed.to(torch.int64) & 0xFFFFFFFF
    return torch.stack([(p >> (4 * j)) & 0xF for j in range(8)], 1).view(-1, packed.shape[1]).to(torch.uint8)


def pack_cols(codes: torch.Tensor, order=tuple(range(8))) -> torch.Tensor:
    """Eight codes per int32 along dim 1, nibble j holding column ``order[j]`` of each 8."""
    c = codes.view(codes.shape[0], -1, 8)[:, :, list(order)]
    return pack_rows(c.permute(2, 0, 1).reshape(8, -1)).view(codes.shape[0], -1)


def unpack_cols(packed: torch.Tensor, order=tuple(range(8))) -> torch.Tensor:
    nib = unpack_rows(packed.reshape(1, -1)).view(8, packed.shape[0], packed.shape[1])  # nibble, row, col
    out = torch.empty(packed.shape[0], packed.shape[1], 8, dtype=torch.uint8)
    out[:, :, list(order)] = nib.permute(1, 2, 0)
    return out.view(packed.shape[0], -1)


# ------------------------------------------------------------------ layer <-> tensors
def gptq_tensors(m: Int4Linear) -> dict[str, torch.Tensor]:
    codes = m.codes().cpu()
    g_idx = m.g_idx.cpu() if m.g_idx is not None else torch.arange(m.in_features, dtype=torch.int32) // m.group_size
    return {"qweight": pack_rows(codes.T.contiguous()), "qzeros": pack_cols((m.zeros.cpu().T.to(torch.int16) - 1) & 0xF),
            "scales": m.scales.cpu().T.contiguous().half(), "g_idx": g_idx.to(torch.int32)}


def awq_tensors(m: Int4Linear) -> dict[str, torch.Tensor]:
    if m.g_idx is not None:
        raise ValueError("AWQ checkpoints have no g_idx: a layer quantized with act_order cannot be saved as AWQ")
    codes = m.codes().cpu()
    return {"qweight": pack_cols(codes.T.contiguous(), AWQ_ORDER),
            "qzeros": pack_cols(m.zeros.cpu().T.contiguous(), AWQ_ORDER), "scales": m.scales.cpu().T.contiguous().half()}


def layer_from_gptq(t: dict[str, torch.Tensor], bias=None) -> Int4Linear:
    codes = unpack_rows(t["qweight"]).T.contiguous()
    zeros = ((unpack_cols(t["qzeros"]).to(torch.int16) + 1) & 0xF).T.contiguous().to(torch.uint8)
    scales = t["scales"].T.contiguous()
    in_f, groups = codes.shape[1], scales.shape[1]
    g_idx = t["g_idx"].to(torch.int32)
    plain = torch.equal(g_idx, torch.arange(in_f, dtype=torch.int32) // (in_f // groups))
    return Int4Linear.from_codes(codes, scales, zeros[:, :groups], None if plain else g_idx, bias)


def layer_from_awq(t: dict[str, torch.Tensor], bias=None) -> Int4Linear:
    codes = unpack_cols(t["qweight"], AWQ_ORDER).T.contiguous()
    zeros = unpack_cols(t["qzeros"], AWQ_ORDER).T.contiguous()
    return Int4Linear.from_codes(codes, t["scales"].T.contiguous(), zeros, None, bias)


# ------------------------------------------------------------------ save / load
def _save(model, tokenizer, path, fmt: str, to_tensors) -> Path:
    from safetensors.torch import save_file

    quant = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not quant or not all(isinstance(m, Int4Linear) for m in quant.values()):
        raise TypeError(f"save_{fmt} needs a model quantized to int4 (quantize(model, 'gptq' | 'awq' | 'int4'))")
    tensors = {}
    for name, m in quant.items():
        tensors.update({f"{name}.{k}": v for k, v in to_tensors(m).items()})
        if m.bias is not None:
            tensors[f"{name}.bias"] = m.bias.cpu().half()
    seen = set()
    for key, value in model.state_dict().items():
        prefix = key.rsplit(".", 1)[0]
        if prefix in quant or value.data_ptr() in seen:
            continue  # quantized layers written above; tied weights once
        seen.add(value.data_ptr())
        tensors[key] = value.detach().cpu().contiguous()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    group = next(iter(quant.values())).group_size
    cfg = model.config.to_dict()
    cfg["quantization_config"] = _quant_config(fmt, group, any(m.g_idx is not None for m in quant.values()))
    (out / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _quant_config(fmt: str, group: int, act_order: bool) -> dict:
    if fmt == "gptq":
        return {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": act_order, "sym": False,
                "true_sequential": True, "damp_percent": 0.01, "checkpoint_format": "gptq"}
    return {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm"}


def save_gptq(model, path, tokenizer=None) -> Path:
    """Write an int4-quantized model (ours) as a GPTQ checkpoint folder."""
    return _save(model, tokenizer, path, "gptq", gptq_tensors)


def save_awq(model, path, tokenizer=None) -> Path:
    """Write an int4-quantized model (ours, no act-order) as an AWQ (GEMM) checkpoint folder."""
    return _save(model, tokenizer, path, "awq", awq_tensors)


def _read_checkpoint(path: Path, fmt: str):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a {fmt.upper()} checkpoint folder")
    config = AutoConfig.from_pretrained(path)
    qc = getattr(config, "quantization_config", None) or {}
    qc = qc if isinstance(qc, dict) else qc.to_dict()
    if qc.get("quant_method") != fmt or qc.get("bits") != 4:
        raise ValueError(f"{path}/config.json: expected a 4-bit {fmt!r} quantization_config, got {qc or None}")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} has no .safetensors weights")
    try:
        state = {k: v for f in files for k, v in load_file(str(f)).items()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"checkpoint {path} is corrupt or truncated: {err}") from err
    del config.quantization_config
    return config, state


def _load(path, fmt: str, from_tensors, device=None, dtype=None):
    from transformers import AutoModelForCausalLM

    from inferlab.device import pick_device, torch_dtype

    path = Path(path)
    config, state = _read_checkpoint(path, fmt)
    device = pick_device(device)
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype, device))
    names = sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(".qweight")})
    layers = {}
    for n in names:
        keys = ("qweight", "qzeros", "scales", "g_idx") if fmt == "gptq" else ("qweight", "qzeros", "scales")
        missing = [k for k in keys if f"{n}.{k}" not in state]
        if missing:
            raise ValueError(f"checkpoint {path} is incomplete: layer {n!r} lacks {missing}")
        layers[n] = _checked_layer(from_tensors, {k: state.pop(f"{n}.{k}") for k in keys}, state.pop(f"{n}.bias", None),
                                   model.get_submodule(n), n)
    swap_modules(model, layers)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k.rsplit(".", 1)[0] not in layers
               and not (k.endswith("lm_head.weight") and config.tie_word_embeddings)]
    if missing or result.unexpected_keys:
        raise ValueError(f"checkpoint {path} does not match its config: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.to(device).eval()


def _checked_layer(from_tensors, tensors, bias, original, name) -> Int4Linear:
    layer = from_tensors(tensors, bias)
    if (layer.out_features, layer.in_features) != (original.out_features, original.in_features):
        raise ValueError(f"layer {name!r}: checkpoint shape {(layer.out_features, layer.in_features)} != "
                         f"model shape {(original.out_features, original.in_features)}")
    return layer


def load_gptq_model(path, device: str | None = None, dtype=None, backend: str = "inferlab"):
    """``(model, tokenizer)`` from a GPTQ checkpoint folder: our loader (any device), or
    ``backend="transformers"`` (``GPTQConfig``; needs gptqmodel and optimum)."""
    return _load_pair(path, "gptq", layer_from_gptq, device, dtype, backend)


def load_awq_model(path, device: str | None = None, dtype=None, backend: str = "inferlab"):
    """``(model, tokenizer)`` from an AWQ (GEMM) checkpoint folder; ``backend`` as for GPTQ."""
    return _load_pair(path, "awq", layer_from_awq, device, dtype, backend)


def _load_pair(path, fmt, from_tensors, device, dtype, backend):
    from inferlab.hub import load_tokenizer

    path = Path(path)
    if backend == "transformers":
        model = _load_with_transformers(path, fmt, device, dtype)
    elif backend == "inferlab":
        model = _load(path, fmt, from_tensors, device, dtype)
    else:
        raise ValueError(f"backend must be 'inferlab' or 'transformers', got {backend!r}")
    tok = load_tokenizer(path) if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file() else None
    return model, tok


def _load_with_transformers(path: Path, fmt: str, device, dtype):
    from transformers import AutoModelForCausalLM

    from inferlab.device import pick_device, torch_dtype
    from inferlab.quant.formats import require

    extra = "optimum" if fmt == "gptq" else "accelerate"
    require("gptqmodel", extra, what=f"loading {fmt.upper()} through transformers")
    device = pick_device(device)
    return AutoModelForCausalLM.from_pretrained(path, device_map=device, dtype=torch_dtype(dtype, device)).eval()
