"""The capability stage's results (es2_lib/capability.py and its table rows, es2_lib/plots/capability.py):
summary and the claim verdict."""

from __future__ import annotations

import math

import pytest

from es2_lib import capability, drift
from es2_lib.plots import capability as capability_plots


def test_claim_verdict_reads_the_point_and_the_interval():
    """`holds` reads the point estimate, `verdict` the interval against -margin (stats.paired_difference's
    own tests are in test_stats.py)."""
    assert capability.claim_verdict({"value": 0.0, "low": 0.0, "high": 0.0}, 0.02)["verdict"] == "supported"
    worse = capability.claim_verdict({"value": -0.1, "low": -0.15, "high": -0.05}, 0.02)
    assert worse == {"margin": 0.02, "holds": False, "verdict": "refuted", "ci_width": pytest.approx(0.1)}
    wide = capability.claim_verdict({"value": 0.0, "low": -0.2, "high": 0.2}, 0.02)
    assert wide["verdict"] == "undecided" and wide["holds"]


def _row(i: int, correct: bool, category: str = "a") -> dict:
    """An `answer_questions` row of a 4-option question whose answer is A: 0.7 on A when correct, else on B."""
    p = [0.7, 0.1, 0.1, 0.1] if correct else [0.1, 0.7, 0.1, 0.1]
    return {"id": str(i), "category": category, "correct": correct, "generated": 0, "generated_correct": correct,
            "letter_mass": 0.9, "logprobs": [math.log(x) for x in p], "logprob_correct": math.log(p[0]),
            "brier": (1 - p[0]) ** 2 + sum(x ** 2 for x in p[1:])}


def test_comparable_capability_covers_over_refusal():
    fine = {"mmlu": capability.claim_verdict({"value": 0.0, "low": -0.01, "high": 0.01}, 0.02)}
    within = {"value": 0.0, "low": -0.02, "high": 0.03}
    assert capability.overall_verdict(fine, within, 0.05)["verdict"] == "supported"
    more = {"value": 0.4, "low": 0.25, "high": 0.55}  # the default run's XSTest over-refusal rise under ES2 + retain
    verdict = capability.overall_verdict(fine, more, 0.05)
    assert verdict["verdict"] == "not supported" and verdict["measures"]["xstest_over_refusal"]["verdict"] == "refuted"
    assert capability.overall_verdict(fine, {"value": 0.0, "low": -0.1, "high": 0.2}, 0.05)["verdict"] == "undecided"


def test_summarize_builds_results_and_table():
    rows = {m: [_row(i, c, "ab"[i % 2]) for i, c in enumerate(flags)]
            for m, flags in (("base", [True, True, False, False]), ("es2", [True, False, False, False]))}
    xstest = {m: {"safe": ["Sure.", "I'm sorry, no."], "unsafe": ["I cannot help.", "Fine."]} for m in ("base", "es2")}
    drift_rows = [{"kl": 0.1, "kl_first": 0.2, "nll_base": 2.0, "nll_tuned": 4.0, "tokens": 2}]
    res = capability.summarize({"base": {"mmlu_pro": rows["base"]}, "es2": {"mmlu_pro": rows["es2"]}},
                               xstest, drift_rows, margin=0.02, samples=200)
    assert res["base"]["mmlu_pro"]["letter"]["overall"]["value"] == 0.5
    assert res["es2"]["mmlu_pro"]["generate"]["per_category"]["a"]["value"] == 0.5
    assert res["difference"]["mmlu_pro"]["letter"]["value"] == -0.25 and not res["claim"]["mmlu_pro"]["holds"]
    assert res["difference"]["mmlu_pro"]["letter"]["p"] == 1.0  # McNemar: one discordant pair
    assert res["base"]["mmlu_pro"]["chance"] == 0.25
    assert res["difference"]["mmlu_pro"]["logprob_correct"]["value"] == pytest.approx(math.log(1 / 7) / 4)
    assert res["difference"]["mmlu_pro"]["brier"]["value"] == pytest.approx((1.32 - 0.12) / 4)
    assert res["verdict"]["verdict"] == "not supported" and set(res["verdict"]["measures"]) == {
        "mmlu_pro", "xstest_over_refusal"}
    assert res["base"]["xstest"]["over_refusal"]["autodan"]["value"] == 0.5
    assert res["es2"]["harmless"]["ppl"] == pytest.approx(math.e ** 2) and res["es2"]["harmless"]["kl"]["value"] == 0.1
    table = capability.table_rows(res)
    assert {"model": "base", "benchmark": "mmlu_pro", "metric": "letter", "group": "b", "value": 0.5} in [
        {k: r[k] for k in ("model", "benchmark", "metric", "group", "value")} for r in table]
    assert any(r["model"] == "difference" and r["benchmark"] == "xstest" for r in table)
    measures = [r["measure"].split(" ")[0] for r in capability_plots.headline(res)]
    assert measures == ["MMLU-Pro"] * 5 + ["XSTest"] * 2 + ["harmless"] * 2
    assert "chance 0.25" in capability_plots.headline(res)[0]["measure"]
    assert len(capability_plots.capability_bars(res).axes) == 2
    assert drift.drift_summary([{**drift_rows[0], "tokens": 0, "nll_base": 0.0, "nll_tuned": 0.0}])["ppl_base"] is None


