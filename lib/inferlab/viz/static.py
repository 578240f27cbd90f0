"""A static twin of every plotly figure: the same traces redrawn with matplotlib, as PNG bytes.

Why: a stored plotly figure is JSON that only a live JavaScript renderer draws, so GitHub's
preview, offline HTML and nbconvert show blank space where it was. The notebook build step
(:mod:`inferlab.tools.notebooks`) stores this PNG beside each plotly output, so every figure has
a picture wherever the notebook is read. It needs no browser and no network (kaleido needs
Chrome), and it covers what inferlab draws: bars (grouped, stacked, horizontal, with a base),
scatter lines / markers / text, heatmaps (the first animation frame), subplots, a secondary
y axis, log axes, horizontal and vertical rule lines and subplot titles.
"""

from __future__ import annotations

import base64
import io
import re
from typing import Any

PLOTLY_MIME = "application/vnd.plotly.v1+json"
_COLORWAY = ["#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880", "#FF97FF", "#FECB52"]
_DASH = {"dash": "--", "dot": ":", "dashdot": "-.", "longdash": "--"}
_MARK = {"circle": "o", "diamond": "D", "square": "s", "x": "x", "star": "*", "cross": "P", "triangle-up": "^"}
_AREA = (0.08, 0.26, 0.86, 0.62)  # plot area in figure fractions: left, bottom, width, height


def _array(value: Any):
    """A plotly JSON array (a list, or a typed array ``{"dtype", "bdata", "shape"}``) as numpy."""
    import numpy as np

    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return flat.reshape([int(s) for s in str(shape).split(",")]) if shape else flat
    return np.asarray(value if value is not None else [], dtype=object)


def _plain(text: Any) -> str:
    text = re.sub(r"<br\s*/?>", "\n", str(text or ""), flags=re.I)
    return re.sub(r"<[^>]+>", " ", text).strip()


def _title(obj: Any) -> str:
    return _plain(obj.get("text") if isinstance(obj, dict) else obj)


def _paper(x: float, y: float) -> tuple[float, float]:
    left, bottom, width, height = _AREA
    return left + width * x, bottom + height * y


class _Axes:
    """The matplotlib axes of each plotly (xaxis, yaxis) pair, and each axis's categories."""

    def __init__(self, fig, layout: dict[str, Any]):
        self.fig, self.layout, self.axes, self.categories = fig, layout, {}, {}

    def get(self, xref: str, yref: str):
        key = (xref, yref)
        if key not in self.axes:
            xa = self.layout.get("xaxis" + xref[1:], {})
            ya = self.layout.get("yaxis" + yref[1:], {})
            twin = ya.get("overlaying")
            if twin and any(k[1] == twin for k in self.axes):
                ax = self.axes[next(k for k in self.axes if k[1] == twin)].twinx()
            else:
                (x0, x1), (y0, y1) = xa.get("domain", [0, 1]), ya.get("domain", [0, 1])
                (fx0, fy0), (fx1, fy1) = _paper(x0, y0), _paper(x1, y1)
                ax = self.fig.add_axes([fx0, fy0, fx1 - fx0, fy1 - fy0])
            self._style(ax, xa, ya)
            self.axes[key] = ax
        return self.axes[key]

    @staticmethod
    def _style(ax, xa: dict[str, Any], ya: dict[str, Any]) -> None:
        for axis, spec, scale, label in ((ax.xaxis, xa, ax.set_xscale, ax.set_xlabel),
                                         (ax.yaxis, ya, ax.set_yscale, ax.set_ylabel)):
            if spec.get("type") == "log":
                scale("log")
            label(_title(spec.get("title")), fontsize=8)
            if spec.get("showticklabels") is False:
                axis.set_ticks([])
        if ya.get("autorange") == "reversed":
            ax.invert_yaxis()
        if xa.get("range") and xa.get("type") != "log":
            ax.set_xlim(*xa["range"])
        ax.tick_params(labelsize=7)

    def positions(self, ref: str, values) -> list[float]:
        """Numbers stay numbers; strings become category positions 0, 1, ... shared per axis."""
        cats = self.categories.setdefault(ref, [])
        out = []
        for v in values:
            if isinstance(v, str):
                if v not in cats:
                    cats.append(v)
                out.append(float(cats.index(v)))
            else:
                out.append(float("nan") if v is None else float(v))
        return out

    def finish(self) -> None:
        for (xref, yref), ax in self.axes.items():
            for ref, setter in ((xref, ax.set_xticks), (yref, ax.set_yticks)):
                cats = self.categories.get(ref)
                if cats:
                    setter(range(len(cats)), [_plain(c)[:40] for c in cats], fontsize=7)
            if self.categories.get(xref) and len(self.categories[xref]) > 4:
                ax.tick_params(axis="x", labelrotation=20)


