"""Drawings of the engine-speed benchmark (``python -m inferlab.bench engine``, data/results/engine-h200.json).

- :func:`systems_figure`: output tokens/s of transformers (static batches, continuous batching)
  and inferlab on the reference workload, the recorded H200 run beside a live one.
- :func:`batch1_figure`: batch-1 decode tokens/s: ``generate``, ours eager and CUDA-graphed, the bound.
- :func:`decode_modes_figure`: notebook 01's live step: eager vs graphed vs the bandwidth bound.
- :func:`profile_text`: the top GPU kernels of a decode step, eager and graphed (where the time went).
"""

from __future__ import annotations

from typing import Any

from inferlab.viz import PALETTE

SYSTEM_LABELS = {"hf_static": "transformers generate<br>(static batches of 32)",
                 "hf_continuous": "transformers<br>generate_batch", "inferlab": "inferlab LLMEngine"}


def systems_figure(recorded: dict[str, Any] | None, live: dict[str, Any] | None = None,
                   title: str = "Output tokens/s on the reference workload"):
    """Bars per system: the recorded run (its GPU) and, when given, the live run's inferlab."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if recorded:
        systems = recorded.get("systems", {})
        names = [k for k in SYSTEM_LABELS if systems.get(k, {}).get("output_tok_s")]
        fig.add_bar(x=[SYSTEM_LABELS[k] for k in names], y=[systems[k]["output_tok_s"] for k in names],
                    name=f"recorded ({recorded.get('gpu') or 'GPU'})", marker_color=PALETTE[0],
                    text=[f"{systems[k]['output_tok_s']:,.0f}" for k in names], textposition="outside")
    if live and live.get("inferlab"):
        fig.add_bar(x=[SYSTEM_LABELS["inferlab"]], y=[live["inferlab"]["output_tok_s"]],
                    name=f"live ({live.get('device')}, {live.get('model')}, {live.get('requests')} requests)",
                    marker_color=PALETTE[1], text=[f"{live['inferlab']['output_tok_s']:,.0f}"], textposition="outside")
    fig.update_layout(title=title, yaxis_title="output tokens/s", barmode="group", height=380)
    return fig


def batch1_figure(recorded: dict[str, Any], title: str = "Batch-1 decode, tokens/s (higher is better)"):
    """``generate`` (plain, static cache + compile), ours (eager, CUDA graph) and the memory-bandwidth bound."""
    import plotly.graph_objects as go

    b1 = recorded.get("batch1", {})
    rows = [("generate", b1.get("hf_tok_s")), ("generate, static cache<br>+ torch.compile", b1.get("hf_static_compile_tok_s")),
            ("inferlab eager", b1.get("inferlab_eager_tok_s")), ("inferlab CUDA graph", b1.get("inferlab_tok_s")),
            ("bound (weights / bandwidth)", b1.get("bound_tok_s"))]
    rows = [(k, v) for k, v in rows if v]
    colors = [PALETTE[2 if "generate" in k else 7 if "bound" in k else 0] for k, _ in rows]
    fig = go.Figure(go.Bar(x=[k for k, _ in rows], y=[v for _, v in rows], marker_color=colors,
                           text=[f"{v:,.0f}" for _, v in rows], textposition="outside"))
    fig.update_layout(title=title, yaxis_title="tokens/s", height=380)
    return fig


def decode_modes_figure(result: dict[str, Any], title: str | None = None):
    """One live decode step: eager, CUDA graph (on CUDA) and the bound, in tokens/s."""
    import plotly.graph_objects as go

    rows = [(mode, result[mode]["tok_s"]) for mode in ("eager", "graphed") if mode in result]
    rows.append(("bound", result["bound_tok_s"]))
    fig = go.Figure(go.Bar(x=[k for k, _ in rows], y=[v for _, v in rows],
                           marker_color=[PALETTE[0], PALETTE[1], PALETTE[7]][:len(rows) - 1] + [PALETTE[7]],
                           text=[f"{v:,.0f}" for _, v in rows], textposition="outside"))
    fig.update_layout(title=title or f"Engine decode step on {result['device']}: batch {result['batch']}, "
                      f"context {result['context']}", yaxis_title="tokens/s", yaxis_type="log", height=340)
    return fig


def profile_text(profile: dict[str, list[dict[str, Any]]], top: int = 5) -> str:
    """The top kernels (ms per step) of each profiled decode step, as a plain table."""
    lines = []
    for name, rows in profile.items():
        lines.append(f"{name}:")
        for r in rows[:top]:
            if "error" in r:
                lines.append(f"  (not profiled: {r['error']})")
                continue
            lines.append(f"  {r['ms_per_step']:8.3f} ms  x{r['calls_per_step']:<4} {r['name'][:70]}")
    return "\n".join(lines)


def summary_text(recorded: dict[str, Any]) -> str:
    """The recorded run in three sentences, every number from the JSON."""
    s, b1, r = recorded.get("systems", {}), recorded.get("batch1", {}), recorded.get("ratios", {})
    ours = s.get("inferlab", {})
    parts = [f"On the {recorded.get('gpu')}, inferlab produced {ours.get('output_tok_s', 0):,.0f} output tokens/s "
             f"(TTFT p50 {ours.get('ttft_p50_s', 0):.2f} s, TPOT p50 {1000 * ours.get('tpot_p50_s', 0):.1f} ms)."]
    for peer in ("hf_static", "hf_continuous"):
        if s.get(peer, {}).get("output_tok_s"):
            parts.append(f"{SYSTEM_LABELS[peer].replace('<br>', ' ')}: {s[peer]['output_tok_s']:,.0f} tokens/s "
                         f"(inferlab is {r.get(f'inferlab_over_{peer}', 0):.1f}x that).")
    if b1.get("inferlab_tok_s") and b1.get("bound_tok_s"):
        parts.append(f"Batch-1 decode: {b1['inferlab_tok_s']:,.0f} tokens/s, {100 * b1['inferlab_tok_s'] / b1['bound_tok_s']:.0f}% "
                     f"of the {b1['bound_tok_s']:,.0f} tokens/s bandwidth bound.")
    return " ".join(parts)
