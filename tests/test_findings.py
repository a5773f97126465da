"""Headline findings: the two rules' three verdicts, orientation by sign, the estimates they read, errors."""

from __future__ import annotations

import pytest

from es2_lib import findings
from es2_lib.findings import HELD, NOT_HELD, UNDECIDED


def test_superior_needs_significance_in_its_direction():
    assert findings.superior(0.3, 0.2, 0.4, 0.001) == HELD
    assert findings.superior(-0.3, -0.4, -0.2, 0.001) == NOT_HELD
    assert findings.superior(0.04, -0.1, 0.18, 0.5) == UNDECIDED  # the interval still holds a real effect
    assert findings.superior(0.0, -0.03, 0.03, 0.9) == NOT_HELD  # too narrow to hide an effect of MARGIN


def test_not_worse_holds_only_when_the_interval_excludes_a_real_loss():
    assert findings.not_worse(0.0, -0.02, 0.03, 0.8) == HELD
    assert findings.not_worse(-0.44, -0.58, -0.30, 1e-4) == NOT_HELD
    assert findings.not_worse(-0.05, -0.2, 0.1, 0.6) == UNDECIDED
    assert findings.not_worse(0.2, 0.1, 0.3, 1e-3) == HELD


def test_decide_orients_a_difference_whose_negative_favours_the_claim():
    more_refusals = {"value": 0.2, "low": 0.12, "high": 0.28}  # SRR over-refuses 0.2 more than a random pick
    f = findings.decide("Du et al.", "no more over-refusal", "over_refusal", "not_worse", (more_refusals, 60, 1e-4),
                        sign=-1)
    assert (f.value, f.low, f.high) == (-0.2, -0.28, -0.12)
    assert f.verdict == NOT_HELD and f.n == 60
    assert findings.decide("x", "c", "m", "not_worse", (more_refusals, 60, 1e-4)).verdict == HELD
    assert findings.decide("x", "c", "m", "superior", (more_refusals, 60, 0.5), p=0.01).p == 0.01  # Holm's p wins
    assert set(f.row()) == {"paper", "claim", "measure", "value", "low", "high", "n", "p", "verdict"}


def test_estimates_read_shares_means_and_paired_flags():
    shifted, n, p = findings.share_above([True] * 40 + [False] * 10)  # 80 % of matrices above random's 95th pct
    assert n == 50 and shifted["value"] == pytest.approx(0.75) and shifted["low"] > 0.5 and p < 1e-30
    _, _, p_chance = findings.share_above([True] * 2 + [False] * 38)  # 5 %: what chance gives
    assert p_chance > 0.3
    diff, n, p = findings.flag_difference([True] * 30 + [False] * 20, [True] * 10 + [False] * 40)
    assert n == 50 and diff["value"] == pytest.approx(-0.4) and diff["high"] < 0 and p < 1e-4
    ties, n, p = findings.flag_difference([True, True, False, False], [True, True, False, False])
    assert ties["value"] == 0 and ties["low"] < -0.5 and ties["high"] > 0.5 and p == 1  # four ties decide nothing
    assert findings.decide("x", "c", "m", "not_worse", (ties, n, p)).verdict == UNDECIDED
    mean, n, p = findings.mean_difference([-0.2, -0.3, -0.25, -0.22, -0.28, -0.3])
    assert n == 6 and mean["high"] < 0 and p < 0.05
    one, n, _ = findings.mean_difference([0.3])
    assert n == 1 and one["low"] == -float("inf") and one["high"] == float("inf")


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="outside its interval"):
        findings.superior(0.5, 0.0, 0.3, 0.01)
    with pytest.raises(ValueError, match="p must lie"):
        findings.not_worse(0.1, 0.0, 0.2, 1.5)
    with pytest.raises(ValueError, match="equally long"):
        findings.flag_difference([True], [True, False])
    with pytest.raises(ValueError, match="unknown rule 'better'"):
        findings.decide("x", "c", "m", "better", ({"value": 0.1, "low": 0.0, "high": 0.2}, 10, 0.5))
