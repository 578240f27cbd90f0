"""Byte units, decimal and binary, never mixed: a "1.07 GB" cache is 1 GiB.

``format_bytes(n, "GiB")`` or ``format_bytes(n, "GB")``: the unit is always said.
"""

from __future__ import annotations

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB}


def format_bytes(n: float, unit: str = "GiB", digits: int = 2) -> str:
    """``format_bytes(2**30, "GiB") == "1.00 GiB"``; ``format_bytes(2**30, "GB") == "1.07 GB"``.

    ``unit="auto"`` picks the largest binary unit below ``n``; ``"auto10"`` the decimal one.
    """
    if unit in {"auto", "auto10"}:
        names = ["TiB", "GiB", "MiB", "KiB"] if unit == "auto" else ["TB", "GB", "MB", "KB"]
        unit = next((u for u in names if abs(n) >= UNITS[u]), "B")
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; accepted: {', '.join(UNITS)}, auto, auto10")
    if unit == "B":
        return f"{int(n):,} B"
    return f"{n / UNITS[unit]:,.{digits}f} {unit}"
