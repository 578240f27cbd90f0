"""Checks for notebook 06 (quantization).

Each exercise ships open: the blank answer is ``None`` (or a function that raises
``NotImplementedError``), which prints "not answered yet" instead of stopping Run All;
:func:`solution` prints a worked answer, one click away.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from inferlab.exercises import Blank, Check, attempt, not_answered, show_solution, verdict

SOLUTIONS = {
    "absmax": '''def absmax_int8(w):
    scale = w.abs().amax(dim=1) / 127                  # one scale per output row: its largest |w| maps to 127
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale''',
    "int4_bytes": "answer = 4096 * 4096 // 2 + 4096 * (4096 // 128) * (2 + 1)   # codes, then an fp16 scale + a zero byte per group = 8,781,824",
    "bound": "answer = bf16_bytes / int4_bytes   # decode at batch 1 reads every weight once per token: time ∝ bytes",
}


def solution(name: str) -> None:
    """Print the worked answer of exercise ``name`` (one of :data:`SOLUTIONS`)."""
    show_solution(SOLUTIONS, name)


def check_absmax(fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> Check:
    """Does ``fn(w) -> (q, scale)`` quantize ``w [out, in]`` to int8 with one absmax scale per row?"""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=g) * torch.rand(16, 1, generator=g) * 3
    try:
        q, scale = attempt(fn, w.clone())
    except Blank:
        return not_answered("write absmax_int8(w), or run solution('absmax')")
    except Exception as e:  # a learner's bug is a wrong answer, not a crash
        return verdict(False, "", f"absmax_int8 raised {type(e).__name__}: {e}")
    if q.dtype != torch.int8 or tuple(q.shape) != tuple(w.shape) or scale.numel() != w.shape[0]:
        return verdict(False, "", "return q as int8 of w's shape, and one scale per row (dim 0)")
    err = (q.float() * scale.float().view(-1, 1) - w).abs()
    ok = bool((err <= scale.float().view(-1, 1) / 2 + 1e-6).all()) and int(q.abs().max()) == 127
    return verdict(ok, f"max error {float(err.max()):.4f}, never more than half a step (scale/2) in any row: "
                   "that is round-to-nearest with the range used to the last code.",
                   "some weight is off by more than half a step, or no weight reaches ±127: "
                   "scale = max|w| / 127 per row, then round.")


def check_int4_bytes(answer: int | None, out_features: int = 4096, in_features: int = 4096, group: int = 128) -> Check:
    """Bytes of an int4 layer with fp16 scales and one zero-point byte per group (our :class:`Int4Linear`)."""
    if answer is None:
        return not_answered("half a byte per weight, plus what each group stores")
    groups = out_features * (in_features // group)
    truth = out_features * in_features // 2 + groups * 3
    fp16 = out_features * in_features * 2
    return verdict(int(answer) == truth, f"{truth:,} bytes, {truth / fp16:.1%} of fp16: "
                   f"{8 * truth / (out_features * in_features):.3f} bits per weight once the group constants count.",
                   f"not {answer:,}: {out_features * in_features // 2:,} bytes of codes plus {groups:,} groups × "
                   "(2-byte scale + 1-byte zero).")


def check_bound(answer: float | None, bf16_bytes: int, int4_bytes: int, measured: float | None = None) -> Check:
    """The most int4 can speed up a decode step that only reads weights: the ratio of bytes read."""
    if answer is None:
        return not_answered("what does a batch-1 decode step spend its time on?")
    truth = bf16_bytes / int4_bytes
    note = f" The H200 measured {measured:.2f}×: the rest is the kernel, not the format." if measured else ""
    return verdict(abs(float(answer) - truth) < 0.02 * truth,
                   f"at most {truth:.2f}× (bytes {bf16_bytes / 1e9:.2f} GB → {int4_bytes / 1e9:.2f} GB).{note}",
                   f"not {answer}: at batch 1 a step's time is the time to read the weights once.")
