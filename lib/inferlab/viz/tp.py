"""Notebook 08 drawings: who holds which slice of each weight, and times against batch.

Every function takes computed results (:func:`inferlab.tp.sharding_layout`, the
``inferlab.bench.tp`` rows); each interactive figure has a static matplotlib twin.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from inferlab.viz import PALETTE

MATRICES = ["q_proj", "k_proj, v_proj", "o_proj", "gate_proj, up_proj", "down_proj"]


def _rectangles(layout: list[dict[str, Any]]) -> dict[str, list[tuple[float, float, float, float, dict]]]:
    """Per matrix, ``(x0, x1, y0, y1, slice)`` in [0, 1]: rows split top to bottom, columns left to right.

    Ranks that hold the same slice (replicated KV heads) share it side by side.
    """
    sizes = {m: max(s["stop"] for s in layout if s["matrix"] == m) for m in MATRICES}
    groups = defaultdict(list)
    for s in layout:
        groups[(s["matrix"], s["start"], s["stop"])].append(s)
    out = defaultdict(list)
    for (matrix, start, stop), slices in groups.items():
        a, b = start / sizes[matrix], stop / sizes[matrix]
        for i, s in enumerate(slices):
            c, e = i / len(slices), (i + 1) / len(slices)
            out[matrix].append((a, b, c, e, s) if s["axis"] == "cols" else (c, e, 1 - b, 1 - a, s))
    return out


def sharding_figure(layout: list[dict[str, Any]], title: str):
    """Plotly: the five weight matrices of a layer, each slice coloured by the rank holding it (hover: what)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rects = _rectangles(layout)
    fig = make_subplots(rows=1, cols=len(MATRICES), subplot_titles=MATRICES, horizontal_spacing=0.03)
    for col, matrix in enumerate(MATRICES, start=1):
        for x0, x1, y0, y1, s in rects[matrix]:
            color = PALETTE[s["rank"] % len(PALETTE)]
            fig.add_shape(type="rect", x0=x0, x1=x1, y0=y0, y1=y1, fillcolor=color, opacity=0.85,
                          line=dict(color="white", width=1), row=1, col=col)
            fig.add_trace(go.Scatter(x=[(x0 + x1) / 2], y=[(y0 + y1) / 2], mode="text", text=[f"r{s['rank']}"],
                                     hovertext=[f"rank {s['rank']}: {s['what']}"], hoverinfo="text",
                                     showlegend=False), row=1, col=col)
    fig.update_xaxes(visible=False, range=[0, 1])
    fig.update_yaxes(visible=False, range=[0, 1])
    fig.update_layout(title=title, height=300, margin=dict(t=80, b=20))
    return fig


def sharding_static(layout: list[dict[str, Any]], title: str):
    """The static twin of :func:`sharding_figure`."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rects = _rectangles(layout)
    fig, axes = plt.subplots(1, len(MATRICES), figsize=(12, 2.8), dpi=80)
    for ax, matrix in zip(axes, MATRICES, strict=True):
        for x0, x1, y0, y1, s in rects[matrix]:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=PALETTE[s["rank"] % len(PALETTE)],
                                   edgecolor="white", alpha=0.85))
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, f"r{s['rank']}", ha="center", va="center", fontsize=8)
        ax.set_title(matrix, fontsize=9)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plt.show()
    return fig


def lines_figure(series: dict[str, tuple[list, list]], title: str, xlabel: str, ylabel: str, log: bool = True):
    """Plotly: one line per named series ``name -> (xs, ys)``."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, (xs, ys)) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, line=dict(color=PALETTE[i % len(PALETTE)])))
    kind = "log" if log else "linear"
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, height=380, xaxis_type=kind, yaxis_type=kind)
    return fig
