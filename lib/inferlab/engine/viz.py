"""Drawings of what the engine did, from its step trace (``engine.trace``).

- :func:`slot_gantt`: batch slots over time; each bar is a request occupying a slot,
  coloured prefill / decode / padding (a finished row still computing in a static batch);
  preemptions are marked with an x.
- :func:`pool_usage`: used KV blocks per step, with preemptions.
- :func:`latency_vs_rate`: throughput, TTFT and TPOT against the arrival rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inferlab.engine.llm_engine import StepRecord
from inferlab.viz import PALETTE

COLORS = {"prefill": PALETTE[1], "decode": PALETTE[0], "padding": "#BBBBBB", "preempted": PALETTE[3]}


def assign_slots(trace: Sequence[StepRecord]) -> dict[str, int]:
    """Give each request the lowest slot free during its whole span (first to last step it ran)."""
    spans: dict[str, list[int]] = {}
    for rec in trace:
        for rid, _, _ in rec.entries:
            spans.setdefault(rid, [rec.step, rec.step])[1] = rec.step
    slots: dict[str, int] = {}
    busy_until: list[int] = []
    for rid, (first, last) in sorted(spans.items(), key=lambda kv: kv[1][0]):
        slot = next((i for i, end in enumerate(busy_until) if end < first), len(busy_until))
        if slot == len(busy_until):
            busy_until.append(last)
        busy_until[slot] = last
        slots[rid] = slot
    return slots


def _segments(trace: Sequence[StepRecord], x: str):
    """Merge consecutive steps of one request and one kind into bars: (rid, kind, start, end)."""
    open_bars: dict[str, list] = {}
    bars = []
    t0 = trace[0].start if trace else 0.0
    for rec in trace:
        begin, end = (rec.start - t0, rec.end - t0) if x == "time" else (rec.step, rec.step + 1)
        for rid, kind, _ in rec.entries:
            bar = open_bars.get(rid)
            if bar and bar[1] == kind and bar[4] == rec.step - 1:
                bar[3], bar[4] = end, rec.step
            else:
                bar = [rid, kind, begin, end, rec.step]
                open_bars[rid] = bar
                bars.append(bar)
    return [tuple(b[:4]) for b in bars]


def slot_gantt(trace: Sequence[StepRecord], title: str = "", x: str = "time", height: int = 320):
    """Plotly Gantt chart of batch slots (y) over time or steps (x)."""
    import plotly.graph_objects as go

    slots = assign_slots(trace)
    fig = go.Figure()
    for kind in ("prefill", "decode", "padding"):
        bars = [b for b in _segments(trace, x) if b[1] == kind]
        if bars:
            fig.add_trace(go.Bar(
                y=[slots[b[0]] for b in bars], x=[b[3] - b[2] for b in bars], base=[b[2] for b in bars],
                orientation="h", name=kind, marker_color=COLORS[kind], hovertext=[b[0] for b in bars],
                hovertemplate="%{hovertext}<extra>" + kind + "</extra>",
            ))
    _mark_preemptions(fig, trace, slots, x)
    fig.update_layout(barmode="overlay", title=title, height=height, bargap=0.15,
                      xaxis_title="seconds" if x == "time" else "engine step", yaxis_title="batch slot",
                      legend={"orientation": "h", "y": -0.25})
    fig.update_yaxes(autorange="reversed", dtick=1)
    return fig


def _mark_preemptions(fig, trace, slots, x: str) -> None:
    import plotly.graph_objects as go

    t0 = trace[0].start if trace else 0.0
    xs, ys, names = [], [], []
    for rec in trace:
        for rid in rec.preempted:
            if rid in slots:
                xs.append(rec.start - t0 if x == "time" else rec.step)
                ys.append(slots[rid])
                names.append(rid)
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="preempted", hovertext=names,
                                 marker={"symbol": "x", "size": 11, "color": COLORS["preempted"]}))


def pool_usage(trace: Sequence[StepRecord], num_blocks: int, title: str = "KV blocks in use"):
    import plotly.graph_objects as go

    steps = [r.step for r in trace]
    fig = go.Figure(go.Scatter(x=steps, y=[num_blocks - r.num_free_blocks for r in trace], mode="lines",
                               name="blocks in use", line={"color": PALETTE[0]}))
    pre = [r for r in trace if r.preempted]
    if pre:
        fig.add_trace(go.Scatter(x=[r.step for r in pre], y=[num_blocks - r.num_free_blocks for r in pre],
                                 mode="markers", name="preemption", marker={"symbol": "x", "size": 10, "color": COLORS["preempted"]}))
    fig.add_hline(y=num_blocks, line_dash="dot", annotation_text="pool size")
    fig.update_layout(title=title, height=280, xaxis_title="engine step", yaxis_title="blocks")
    return fig


def latency_vs_rate(rows: list[dict[str, Any]], title: str = ""):
    """Three panels (throughput, TTFT, TPOT) against arrival rate, one line per policy."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=("throughput (tok/s)", "TTFT (ms)", "TPOT (ms)"))
    for i, name in enumerate(sorted({r["name"] for r in rows})):
        mine = sorted((r for r in rows if r["name"] == name), key=lambda r: r["rate"])
        rates = [r["rate"] for r in mine]
        color = PALETTE[i]
        fig.add_trace(go.Scatter(x=rates, y=[r["throughput_tok_s"] for r in mine], name=name, line={"color": color}), 1, 1)
        for col, key in ((2, "ttft"), (3, "tpot")):
            for pct, dash in (("p50", "solid"), ("p99", "dot")):
                values = [r.get(f"{key}_{pct}_ms") for r in mine]
                if any(v is not None for v in values):
                    fig.add_trace(go.Scatter(x=rates, y=values, name=f"{name} {pct}", showlegend=col == 2,
                                             line={"color": color, "dash": dash}), 1, col)
    fig.update_xaxes(title_text="arrival rate (requests/s)")
    fig.update_layout(title=title, height=340)
    return fig
