"""Statistics the lessons rely on: percentiles of latencies, run-to-run spread, chi-square tests.

A timing is reported with its spread, a percentile only with enough samples to mean
something, and "the same distribution" is a test with a p-value, not a look at two histograms.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linear interpolation as numpy's default."""
    import numpy as np

    return float(np.percentile(values, q))


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and the relative spread ``(max - min) / median`` of repeated measurements.

    What a live timing should be printed with: one run alone says little on a shared machine.
    """
    med = statistics.median(values)
    low, high = min(values), max(values)
    return {"median": med, "min": low, "max": high, "relative_spread": (high - low) / med if med else float("nan")}


def compare_runs(baseline: Sequence[float], candidate: Sequence[float]) -> dict[str, float | str]:
    """How many times faster ``candidate`` ran than ``baseline`` (seconds, one value per run), and whether the runs agree.

    Runs of the same index are paired (interleaved runs share the machine's load), so the ratio's
    range is that of the per-run ratios. ``verdict`` is "faster" or "slower" only when every run
    says so, and "too noisy to conclude" when the range straddles 1 or there is a single run.
    """
    if len(baseline) == len(candidate):
        ratios = [b / c for b, c in zip(baseline, candidate, strict=True)]
    else:
        ratios = [min(baseline) / max(candidate), max(baseline) / min(candidate)]
    ratio = statistics.median(baseline) / statistics.median(candidate)
    low, high = min(ratios), max(ratios)
    if min(len(baseline), len(candidate)) < 2:
        verdict = "too noisy to conclude (one run)"
    else:
        verdict = "faster" if low > 1 else "slower" if high < 1 else "too noisy to conclude"
    text = f"{ratio:.2f}x (runs: {low:.2f}-{high:.2f}x)"
    return {"ratio": ratio, "low": low, "high": high, "verdict": verdict,
            "text": text + ("" if verdict in ("faster", "slower") else f": {verdict}")}


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson chi-square goodness of fit of ``counts`` to ``probs``; bins expected below ``min_expected`` are pooled.

    Small p-values mean the samples did not come from ``probs``. Computed with the
    regularized upper incomplete gamma function, so no SciPy is needed.
    """
    counts, probs = counts.double(), probs.double()
    n = counts.sum()
    expected = probs * n
    small = expected < min_expected
    obs = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    exp = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    if exp[-1] < min_expected and len(exp) > 1:  # pooled bin still too small: fold it into the smallest other bin
        obs, exp = obs[:-1].clone(), exp[:-1].clone()
        obs[exp.argmin()] += counts[small].sum()
        exp[exp.argmin()] += expected[small].sum()
    if bool((obs[exp == 0] > 0).any()):
        return 0.0  # samples where the distribution puts no mass at all
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    dof = max(int(keep.sum()) - 1, 1)
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))
