"""Notebook 04: serving latencies against concurrency (drawing only; ``inferlab.bench.serve`` measures)."""

from __future__ import annotations

from typing import Any

from inferlab.viz import PALETTE

PANELS = [("ttft", "time to first token (ms)"), ("itl", "inter-token latency (ms)"), ("e2e", "end-to-end (ms)")]


def latency_vs_concurrency(series: dict[str, list[dict[str, Any]]], title: str = "") -> Any:
    """p50 (solid) and p99 (dashed) of TTFT, ITL and end-to-end latency per concurrency, one colour per series.

    ``series``: label -> the ``runs`` list of a ``bench serve`` result.
    """
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in PANELS])
    for i, (label, runs) in enumerate(series.items()):
        xs = [r["concurrency"] for r in runs]
        for col, (key, _) in enumerate(PANELS, start=1):
            for q, dash in (("p50", "solid"), ("p99", "dash")):
                fig.add_scatter(x=xs, y=[r[f"{key}_{q}_ms"] for r in runs], mode="lines+markers",
                                name=f"{label} {q}", legendgroup=f"{label} {q}", showlegend=col == 1,
                                line={"color": PALETTE[i % len(PALETTE)], "dash": dash}, row=1, col=col)
    fig.update_xaxes(type="log", title_text="concurrent clients")
    fig.update_yaxes(type="log")
    fig.update_layout(title=title, height=380, margin={"t": 70})
    return fig


def throughput_vs_concurrency(series: dict[str, list[dict[str, Any]]], title: str = "") -> Any:
    """Output tokens per second against concurrency, one line per series."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (label, runs) in enumerate(series.items()):
        fig.add_scatter(x=[r["concurrency"] for r in runs], y=[r["output_throughput_tok_s"] for r in runs],
                        mode="lines+markers", name=label, line={"color": PALETTE[i % len(PALETTE)]})
    fig.update_layout(title=title, xaxis={"type": "log", "title": "concurrent clients"},
                      yaxis={"title": "output tokens / s"}, height=340)
    return fig
