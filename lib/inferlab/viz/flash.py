"""Drawings for notebook 07 (FlashAttention): the tiling, step by step; memory and time vs length.

Every function takes computed results (a tile schedule from
:func:`inferlab.attention.flash.tile_schedule`, a payload from
:func:`inferlab.bench.attention.run` or its recorded JSON) and returns a figure; plotly for the
interactive ones, matplotlib for their static twins.
"""

from __future__ import annotations

from typing import Any

from inferlab.paging import cdiv
from inferlab.viz import PALETTE

__all__ = ["memory_time_figure", "speedup_static", "tiling_animation", "tiling_static"]

# tile states: score tiles (rows: query tiles, columns: key/value tiles), then the two strips
TODO, DONE, NOW, SKIPPED, IN_SRAM, IN_HBM = range(6)
STATE_COLORS = ["#ffffff", "#9ecae9", "#F58518", "#d9d9d9", "#F58518", "#eeeeee"]
STATE_NAMES = {TODO: "not computed yet", DONE: "folded into (m, l, acc), then discarded",
               NOW: "scores being computed (fast memory)", SKIPPED: "never computed (above the causal diagonal)"}
VARIANT_COLORS = {"naive": PALETTE[3], "sdpa-math": PALETTE[1], "sdpa-flash": PALETTE[0], "sdpa-efficient": PALETTE[4],
                  "sdpa-cudnn": PALETTE[6], "flex": PALETTE[5], "ours-torch": PALETTE[8], "ours-triton": PALETTE[2]}


def _n_tiles(schedule, q_len: int, kv_len: int) -> tuple[int, int, int, int]:
    bq = schedule[0].q_end - schedule[0].q_start if schedule else q_len
    bk = schedule[0].k_end - schedule[0].k_start if schedule else kv_len
    return cdiv(q_len, bq), cdiv(kv_len, bk), bq, bk


