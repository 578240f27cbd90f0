"""Honest benchmarks: ours and the peer (Hugging Face transformers) side by side, in one process.

Every benchmark is a CLI entry point, ``python -m inferlab.bench NAME [options]``, where
NAME is a module of this package (``inferlab.bench.NAME``) exposing ``main(argv) -> int``.
Results are JSON written with :func:`save_result`, which stamps the hardware, the library
versions and the date, so a number never travels without its context.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def environment() -> dict[str, Any]:
    """Hardware and versions for a result file (uses :func:`inferlab.device.env_report`)."""
    from inferlab.device import env_report

    env = env_report(print_it=False)
    env["date"] = time.strftime("%Y-%m-%d")
    env["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return env


def save_result(name: str, payload: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """Write ``{"benchmark": name, "environment": ..., **payload}`` to ``out_dir/NAME-<device>.json``.

    ``out_dir`` defaults to data/results/. The device tag is "h200" style for GPUs
    (from the GPU name) and "cpu" otherwise, so live CPU runs never overwrite GPU records.
    """
    from inferlab.paths import results_dir

    env = environment()
    tag = "cpu"
    if env.get("gpu_name"):
        tag = env["gpu_name"].lower().replace("nvidia", "").strip().split()[0]
    out = Path(out_dir) if out_dir is not None else results_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{tag}.json"
    path.write_text(json.dumps({"benchmark": name, "environment": env, **payload}, indent=2, default=str) + "\n")
    return path


def load_result(name: str, device_tag: str = "h200") -> dict[str, Any] | None:
    """The recorded result ``data/results/NAME-TAG.json``, or None when there is none."""
    from inferlab.paths import results_dir

    path = results_dir() / f"{name}-{device_tag}.json"
    return json.loads(path.read_text()) if path.is_file() else None
