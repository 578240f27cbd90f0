"""Notebook 06's exercise checkers: the worked solutions pass, the blanks and wrong answers do not."""

import torch

from inferlab.exercises import quant as ex


def _solution_fn(name: str, fn: str):
    scope = {"torch": torch}
    exec(ex.SOLUTIONS[name], scope)
    return scope[fn]


def test_absmax_solution_passes_blank_and_wrong_do_not():
    assert ex.check_absmax(_solution_fn("absmax", "absmax_int8"))

    def blank(w):
        raise NotImplementedError

    assert not ex.check_absmax(blank)
    truncating = lambda w: ((w / (w.abs().amax(1) / 127)[:, None]).to(torch.int8), w.abs().amax(1) / 127)  # noqa: E731
    assert not ex.check_absmax(truncating)  # truncation, not rounding: errors up to a full step


def test_int4_bytes_and_bound():
    scope = {}
    exec(ex.SOLUTIONS["int4_bytes"], scope)
    assert ex.check_int4_bytes(scope["answer"]) and not ex.check_int4_bytes(None)
    assert not ex.check_int4_bytes(4096 * 4096 // 2)
    scope = {"bf16_bytes": 16e9, "int4_bytes": 4e9}
    exec(ex.SOLUTIONS["bound"], scope)
    assert ex.check_bound(scope["answer"], 16e9, 4e9, measured=0.9)
    assert not ex.check_bound(None, 16e9, 4e9) and not ex.check_bound(2.0, 16e9, 4e9)
