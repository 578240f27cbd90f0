"""Drawings for notebook 01: the GPU-memory calculator, per-token tables and the roofline.

The numbers come from :mod:`inferlab.kvcache` and :mod:`inferlab.roofline` (computed by the
caller); this module only lays them out: plotly for interactive figures, plain text for tables
that nbval checks. The one exception is :func:`calculator`, a widget that recomputes a
:func:`inferlab.kvcache.memory_plan` each time a control moves.
"""

from __future__ import annotations

from typing import Any

from inferlab import configs, units
from inferlab import kvcache as kv
from inferlab.viz import PALETTE

CONTEXTS = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]
KV_DTYPE_CHOICES = ["float16", "bfloat16", "fp8", "int8", "int4", "float32"]

# ---------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------


def per_token_text(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of :func:`inferlab.kvcache.per_token_table` rows (deterministic)."""
    head = (f"{'model':<15} {'attn':<4} {'layers':>6} {'heads':>5} {'kv':>4} {'hdim':>4} "
            f"{'KV/token':>11} {'n_heads formula':>15} {'params':>8} {'one sequence':>23}")
    lines = [head, "-" * len(head)]
    for r in rows:
        seq = f"{units.format_bytes(r['per_sequence'], 'auto')} @ {r['seq_len']:,}"
        lines.append(
            f"{r['model']:<15} {r['attention']:<4} {r['layers']:>6} {r['heads']:>5} {r['kv_heads']:>4} "
            f"{r['head_dim']:>4} {units.format_bytes(r['per_token'], 'KiB'):>11} "
            f"{units.format_bytes(r['naive_per_token'], 'KiB'):>15} {r['params'] / 1e9:>7.2f}B {seq:>23}")
    return "\n".join(lines)


def describe_plan(plan: dict[str, Any], gpu: str = "", batch_size: int | None = None) -> str:
    """One paragraph: what one GPU holds and how many sequences fit."""
    f = lambda n: units.format_bytes(n, "GiB")  # noqa: E731
    where = f" on {gpu}" if gpu else ""
    tp = f" (TP={plan['tp_size']}, per GPU)" if plan["tp_size"] > 1 else ""
    beyond = plan.get("max_context") and plan["seq_len"] > plan["max_context"]
    note = f" (beyond its {plan['max_context']:,}-token context!)" if beyond else ""
    text = (f"{plan['model']} ({plan['attention']}){where}{tp}, {plan['seq_len']:,}-token sequences{note}, "
            f"{plan['kv_dtype']} KV: weights {f(plan['weights'])} ({plan['weight_dtype']}), reserve "
            f"{f(plan['reserve'])}, KV per sequence {f(plan['kv_per_sequence'])}.\n")
    if not plan["weights_fit"]:
        return text + "The weights alone do not fit: add GPUs (TP) or quantize the weights."
    text += f"-> {plan['max_sequences']:,} concurrent sequences fit."
    if batch_size is not None:
        verdict = "fits" if plan["batch_fits"] else "does NOT fit"
        text += f" A batch of {batch_size} needs {f(plan['kv_for_batch'])} of KV: {verdict}."
    return text


# ---------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------


def memory_figure(plan: dict[str, Any], gpu: str = ""):
    """One horizontal stacked bar: weights | reserve | KV of the batch | free, in GiB."""
    import plotly.graph_objects as go

    gib = 1 << 30
    kv_part = min(plan["kv_for_batch"], max(0, plan["gpu_memory"] - plan["weights"] - plan["reserve"]))
    parts = [("weights", plan["weights"], PALETTE[0]), ("reserve (activations, CUDA context)", plan["reserve"], PALETTE[9]),
             ("KV cache of the batch", kv_part, PALETTE[1]), ("free", max(0, plan["free"]), PALETTE[2])]
    fig = go.Figure()
    for name, value, color in parts:
        fig.add_bar(y=[gpu or "GPU"], x=[value / gib], name=name, orientation="h", marker_color=color,
                    hovertemplate=f"{name}: %{{x:.2f}} GiB<extra></extra>")
    over = plan["kv_for_batch"] - kv_part
    if over > 0:
        fig.add_bar(y=[gpu or "GPU"], x=[over / gib], name="KV that does not fit", orientation="h",
                    marker_color=PALETTE[3], marker_pattern_shape="/")
    fig.add_vline(x=plan["gpu_memory"] / gib, line_dash="dash", line_color="black")
    title = (f"{plan['model']}: {plan['max_sequences']:,} sequences of {plan['seq_len']:,} tokens fit"
             if plan["weights_fit"] else f"{plan['model']}: the weights alone do not fit")
    fig.update_layout(barmode="stack", title=title, xaxis_title="GiB per GPU", height=260,
                      legend=dict(orientation="h", y=-0.45), margin=dict(l=10, r=10, t=50, b=10))
    return fig


def calculator_view(plan: dict[str, Any], gpu: str = "", batch_size: int | None = None, show: bool = True):
    """Describe and draw one :func:`inferlab.kvcache.memory_plan`; returns its figure."""
    fig = memory_figure(plan, gpu)
    if show:
        print(describe_plan(plan, gpu, batch_size))
        fig.show()
    return fig


def _plan_and_view(model: str, seq_len: int, batch_size: int, kv_dtype: str, tp_size: int, gpu: str) -> None:
    """One setting of the calculator's controls: compute the plan, then draw it."""
    plan = kv.memory_plan(model, configs.gpu_memory_bytes(gpu), seq_len, kv_dtype, tp_size=tp_size, batch_size=batch_size)
    calculator_view(plan, gpu, batch_size)


def _with_static_view(widget, start: dict[str, Any]) -> None:
    """Display ``widget`` once, with a picture and a text of the default state for readers without a kernel."""
    from inferlab.viz.static import display_widget

    plan = kv.memory_plan(start["model"], configs.gpu_memory_bytes(start["gpu"]), start["seq_len"], start["kv_dtype"],
                          tp_size=start["tp_size"], batch_size=start["batch_size"])
    display_widget(widget, memory_figure(plan, start["gpu"]),
                   "The calculator at its default setting (run the notebook to move its controls):\n"
                   + describe_plan(plan, start["gpu"], start["batch_size"]))


def calculator(**defaults: Any) -> None:
    """The interactive calculator (ipywidgets), drawn once. Without a widget manager, draws the defaults."""
    from inferlab.viz import widgets_available

    start = {"model": "llama-3-8b", "seq_len": 8192, "batch_size": 16, "kv_dtype": "float16",
             "tp_size": 1, "gpu": "H100 80 GB", **defaults}
    if not widgets_available():
        return _plan_and_view(**start)
    import ipywidgets as w

    controls = dict(
        model=w.Dropdown(options=configs.known_models(), value=start["model"], description="model"),
        seq_len=w.SelectionSlider(options=CONTEXTS, value=start["seq_len"], description="context"),
        batch_size=w.IntSlider(min=1, max=512, value=start["batch_size"], description="batch"),
        kv_dtype=w.Dropdown(options=KV_DTYPE_CHOICES, value=start["kv_dtype"], description="KV dtype"),
        tp_size=w.Dropdown(options=[1, 2, 4, 8, 16], value=start["tp_size"], description="TP degree"),
        gpu=w.Dropdown(options=list(configs.GPUS), value=start["gpu"], description="GPU"),
    )
    _with_static_view(w.interactive(_plan_and_view, **controls), start)


def gqa_myth_figure(rows: list[dict[str, Any]], dtype: str = "float16"):
    """Bars per model of :func:`inferlab.kvcache.per_token_table` rows: KV bytes per token with
    ``n_heads`` (the myth) vs the real cache."""
    import plotly.graph_objects as go

    x = [f"{r['model']} ({r['attention']})" for r in rows]
    fig = go.Figure([
        go.Bar(x=x, y=[r["naive_per_token"] / 1024 for r in rows], name="formula with n_heads", marker_color=PALETTE[9]),
        go.Bar(x=x, y=[r["per_token"] / 1024 for r in rows], name="what is cached (n_kv_heads / MLA latent)",
               marker_color=PALETTE[1]),
    ])
    fig.update_layout(barmode="group", yaxis_title=f"KiB per token ({dtype})", yaxis_type="log",
                      title="KV cache per token: textbook formula vs what the model caches", height=420)
    return fig


def context_sweep_figure(contexts: list[int], cache_bytes: dict[str, list[int]], dtype: str = "float16"):
    """KV of one sequence (``cache_bytes[model][i]`` at ``contexts[i]`` tokens) vs context length:
    windows flatten the curve (Mistral) or halve its slope (Gemma-2)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (name, sizes) in enumerate(cache_bytes.items()):
        fig.add_scatter(x=contexts, y=[b / 2**30 for b in sizes], name=name, mode="lines+markers",
                        line_color=PALETTE[i % len(PALETTE)])
    fig.update_layout(xaxis_type="log", yaxis_type="log", xaxis_title="tokens in the sequence",
                      yaxis_title=f"KV cache, GiB ({dtype})", title="One sequence's KV cache vs its length", height=420)
    return fig


def roofline_figure(results: dict[str, dict[str, Any] | None]):
    """Log-log roofline per device: achieved FLOP/s vs intensity for prefill and decode points,
    under that device's measured roofs (copy bandwidth slope, matmul flat)."""
    import numpy as np
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (label, res) in enumerate((k, v) for k, v in results.items() if v):
        color = PALETTE[(2 * i) % len(PALETTE)]
        bw, peak = res["copy_bandwidth"]["bytes_per_s"], res["matmul"]["flops_per_s"]
        xs = np.logspace(-1, 4, 60)
        fig.add_scatter(x=xs, y=np.minimum(peak, xs * bw), name=f"{label}: roof", mode="lines",
                        line=dict(color=color, dash="dash"))
        d, p = res["decode"], res["prefill"]
        fig.add_scatter(x=[r["intensity"] for r in d], y=[r["achieved_flops_per_s"] for r in d], mode="markers+text",
                        text=[f"b{r['batch_size']}" for r in d], textposition="top left",
                        name=f"{label}: decode (batch)", marker=dict(color=color, symbol="circle", size=9))
        fig.add_scatter(x=[r["intensity"] for r in p], y=[r["achieved_flops_per_s"] for r in p], mode="markers+text",
                        text=[f"L{r['prompt_len']}" for r in p], textposition="bottom right",
                        name=f"{label}: prefill (prompt)", marker=dict(color=color, symbol="diamond", size=10))
    fig.update_layout(xaxis_type="log", yaxis_type="log", xaxis_title="arithmetic intensity (FLOP / byte)",
                      yaxis_title="achieved FLOP/s", title="Roofline: prefill climbs to the compute roof, decode stays under the memory slope",
                      height=520)
    return fig


def decode_batch_figure(results: dict[str, dict[str, Any] | None]):
    """Decode tokens/s vs batch: measured, next to the memory-bandwidth bound, one panel per device."""
    from plotly.subplots import make_subplots

    present = [(k, v) for k, v in results.items() if v]
    fig = make_subplots(rows=1, cols=max(1, len(present)), subplot_titles=[k for k, _ in present])
    for col, (label, res) in enumerate(present, start=1):
        b = [r["batch_size"] for r in res["decode"]]
        fig.add_scatter(x=b, y=[r["tokens_per_s"] for r in res["decode"]], name=f"{label}: measured",
                        mode="lines+markers", line_color=PALETTE[0], row=1, col=col)
        fig.add_scatter(x=b, y=[r["bound_tokens_per_s"] for r in res["decode"]], name=f"{label}: bound (bytes / bandwidth)",
                        mode="lines", line=dict(color=PALETTE[1], dash="dash"), row=1, col=col)
        for key, name, color in (("generate", "transformers generate", PALETTE[3]),
                                 ("generate_static", "generate, static cache (compiled on GPU)", PALETTE[4])):
            gen = res.get(key) or {}
            if "tokens_per_s" in gen:
                fig.add_scatter(x=[1], y=[gen["tokens_per_s"]], name=f"{label}: {name}", mode="markers",
                                marker=dict(color=color, size=12, symbol="star"), row=1, col=col)
        fig.update_xaxes(type="log", title_text="batch size", row=1, col=col)
        fig.update_yaxes(type="log", title_text="tokens / s", row=1, col=col)
    fig.update_layout(title="Decode throughput vs batch size", height=450)
    return fig


def recorded_decode_sentence(res: dict[str, Any]) -> str:
    """What the recorded GPU run says about batch-1 decode, every number read from it (no prose numbers typed by hand)."""
    bw, gen = res["copy_bandwidth"]["bytes_per_s"], res["generate"]["tokens_per_s"]
    bound, ours = res["batch1_bound_tokens_per_s"], res["decode"][0]["tokens_per_s"]
    text = (f"The recorded run ({res['model']}, {res['dtype']}) streams {res['weight_bytes_per_step'] / 1e9:.2f} GB of "
            f"weights per batch-1 step; at its measured {bw / 1e12:.1f} TB/s that allows about {bound:,.0f} tokens/s. "
            f"Measured: an eager decode step {ours:,.1f} tokens/s and transformers `generate` {gen:,.1f} tokens/s, "
            f"{bound / gen:,.0f}x below the bound.")
    static = res.get("generate_static") or {}
    if "tokens_per_s" in static:
        text += (f" `generate` with a static cache, compiled into CUDA graphs, makes {static['tokens_per_s']:,.0f} "
                 f"tokens/s ({static['tokens_per_s'] / gen:,.0f}x more, same weights, same memory traffic).")
    return text


def roofline_text(res: dict[str, Any], label: str) -> str:
    """The key numbers of a roofline run, as lines of text."""
    bw, peak = res["copy_bandwidth"]["bytes_per_s"], res["matmul"]["flops_per_s"]
    lines = [f"{label}: {res['model']} ({res['dtype']}), {res['params'] / 1e6:,.1f} M params, "
             f"{units.format_bytes(res['weight_bytes_per_step'], 'GB')} of weights per step",
             f"  copy bandwidth {bw / 1e9:,.1f} GB/s, matmul {peak / 1e12:,.3f} TFLOP/s, ridge {peak / bw:,.1f} FLOP/B",
             f"  batch-1 decode bound {res['batch1_bound_tokens_per_s']:,.0f} tok/s; "
             f"measured {res['decode'][0]['tokens_per_s']:,.0f} tok/s; transformers generate "
             f"{res['generate']['tokens_per_s']:,.1f} tok/s"]
    static = res.get("generate_static") or {}
    if "tokens_per_s" in static:
        lines.append(f"  transformers generate with a static cache ({static['peer']}): {static['tokens_per_s']:,.1f} tok/s")
    best = max(res["decode"], key=lambda r: r["tokens_per_s"])
    lines.append(f"  best decode: batch {best['batch_size']} at {best['tokens_per_s']:,.0f} tok/s "
                 f"({best['achieved_bytes_per_s'] / bw:.0%} of copy bandwidth)")
    return "\n".join(lines)
