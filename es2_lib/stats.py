"""Statistics of every table: rates and means with percentile-bootstrap intervals, and paired differences.

A rate's bootstrap draws Binomial(n, value) counts, a mean's resamples indices, and a paired difference draws how
many pairs go False->True, stay, or go True->False from a multinomial: each is one vectorised draw from a
`numpy.random.default_rng(seed)`, so a table's intervals come back exactly from its seed (docs/architecture.md,
"Metrics").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _quantiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


def rate_ci(flags: Sequence[bool], samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Share of True flags with a percentile-bootstrap interval: {value, low, high, n}.

    Resampling n Bernoulli flags with replacement and counting the Trues is a Binomial(n, value) draw, so the
    `samples` bootstrap means are drawn in one vectorised call, identical in law to index resampling."""
    n = len(flags)
    if n == 0:
        raise ValueError("rate_ci needs at least one flag")
    if samples < 1 or not 0 < confidence < 1:
        raise ValueError(f"rate_ci needs samples >= 1 and 0 < confidence < 1, got {samples} and {confidence}")
    value = float(np.mean(np.asarray(flags, dtype=bool)))
    means = np.random.default_rng(seed).binomial(n, value, size=samples) / n  # [samples]
    low, high = _quantiles(means, confidence)
    return {"value": value, "low": low, "high": high, "n": n}


def mean_ci(values: Sequence[float], samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean with a percentile-bootstrap interval: {value, low, high, n}."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    means = x[np.random.default_rng(seed).integers(0, x.size, size=(samples, x.size))].mean(axis=1)
    low, high = _quantiles(means, confidence)
    return {"value": float(x.mean()), "low": low, "high": high, "n": int(x.size)}


def paired_difference(
    base: Sequence[bool], tuned: Sequence[bool], samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """tuned − base share of True on the same items, with a paired percentile-bootstrap interval, and how many
    items were gained (False -> True) and lost (True -> False)."""
    if len(base) != len(tuned) or not base:
        raise ValueError(f"paired_difference needs two equally long, non-empty lists, got {len(base)} and {len(tuned)}")
    d = np.asarray(tuned, dtype=int) - np.asarray(base, dtype=int)  # [n] in {-1, 0, 1}
    n = d.size
    shares = [np.mean(d == -1), np.mean(d == 0), np.mean(d == 1)]
    counts = np.random.default_rng(seed).multinomial(n, shares, size=samples)  # [samples, 3]
    low, high = _quantiles((counts[:, 2] - counts[:, 0]) / n, confidence)
    return {"value": float(d.mean()), "low": low, "high": high, "n": int(n),
            "gained": int((d == 1).sum()), "lost": int((d == -1).sum())}
