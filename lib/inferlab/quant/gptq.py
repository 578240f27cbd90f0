"""GPTQ (Frantar et al., ICLR 2023): quantize one column at a time and push its error onto
the columns not yet quantized, weighted by the inverse Hessian of the layer's squared error.

For a linear layer with inputs X the loss of a change ΔW is ``‖X ΔWᵀ‖²``, whose Hessian is
``H = 2 XᵀX`` (collected from calibration text). Quantizing column q leaves an error
``e = (w_q − quant(w_q)) / [H⁻¹]_qq`` that the remaining columns absorb as
``W[:, q:] −= e · [H⁻¹]_{q, q:}`` (Optimal Brain Surgeon, one column at a time). The paper's
Cholesky form takes the upper Cholesky factor of H⁻¹ once, which gives every row of the
successive inverses directly; columns are processed in blocks of 128 with lazy updates.
``act_order`` quantizes the columns with the largest Hessian diagonal first (§4 of the paper,
"desc_act" in checkpoints); each column's group then comes from ``g_idx``.
"""

from __future__ import annotations

import torch

from inferlab.quant import rtn

BLOCK = 128


def hessian_inverse_factor(H: torch.Tensor, percdamp: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹`` with λ = ``percdamp`` × mean diagonal (the paper's damping)."""
    H = H.clone()
    damp = percdamp * torch.mean(torch.diag(H))
    H += damp * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    L = torch.linalg.cholesky(H)
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)


def _dead_columns(W: torch.Tensor, H: torch.Tensor) -> None:
    """Inputs that were always zero carry no information: pin them (H_ii = 1, w = 0)."""
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0


def _quant_column(w, scale, zero, qmax):
    code = torch.clamp(torch.round(w / scale) + zero, 0, qmax)
    return code, (code - zero) * scale


def _compensate_block(W, Hinv, i1, i2, bits, group_size, params, out):
    """Quantize columns ``i1:i2`` one by one, spreading each error over the block's later columns."""
    qmax = 2**bits - 1
    W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
    err1 = torch.zeros_like(W1)
    for i in range(i2 - i1):
        col = i1 + i
        if col % group_size == 0:  # group constants from the weights as updated so far
            params.append(rtn.asym_params(W1[:, i:i + group_size], bits))
        scale, zero = params[-1]
        code, deq = _quant_column(W1[:, i], scale, zero, qmax)
        out["codes"][:, col] = code.to(torch.uint8)
        err = (W1[:, i] - deq) / Hinv1[i, i]
        out["loss"][col] = ((W1[:, i] - deq) ** 2 / Hinv1[i, i] ** 2).sum() / 2
        W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
        err1[:, i] = err
    W[:, i2:] -= err1 @ Hinv[i1:i2, i2:]


def gptq_quantize(weight: torch.Tensor, H: torch.Tensor, bits: int = 4, group_size: int = 128,
                  act_order: bool = False, percdamp: float = 0.01) -> dict[str, torch.Tensor]:
    """Quantize ``weight [out, in]`` given the input Hessian ``H [in, in]``.

    Returns codes (uint8, original column order), per-group ``scales``/``zeros`` ``[out, G]``,
    ``g_idx [in]`` (each column's group) and ``loss [in]`` (the error each column left, the
    quantity GPTQ minimizes, for plotting column by column).
    """
    W = rtn._check_matrix(weight).clone()
    H = H.detach().float().clone()
    rtn.check_group_size(group_size, W.shape[1])
    _dead_columns(W, H)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(W.shape[1])
    W, H = W[:, perm], H[perm][:, perm]
    Hinv = hessian_inverse_factor(H, percdamp)
    out = {"codes": torch.zeros_like(W, dtype=torch.uint8), "loss": torch.zeros(W.shape[1])}
    params: list[tuple[torch.Tensor, torch.Tensor]] = []
    for i1 in range(0, W.shape[1], BLOCK):
        _compensate_block(W, Hinv, i1, min(i1 + BLOCK, W.shape[1]), bits, group_size, params, out)
    inv = torch.argsort(perm)
    g_of_sorted = torch.arange(W.shape[1]) // group_size
    return {"codes": out["codes"][:, inv], "scales": torch.stack([p[0] for p in params], 1),
            "zeros": torch.stack([p[1] for p in params], 1).to(torch.uint8),
            "g_idx": g_of_sorted[inv].to(torch.int32), "loss": out["loss"][inv]}


class HessianCollector:
    """Forward hooks that accumulate ``H = 2/n Σ x xᵀ`` for each named linear layer."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.H = {name: None for name in modules}
        self.n = dict.fromkeys(modules, 0)
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name):
        def hook(module, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()
            if self.H[name] is None:
                self.H[name] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
            n_old, n_new = self.n[name], self.n[name] + x.shape[0]
            self.H[name] *= n_old / n_new
            self.H[name] += (2.0 / n_new) * x.T @ x
            self.n[name] = n_new
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def column_report(weight: torch.Tensor, x: torch.Tensor, group_size: int = 64, name: str = "layer") -> dict:
    """RTN vs GPTQ on one layer with inputs ``x [n, in]``: mean |w − q| per column, and output error
    ``‖x Wᵀ − x Qᵀ‖² / ‖x Wᵀ‖²`` (GPTQ moves weights further, so that outputs stay closer)."""
    W = weight.detach().float()
    x = x.float()
    r = gptq_quantize(W, 2 * x.T @ x / x.shape[0], 4, group_size)
    q_gptq = rtn.dequantize_grouped(r["codes"], r["scales"], r["zeros"], r["g_idx"])
    q_rtn = rtn.fake_quantize(W, 4, group_size)
    ref = x @ W.T
    out_err = lambda q: float(((ref - x @ q.T) ** 2).sum() / (ref**2).sum())
    return {"layer": name, "rtn_col_error": (W - q_rtn).abs().mean(0).tolist(),
            "gptq_col_error": (W - q_gptq).abs().mean(0).tolist(),
            "rtn_output_error": out_err(q_rtn), "gptq_output_error": out_err(q_gptq)}
