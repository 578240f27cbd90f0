"""Perplexity: exp of the mean next-token negative log-likelihood over held-out text.

The standard yardstick of quantization papers (GPTQ, AWQ and QLoRA all report WikiText-2
perplexity); here the text is standard-library source the embedded models never saw.
Windows do not overlap, so every token is scored once with at most ``window`` tokens of context.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from inferlab.quant.calibration import model_device, token_windows


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "reference_logits"):  # the engine's runner: one sequence at a time
        return torch.stack([model.reference_logits(row.tolist()) for row in ids])
    return model(input_ids=ids).logits


@torch.no_grad()
def perplexity(model, tokenizer, text: str, window: int = 256, max_windows: int | None = 32,
               batch_size: int = 8) -> float:
    """Perplexity of ``model`` on ``text`` (a transformers causal LM, or the engine's runner)."""
    if not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an int >= 2, got {window!r}")
    windows = token_windows(tokenizer, text, window, max_windows)
    device = model_device(getattr(model, "model", model))
    nll, count = 0.0, 0
    for i in range(0, windows.shape[0], batch_size):
        ids = windows[i:i + batch_size].to(device)
        logits = _logits(model, ids).float()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
        nll += float(loss)
        count += ids[:, 1:].numel()
    return math.exp(nll / count)
