"""Every exercise ships open: its worked solution passes its checker, and its blank does not (neutrally)."""

from __future__ import annotations

import pytest

from inferlab.exercises import Check, batching, flash, kvcache, paging, speculative, welcome


@pytest.fixture(scope="module")
def tiny_tok():
    import inferlab as il

    return il.load_model("tiny", device="cpu")[1]


def _stub(*_args):
    raise NotImplementedError("your code here")


# name -> (module, how to check the object the solution defines; the name that object has)
EXERCISES = {
    "token_count": (welcome, lambda a, ns: welcome.check_token_count("    return x", a, ns["tiny_tok"]), "answer"),
    "dtype": (welcome, lambda a, ns: welcome.check_dtype_choice("cuda", has_bf16=False, answer=a), "answer"),
    "kv_per_token": (kvcache, lambda f, ns: kvcache.check_kv_per_token(f), "kv_per_token"),
    "max_sequences": (kvcache, lambda a, ns: kvcache.check_max_sequences(a, "llama-3-8b", "A100 80 GB", 8192), "answer"),
    "decode_bound": (kvcache, lambda a, ns: kvcache.check_decode_bound(a, "llama-3.2-1b", 4.8e12), "answer"),
    "slot": (paging, lambda f, ns: paging.check_slot(f), "slot"),
    "max_waste": (paging, lambda a, ns: paging.check_max_waste(a, 32, 16), "answer"),
    "cow_count": (paging, lambda a, ns: paging.check_cow_count(a, 20, 16, 4), "answer"),
    "last_token_index": (batching, lambda f, ns: batching.check_last_token_index(f), "last_token_index"),
    "static_waste": (batching, lambda a, ns: batching.check_static_waste(a, [10, 80, 20, 30, 5, 5, 5, 60], 4), "answer"),
    "min_kv_blocks": (batching, lambda a, ns: batching.check_min_kv_blocks(a, 100, 200, 16, 1024), "answer"),
    "preemption_victim": (batching, lambda a, ns: batching.check_preemption_victim(a, ["a", "b", "c", "d"]), "answer"),
    "residual": (speculative, lambda f, ns: speculative.check_residual(f), "residual"),
    "expected_tokens": (speculative, lambda f, ns: speculative.check_expected_tokens(f), "expected_tokens"),
    "best_k": (speculative, lambda a, ns: speculative.check_best_k(a, 0.8, 0.1), "answer"),
    "merge": (flash, lambda f, ns: flash.check_merge(f), "merge"),
    "score_bytes": (flash, lambda a, ns: flash.check_score_bytes(a), "answer"),
    "causal_tiles": (flash, lambda a, ns: flash.check_causal_tiles(a), "answer"),
}


def test_every_solution_has_a_check():
    for module in (welcome, kvcache, paging, batching, speculative, flash):
        assert set(module.SOLUTIONS) <= set(EXERCISES), f"{module.__name__}: add its new solutions to EXERCISES"


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_solution_passes(name, tiny_tok, capsys):
    module, check, defines = EXERCISES[name]
    ns = {"tiny_tok": tiny_tok, "math": __import__("math"), "expected_speedup": speculative.expected_speedup}
    exec(module.SOLUTIONS[name], ns)
    result = check(ns[defines], ns)
    assert isinstance(result, Check) and result.ok and result.answered, result.message
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_blank_is_not_answered_and_does_not_raise(name, tiny_tok, capsys):
    module, check, defines = EXERCISES[name]
    blank = None if defines == "answer" else _stub
    result = check(blank, {"tiny_tok": tiny_tok})
    assert not result.ok and not result.answered
    out = capsys.readouterr().out
    assert "not answered yet" in out and "❌" not in out and "✅" not in out


def test_a_wrong_answer_is_wrong_not_blank(capsys):
    result = paging.check_max_waste(32 * 16, 32, 16)
    assert not result.ok and result.answered and "❌" in capsys.readouterr().out
    assert not speculative.check_residual(lambda p, q: p).ok  # the widely copied tutorial's rule
    assert "the widely copied tutorial" in capsys.readouterr().out


def test_dtype_aliases_are_accepted(capsys):
    for alias in ("fp16", "float16", "torch.float16", "half", "FP16"):
        assert welcome.check_dtype_choice("cuda", has_bf16=False, answer=alias).ok, alias
    assert not welcome.check_dtype_choice("cuda", has_bf16=False, answer="bf16").ok
    assert not welcome.check_dtype_choice("cuda", has_bf16=False, answer="no-such-dtype").ok


def test_solution_prints_the_answer(capsys):
    paging.solution("slot")
    assert "block_table[position // block_size]" in capsys.readouterr().out
    paging.solution("nope")
    assert "try one of" in capsys.readouterr().out
