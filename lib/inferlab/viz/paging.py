"""Drawings for notebook 02 (paged attention): memory maps, the Fig. 2 breakdown, sharing.

Plotly for the interactive figures (memory-map animation, bars), matplotlib for the static
block-table diagrams. Every function returns its figure; nothing here computes results
(see :mod:`inferlab.paging_sim` and :mod:`inferlab.paging`).
"""

from __future__ import annotations

from typing import Any

from inferlab.viz import PALETTE

__all__ = [
    "block_size_sweep_figure",
    "draw_block_tables",
    "fig2_figure",
    "first_frame_with_content",
    "memory_map_animation",
    "prefix_sharing_figure",
    "sharing_figure",
]

# Memory-map codes: 0-9 a request's token states (colored by request), then the wastes.
RESERVED, NEVER_USED, FREE, EXTERNAL = 10, 11, 12, 13
_STATE_COLORS = ["#d9d9d9", "#E45756", "#ffffff", "#FF9F1C"]
_STATE_NAMES = {RESERVED: "reserved (future tokens)", NEVER_USED: "internal fragmentation",
                FREE: "free", EXTERNAL: "external fragmentation"}
# Requests in blues, greens, teals and purples: no red, orange or grey, which mean waste here.
REQUEST_COLORS = ["#1f5fa8", "#54A24B", "#17a2b8", "#7b4fb5", "#4C78A8", "#2a9d8f", "#9467bd", "#3d8b37",
                  "#0b3c6e", "#6a8fd8"]
CATEGORY_COLORS = {
    "token_states": "#54A24B",
    "reservation": "#BAB0AC",
    "internal_fragmentation": "#E45756",
    "external_fragmentation": "#FF9F1C",
    "free": "#EEEEEE",
}
LABELS = {"orca-max": "Orca (Max)", "orca-pow2": "Orca (Pow2)", "orca-oracle": "Orca (Oracle)", "paged": "paged (vLLM)"}


def _codes(frame: dict[str, Any], external: bool, cols: int):
    """One frame's slots as a [rows, cols] int8 grid of color codes (stored compactly by plotly)."""
    import numpy as np

    rid = np.asarray(frame["rid"], dtype=np.int64)
    kind = np.asarray(frame["kind"], dtype=np.int8)
    codes = np.where(kind == 1, rid % 10, 0).astype(np.int8)
    codes[kind == 2] = RESERVED
    codes[kind == 3] = NEVER_USED
    codes[kind == 0] = EXTERNAL if external else FREE
    return codes.reshape(-1, cols)


def _discrete_colorscale() -> list[list[Any]]:
    colors = REQUEST_COLORS + _STATE_COLORS
    n = len(colors)
    scale = []
    for i, c in enumerate(colors):
        scale += [[i / n, c], [(i + 1) / n, c]]
    return scale


def first_frame_with_content(results: dict[str, Any]) -> int:
    """The first frame index at which every allocator's map holds some token state (frame 0 is empty memory)."""
    import numpy as np

    n_frames = max(len(r.frames) for r in results.values())
    for i in range(n_frames):
        frames = [r.frames[min(i, len(r.frames) - 1)] for r in results.values()]
        if all((np.asarray(f["kind"]) == 1).any() for f in frames):
            return i
    return 0


