"""``quantize(model, method)``: swap every linear layer for its quantized counterpart, in place.

Everything is computed first (calibration, GPTQ's compensation, AWQ's scales, the packed
buffers) and the model is changed only at the end, in one step: a call that fails on bad
input leaves the model exactly as it was.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from inferlab.quant import awq, gptq, rtn
from inferlab.quant.calibration import as_windows, run_forward
from inferlab.quant.linear import (
    Int4Linear,
    Int8Linear,
    NF4Linear,
    QuantLinear,
    find_linears,
    swap_modules,
)

METHODS = {"int8": 8, "int8-zp": 8, "int4": 4, "nf4": 4, "gptq": 4, "awq": 4}


def _validate(model, method: str, bits: int | None, group_size: int, targets: dict) -> int:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    bits = METHODS[method] if bits is None else bits
    if bits != METHODS[method]:
        raise ValueError(f"bits={bits!r} is not supported by method={method!r}; it is {METHODS[method]}-bit")
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ValueError("model is already quantized (it holds QuantLinear modules); load a fresh copy")
    if not targets:
        raise ValueError("model has no nn.Linear layers to quantize (check skip=...)")
    if method in ("int4", "gptq", "awq"):
        for name, m in targets.items():
            try:
                rtn.check_group_size(group_size, m.in_features)
            except ValueError as err:
                raise ValueError(f"{err} (layer {name!r}); pick a group_size that divides every width") from None
    if method == "nf4":
        for name, m in targets.items():
            if m.weight.numel() % rtn.NF4_BLOCK:
                raise ValueError(f"layer {name!r} has {m.weight.numel()} weights, not a multiple of {rtn.NF4_BLOCK}")
    return bits


def _bias(m: nn.Linear):
    return None if m.bias is None else m.bias.detach()


def _rtn_module(method: str, w: torch.Tensor, bias, group_size: int, double_quant: bool) -> QuantLinear:
    if method in ("int8", "int8-zp"):
        return Int8Linear.from_float(w, bias, zero_point=method == "int8-zp")
    if method == "nf4":
        return NF4Linear.from_float(w, bias, double_quant)
    return Int4Linear.from_float(w, bias, group_size)


def _layer_groups(names) -> list[list[str]]:
    """Linear names grouped by decoder layer (``...layers.N.``), in order; the rest last."""
    groups: dict[str, list[str]] = {}
    for n in names:
        head, sep, tail = n.partition("layers.")
        key = head + sep + tail.split(".")[0] if sep and tail.split(".")[0].isdigit() else "~rest"
        groups.setdefault(key, []).append(n)
    return list(groups.values())


def _gptq_modules(model, targets, windows, group_size, act_order) -> dict[str, QuantLinear]:
    """GPTQ one decoder layer at a time on a working copy, so each layer's Hessian sees the
    inputs the already-quantized layers before it produce (the paper's sequential order)."""
    work = copy.deepcopy(model)
    for names in _layer_groups(list(targets)):
        mods = {n: work.get_submodule(n) for n in names}
        col = gptq.HessianCollector(mods)
        try:
            run_forward(work, windows)
        finally:
            col.remove()
        new = {}
        for name, m in mods.items():
            H = col.H[name] if col.H[name] is not None else torch.zeros(m.in_features, m.in_features)
            r = gptq.gptq_quantize(m.weight, H.to(m.weight.device), 4, group_size, act_order)
            g_idx = r["g_idx"] if act_order else None
            new[name] = Int4Linear.from_codes(r["codes"], r["scales"], r["zeros"], g_idx, _bias(m))
        swap_modules(work, {n: q.to(m.weight.device) for n, q in new.items()})
    return {n: work.get_submodule(n) for n in targets}


def _awq_modules(model, targets, windows, group_size, n_grid):
    rec = awq.InputRecorder(model, targets)
    try:
        run_forward(model, windows)
    finally:
        rec.remove()
    weights = {n: m.weight.detach().float().cpu() for n, m in targets.items()}
    weights, norms = awq.awq_scales(model, targets, weights, rec, group_size, n_grid)
    mods = {n: Int4Linear.from_float(weights[n], _bias(targets[n]), group_size) for n in targets}
    return mods, norms


@torch.no_grad()
def quantize(model: nn.Module, method: str = "int8", bits: int | None = None, group_size: int = 128,
             calibration=None, tokenizer=None, skip=("lm_head",), double_quant: bool = True,
             act_order: bool = False, n_grid: int = 20) -> nn.Module:
    """Quantize ``model``'s linear layers in place and return it.

    ``method``: "int8" (absmax per channel), "int8-zp" (zero-point), "int4" (group-wise RTN),
    "nf4" (QLoRA, ``double_quant``), "gptq" (4-bit, ``act_order``) or "awq" (4-bit); ``bits``,
    when given, must match the method.
    GPTQ and AWQ need ``calibration``: text (with ``tokenizer``) or token ids ``[n, T]``.
    ``skip``: layer names left in full precision (the LM head by default: it is often tied
    to the embedding).
    """
    targets = find_linears(model, skip) if isinstance(model, nn.Module) else {}
    bits = _validate(model, method, bits, group_size, targets)
    norms: dict[str, torch.Tensor] = {}
    if method in ("gptq", "awq"):
        if calibration is None:
            raise ValueError(f"method={method!r} needs calibration= text (with tokenizer=) or token ids")
        windows = as_windows(calibration, tokenizer)
        if method == "gptq":
            new = _gptq_modules(model, targets, windows, group_size, act_order)
        else:
            new, norms = _awq_modules(model, targets, windows, group_size, n_grid)
    else:
        new = {n: _rtn_module(method, m.weight, _bias(m), group_size, double_quant) for n, m in targets.items()}
    params = dict(model.named_parameters())
    device = next(iter(targets.values())).weight.device
    swap_modules(model, {n: m.to(device) for n, m in new.items()})
    for key, value in norms.items():
        params[key].data.copy_(value.to(params[key].dtype))
    return model
