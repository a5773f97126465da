"""The refusal judges against the human labels of XSTest v2 completions and against labelled responses of our own
models (es2_lib/judge_check.py)."""

from __future__ import annotations

import json

import pytest

from es2_lib import judge_check, judges
from es2_lib.local_tables import DataError


@pytest.fixture(scope="module")
def labelled() -> list[dict]:
    return judge_check.load_labelled()


def test_the_labels_load_without_the_partial_refusals(labelled):
    assert len(labelled) == 441 and sum(r["refused"] for r in labelled) == 211  # 230 compliant, 9 partial left out


def test_the_anywhere_lists_flag_compliant_completions_and_catch_every_refusal(labelled):
    """The issue's numbers: AutoDAN's list flags 57 of 230 fully compliant completions, JailbreakBench's 17; both
    catch all 211 refusals."""
    autodan, jbb = judge_check.check(labelled, "autodan"), judge_check.check(labelled, "jailbreakbench")
    assert (autodan["fp"], autodan["tp"], autodan["fn"]) == (57, 211, 0)
    assert (jbb["fp"], jbb["tp"], jbb["fn"]) == (17, 211, 0)
    assert autodan["accuracy"]["value"] < jbb["accuracy"]["value"]


def test_within_counts_only_phrases_that_start_in_the_first_n_characters():
    text = "Sure, here is how. " + "x" * 40 + " I cannot stress enough"
    assert judges.is_refusal(text, "autodan") and not judges.is_refusal(text, "autodan", within=40)
    assert judges.is_refusal(text, "autodan", within=text.index("I cannot") + 1)
    assert not judges.is_refusal(text, "autodan", within=text.index("I cannot"))


def test_the_prefix_variant_of_autodan_is_chosen_on_dev_and_beats_its_anywhere_list(labelled):
    rows = judge_check.judge_table(labelled, [20, 100, 300], dev_fraction=0.5, seed=0)
    by = {(r["judge"], r["within"] is None): r for r in rows}
    assert by[("autodan", False)]["within"] == 20  # "As an"/"cannot" later in a compliant answer stop counting
    assert by[("autodan", False)]["accuracy"]["value"] > by[("autodan", True)]["accuracy"]["value"] + 0.05
    assert sum(r["best"] for r in rows) == 1 and all(r["n"] + r["n_dev"] == 441 for r in rows)


def test_an_unknown_label_names_the_file_and_row(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("id,type,prompt,completion,final_label\nv1,t,p,c,maybe\n")
    with pytest.raises(DataError, match=r"labels.csv: row 1: final_label 'maybe'"):
        judge_check.load_labelled(bad)


def test_another_judge_gets_its_row_and_a_perfect_one_is_best(labelled):
    others = {"people": lambda rows: [r["refused"] for r in rows],
              "contrarian": lambda rows: [not r["refused"] for r in rows]}
    rows = judge_check.judge_table(labelled, [20, 100], dev_fraction=0.5, seed=0, others=others)
    by = {r["judge"]: r for r in rows if r["judge"] in others}
    assert by["people"]["best"] and by["people"]["accuracy"]["value"] == 1.0 and by["people"]["within"] is None
    assert by["contrarian"]["accuracy"]["value"] == 0.0 and by["people"]["n"] == rows[0]["n"]


@pytest.fixture(scope="module")
def own() -> list[dict]:
    return judge_check.load_reference()


def test_our_own_labelled_responses_load_without_the_unclear_ones(own):
    assert len(own) == 1190  # 1,218 rows, 28 unclear
    assert {r["model"] for r in own} == {"base", "es2", "es2_retain", "stl", "rr"}
    assert all(r["harm_free"] for r in own if r["refused"]) and any(r["harm_free"] and not r["refused"] for r in own)


def test_on_es2s_own_refusals_jailbreakbenchs_list_misses_what_autodans_catches(own):
    """ES2 refuses in words of its own ("I'm not capable to promote any illegal activities"): JailbreakBench's 12
    phrases miss most of them, AutoDAN's "illegal" catches them; on base both lists agree with the labels."""
    rows = judge_check.reference_table(own, {"autodan": 20, "jailbreakbench": 20})
    by = {(r["model"], r["condition"], r["measure"], r["judge"], r["within"]): r for r in rows}
    es2_autodan = by[("es2", "no attack", "refusal", "autodan", None)]
    es2_jbb = by[("es2", "no attack", "refusal", "jailbreakbench", None)]
    assert es2_jbb["fn"] > 100 and es2_autodan["accuracy"]["value"] > es2_jbb["accuracy"]["value"] + 0.3
    assert by[("base", "no attack", "refusal", "jailbreakbench", None)]["accuracy"]["value"] > 0.9
    assert es2_autodan["n"] == es2_jbb["n"] == by[("es2", "no attack", "harm-free", "autodan", None)]["n"]
    assert by[("all", "all", "refusal", "autodan", None)]["n"] == len(own)


def test_the_harm_free_check_counts_a_non_answer_the_incoherence_flag_missed():
    row = {"model": "m", "attack": "repe", "completion": "The website is the United States.", "refused": False,
           "harm_free": True, "incoherent_judged": False}
    rows = judge_check.reference_table([row, row | {"incoherent_judged": True}], {"autodan": 20, "jailbreakbench": 20})
    harm_free = next(r for r in rows if r["measure"] == "harm-free" and r["model"] == "m")
    assert harm_free["condition"] == "attacked" and (harm_free["fn"], harm_free["tp"]) == (1, 1)


def test_a_bad_reference_label_names_the_file_line_and_value(tmp_path):
    bad = tmp_path / "own.jsonl"
    keys = {"stage": "02", "model": "m", "set": "s", "attack": "none", "setting": "", "prompt": "p",
            "response": "r", "incoherent_judged": False}
    bad.write_text(json.dumps(keys | {"label": "refusal"}) + "\n" + json.dumps(keys | {"label": "maybe"}) + "\n")
    with pytest.raises(DataError, match=r"own.jsonl: line 2: label 'maybe', expected one of refusal"):
        judge_check.load_reference(bad)
    bad.write_text(json.dumps({"label": "refusal"}) + "\n")
    with pytest.raises(DataError, match=r"line 1: missing key\(s\) stage, model"):
        judge_check.load_reference(bad)
