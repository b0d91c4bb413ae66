"""Figures of a membership attack and of the canary audit, with counts and confidence intervals.

- :func:`attack_figures`: ROC AUC (with a bootstrap 95% interval), and TPR at 1% and 0.1% FPR with the
  counts behind them and Clopper-Pearson 95% intervals.
- :func:`epsilon_lower_bound`: the empirical lower bound on epsilon of a distinguishing test (Kairouz et
  al. 2015; Jagielski et al. 2020): for any threshold, ``eps >= log((TPR - delta) / FPR)`` and
  ``eps >= log((1 - FPR - delta) / (1 - TPR))``, with TPR at its Clopper-Pearson lower and FPR at its upper
  bound. The threshold is chosen on one half of the trials and the bound taken on the other half, so the
  choice does not inflate it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: two-sided confidence level of the intervals
CONFIDENCE = 0.95
#: bootstrap resamples of the AUC interval
BOOTSTRAP = 200


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial proportion ``k / n``."""
    from scipy.stats import beta

    if n == 0:
        return 0.0, 1.0
    a = (1 - confidence) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def _tpr_at(pos: np.ndarray, neg: np.ndarray, fpr: float) -> dict[str, Any]:
    """TPR at the threshold that lets at most ``fpr`` of the negatives through (strictly above it)."""
    allowed = int(math.floor(fpr * len(neg)))
    order = np.sort(neg)[::-1]
    threshold = order[allowed] if allowed < len(order) else -np.inf  # scores > threshold are called members
    tp, fp = int((pos > threshold).sum()), int((neg > threshold).sum())
    lo, hi = clopper_pearson(tp, len(pos))
    return {"tpr": tp / len(pos) if len(pos) else 0.0, "tp": tp, "fp": fp, "tpr_ci": [lo, hi],
            "achievable": allowed >= 1}


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC: P(a member's score > a non-member's), ties counted half."""
    if not len(pos) or not len(neg):
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def attack_figures(pos: np.ndarray, neg: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """AUC with a bootstrap interval, TPR at 1% and 0.1% FPR (with counts and intervals), the counts."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    rng = np.random.default_rng(seed)
    boots = [auc(rng.choice(pos, len(pos)), rng.choice(neg, len(neg))) for _ in range(BOOTSTRAP)]
    a = (1 - CONFIDENCE) / 2
    at1, at01 = _tpr_at(pos, neg, 0.01), _tpr_at(pos, neg, 0.001)
    return {"auc": auc(pos, neg), "auc_ci": [float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))],
            "tpr_at_1pct_fpr": at1["tpr"], "tpr_at_0p1pct_fpr": at01["tpr"], "at_1pct_fpr": at1,
            "at_0p1pct_fpr": at01, "members": int(len(pos)), "non_members": int(len(neg))}


def _bound(tp: int, n_pos: int, fp: int, n_neg: int, delta: float) -> float:
    tpr_lo = clopper_pearson(tp, n_pos)[0]
    fpr_hi = clopper_pearson(fp, n_neg)[1]
    out = 0.0
    if fpr_hi > 0 and tpr_lo - delta > 0:
        out = max(out, math.log((tpr_lo - delta) / fpr_hi))
    tnr_lo = clopper_pearson(n_neg - fp, n_neg)[0]  # 1 - FPR, lower
    fnr_hi = clopper_pearson(n_pos - tp, n_pos)[1]  # 1 - TPR, upper
    if fnr_hi > 0 and tnr_lo - delta > 0:
        out = max(out, math.log((tnr_lo - delta) / fnr_hi))
    return out


def epsilon_lower_bound(scores: np.ndarray, inserted: np.ndarray, delta: float) -> dict[str, Any]:
    """The empirical epsilon lower bound of the test 'canary present when score > t' (see the module doc)."""
    scores, inserted = np.asarray(scores, np.float64), np.asarray(inserted, bool)
    choose, test = np.arange(len(scores)) % 2 == 0, np.arange(len(scores)) % 2 == 1
    best_t, best = None, -1.0
    for t in np.unique(scores[choose]):
        s, y = scores[choose], inserted[choose]
        b = _bound(int((s[y] > t).sum()), int(y.sum()), int((s[~y] > t).sum()), int((~y).sum()), delta)
        if b > best:
            best_t, best = t, b
    s, y = scores[test], inserted[test]
    if best_t is None or not y.any() or y.all():
        return {"epsilon_lower": 0.0, "trials": int(len(scores)), "with_canary": int(inserted.sum())}
    tp, fp = int((s[y] > best_t).sum()), int((s[~y] > best_t).sum())
    return {"epsilon_lower": _bound(tp, int(y.sum()), fp, int((~y).sum()), delta), "trials": int(len(scores)),
            "with_canary": int(inserted.sum()), "test_trials": int(len(s)), "test_tp": tp, "test_fp": fp,
            "threshold": float(best_t), "auc": auc(scores[inserted], scores[~inserted])}


def auc_bound(epsilon: float, delta: float, grid: int = 20_000) -> float:
    """The largest ROC AUC any membership test can reach against an (epsilon, delta)-DP mechanism:
    the area under ``TPR <= min(1, e^eps FPR + delta, 1 - e^-eps (1 - delta - FPR))``."""
    x = np.linspace(0.0, 1.0, grid + 1)
    tpr = np.minimum.reduce([np.ones_like(x), math.exp(epsilon) * x + delta,
                             1 - math.exp(-epsilon) * (1 - delta - x)])
    return float(np.trapezoid(np.clip(tpr, 0, 1), x))
