"""A seed paper's headline finding, decided from the number that tests it on our models (07 and 08).

Every finding is a comparison oriented so that a positive value favours the claim, with its interval, n and p, and
one of two fixed rules decides it (MARGIN is in the comparison's own units, e.g. a rate difference):

* `superior` (the claim is "a > b"): held when p <= ALPHA and the value is positive; not held when p <= ALPHA and it
  is negative, or when the interval's upper end is below MARGIN (no effect worth the name is left); otherwise not
  decidable at this n.
* `not_worse` (the claim is "a is no worse than b"): held when the interval's lower end is above -MARGIN; not held
  when p <= ALPHA and the value is negative; otherwise not decidable at this n.

p is the caller's (Holm-corrected where the notebook's table corrects).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from scipy.stats import binomtest

from . import stats

HELD, NOT_HELD, UNDECIDED = "held", "not held", "not decidable at this n"
ALPHA = 0.05
MARGIN = 0.05


@dataclass(frozen=True)
class Finding:
    paper: str  # whose finding, e.g. "Ponkshe et al."
    claim: str  # the finding in one sentence
    measure: str  # the number that tests it on our models, oriented so that positive favours the claim
    value: float
    low: float
    high: float
    n: int
    p: float
    verdict: str  # HELD, NOT_HELD or UNDECIDED

    def row(self) -> dict:
        return asdict(self)


def _check(value: float, low: float, high: float, p: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"a finding's value {value:g} lies outside its interval [{low:g}, {high:g}]")
    if not 0 <= p <= 1:
        raise ValueError(f"a finding's p must lie in [0, 1], got {p:g}")


def superior(value: float, low: float, high: float, p: float, margin: float = MARGIN) -> str:
    """The verdict on "a > b" (module docstring)."""
    _check(value, low, high, p)
    if p <= ALPHA:
        return HELD if value > 0 else NOT_HELD
    return NOT_HELD if high < margin else UNDECIDED


def not_worse(value: float, low: float, high: float, p: float, margin: float = MARGIN) -> str:
    """The verdict on "a is no worse than b" (module docstring)."""
    _check(value, low, high, p)
    if low > -margin:
        return HELD
    return NOT_HELD if p <= ALPHA and value < 0 else UNDECIDED


Estimate = tuple[dict, int, float]  # ({value, low, high}, n, p): what `decide` reads


RULES: dict[str, Callable[..., str]] = {"superior": superior, "not_worse": not_worse}


def decide(paper: str, claim: str, measure: str, rule: str, estimated: Estimate, sign: float = 1.0,
           p: float | None = None, margin: float = MARGIN) -> Finding:
    """The Finding for `estimated` (a difference, its n and p; `p` replaces that p, e.g. by its Holm correction);
    `sign` -1 flips a difference whose negative favours the claim (over-refusal: higher is worse), so the stored
    value favours the claim when it is positive."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; the rules are {', '.join(RULES)}")
    estimate, n, own_p = estimated
    p = own_p if p is None else p
    low, high = sorted((sign * estimate["low"], sign * estimate["high"]))
    value = sign * estimate["value"]
    return Finding(paper, claim, measure, value, low, high, int(n), float(p), RULES[rule](value, low, high, p, margin))


def share_above(flags: Sequence[bool], chance: float = 0.05, confidence: float = 0.95) -> Estimate:
    """How far the share of True (e.g. matrices whose overlap exceeds random's 95th percentile) lies above the share
    `chance` expects: the exact interval shifted by `chance`, and the one-sided exact binomial p."""
    rate = stats.exact_rate(list(flags), confidence)
    shifted = {k: rate[k] - chance for k in ("value", "low", "high")}
    return shifted, rate["n"], float(binomtest(rate["k"], rate["n"], chance, alternative="greater").pvalue)


def mean_difference(differences: Sequence[float], confidence: float = 0.95) -> Estimate:
    """The mean of paired differences with its t interval (`stats.t_interval`) and the Wilcoxon signed-rank p."""
    return stats.t_interval(differences, confidence), len(differences), stats.signed_rank(differences)["p"]


def flag_difference(reference: Sequence[bool], other: Sequence[bool], confidence: float = 0.95) -> Estimate:
    """other − reference share of True on the same items (`stats.exact_paired_difference`) and the exact McNemar p."""
    return (stats.exact_paired_difference(reference, other, confidence), len(reference),
            stats.mcnemar_exact(reference, other)["p"])