def tile_states(schedule, q_len: int, kv_len: int, step: int):
    """The ``[1 + query tiles, 1 + key tiles]`` grid of states after ``step`` (0-based) of ``schedule``:
    row 0 is the K/V strip, column 0 the Q strip (which tiles sit in fast memory), the rest score tiles."""
    import numpy as np

    nq, nk, bq, bk = _n_tiles(schedule, q_len, kv_len)
    grid = np.full((nq + 1, nk + 1), SKIPPED, dtype=np.int8)
    grid[0, :], grid[:, 0] = IN_HBM, IN_HBM
    for i, t in enumerate(schedule):
        grid[1 + t.q_start // bq, 1 + t.k_start // bk] = DONE if i < step else (NOW if i == step else TODO)
    now = schedule[step]
    grid[0, 1 + now.k_start // bk] = IN_SRAM
    grid[1 + now.q_start // bq, 0] = IN_SRAM
    grid[0, 0] = TODO
    return grid


def _caption(schedule, step: int) -> str:
    t = schedule[step]
    mask = ", causal mask applied" if t.masked else ""
    return (f"step {step + 1}/{len(schedule)}: Q rows {t.q_start}-{t.q_end - 1} and K/V rows "
            f"{t.k_start}-{t.k_end - 1} in fast memory{mask}")


def _colorscale() -> list[list[Any]]:
    n = len(STATE_COLORS)
    return [[c, STATE_COLORS[i]] for i in range(n) for c in (i / n, (i + 1) / n)]


def tiling_animation(schedule, q_len: int, kv_len: int, title: str = "FlashAttention's tiles, step by step"):
    """Plotly slider/animation over the steps of ``schedule``: the score matrix as tiles, with the
    Q tile (left strip) and K/V tile (top strip) that sit in fast memory at each step."""
    import plotly.graph_objects as go

    def heat(step):
        return go.Heatmap(z=tile_states(schedule, q_len, kv_len, step), zmin=-0.5, zmax=len(STATE_COLORS) - 0.5,
                          colorscale=_colorscale(), showscale=False, xgap=2, ygap=2, hoverinfo="skip")

    steps = range(len(schedule))
    fig = go.Figure(data=[heat(0)], frames=[go.Frame(data=[heat(i)], name=str(i),
                                                     layout={"title": {"text": _caption(schedule, i)}})
                                            for i in steps])
    slider = {"steps": [{"args": [[str(i)], {"frame": {"duration": 0, "redraw": True}, "mode": "immediate"}],
                         "label": str(i + 1), "method": "animate"} for i in steps],
              "currentvalue": {"prefix": "step "}, "pad": {"t": 40}}
    play = {"type": "buttons", "showactive": False, "x": 0, "y": -0.2, "xanchor": "left", "yanchor": "top",
            "buttons": [{"label": "▶ play", "method": "animate",
                         "args": [None, {"frame": {"duration": 300, "redraw": True}, "fromcurrent": True}]}]}
    fig.update_layout(title={"text": f"{title}<br><sub>{_caption(schedule, 0)}</sub>"}, sliders=[slider],
                      updatemenus=[play], height=520, width=620, margin={"l": 60, "r": 20, "t": 80, "b": 120})
    fig.update_xaxes(title="key/value tiles (top strip: K, V tile in fast memory)", showticklabels=False)
    fig.update_yaxes(title="query tiles (left strip: Q tile in fast memory)", showticklabels=False,
                     autorange="reversed")
    for code, label in STATE_NAMES.items():
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=label, marker={
            "size": 11, "symbol": "square", "color": STATE_COLORS[code], "line": {"color": "#888", "width": 1}}))
    fig.update_layout(legend={"orientation": "h", "y": -0.45}, plot_bgcolor="white")
    return fig


def tiling_static(schedule, q_len: int, kv_len: int, steps: list[int] | None = None):
    """Matplotlib small multiples of the same drawing at a few steps (the static twin)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    steps = steps if steps is not None else sorted({0, len(schedule) // 3, 2 * len(schedule) // 3, len(schedule) - 1})
    fig, axes = plt.subplots(1, len(steps), figsize=(3.2 * len(steps), 3.6), dpi=80, squeeze=False)
    cmap = ListedColormap(STATE_COLORS)
    for ax, step in zip(axes[0], steps, strict=True):
        grid = tile_states(schedule, q_len, kv_len, step)
        ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(STATE_COLORS) - 0.5)
        ax.set_xticks([x - 0.5 for x in range(grid.shape[1] + 1)], minor=True)
        ax.set_yticks([y - 0.5 for y in range(grid.shape[0] + 1)], minor=True)
        ax.grid(which="minor", color="#888", linewidth=0.6)
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
        ax.set_title(f"step {step + 1}/{len(schedule)}", fontsize=10)
    axes[0][0].set_ylabel("Q tiles (strip: in fast memory)")
    handles = [Patch(facecolor=STATE_COLORS[c], edgecolor="#888", label=n) for c, n in STATE_NAMES.items()]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


def _series(payload: dict[str, Any], key: str, scale: float):
    """``{variant: (lengths, values)}`` for the rows that have ``key``."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for row in payload["rows"]:
        if key in row and row.get(key) is not None and "seconds_min" in row:
            xs, ys = out.setdefault(row["variant"], ([], []))
            xs.append(row["seq_len"])
            ys.append(row[key] * scale)
    return out


PANELS = (("peak_bytes", 2.0 ** -20, "peak extra memory (MiB)"), ("seconds_min", 1e3, "time per call (ms)"))


def memory_time_figure(payload: dict[str, Any], title: str):
    """Plotly: peak extra memory and time per call vs sequence length, log-log, one line per variant."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=[p[2] for p in PANELS], horizontal_spacing=0.1)
    for col, (key, scale, _) in enumerate(PANELS, start=1):
        for name, (xs, ys) in _series(payload, key, scale).items():
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name, legendgroup=name,
                                     showlegend=col == 1, line={"color": VARIANT_COLORS.get(name)}), row=1, col=col)
    fig.update_xaxes(type="log", title="sequence length (tokens)")
    fig.update_yaxes(type="log")
    fig.update_layout(title=title, height=420, legend={"orientation": "h", "y": -0.25})
    return fig


def speedup_static(ratios: list[dict[str, Any]], title: str):
    """Matplotlib bars of speed-up and memory saving vs a baseline, per variant, at each length
    (``ratios`` from :func:`inferlab.bench.attention.ratios`)."""
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r["variant"] for r in ratios))
    lengths = sorted({r["seq_len"] for r in ratios})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), dpi=80)
    width = 0.8 / max(1, len(variants))
    for ax, key, label in zip(axes, ("speedup", "memory_saving"), ("× faster", "× less memory"), strict=True):
        for j, name in enumerate(variants):
            by = {r["seq_len"]: r[key] for r in ratios if r["variant"] == name}
            xs = [i + j * width for i, n in enumerate(lengths) if n in by]
            ax.bar(xs, [by[n] for n in lengths if n in by], width, label=name, color=VARIANT_COLORS.get(name))
        ax.axhline(1.0, color="#444", linewidth=0.8)
        ax.axhspan(2, 4, color="#EECA3B", alpha=0.2, label="the tutorial's 2-4x")
        ax.set_yscale("log")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(lengths))], [str(n) for n in lengths])
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(label)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig
