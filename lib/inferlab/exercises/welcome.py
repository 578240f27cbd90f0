"""Checks for notebook 00 (welcome and setup)."""

from __future__ import annotations

from inferlab.device import torch_dtype
from inferlab.exercises import Check, not_answered, show_solution, verdict

SOLUTIONS = {
    "token_count": 'answer = len(tiny_tok.encode("    return x"))   # let the tokenizer count: 4 spaces may be one token',
    "dtype": 'answer = "float16"   # a T4 has no bfloat16; float32 would double the memory and run far slower',
}


def solution(name: str) -> None:
    """Print the worked answer of exercise ``name`` (one of :data:`SOLUTIONS`)."""
    show_solution(SOLUTIONS, name)


def check_token_count(text: str, answer: int | None, tokenizer) -> Check:
    """Did the learner count the tokens the tokenizer really produces for ``text``?"""
    if answer is None:
        return not_answered("count with tokenizer.encode(...), or run solution('token_count')")
    truth = len(tokenizer.encode(text))
    return verdict(
        answer == truth,
        f"{text!r} is {truth} tokens.",
        f"{text!r} is not {answer} tokens; encode it with tokenizer.encode(...) and count "
        "(byte-level BPE merges frequent byte pairs, so common words and indentation are few tokens).",
    )


def _dtype_or_none(answer: str):
    try:
        return torch_dtype(str(answer))
    except ValueError:
        return None


def check_dtype_choice(device: str, has_bf16: bool, answer: str | None) -> Check:
    """Which dtype does inferlab pick? cpu → float32; cuda with bf16 → bfloat16; else float16.

    Any alias the library accepts counts ("fp16", "half", "torch.float16", ...).
    """
    if answer is None:
        return not_answered("a string such as 'float32', or run solution('dtype')")
    if device == "cpu":
        truth = "float32"
    elif device == "cuda":
        truth = "bfloat16" if has_bf16 else "float16"
    else:
        truth = "float16"
    given = _dtype_or_none(answer)
    return verdict(
        given is not None and given == torch_dtype(truth),
        f"on {device} ({'with' if has_bf16 else 'without'} bf16) inferlab loads {truth}.",
        f"not {answer}: think about what the hardware computes fast (a T4 has no bf16; CPUs prefer float32).",
    )
