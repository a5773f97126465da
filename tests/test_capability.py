"""The capability stage's results (es2_lib/capability.py and its table rows, es2_lib/plots/capability.py):
summary, paired differences and the claim verdict."""

from __future__ import annotations

import math

import pytest

from es2_lib import capability, drift, stats
from es2_lib.plots import capability as capability_plots


def test_paired_difference_and_claim_verdict():
    base = [True] * 50 + [False] * 50
    same = stats.paired_difference(base, base, samples=500)
    assert same["value"] == same["low"] == same["high"] == 0.0
    worse = stats.paired_difference(base, [False] * 10 + base[10:], samples=500)
    assert worse["value"] == pytest.approx(-0.1) and worse["lost"] == 10 and worse["gained"] == 0
    assert worse["low"] < -0.1 < worse["high"] < 0
    assert capability.claim_verdict(same, 0.02)["verdict"] == "supported"
    assert capability.claim_verdict(worse, 0.02) | {"ci_width": None} == {
        "margin": 0.02, "holds": False, "verdict": "refuted", "ci_width": None}
    wide = {"value": 0.0, "low": -0.2, "high": 0.2}
    assert capability.claim_verdict(wide, 0.02)["verdict"] == "undecided"
    with pytest.raises(ValueError, match="equally long"):
        stats.paired_difference([True], [True, False])


def test_summarize_builds_results_and_table():
    rows = {m: [{"id": str(i), "category": "ab"[i % 2], "correct": c, "generated": 0, "generated_correct": c,
                 "letter_mass": 0.9}
                for i, c in enumerate(flags)] for m, flags in (("base", [True, True, False, False]),
                                                               ("es2", [True, False, False, False]))}
    xstest = {m: {"safe": ["Sure.", "I'm sorry, no."], "unsafe": ["I cannot help.", "Fine."]} for m in ("base", "es2")}
    drift_rows = [{"kl": 0.1, "kl_first": 0.2, "nll_base": 2.0, "nll_tuned": 4.0, "tokens": 2}]
    res = capability.summarize({"base": {"mmlu_pro": rows["base"]}, "es2": {"mmlu_pro": rows["es2"]}},
                               xstest, drift_rows, margin=0.02, samples=200)
    assert res["base"]["mmlu_pro"]["letter"]["overall"]["value"] == 0.5
    assert res["es2"]["mmlu_pro"]["generate"]["per_category"]["a"]["value"] == 0.5
    assert res["difference"]["mmlu_pro"]["letter"]["value"] == -0.25 and not res["claim"]["mmlu_pro"]["holds"]
    assert res["base"]["xstest"]["over_refusal"]["autodan"]["value"] == 0.5
    assert res["es2"]["harmless"]["ppl"] == pytest.approx(math.e ** 2) and res["es2"]["harmless"]["kl"]["value"] == 0.1
    table = capability.table_rows(res)
    assert {"model": "base", "benchmark": "mmlu_pro", "metric": "letter", "group": "b", "value": 0.5} in [
        {k: r[k] for k in ("model", "benchmark", "metric", "group", "value")} for r in table]
    assert any(r["model"] == "difference" and r["benchmark"] == "xstest" for r in table)
    measures = [r["measure"].split(" ")[0] for r in capability_plots.headline(res)]
    assert measures == ["MMLU-Pro"] * 3 + ["XSTest"] * 2 + ["harmless"] * 2
    assert len(capability_plots.capability_bars(res).axes) == 2
    assert drift.drift_summary([{**drift_rows[0], "tokens": 0, "nll_base": 0.0, "nll_tuned": 0.0}])["ppl_base"] is None
