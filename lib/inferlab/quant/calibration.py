"""Text for calibration and evaluation, and the forward passes that feed the hooks.

Calibration (GPTQ's Hessians, AWQ's activation statistics) uses standard-library modules the
embedded models were trained on; perplexity uses the modules they never saw (the trainer's
held-out list), so a quantizer cannot tune itself to the test text.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch

CALIBRATION_MODULES = ("collections/__init__.py", "functools.py", "argparse.py", "pathlib/_local.py",
                       "pathlib.py", "logging/__init__.py", "typing.py")


def _stdlib_file(rel: str) -> str:
    path = Path(sysconfig.get_paths()["stdlib"]) / rel
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""


def stdlib_text(split: str = "heldout", max_chars: int = 60_000) -> str:
    """Held-out (the tiny models' unseen modules) or calibration source, at most ``max_chars``."""
    if split == "heldout":
        from inferlab.tools.train_tiny import HELDOUT_MODULES

        names = [f"{m}/__init__.py" for m in HELDOUT_MODULES] + [f"{m}.py" for m in HELDOUT_MODULES]
    elif split == "calibration":
        names = list(CALIBRATION_MODULES)
    else:
        raise ValueError(f"split must be 'heldout' or 'calibration', got {split!r}")
    text = "\n\n".join(t for t in map(_stdlib_file, names) if t)
    return text[:max_chars]


def token_windows(tokenizer, text: str, length: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows ``[n, length]`` of the token stream of ``text``."""
    if not isinstance(text, str) or not text:
        raise ValueError("text must be a non-empty string")
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    n = ids.numel() // length
    if n == 0:
        raise ValueError(f"text has {ids.numel()} tokens, fewer than one window of {length}")
    n = min(n, max_windows) if max_windows else n
    return ids[: n * length].view(n, length)


def model_device(model: torch.nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def as_windows(calibration, tokenizer, length: int = 256, max_windows: int = 16) -> torch.Tensor:
    """Calibration given as text (with ``tokenizer``) or token ids, as a ``[n, length]`` tensor."""
    if isinstance(calibration, str):
        if tokenizer is None:
            raise ValueError("calibration text needs a tokenizer: pass tokenizer=...")
        return token_windows(tokenizer, calibration, length, max_windows)
    if isinstance(calibration, torch.Tensor) and calibration.dtype == torch.long and calibration.dim() in (1, 2):
        return calibration.view(1, -1) if calibration.dim() == 1 else calibration
    raise TypeError("calibration must be text (str) or a LongTensor of token ids, got "
                    f"{type(calibration).__name__}")


@torch.no_grad()
def run_forward(model, windows: torch.Tensor, batch_size: int = 4) -> None:
    """Push the windows through the model (a transformers causal LM), for the hooks."""
    device = model_device(model)
    for i in range(0, windows.shape[0], batch_size):
        model(input_ids=windows[i:i + batch_size].to(device))


def linear_inputs(model, names: list[str], windows: torch.Tensor, max_rows: int = 4096) -> dict[str, torch.Tensor]:
    """The inputs ``[rows, in]`` that the named linear layers see on ``windows`` (for plots and studies)."""
    from inferlab.quant.awq import InputRecorder

    rec = InputRecorder(model, {n: model.get_submodule(n) for n in names}, max_rows)
    try:
        run_forward(model, windows)
    finally:
        rec.remove()
    return {n: torch.cat(rec.inputs[n]) for n in names}
