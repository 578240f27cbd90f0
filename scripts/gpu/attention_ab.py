"""Two versions of the Triton attention backend in one graphed Llama-3-8B batch-1 decode step.

    git show COMMIT:lib/inferlab/attention/paged_triton.py > /tmp/before_paged_triton.py
    python scripts/gpu/attention_ab.py OUT_DIR /tmp/before_paged_triton.py [NAME]

The engine step of ``inferlab.bench.quant`` (random weights, 128 tokens cached, bf16 and int4
linear layers) with the ``attend`` of the module given (``before``) and of the working tree
(``after``) swapped into every layer, each captured as a CUDA graph and timed (median of 30
replays), alternated three times in one process, so both see the same machine. The logits of the
two are compared. Writes ``OUT_DIR/attention-ab-<gpu>.json`` (``NAME`` labels the change).
"""

from __future__ import annotations

import statistics
import sys

from decode_merge import LAYERS, load_previous

from inferlab.attention import paged_triton as pt
from inferlab.bench import save_result
from inferlab.device import capture_cuda_graph_output, time_cuda_graph


def main(out_dir: str, before_path: str, name: str) -> None:
    from inferlab.attention.layer import Attention
    from inferlab.bench.quant import CONTEXT, EngineStep, make_variant
    from inferlab.configs import load_config
    from inferlab.engine.model_runner import ModelRunner

    forms = {"before": load_previous(before_path).attend, "after": pt.attend}
    runner = ModelRunner(load_config("llama-3-8b"), device="cuda", dtype="bfloat16", enforce_eager=True,
                         num_kv_blocks=16)
    rows = []
    for variant in ("bf16", "int4"):
        model = runner.model if variant == "bf16" else make_variant(runner.model, variant)
        attention = [m for m in model.modules() if isinstance(m, Attention)]
        assert len(attention) == LAYERS and all(m.tables for m in attention)
        step = EngineStep(runner, 1, CONTEXT, model)
        row, logits = {"variant": variant}, {}
        for rep in range(3):
            for form, attend in forms.items():
                for m in attention:
                    m.attend = attend
                if rep == 0:
                    graph, out = capture_cuda_graph_output(step.step)
                    graph.replay()
                    logits[form] = out.float().clone()
                row.setdefault(f"{form}_us", []).append(1e6 * statistics.median(time_cuda_graph(step.step, 30)))
        for m in attention:
            m.attend = pt.attend
        row["logits_max_diff"] = float((logits["after"] - logits["before"]).abs().max()
                                       / logits["before"].abs().max())
        rows.append(row)
        print(row, flush=True)
    save_result("attention-ab", {"change": name, "method": __doc__.split("\n\n")[2].replace("\n", " "),
                                 "engine_steps": rows}, out_dir)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
