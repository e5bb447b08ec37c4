"""How far a false-alarm count lets a rate be claimed: the exact (Garwood) upper confidence bound of a Poisson
rate. Zero false alarms in ``T`` hours bound the rate by ``-ln(0.05) / T`` (about ``3 / T``) per hour at 95 %:
a claim of one false alarm per hour needs three hours of negative audio without one."""
from __future__ import annotations

import math

CONFIDENCE = 0.95


def _poisson_cdf(count: int, mean: float) -> float:
    """``P(X <= count)`` for ``X ~ Poisson(mean)``, summed in log space (counts of thousands stay finite)."""
    if mean <= 0:
        return 1.0
    log_term, total = -mean, 0.0
    for k in range(count + 1):
        if k:
            log_term += math.log(mean / k)
        total += math.exp(log_term)
    return min(total, 1.0)


def rate_upper_bound(count: int, hours: float, confidence: float = CONFIDENCE) -> float:
    """The rate per hour whose chance of giving ``count`` or fewer events in ``hours`` is ``1 - confidence``
    (``inf`` without hours)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if hours <= 0:
        return math.inf
    alpha = 1.0 - confidence
    lo, hi = float(count), float(count) + 10.0 * math.sqrt(count + 1) + 10.0
    while _poisson_cdf(count, hi) > alpha:
        hi *= 2
    for _ in range(80):  # bisection on the mean: the CDF falls as the mean grows
        mid = (lo + hi) / 2
        if _poisson_cdf(count, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi / hours


def hours_needed(target_per_hour: float, confidence: float = CONFIDENCE) -> float:
    """Hours of negative audio without an event that bound the rate by ``target_per_hour``."""
    return -math.log(1.0 - confidence) / target_per_hour if target_per_hour > 0 else math.inf


def describe(count: int, hours: float, confidence: float = CONFIDENCE) -> str:
    """``"3 in 2.50 h: 1.20/h (95 % bound 3.51/h)"``: a rate never printed without its hours and bound."""
    rate = count / hours if hours > 0 else math.inf
    return (f"{count} in {hours:.2f} h: {rate:.2f}/h ({100 * confidence:g} % bound "
            f"{rate_upper_bound(count, hours, confidence):.2f}/h)")
