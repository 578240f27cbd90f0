"""The headline ratio of issue 15, measured again: int4 over bf16 tokens/s, Llama-3-8B shape, batch 1.

    python scripts/gpu/quant_ratio.py OUT_DIR [RUNS]

Runs ``inferlab.bench.quant.decode_table("llama-3-8b", "cuda", batches=(1,), variants=("bf16",
"int4"))`` RUNS times (default 3) in one process, one after the other: the same graphed engine step
as the recorded ``python -m inferlab.bench quant``. bf16's step moves by a few percent from run to
run, so one run is not enough to say where the ratio lies. Writes ``OUT_DIR/quant-ratio-<gpu>.json``.
"""

from __future__ import annotations

import statistics
import sys

from inferlab.bench import save_result
from inferlab.bench.quant import decode_table


def main(out_dir: str, runs: int) -> None:
    rows = []
    for _ in range(runs):
        table = {row["variant"]: row for row in decode_table("llama-3-8b", "cuda", batches=(1,),
                                                             variants=("bf16", "int4"))}
        bf16, int4 = table["bf16"]["tok_s"], table["int4"]["tok_s"]
        rows.append({"bf16_tok_s": bf16, "int4_tok_s": int4, "ratio": int4 / bf16,
                     "bf16_ms": table["bf16"]["ms_per_step"], "int4_ms": table["int4"]["ms_per_step"]})
        print(f"bf16 {bf16:.1f} tok/s, int4 {int4:.1f} tok/s: {int4 / bf16:.3f}x", flush=True)
    ratios = [r["ratio"] for r in rows]
    save_result("quant-ratio", {"method": __doc__.split("\n\n")[2].replace("\n", " "), "runs": rows,
                                "ratio_min": min(ratios), "ratio_median": statistics.median(ratios),
                                "ratio_max": max(ratios)}, out_dir)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