def _color(trace: dict[str, Any], index: int):
    marker, line = trace.get("marker", {}) or {}, trace.get("line", {}) or {}
    color = marker.get("color", line.get("color"))
    if isinstance(color, dict) or (color is not None and not isinstance(color, str)):
        color = list(_array(color))
    return color if color is not None else _COLORWAY[index % len(_COLORWAY)]


def _draw_bar(ax, axes: _Axes, trace: dict[str, Any], i: int, group: tuple[int, int], stacks: dict | None) -> Any:
    import numpy as np

    horizontal = trace.get("orientation") == "h"
    cat_ref, val_key = (trace.get("yaxis", "y"), "x") if horizontal else (trace.get("xaxis", "x"), "y")
    cats = axes.positions(cat_ref, list(_array(trace.get("y" if horizontal else "x"))))
    vals = np.array([np.nan if v is None else float(v) for v in _array(trace.get(val_key))], dtype=float)
    base = trace.get("base")
    slot, count = group
    width = 0.8 / count
    pos = np.array(cats) + (slot - (count - 1) / 2) * width
    if base is not None:
        bottom = np.broadcast_to(np.asarray(_array(base), dtype=float), vals.shape)
    elif stacks is None:  # grouped or overlaid bars start at the axis
        bottom = None
    else:
        key = (id(ax), horizontal)
        bottom = np.array([stacks.setdefault(key, {}).get(c, 0.0) for c in cats])
        for c, v in zip(cats, vals, strict=True):
            stacks[key][c] = stacks[key].get(c, 0.0) + (0.0 if np.isnan(v) else v)
    draw = ax.barh if horizontal else ax.bar
    bars = draw(pos, vals, width, bottom, color=_color(trace, i), label=trace.get("name"), edgecolor="white",
                linewidth=0.3, **({"hatch": "//"} if (trace.get("marker") or {}).get("pattern") else {}))
    texts = trace.get("text")
    if texts is not None and not isinstance(texts, str):
        for bar, text in zip(bars, _array(texts), strict=False):
            if text not in (None, ""):
                x, y = bar.get_x() + bar.get_width() / 2, bar.get_y() + bar.get_height() / 2
                ax.annotate(str(text), (x, y), ha="center", va="center", fontsize=6)
    return bars


def _draw_scatter(ax, axes: _Axes, trace: dict[str, Any], i: int) -> Any:
    import numpy as np

    mode = trace.get("mode", "lines+markers")
    xs = axes.positions(trace.get("xaxis", "x"), list(_array(trace.get("x", []))))
    ys = axes.positions(trace.get("yaxis", "y"), list(_array(trace.get("y", []))))
    if not xs and ys:
        xs = list(range(len(ys)))
    line, marker = trace.get("line", {}) or {}, trace.get("marker", {}) or {}
    style = {"color": _color(trace, i) if isinstance(_color(trace, i), str) else _COLORWAY[i % 10],
             "linestyle": _DASH.get(line.get("dash"), "-") if "lines" in mode else "none",
             "marker": _MARK.get(marker.get("symbol", "circle"), "o") if "markers" in mode else None,
             "markersize": min(float(marker.get("size", 6)), 12) * 0.7, "linewidth": 1.4}
    (handle,) = ax.plot(np.array(xs, dtype=float), np.array(ys, dtype=float), label=trace.get("name"), **style)
    if "text" in mode and trace.get("text") is not None:
        where = str(trace.get("textposition", ""))
        dx, ha = (-4, "right") if "left" in where else (4, "left") if "right" in where else (0, "center")
        for x, y, text in zip(xs, ys, _array(trace["text"]), strict=False):
            if text not in (None, "") and not (np.isnan(x) or np.isnan(y)):
                ax.annotate(str(text), (x, y), textcoords="offset points", xytext=(dx, -9 if "bottom" in where else 5),
                            ha=ha, fontsize=6)
    return handle


