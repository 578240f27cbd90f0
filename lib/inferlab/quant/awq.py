"""AWQ (Lin et al., MLSys 2024): protect the weights that meet large activations by scaling.

A few input channels carry much larger activations than the rest; the weights that multiply
them matter most. Scaling column j of W up by ``s_j`` (and the input down by ``s_j``) leaves
the product unchanged in full precision but shrinks that weight's *relative* rounding error.
AWQ picks ``s = mean|x|^α`` per input channel, with α from a grid search that minimizes the
layer-group output error after quantization, then folds ``1/s`` into the operation that
produced the input (an RMSNorm's weight, or the rows of ``up_proj`` for ``down_proj``), so
the quantized model has no extra work at run time. Layers sharing an input (q/k/v, gate/up)
share one ``s``. Layers whose input has no foldable producer (``o_proj`` under grouped-query
attention) are left unscaled, as in the paper's code.
"""

from __future__ import annotations

import torch

from inferlab.quant import rtn


class InputRecorder:
    """Hooks that record each linear's inputs (up to ``max_rows``) and which module produced them."""

    def __init__(self, model: torch.nn.Module, linears: dict[str, torch.nn.Module], max_rows: int = 1024):
        self.inputs = {n: [] for n in linears}
        self.input_key: dict[str, int] = {}
        self.producers: dict[int, str] = {}
        self.keep: list[torch.Tensor] = []  # hold tensors so their ids are not reused mid-pass
        self.max_rows = max_rows
        self.handles = [m.register_forward_hook(self._linear_hook(n)) for n, m in linears.items()]
        for name, m in model.named_modules():
            w = getattr(m, "weight", None)
            if name not in linears and isinstance(w, torch.Tensor) and w.dim() == 1:
                self.handles.append(m.register_forward_hook(self._producer_hook(name)))

    def _producer_hook(self, name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.shape[-1] == module.weight.shape[0]:
                self.keep.append(output)
                self.producers[id(output)] = name
        return hook

    def _linear_hook(self, name):
        def hook(module, inputs, output):
            x = inputs[0]
            self.keep.append(x)
            self.input_key.setdefault(name, id(x))
            rows = x.detach().reshape(-1, x.shape[-1]).float()
            have = sum(r.shape[0] for r in self.inputs[name])
            if have < self.max_rows:
                self.inputs[name].append(rows[: self.max_rows - have].cpu())
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.keep.clear()


def scale_groups(rec: InputRecorder, names: list[str]) -> list[dict]:
    """Linears grouped by shared input, each with the module to fold ``1/s`` into (or None)."""
    groups: dict[int, dict] = {}
    for name in names:
        key = rec.input_key.get(name)
        if key is None:
            continue
        g = groups.setdefault(key, {"linears": [], "producer": rec.producers.get(key), "rows": None})
        g["linears"].append(name)
    for g in groups.values():
        head = g["linears"][0]
        if g["producer"] is None and head.endswith("down_proj"):
            parent = head.rsplit(".", 1)[0]
            if parent + ".up_proj" in names:
                g["producer"], g["rows"] = f"{parent}.up_proj", "all"
            elif parent + ".gate_up_proj" in names:
                g["producer"], g["rows"] = f"{parent}.gate_up_proj", "second_half"
    return [g for g in groups.values() if g["producer"] is not None]


def search_scale(x: torch.Tensor, weights: list[torch.Tensor], group_size: int, n_grid: int = 20):
    """``(s, α, errors)``: the per-channel scale minimizing ``Σ‖x Wᵀ − (x/s) Q(W·s)ᵀ‖²`` over α ∈ [0, 1]."""
    mean_abs = x.abs().mean(0)
    ref = [x @ w.T for w in weights]
    best, errors = None, []
    for alpha in torch.linspace(0, 1, n_grid).tolist():
        s = mean_abs.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        err = sum(float(((r - (x / s) @ rtn.fake_quantize(w * s, 4, group_size).T) ** 2).mean())
                  for r, w in zip(ref, weights, strict=True))
        errors.append(err)
        if best is None or err < best[2]:
            best = (s, alpha, err)
    return best[0], best[1], errors


def awq_scales(model, linears: dict, weights: dict[str, torch.Tensor], rec: InputRecorder,
               group_size: int, n_grid: int = 20) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Scaled copies of the linear weights and of the producers' weights (nothing is modified)."""
    params = dict(model.named_parameters())
    new_prod: dict[str, torch.Tensor] = {}
    for g in scale_groups(rec, list(linears)):
        x = torch.cat(rec.inputs[g["linears"][0]])
        s, _, _ = search_scale(x, [weights[n] for n in g["linears"]], group_size, n_grid)
        for n in g["linears"]:
            weights[n] = weights[n] * s[None, :]
        _fold(g, s, params, weights, new_prod)
    return weights, new_prod


def _fold(g: dict, s: torch.Tensor, params: dict, weights: dict, new_prod: dict) -> None:
    """Divide the producer's output channels by ``s`` (in the copies)."""
    prod = g["producer"]
    if g["rows"] is None:  # a norm: its 1-D weight
        key = prod + ".weight"
        base = new_prod.get(key, params[key].detach().float())
        new_prod[key] = base / s.to(base.device)
        return
    w = weights[prod]
    if g["rows"] == "all":
        weights[prod] = w / s[:, None]
    else:
        half = w.shape[0] // 2
        weights[prod] = torch.cat([w[:half], w[half:] / s[:, None]])
