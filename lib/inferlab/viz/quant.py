"""Drawings for notebook 06 (quantization). Every function takes computed results and returns a
plotly figure or text; the numbers come from :mod:`inferlab.quant` and :mod:`inferlab.bench.quant`."""

from __future__ import annotations

import math
from typing import Any

from inferlab.viz import PALETTE

__all__ = ["decode_figure", "error_bits_figure", "gptq_figure", "histogram_figure", "myth_table", "nf4_figure",
           "quality_figure"]


def histogram_figure(series: dict[str, tuple[Any, Any]], title: str):
    """Histograms (log counts, so the rare outliers show), given as ``{name: (bin centers, counts)}``,
    one panel each, since weights and activations live on very different scales."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(series), subplot_titles=list(series))
    for i, (name, (centers, counts)) in enumerate(series.items()):
        fig.add_trace(go.Bar(x=[float(c) for c in centers], y=[float(c) for c in counts], name=name,
                             marker_color=PALETTE[i % len(PALETTE)], showlegend=False), row=1, col=i + 1)
    fig.update_layout(title=title, height=340, bargap=0)
    fig.update_yaxes(type="log", title_text="count (log)", col=1)
    fig.update_yaxes(type="log")
    fig.update_xaxes(title_text="value")
    return fig


def error_bits_figure(rows: list[dict]):
    """Relative weight error vs bits, one line per grouping (rows: bits, grouping, rel_error)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, grouping in enumerate(dict.fromkeys(r["grouping"] for r in rows)):
        sel = [r for r in rows if r["grouping"] == grouping]
        fig.add_trace(go.Scatter(x=[r["bits"] for r in sel], y=[r["rel_error"] for r in sel], name=grouping,
                                 mode="lines+markers", marker_color=PALETTE[i]))
    fig.update_layout(title="Round-to-nearest: error halves with every extra bit", xaxis_title="bits per weight",
                      yaxis_title="‖W − Q(W)‖ / ‖W‖ (log)", yaxis_type="log", height=340)
    return fig


def nf4_figure(nf4_levels, int4_levels):
    """The NF4 codebook and the uniform int4 grid against the standard normal density."""
    import plotly.graph_objects as go

    xs = [i / 50 for i in range(-150, 151)]
    pdf = [math.exp(-x * x / 2 / (1 / 2.5) ** 2) for x in xs]  # N(0, σ) with σ = max/2.5, peak 1
    fig = go.Figure(go.Scatter(x=xs, y=pdf, name="normal density (weights)", line_color="#999"))
    for i, (name, levels, y) in enumerate((("NF4 levels", nf4_levels, 0.08), ("int4 (uniform) levels", int4_levels, 0.02))):
        fig.add_trace(go.Scatter(x=[float(v) for v in levels], y=[y] * len(levels), mode="markers", name=name,
                                 marker={"size": 9, "symbol": "line-ns-open", "line": {"width": 2}, "color": PALETTE[i]}))
    fig.update_layout(title="NF4 puts its 16 levels where normal weights are dense", xaxis_title="w / absmax",
                      yaxis_title="density (peak = 1)", height=340)
    return fig


def gptq_figure(report: dict):
    """Per-column weight error of RTN and GPTQ for one layer (GPTQ trades weight error for output error)."""
    import plotly.graph_objects as go

    cols = list(range(len(report["rtn_col_error"])))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=cols, y=report["rtn_col_error"], name="round-to-nearest", line_color=PALETTE[3]))
    fig.add_trace(go.Scatter(x=cols, y=report["gptq_col_error"], name="GPTQ", line_color=PALETTE[0]))
    fig.update_layout(title=(f"{report['layer']}: output error RTN {report['rtn_output_error']:.3g} → GPTQ "
                             f"{report['gptq_output_error']:.3g}"), xaxis_title="input column (quantization order)",
                      yaxis_title="mean |w − q| in the column", height=340)
    return fig


def quality_figure(rows: list[dict]):
    """Perplexity against weight bytes, one point per method (lower left is better)."""
    import plotly.graph_objects as go

    ok = [r for r in rows if "perplexity" in r]
    fig = go.Figure(go.Scatter(x=[r["weight_bytes"] / 1e6 for r in ok], y=[r["perplexity"] for r in ok],
                               text=[r["method"] for r in ok], mode="markers+text", textposition="top center",
                               marker={"size": 10, "color": PALETTE[0]}))
    fig.update_layout(title="What each format costs in quality and saves in bytes", xaxis_title="weight bytes (MB)",
                      yaxis_title="held-out perplexity", height=380)
    return fig


def decode_figure(rows: list[dict], title: str = "Decode step, CUDA-graphed"):
    """Tokens/s per variant at each batch size, one panel per model shape (rows of the decode table)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig = make_subplots(rows=1, cols=len(shapes), subplot_titles=shapes)
    for j, batch in enumerate(sorted({r["batch"] for r in rows if "batch" in r})):
        for k, shape in enumerate(shapes):
            sel = [r for r in rows if r["shape"] == shape and r.get("batch") == batch]
            fig.add_trace(go.Bar(x=[r["variant"] for r in sel], y=[r["tok_s"] for r in sel], name=f"batch {batch}",
                                 marker_color=PALETTE[j], showlegend=k == 0), row=1, col=k + 1)
    fig.update_layout(title=title, barmode="group", yaxis_title="tokens/s (log)", height=380)
    fig.update_yaxes(type="log")
    return fig


def myth_table(claims: list[tuple[str, str, str]]) -> str:
    """A Markdown table: (format, the tutorial's claim, what we measured)."""
    lines = ["| format | the tutorial says | measured here |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in claims]
    return "\n".join(lines)
