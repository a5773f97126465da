"""Bootstrap intervals of rates, means and paired differences: degenerate cases, width, seeds, errors."""

from __future__ import annotations

import pytest

from es2_lib import stats


def test_rate_ci_degenerate_and_empty():
    assert stats.rate_ci([True] * 30) == {"value": 1.0, "low": 1.0, "high": 1.0, "n": 30}
    assert stats.rate_ci([False] * 7)["high"] == 0.0
    with pytest.raises(ValueError):
        stats.rate_ci([])
    with pytest.raises(ValueError):
        stats.rate_ci([True], confidence=1.0)


def test_rate_ci_half():
    flags = [True, False] * 50  # n = 100, p = 0.5: the normal interval is 0.5 +- 0.098
    ci = stats.rate_ci(flags, samples=2000, seed=3)
    assert ci["value"] == 0.5 and ci["n"] == 100
    assert 0.14 < ci["high"] - ci["low"] < 0.26
    assert stats.rate_ci(flags, samples=2000, seed=3) == ci
    assert stats.rate_ci(flags, samples=2000, seed=4) != ci
    narrow = stats.rate_ci(flags, samples=2000, confidence=0.5, seed=3)
    assert ci["low"] < narrow["low"] and narrow["high"] < ci["high"]


def test_mean_ci_covers_the_mean_and_narrows_with_n():
    small = stats.mean_ci([0.0, 1.0, 2.0, 3.0], samples=2000)
    large = stats.mean_ci([0.0, 1.0, 2.0, 3.0] * 25, samples=2000)
    assert small["value"] == large["value"] == 1.5 and large["n"] == 100
    assert small["low"] < 1.5 < small["high"]
    assert large["high"] - large["low"] < (small["high"] - small["low"]) / 3
    with pytest.raises(ValueError):
        stats.mean_ci([])


def test_paired_difference_counts_gains_and_losses():
    base = [True] * 20 + [False] * 20
    same = stats.paired_difference(base, base, samples=500)
    assert same == {"value": 0.0, "low": 0.0, "high": 0.0, "n": 40, "gained": 0, "lost": 0}
    worse = stats.paired_difference(base, [False] * 10 + base[10:], samples=500)
    assert worse["value"] == -0.25 and worse["lost"] == 10 and worse["gained"] == 0
    assert worse["low"] < -0.25 < worse["high"] < 0
    with pytest.raises(ValueError):
        stats.paired_difference([True], [True, False])


def test_exact_rate_is_clopper_pearson_and_never_collapses_at_the_ends():
    full = stats.exact_rate([True] * 8)
    assert full["value"] == 1.0 and full["high"] == 1.0 and full["low"] == pytest.approx(0.6306, abs=1e-4)
    none = stats.exact_rate([False] * 24)
    assert none["low"] == 0.0 and none["high"] == pytest.approx(0.1425, abs=1e-4)
    half = stats.exact_rate([True, False] * 50)
    assert half["low"] == pytest.approx(0.3983, abs=1e-4) and half["high"] == pytest.approx(0.6017, abs=1e-4)
    assert half["k"] == 50 and half["n"] == 100
    with pytest.raises(ValueError, match="at least one"):
        stats.exact_rate([])


def test_mcnemar_exact_tests_only_the_discordant_pairs():
    a = [True] * 20 + [False] * 10
    b = [True] * 20 + [True] * 9 + [False]  # 9 prompts gained, none lost; the 20 concordant ones do not count
    result = stats.mcnemar_exact(a, b)
    assert (result["b_only"], result["a_only"], result["n"]) == (9, 0, 30)
    assert result["p"] == pytest.approx(2 * 0.5 ** 9)
    assert stats.mcnemar_exact(a, a)["p"] == 1.0
    assert stats.mcnemar_exact([True, False] * 5, [False, True] * 5)["p"] == 1.0  # 5 gained, 5 lost
    with pytest.raises(ValueError, match="equally long"):
        stats.mcnemar_exact([True], [True, False])


def test_holm_adjusts_step_down_and_keeps_the_order_of_the_tests():
    got = stats.holm([0.04, 0.01, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08 -> running max 0.09, 0.5
    assert [g["p_holm"] for g in got] == pytest.approx([0.09, 0.04, 0.09, 0.5])
    assert [g["holds"] for g in got] == [False, True, False, False]
    assert stats.holm([0.3, 0.9], alpha=0.05)[1]["p_holm"] == 0.9 and stats.holm([]) == []
    with pytest.raises(ValueError, match="p-values"):
        stats.holm([1.2])


def test_agreement_counts_precision_recall_and_accuracy_with_exact_intervals():
    predicted = [True, True, True, False, False, False, True, False]
    actual = [True, True, False, False, False, True, True, False]
    got = stats.agreement(predicted, actual)
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (3, 1, 1, 3)
    assert got["precision"]["value"] == 0.75 and got["recall"]["value"] == 0.75 and got["accuracy"]["value"] == 0.75
    assert got["accuracy"]["low"] == pytest.approx(stats.exact_rate([True] * 6 + [False] * 2)["low"])
    assert stats.agreement([False, False], [False, True])["precision"] is None  # nothing predicted positive


def test_exact_paired_difference_keeps_its_width_when_every_pair_ties():
    ties = stats.exact_paired_difference([True, False] * 4, [True, False] * 4)
    assert ties["value"] == 0 and ties["low"] < -0.4 and ties["high"] > 0.4 and ties["n"] == 8
    lost = stats.exact_paired_difference([True] * 40, [True] * 10 + [False] * 30)  # 30 of 40 lost
    assert lost["value"] == -0.75 and -0.92 < lost["low"] < lost["high"] < -0.4
    with pytest.raises(ValueError, match="equally long"):
        stats.exact_paired_difference([True], [])


def test_t_interval_narrows_with_n_and_is_unbounded_for_one_value():
    small, large = stats.t_interval([0.1, 0.3, 0.2]), stats.t_interval([0.1, 0.3, 0.2] * 10)
    assert small["low"] < large["low"] < 0.2 < large["high"] < small["high"]
    assert stats.t_interval([0.5])["high"] == float("inf")
