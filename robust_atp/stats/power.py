"""The minimum detectable drop of a one-sided gate: how large a true accuracy drop its test finds
with the wanted power after the family-wise correction (normal approximation).

The drop is modelled as lost answers: each example of the pair loses its baseline score with the
same probability r, so a drop of x (a fraction) has r = x / mean(baseline) and the mean paired
difference has variance r (1 - r) sum(b_i^2) / N^2, plus the variance of the churn already seen
between the two runs (answers that changed in both directions). A regression that also moves
answers the other way needs more; the benchmark prints power under both models.

The critical value is Sidak's for `n_pairs` one-sided tests, the max-T critical value when the
pairs' statistics are independent, and conservative for the positively correlated statistics of
pairs that share examples."""
from __future__ import annotations

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm


def sidak_critical(alpha: float, n_tests: int) -> float:
    """One-sided critical value z with P(max of n independent N(0, 1) > z) = alpha."""
    return float(norm.ppf((1 - alpha) ** (1 / max(1, n_tests))))


def minimum_detectable_drop(baseline: np.ndarray, churn_var: float, margin: float, alpha: float,
                            n_pairs: int, power: float = 0.8) -> float:
    """Smallest true drop (a fraction) the gate detects with `power`: `baseline: [N]` the pair's
    baseline scores, `churn_var` the variance of the observed mean paired difference, `margin` the
    tolerated drop. NaN when no drop up to the baseline accuracy is detectable (or no data)."""
    b = np.asarray(baseline, dtype=np.float64)
    b = b[~np.isnan(b)]
    if not b.size or b.mean() <= margin:
        return float("nan")
    z = sidak_critical(alpha, n_pairs) + norm.ppf(power)
    mean_b, sum_b2, N = b.mean(), float((b ** 2).sum()), b.size

    def gap(x: float) -> float:
        r = min(1.0, x / mean_b)
        se = np.sqrt(r * (1 - r) * sum_b2 / N ** 2 + max(churn_var, 0.0))
        return x - margin - z * se

    grid = np.linspace(margin, mean_b, 401)[1:]
    gaps = np.array([gap(x) for x in grid])
    first = np.flatnonzero(gaps >= 0)
    if not len(first):
        return float("nan")
    i = int(first[0])
    if i == 0:
        return float(grid[0]) if gap(margin + 1e-12) >= 0 else float(brentq(gap, margin + 1e-12, grid[0]))
    return float(brentq(gap, grid[i - 1], grid[i]))
