"""Exercise checkers for the notebooks: ``check_...`` functions that say right or wrong, and why.

One module per notebook topic (``inferlab.exercises.kvcache``, ``...paging``, ...). Each
checker returns a :class:`Check` (truthy when right) and prints a one-line verdict, so a
learner sees feedback and a test can assert on it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return ("✅ right: " if self.ok else "❌ not yet: ") + self.message

    def _ipython_display_(self) -> None:
        """The verdict was printed when the check ran; don't show it a second time."""


def verdict(ok: bool, right: str, wrong: str, quiet: bool = False) -> Check:
    """Build and print the verdict of a check (``right`` or ``wrong`` message)."""
    result = Check(bool(ok), right if ok else wrong)
    if not quiet:
        print(repr(result))
    return result


def close_enough(value: float, expected: float, rel: float = 1e-3) -> bool:
    return abs(value - expected) <= rel * max(1.0, abs(expected))
