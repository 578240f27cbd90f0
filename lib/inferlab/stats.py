"""Statistics the lessons rely on: percentiles of latencies, run-to-run spread, chi-square tests.

A timing is reported with its spread, a percentile only with enough samples to mean
something, and "the same distribution" is a test with a p-value, not a look at two histograms.
"""

from __future__ import annotations

from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linear interpolation as numpy's default."""
    import numpy as np

    return float(np.percentile(values, q))