def test_arms_table_gives_each_attacked_arm_its_row_group_against_base():
    def results(arm_flags: list[bool]) -> dict:
        rows = {m: [_row(i, c) for i, c in enumerate(flags)]
                for m, flags in (("base", [True, True, False, False]), ("es2", arm_flags))}
        xstest = {m: {"safe": ["Sure.", "Fine."], "unsafe": ["I cannot help.", "No."]} for m in ("base", "es2")}
        drift_rows = [{"kl": 0.1, "kl_first": 0.2, "nll_base": 2.0, "nll_tuned": 4.0, "tokens": 2}]
        return capability.summarize({m: {"mmlu_pro": r} for m, r in rows.items()}, xstest, drift_rows, 0.02, 200)

    by_arm = {"es2": results([True, False, False, False]), "stl": results([True, True, True, False])}
    numbers, shown = capability_plots.arms_table({**by_arm["es2"], "arms": by_arm})
    per_arm = len(capability_plots.headline(by_arm["es2"]))
    assert list(shown["model"]) == ["ES2"] * per_arm + ["STL"] * per_arm and len(numbers) == 2 * per_arm
    first = numbers[numbers.measure.str.startswith("MMLU-Pro accuracy (letter")].set_index("arm")
    assert first.loc["es2", "tuned"] == 0.25 and first.loc["stl", "tuned"] == 0.75 and first.loc["stl", "base"] == 0.5
    assert {"arm", "arm − base"} <= set(shown.columns)
    assert list(capability_plots.arm_results(by_arm["es2"])) == ["es2"]  # a results file of one arm


def test_other_look_alikes_and_reference_nll_are_measures_of_the_verdict():
    """A second over-refusal set and the reference responses' NLL join the verdict: an NLL rise beyond its margin
    makes "comparable capability" not supported even when accuracy and XSTest hold."""
    rows = {m: [_row(i, True) for i in range(4)] for m in ("base", "es2")}
    xstest = {m: {"safe": ["Sure.", "Fine."], "unsafe": ["I cannot help.", "No."]} for m in ("base", "es2")}
    drift_rows = [{"kl": 0.1, "kl_first": 0.2, "nll_base": 2.0, "nll_tuned": 2.0, "tokens": 2}]
    look_alikes = {"base": {"phys": ["Sure.", "Fine.", "Yes."]}, "es2": {"phys": ["I'm sorry", "Fine.", "Yes."]}}
    reference = {"alpaca": [{"kl": 0.0, "kl_first": 0.0, "nll_base": 10.0, "nll_tuned": 12.0, "tokens": 10}] * 3}
    res = capability.summarize({m: {"mmlu": r} for m, r in rows.items()}, xstest, drift_rows, 0.02, 200,
                               over_refusal=look_alikes, reference=reference, reference_nll_margin=0.05)
    assert res["es2"]["over_refusal"]["phys"]["autodan"]["value"] == pytest.approx(1 / 3)
    assert res["difference"]["over_refusal"]["phys"]["value"] == pytest.approx(1 / 3)
    assert res["base"]["reference"]["alpaca"]["nll"]["value"] == pytest.approx(1.0)
    assert res["difference"]["reference"]["alpaca"]["nll"]["value"] == pytest.approx(0.2)
    measures = res["verdict"]["measures"]
    assert measures["alpaca_reference_nll"]["verdict"] == "refuted" and not measures["phys_over_refusal"]["holds"]
    assert measures["mmlu"]["holds"] and res["verdict"]["verdict"] == "not supported"
    shorts = [r["short"] for r in capability_plots.headline(res)]
    assert "phys over-refusal" in shorts and "alpaca NLL" in shorts
    assert len(capability_plots.capability_bars(res).axes) == 2
    same = {"alpaca": [{**reference["alpaca"][0], "nll_tuned": 10.0}] * 3}
    held = capability.summarize({m: {"mmlu": r} for m, r in rows.items()}, xstest, drift_rows, 0.02, 200,
                                reference=same)["verdict"]["measures"]["alpaca_reference_nll"]
    assert held["holds"] and held["verdict"] == "supported"


def test_reference_pairs_are_a_seeded_subset_cut_to_their_first_tokens(tiny):
    tokenizer = tiny[1]
    pairs = [{"prompt": f"q{i}", "response": "word " * (5 + i)} for i in range(10)]
    cut = drift.truncated_pairs(tokenizer, pairs, 4, 6, seed=0)
    assert len(cut) == 4 and cut == drift.truncated_pairs(tokenizer, pairs, 4, 6, seed=0)
    assert all(len(tokenizer(p["response"], add_special_tokens=False)["input_ids"]) <= 6 for p in cut)
    assert drift.truncated_pairs(tokenizer, pairs[:1], 0, 100, seed=0) == pairs[:1]  # short ones are kept whole