def memory_map_animation(results: dict[str, Any], cols: int = 64,
                         title: str = "KV memory over time: contiguous vs paged, same trace"):
    """Animate the slot maps recorded by ``simulate(..., frame_every=k)``, one panel per allocator.

    Each cell is a KV slot: colored by request where it holds a token, grey where reserved for
    tokens still to come, red where reserved but never used, orange where free but unusable by
    the waiting request (external fragmentation), white where free.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(results)
    n_frames = max(len(r.frames) for r in results.values())
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[LABELS.get(n, n) for n in names],
                        horizontal_spacing=0.03)
    scale = _discrete_colorscale()

    def grids(i):
        out = []
        for n in names:
            frames = results[n].frames
            f = frames[min(i, len(frames) - 1)]
            out.append(_codes(f, f.get("external", False), cols))
        return out

    def trace(z, col):
        return go.Heatmap(z=z, zmin=-0.5, zmax=13.5, colorscale=scale, showscale=False, xgap=0.5, ygap=0.5,
                          hoverinfo="skip", name=names[col])

    start = first_frame_with_content(results)
    for j, z in enumerate(grids(start)):
        fig.add_trace(trace(z, j), row=1, col=j + 1)
    step_of = lambda i: results[names[0]].frames[min(i, len(results[names[0]].frames) - 1)]["step"]
    fig.frames = [go.Frame(data=[trace(z, j) for j, z in enumerate(grids(i))], name=str(i),
                           traces=list(range(len(names)))) for i in range(n_frames)]
    slider = {"steps": [{"args": [[str(i)], {"frame": {"duration": 0, "redraw": True}, "mode": "immediate"}],
                         "label": str(step_of(i)), "method": "animate"} for i in range(n_frames)],
              "active": start, "currentvalue": {"prefix": "decode step "}, "x": 0.14, "len": 0.86, "y": 0,
              "yanchor": "top", "pad": {"t": 10}}
    play = {"type": "buttons", "showactive": False, "x": 0, "y": 0, "xanchor": "left", "yanchor": "top",
            "pad": {"t": 10},
            "buttons": [{"label": "▶ play", "method": "animate",
                         "args": [None, {"frame": {"duration": 250, "redraw": True}, "fromcurrent": True}]}]}
    fig.update_layout(title=title, sliders=[slider], updatemenus=[play], height=500,
                      margin={"l": 20, "r": 20, "t": 120, "b": 90})
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    for code, label in _STATE_NAMES.items():  # legend for the waste colors
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=label,
                                 marker={"size": 10, "symbol": "square", "color": _STATE_COLORS[code - 10],
                                         "line": {"color": "#888", "width": 1}}), row=1, col=1)
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="token states (one color per request)",
                             marker={"size": 10, "symbol": "square", "color": REQUEST_COLORS[0]}), row=1, col=1)
    fig.update_layout(legend={"orientation": "h", "x": 0, "y": 1.08, "yanchor": "bottom"})  # above the panels
    return fig


def fig2_figure(results: dict[str, Any], paper: dict[str, float] | None = None):
    """Stacked bars of the KV-memory breakdown per allocator, with the paper's token-state share."""
    import plotly.graph_objects as go

    from inferlab.paging_sim import CATEGORIES

    names = list(results)
    # The paper's share goes into the category label, not beside the marker, where it covered our bar's label.
    x = [LABELS.get(n, n) + (f"<br>paper: {100 * paper[n]:.1f}%" if paper and n in paper else "") for n in names]
    fig = go.Figure()
    for cat in CATEGORIES:
        y = [100 * results[n].shares[cat] for n in names]
        fig.add_bar(x=x, y=y, name=cat.replace("_", " "), marker_color=CATEGORY_COLORS[cat],
                    text=[f"{v:.1f}%" if v >= 4 else "" for v in y], textposition="inside")
    if paper:
        fig.add_scatter(x=x, y=[100 * paper.get(n, float("nan")) for n in names], mode="markers",
                        name="paper: token states (Fig. 2)", marker={"symbol": "diamond", "size": 13, "color": "black"})
    fig.update_layout(barmode="stack", title="Where KV-cache memory goes (cf. Kwon et al. 2023, Fig. 2)",
                      yaxis_title="% of KV-cache memory", height=450)
    return fig


def block_size_sweep_figure(rows: list[dict[str, Any]]):
    """Last-block waste (left axis) and block-table entries per sequence (right axis) vs block size."""
    from plotly.subplots import make_subplots

    bs = [r["block_size"] for r in rows]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_scatter(x=bs, y=[100 * r["last_block_waste"] for r in rows], name="waste in last blocks (% of memory)",
                    mode="lines+markers", marker_color=CATEGORY_COLORS["internal_fragmentation"])
    fig.add_scatter(x=bs, y=[r["table_entries_per_seq"] for r in rows], name="block-table entries per sequence",
                    mode="lines+markers", marker_color=PALETTE[0], secondary_y=True)
    fig.update_xaxes(type="log", title="block size (tokens)", tickvals=bs)
    fig.update_yaxes(title="% of KV memory wasted", secondary_y=False)
    fig.update_yaxes(title="table entries per sequence", type="log", secondary_y=True)
    fig.update_layout(title="Block size: less waste vs shorter tables", height=420)
    return fig


