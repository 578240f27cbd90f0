"""Exercise checkers for the notebooks: ``check_...`` functions that say right or wrong, and why.

One module per notebook topic (``inferlab.exercises.kvcache``, ``...paging``, ...). Each
checker returns a :class:`Check` (truthy when right) and prints a one-line verdict, so a
learner sees feedback and a test can assert on it.

Exercises ship open. The notebook's blank is ``answer = None`` or a function whose body is
``raise NotImplementedError``; the checker then prints a neutral "⏳ not answered yet" (never
an error, so a first Run All goes on). Each module keeps its worked answers in ``SOLUTIONS``
(name -> code) and a ``solution(name)`` that prints one: the answer is one call away, and the
tests run every solution through its checker (it must pass) and the blank (it must not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    ok: bool
    message: str
    answered: bool = True

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        if not self.answered:
            return "⏳ " + self.message
        return ("✅ right: " if self.ok else "❌ not yet: ") + self.message

    def _ipython_display_(self) -> None:
        """The verdict was printed when the check ran; don't show it a second time."""


def verdict(ok: bool, right: str, wrong: str, quiet: bool = False) -> Check:
    """Build and print the verdict of a check (``right`` or ``wrong`` message)."""
    result = Check(bool(ok), right if ok else wrong)
    if not quiet:
        print(repr(result))
    return result


def not_answered(hint: str = "") -> Check:
    """The verdict of a blank exercise: neutral, so a first Run All goes on."""
    result = Check(False, "not answered yet" + (f": {hint}" if hint else ""), answered=False)
    print(repr(result))
    return result


class Blank(Exception):
    """Raised by :func:`attempt` when the learner's function is still the blank stub."""


def attempt(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a learner's function; :class:`Blank` if it is still a stub (raises NotImplementedError or returns None)."""
    try:
        got = fn(*args)
    except NotImplementedError as e:
        raise Blank() from e
    if got is None:
        raise Blank()
    return got


def show_solution(solutions: dict[str, str], name: str) -> None:
    """Print the worked answer ``solutions[name]`` (or the names there are)."""
    if name not in solutions:
        print(f"no exercise named {name!r}; try one of: {', '.join(solutions)}")
        return
    print(solutions[name])


def close_enough(value: float, expected: float, rel: float = 1e-3) -> bool:
    return abs(value - expected) <= rel * max(1.0, abs(expected))
