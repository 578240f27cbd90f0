"""Drawing: plot settings shared by every notebook, and one module per topic.

- :mod:`inferlab.viz.kvcache`      notebook 01: memory calculator, per-token tables, roofline
- :mod:`inferlab.viz.paging`       notebook 02: memory maps, Fig. 2 breakdown, block tables, sharing
- :mod:`inferlab.viz.batching`     notebook 03: engine step traces (slot Gantt, pool usage), latency vs rate
- :mod:`inferlab.viz.serving`      notebook 04: serving latency percentiles and throughput vs concurrency
- :mod:`inferlab.viz.speculative`  notebook 05: token provenance, first-token distributions
- :mod:`inferlab.viz.flash`        notebook 07: FlashAttention tiling, memory and time vs length
- :mod:`inferlab.viz.tp`           notebook 08: who holds which weight slice, all-reduce and step times

Every drawing function takes results computed elsewhere (the technique module, a benchmark
or the notebook) and returns a figure or text; none of them runs a model or a simulation.

Plotly figures are stored as JSON (``plotly_mimetype``) plus a small loader that fetches
plotly.js when a page is opened (``notebook_connected``), never with the whole library
embedded, so notebooks stay small on GitHub and nbviewer. On Colab the Colab renderer is used.
"""

from __future__ import annotations

import sys

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#EECA3B", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC"]


def setup_plotly() -> str:
    """Pick the plotly renderer for where the notebook runs; returns its name."""
    import plotly.io as pio

    renderer = "colab" if "google.colab" in sys.modules else "plotly_mimetype+notebook_connected"
    pio.renderers.default = renderer
    pio.templates.default = "plotly_white"
    return renderer


def widgets_available() -> bool:
    """True when ipywidgets can draw (a kernel with a widget manager is attached)."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None
