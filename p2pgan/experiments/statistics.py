"""Statistics of repeated runs: mean +- standard error across seeds and a paired test between two settings.

The experiment scripts run every setting with the same seeds (same initial point, data split and noise
streams), so two settings are compared seed by seed: a paired t-test on the per-seed differences
(``scipy.stats.ttest_rel``). With a handful of seeds it only detects large effects; the report says
how many seeds it had, and "not significant" is not "equal". An experiment runs many tests at once;
:func:`holm` corrects their p-values for that (Holm 1979), and the reports give both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: significance level of the tests the experiment reports state
ALPHA = 0.05


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, standard error of the mean)``; the error is 0 for a single value."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_se needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def paired_test(a: Sequence[float], b: Sequence[float], *, alternative: str = "greater") -> dict[str, Any]:
    """Paired t-test of ``a`` against ``b`` (the same seeds, in the same order).

    ``alternative="greater"``: is ``a`` larger than ``b``; ``"less"``; ``"two-sided"``. Returns the
    mean difference, t, the p-value, n and ``significant`` (p < :data:`ALPHA`). Identical pairs (no
    variance in the differences) give t = nan and p = 1 when the difference is 0.
    """
    from scipy import stats

    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired_test needs two equally long samples of >= 2 values, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    mean_diff = sum(diffs) / len(diffs)
    if max(diffs) == min(diffs):  # no spread: the t statistic is undefined
        t, p = math.nan, (1.0 if mean_diff == 0 else math.nan)
    else:
        res = stats.ttest_rel(a, b, alternative=alternative)
        t, p = float(res.statistic), float(res.pvalue)
    return {
        "test": "paired t-test",
        "alternative": alternative,
        "n": len(diffs),
        "mean_difference": mean_diff,
        "t": t,
        "p": p,
        "significant": bool(p < ALPHA) if not math.isnan(p) else False,
    }


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values of a family of tests, in the order given (Holm 1979).

    Sorted ascending, the i-th smallest of m p-values becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``;
    a test is significant at level alpha after correction when its adjusted p-value is below alpha, which
    keeps the chance of any false positive in the whole family below alpha. NaN p-values (no test) stay
    NaN and do not count in m.
    """
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(order)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
