"""Statistics of every table: rates and means with percentile-bootstrap intervals, paired differences, exact
(Clopper–Pearson) rate intervals, the exact McNemar test, Holm's correction across a table's tests, and a
judge's agreement with reference labels.

A rate's bootstrap draws Binomial(n, value) counts, a mean's resamples indices, and a paired difference draws how
many pairs go False->True, stay, or go True->False from a multinomial: each is one vectorised draw from a
`numpy.random.default_rng(seed)`, so a table's intervals come back exactly from its seed (docs/architecture.md,
"Metrics").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import beta, binomtest, t, wilcoxon


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


def exact_paired_difference(a: Sequence[bool], b: Sequence[bool], confidence: float = 0.95) -> dict:
    """b − a share of True on the same items with an exact, conservative interval: the difference of the two
    discordant shares (only b True, only a True), each bounded by its Clopper–Pearson interval at confidence
    1 − (1 − confidence) / 2, so it keeps its width when every pair ties (a bootstrap shrinks to a point there)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"exact_paired_difference needs two equally long, non-empty lists, got {len(a)} and {len(b)}")
    each = 1 - (1 - confidence) / 2
    gained = exact_rate([y and not x for x, y in zip(a, b)], each)
    lost = exact_rate([x and not y for x, y in zip(a, b)], each)
    return {"value": gained["value"] - lost["value"], "low": gained["low"] - lost["high"],
            "high": gained["high"] - lost["low"], "n": len(a)}


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean with its Student t interval: {value, low, high, n}; unbounded for a single value (it decides nothing)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("t_interval needs at least one value")
    half = (t.ppf(1 - (1 - confidence) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else np.inf
    mean = float(x.mean())
    return {"value": mean, "low": mean - half, "high": mean + half, "n": int(x.size)}


def exact_rate(flags: Sequence[bool], confidence: float = 0.95) -> dict:
    """Share of True flags with its exact (Clopper–Pearson) interval: {value, low, high, n, k}; unlike a percentile
    bootstrap it does not shrink to a point at 0 or 1 (8 of 8 gives [0.63, 1] at 95 %)."""
    n, k = len(flags), int(np.sum(np.asarray(flags, dtype=bool)))
    if n == 0:
        raise ValueError("exact_rate needs at least one flag")
    tail = (1 - confidence) / 2
    low = float(beta.ppf(tail, k, n - k + 1)) if k > 0 else 0.0
    high = float(beta.ppf(1 - tail, k + 1, n - k)) if k < n else 1.0
    return {"value": k / n, "low": low, "high": high, "n": n, "k": k}


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Exact two-sided McNemar test of `b` against `a` on the same items: the binomial test of the discordant
    pairs; {"b_only": items True only under b, "a_only": True only under a, "p": p-value, "n": items}."""
    if len(a) != len(b) or not a:
        raise ValueError(f"mcnemar_exact needs two equally long, non-empty lists, got {len(a)} and {len(b)}")
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    b_only, a_only = int((y & ~x).sum()), int((x & ~y).sum())
    p = binomtest(b_only, b_only + a_only, 0.5).pvalue if b_only + a_only else 1.0
    return {"b_only": b_only, "a_only": a_only, "p": float(p), "n": int(x.size)}


def signed_rank(differences: Sequence[float]) -> dict:
    """Wilcoxon signed-rank test (two-sided) of paired differences against 0, zero differences dropped (Wilcoxon's
    rule): {"higher": positive differences, "lower": negative ones, "p": p-value, 1 when every pair ties}."""
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    p = float(wilcoxon(d).pvalue) if d.size else 1.0
    return {"higher": int((d > 0).sum()), "lower": int((d < 0).sum()), "p": p}


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> list[dict]:
    """Holm's step-down correction of a family of tests (one table): per p-value, in the given order, the adjusted
    p-value (monotone, at most 1) and whether the test holds at `alpha` for the whole family."""
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return []
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"holm needs p-values in [0, 1], got {pvalues}")
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(p[order] * (p.size - np.arange(p.size))))
    return [{"p": float(q), "p_holm": float(a), "holds": bool(a <= alpha)} for q, a in zip(p, adjusted)]


def agreement(predicted: Sequence[bool], actual: Sequence[bool], confidence: float = 0.95) -> dict:
    """How well binary verdicts `predicted` agree with reference labels `actual` (e.g. a refusal judge against
    human labels): precision, recall and accuracy, each with its exact interval, and the confusion counts."""
    if len(predicted) != len(actual) or not predicted:
        raise ValueError(f"agreement needs two equally long, non-empty lists, got {len(predicted)} and {len(actual)}")
    x, y = np.asarray(predicted, dtype=bool), np.asarray(actual, dtype=bool)
    counts = {"tp": int((x & y).sum()), "fp": int((x & ~y).sum()), "fn": int((~x & y).sum()),
              "tn": int((~x & ~y).sum())}
    rate = lambda flags: exact_rate(flags, confidence) if len(flags) else None  # noqa: E731
    return {"precision": rate(y[x]), "recall": rate(x[y]), "accuracy": exact_rate(x == y, confidence),
            "n": int(x.size), **counts}
