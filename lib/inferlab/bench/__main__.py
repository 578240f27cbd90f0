"""``python -m inferlab.bench NAME [options]``: run the benchmark module ``inferlab.bench.NAME``."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import inferlab.bench as _pkg


def available() -> list[str]:
    """Benchmark modules: those of the package that define ``main`` (workloads, peers are helpers)."""
    names = []
    for m in pkgutil.iter_modules(_pkg.__path__):
        origin = Path(m.module_finder.path) / f"{m.name}.py"
        if not m.name.startswith("_") and origin.is_file() and "\ndef main(" in origin.read_text():
            names.append(m.name)
    return sorted(names)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: python -m inferlab.bench NAME [options]\n\nbenchmarks: " + ", ".join(names))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"unknown benchmark {name!r}; choose one of: {', '.join(names)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"inferlab.bench.{name}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