def _draw_heatmap(ax, trace: dict[str, Any]) -> None:
    import numpy as np
    from matplotlib.colors import ListedColormap

    z = np.asarray(_array(trace["z"]), dtype=float)
    scale = trace.get("colorscale") or [[0, "#ffffff"], [1, "#000000"]]
    if isinstance(scale, list) and scale and isinstance(scale[0], (list, tuple)):
        samples = [(k + 0.5) / 256 for k in range(256)]
        colors = [next(c for p, c in reversed(scale) if p <= s) for s in samples]
        cmap = ListedColormap(colors)
    else:
        cmap = "viridis"
    ax.imshow(z, cmap=cmap, vmin=trace.get("zmin"), vmax=trace.get("zmax"), aspect="auto", interpolation="nearest")


def _draw_shapes(axes: _Axes, layout: dict[str, Any]) -> None:
    for shape in layout.get("shapes", []) or []:
        if shape.get("type") != "line":
            continue
        xref, yref = str(shape.get("xref", "x")), str(shape.get("yref", "y"))
        style = {"color": (shape.get("line") or {}).get("color", "#444"), "linewidth": 1,
                 "linestyle": _DASH.get((shape.get("line") or {}).get("dash"), "-")}
        if xref.endswith("domain") or xref == "paper":
            axes.get(xref.split()[0] if xref != "paper" else "x", yref).axhline(shape.get("y0", 0), **style)
        elif yref.endswith("domain") or yref == "paper":
            axes.get(xref, yref.split()[0] if yref != "paper" else "y").axvline(shape.get("x0", 0), **style)


def figure_png(figure: dict[str, Any] | Any, dpi: int = 72) -> bytes:
    """PNG bytes of a plotly figure (a ``go.Figure`` or its JSON dict), drawn with matplotlib."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    spec = figure if isinstance(figure, dict) else figure.to_plotly_json()
    layout = spec.get("layout", {}) or {}
    height = float(layout.get("height") or 450)
    fig = plt.figure(figsize=(9, max(3.6, height / 72 * 0.85)), dpi=dpi)
    axes, stacks, handles = _Axes(fig, layout), {}, []
    traces = list(spec.get("data", []))
    bar_refs = [(t.get("xaxis", "x"), t.get("yaxis", "y")) for t in traces if t.get("type") == "bar"]
    grouped = layout.get("barmode", "group") == "group"
    for i, trace in enumerate(traces):
        kind, ref = trace.get("type", "scatter"), (trace.get("xaxis", "x"), trace.get("yaxis", "y"))
        ax = axes.get(*ref)
        if kind == "bar":
            peers = [j for j, r in enumerate(bar_refs) if r == ref]
            mine = sum(1 for t in traces[:i] if t.get("type") == "bar" and (t.get("xaxis", "x"), t.get("yaxis", "y")) == ref)
            handles.append(_draw_bar(ax, axes, trace, i, (mine, len(peers)) if grouped else (0, 1),
                                     stacks if layout.get("barmode") in ("stack", "relative") else None))
        elif kind == "heatmap":
            _draw_heatmap(ax, trace)
            continue
        else:
            handles.append(_draw_scatter(ax, axes, trace, i))
        if trace.get("showlegend") is False or not trace.get("name"):
            handles.pop()
    _draw_shapes(axes, layout)
    axes.finish()
    for note in layout.get("annotations", []) or []:
        if note.get("xref") == "paper" and note.get("yref") == "paper":
            fig.text(*_paper(note.get("x", 0.5), note.get("y", 1.0)), _plain(note.get("text")), ha="center",
                     va="bottom", fontsize=8)
    fig.suptitle(_title(layout.get("title")), fontsize=10, y=0.98)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def figure_png_base64(figure: dict[str, Any] | Any) -> str:
    """:func:`figure_png` as the base64 text a notebook's ``image/png`` output stores."""
    return base64.b64encode(figure_png(figure)).decode("ascii")


def display_widget(widget, figure: Any = None, text: str = "") -> None:
    """Display an ipywidget once, its output bundle also carrying a PNG of ``figure`` (a plotly figure
    or a matplotlib one, drawn at the widget's default state) and ``text``.

    A live JupyterLab draws the widget; GitHub, nbviewer and offline HTML, which have no widget
    manager, show the picture and the text instead of ``interactive(children=...``.
    """
    from IPython.display import display

    bundle = dict(widget._repr_mimebundle_())
    if figure is not None:
        if hasattr(figure, "savefig"):
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=72)
            bundle["image/png"] = base64.b64encode(buffer.getvalue()).decode("ascii")
        else:
            bundle["image/png"] = figure_png_base64(figure)
    if text:
        bundle["text/plain"] = text
    display(bundle, raw=True)
