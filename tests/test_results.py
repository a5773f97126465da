"""Typed attack entries: a results file round-trips exactly, and a malformed one is refused by name."""

from __future__ import annotations

import json

import pytest

from es2_lib import results


def _summary(dsr: float) -> results.Summary:
    rate = results.Interval(value=dsr, low=dsr - 0.1, high=dsr + 0.1, n=10)
    return results.Summary(dsr=rate, dsr_jbb=rate, harm_free=rate, refused=dsr, incoherent=0.1,
                           compliant=0.9 - dsr, median_perplexity=None, n=10)


def test_round_trip_keeps_every_field(tmp_path):
    sweep = tuple(results.SweepPoint(setting=f"coeff={c}", summary=_summary(0.2), perturbation={"l2": c},
                                     wall_s=1.0) for c in (1.0, 2.0))
    entries = [results.AttackEntry("base", "none", "", _summary(0.5), {"l2": 0.0}, {"from": "02"}),
               results.AttackEntry("es2", "repe", "coeff=1.0", _summary(0.2), {"l2": 1.0, "relative": 0.1},
                                   {"coeffs": [1.0, 2.0]}, wall_s=3.5, all_incoherent=True, sweep=sweep)]
    path = tmp_path / "results.json"
    results.write_attack_results(path, entries, n_prompts=10)
    back, meta = results.read_attack_results(path)
    assert back == entries and meta == {"n_prompts": 10}
    assert json.loads(path.read_text())["entries"][1]["sweep"][1]["perturbation"] == {"l2": 2.0}


def test_malformed_files_are_refused(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"base": {"repe": {}}}))  # the old shape of stage 03
    with pytest.raises(ValueError, match="expected an attack results file"):
        results.read_attack_results(path)