def prefix_sharing_figure(result: dict[str, Any]):
    """Blocks used by requests sharing a system prompt, without and with prefix caching."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=["without prefix caching", "with prefix caching"],
                           y=[result["blocks_without_caching"], result["blocks_with_caching"]],
                           marker_color=[CATEGORY_COLORS["internal_fragmentation"], CATEGORY_COLORS["token_states"]],
                           text=[result["blocks_without_caching"], result["blocks_with_caching"]]))
    fig.update_layout(title=(f"{result['num_requests']} requests, {result['system_prompt_len']}-token system prompt: "
                             f"hit rate {100 * result['hit_rate']:.0f}%, memory saved {100 * result['memory_saved']:.0f}%"),
                      yaxis_title="KV blocks in use", height=380)
    return fig


def sharing_figure(ours: dict[str, list[tuple[int, float]]], paper: dict[str, tuple[float, float]]):
    """Memory saved by sharing (ours per n) beside the paper's range (§6.3)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (mode, pts) in enumerate(ours.items()):
        label = "parallel sampling" if mode == "parallel" else "beam search"
        fig.add_bar(x=[f"{label}, n={n}" for n, _ in pts], y=[100 * s for _, s in pts], name=f"ours: {label}",
                    marker_color=PALETTE[i], text=[f"{100 * s:.1f}%" for _, s in pts])
        lo, hi = paper[mode]
        fig.add_scatter(x=[f"{label}, n={n}" for n, _ in pts], y=[100 * lo] * len(pts), mode="lines",
                        line={"dash": "dot", "color": PALETTE[i]}, name=f"paper {label}: {100 * lo:.1f}%")
        fig.add_scatter(x=[f"{label}, n={n}" for n, _ in pts], y=[100 * hi] * len(pts), mode="lines",
                        line={"dash": "dash", "color": PALETTE[i]}, name=f"paper {label}: {100 * hi:.1f}%")
    fig.update_layout(title="Memory saved by sharing KV blocks (Alpaca-like; cf. Kwon et al. 2023 §6.3)",
                      yaxis_title="% of KV blocks saved", height=420)
    return fig


def draw_block_tables(alloc, seq_ids, ax=None, title: str = "", highlight: set[int] | None = None):
    """Draw each sequence's block table (logical blocks) wired to the physical block pool.

    Physical blocks are labeled with their id and ref_count; shared ones (ref_count > 1) are
    shaded, ``highlight`` marks blocks just copied by copy-on-write.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 1.2 + 0.8 * len(seq_ids)))
    highlight = highlight or set()
    used = sorted({b for s in seq_ids for b in alloc.block_table(s)})
    pos = {b: i for i, b in enumerate(used)}
    top = len(seq_ids) + 1.2
    for b, i in pos.items():
        rc = alloc.ref_count(b)
        face = "#FF9F1C" if b in highlight else ("#9ecae1" if rc > 1 else "#e5f5e0")
        ax.add_patch(Rectangle((i * 1.2, top), 1, 0.7, facecolor=face, edgecolor="black"))
        ax.text(i * 1.2 + 0.5, top + 0.35, f"#{b}\nref {rc}", ha="center", va="center", fontsize=8)
    for r, s in enumerate(seq_ids):
        y = len(seq_ids) - r - 0.5
        n = alloc.num_tokens(s)
        ax.text(-0.3, y + 0.3, f"{s} ({n} tok)", ha="right", va="center", fontsize=9)
        for j, b in enumerate(alloc.block_table(s)):
            filled = min(alloc.block_size, n - j * alloc.block_size)
            ax.add_patch(Rectangle((j * 1.2, y), 1, 0.6, facecolor=PALETTE[r % 10], alpha=0.35, edgecolor="black"))
            ax.text(j * 1.2 + 0.5, y + 0.3, f"{filled}/{alloc.block_size}", ha="center", va="center", fontsize=8)
            ax.annotate("", xy=(pos[b] * 1.2 + 0.5, top), xytext=(j * 1.2 + 0.5, y + 0.6),
                        arrowprops={"arrowstyle": "->", "color": PALETTE[r % 10], "alpha": 0.8})
    ax.text(-0.3, top + 0.35, "physical\nblocks", ha="right", va="center", fontsize=9)
    ax.set_xlim(-3, max(len(used), 4) * 1.2 + 0.2)
    ax.set_ylim(-0.2, top + 1)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    return ax
