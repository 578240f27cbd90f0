"""Two versions of the Triton attention backend in one graphed Llama-3-8B batch-1 decode step.

    git show COMMIT:lib/inferlab/attention/paged_triton.py > scripts/gpu/_before_paged_triton.py
    python scripts/gpu/attention_ab.py OUT_DIR scripts/gpu/_before_paged_triton.py [NAME]

The engine step of ``inferlab.bench.quant`` (random weights, 128 tokens cached, bf16 and int4
linear layers) with the ``attend`` of the module given (``before``) and of the working tree
(``after``) swapped into every layer, each captured as a CUDA graph and timed (median of 30
replays), alternated three times in one process, so both see the same machine. The logits of the
two are compared. A version from before 1e8b7af, whose decode kernel does not store the step's K/V,
runs with the store kernel its layer ran first (``attention_forms.attend_of``). Writes ``OUT_DIR/attention-ab-<gpu>.json`` (``NAME`` labels the change).
"""

from __future__ import annotations

import sys

from attention_forms import attend_of, engine_step_forms, load_module

from inferlab.attention import paged_triton as pt
from inferlab.bench import save_result


def main(out_dir: str, before_path: str, name: str) -> None:
    forms = {"before": attend_of(load_module(before_path)), "after": pt.attend}
    save_result("attention-ab", {"change": name, "method": __doc__.split("\n\n")[2].replace("\n", " "),
                                 "engine_steps": engine_step_forms(forms, reps=3)}, out_dir)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
