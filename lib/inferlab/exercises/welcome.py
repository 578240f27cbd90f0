"""Checks for notebook 00 (welcome and setup)."""

from __future__ import annotations

from inferlab.exercises import Check, verdict


def check_token_count(text: str, answer: int, tokenizer) -> Check:
    """Did the learner count the tokens the tokenizer really produces for ``text``?"""
    truth = len(tokenizer.encode(text))
    return verdict(
        answer == truth,
        f"{text!r} is {truth} tokens.",
        f"{text!r} is not {answer} tokens; encode it with tokenizer.encode(...) and count "
        "(byte-level BPE merges frequent byte pairs, so common words and indentation are few tokens).",
    )


def check_dtype_choice(device: str, has_bf16: bool, answer: str) -> Check:
    """Which dtype does inferlab pick? cpu → float32; cuda with bf16 → bfloat16; else float16."""
    if device == "cpu":
        truth = "float32"
    elif device == "cuda":
        truth = "bfloat16" if has_bf16 else "float16"
    else:
        truth = "float16"
    answer = answer.replace("torch.", "")
    return verdict(
        answer == truth,
        f"on {device} ({'with' if has_bf16 else 'without'} bf16) inferlab loads {truth}.",
        f"not {answer}: think about what the hardware computes fast (a T4 has no bf16; CPUs prefer float32).",
    )
