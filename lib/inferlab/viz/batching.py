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


def _runs(trace: Sequence[StepRecord]) -> list[list]:
    """Stretches of consecutive steps in which a request ran: [rid, first step, last step]."""
    last: dict[str, list] = {}
    runs = []
    for rec in trace:
        for rid, _, _ in rec.entries:
            run = last.get(rid)
            if run and run[2] == rec.step - 1:
                run[2] = rec.step
            elif not run or run[2] != rec.step:
                run = [rid, rec.step, rec.step]
                last[rid] = run
                runs.append(run)
    return runs


def assign_slots(trace: Sequence[StepRecord]) -> dict[tuple[str, int], int]:
    """Give each stretch of a request (it may be preempted and resume) the lowest free slot.

    Returns ``{(request id, step): slot}`` for every step the request ran.
    """
    busy_until: list[int] = []
    slots: dict[tuple[str, int], int] = {}
    for rid, first, last in sorted(_runs(trace), key=lambda r: r[1]):
        slot = next((i for i, end in enumerate(busy_until) if end < first), len(busy_until))
        if slot == len(busy_until):
            busy_until.append(last)
        busy_until[slot] = last
        for step in range(first, last + 1):
            slots[(rid, step)] = slot
    return slots


def _segments(trace: Sequence[StepRecord], x: str, slots: dict):
    """Merge consecutive steps of one request, kind and slot into bars: (rid, kind, slot, begin, end)."""
    open_bars: dict[str, list] = {}
    bars = []
    t0 = trace[0].start if trace else 0.0
    for rec in trace:
        step_begin, step_end = (rec.start - t0, rec.end - t0) if x == "time" else (rec.step, rec.step + 1)
        for rid, kind, begin, end in _split_step(rec, step_begin, step_end):
            slot = slots[(rid, rec.step)]
            bar = open_bars.get(rid)
            if bar and bar[1] == kind and bar[2] == slot and bar[5] == rec.step - 1:
                bar[4], bar[5] = end, rec.step
            else:
                bar = [rid, kind, slot, begin, end, rec.step]
                open_bars[rid] = bar
                bars.append(bar)
    return [tuple(b[:5]) for b in bars]


def _split_step(rec: StepRecord, begin: float, end: float):
    """A request with several entries in one step (a static prompt and its padding) shares the
    step's width in proportion to tokens: (rid, kind, begin, end) per entry."""
    per_request: dict[str, list[tuple[str, int]]] = {}
    for rid, kind, n in rec.entries:
        per_request.setdefault(rid, []).append((kind, n))
    for rid, parts in per_request.items():
        total, at = sum(n for _, n in parts) or 1, begin
        for kind, n in parts:
            width = (end - begin) * n / total if len(parts) > 1 else end - begin
            yield rid, kind, at, at + width
            at += width


def slot_gantt(trace: Sequence[StepRecord], title: str = "", x: str = "time", height: int = 320):
    """Plotly Gantt chart of batch slots (y) over time or steps (x)."""
    import plotly.graph_objects as go

    slots = assign_slots(trace)
    bars = _segments(trace, x, slots)
    fig = go.Figure()
    for kind in ("prefill", "decode", "padding"):
        mine = [b for b in bars if b[1] == kind]
        if mine:
            fig.add_trace(go.Bar(
                y=[b[2] for b in mine], x=[b[4] - b[3] for b in mine], base=[b[3] for b in mine],
                orientation="h", name=kind, marker_color=COLORS[kind], hovertext=[b[0] for b in mine],
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
    last_slot = {rid: slot for (rid, _), slot in sorted(slots.items(), key=lambda kv: kv[0][1])}
    for rec in trace:
        for rid in rec.preempted:
            before = [slots[(rid, s)] for s in range(rec.step - 1, -1, -1) if (rid, s) in slots][:1]
            slot = before[0] if before else last_slot.get(rid)
            if slot is not None:
                xs.append(rec.start - t0 if x == "time" else rec.step)
                ys.append(slot)
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
