"""``python -m inferlab.bench paging [--write-traces]``: the allocators' memory simulator beside
the vLLM paper (Kwon et al., SOSP 2023): Fig. 2 on the ShareGPT-like trace, §6.3 sharing
savings on the Alpaca-like trace. ``--write-traces`` regenerates data/traces/ (fixed seeds).
"""

from __future__ import annotations

import argparse

from inferlab.bench.workloads import load_trace, write_default_traces
from inferlab.paging_sim import (
    PAPER_SHARING_SAVINGS_ALPACA,
    compare_allocators,
    format_fig2,
    sharing_savings,
)


def main(argv: list[str] | None = None) -> int:
    """Print Fig. 2 and §6.3, ours beside the paper's (or rewrite the committed traces)."""
    p = argparse.ArgumentParser(prog="python -m inferlab.bench paging", description=main.__doc__)
    p.add_argument("--write-traces", action="store_true", help="regenerate data/traces/ (fixed seeds)")
    p.add_argument("--memory-tokens", type=int, default=16384)
    p.add_argument("--num-requests", type=int, default=1000)
    args = p.parse_args(argv)
    if args.write_traces:
        for path in write_default_traces():
            print(f"wrote {path}")
        return 0
    results = compare_allocators(load_trace("sharegpt")[: args.num_requests], args.memory_tokens)
    print(f"Fig. 2 (ShareGPT-like, {args.memory_tokens} KV slots)\n" + format_fig2(results))
    alpaca = load_trace("alpaca")
    for mode in ("parallel", "beam"):
        lo, hi = PAPER_SHARING_SAVINGS_ALPACA[mode]
        ours = ", ".join(f"n={n}: {100 * sharing_savings(alpaca, mode, n)['saving']:.1f}%" for n in (2, 4, 6))
        print(f"§6.3 {mode:8s} saving, ours: {ours}; paper: {100 * lo:.1f}%-{100 * hi:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
