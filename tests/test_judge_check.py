"""The refusal judges against the human labels of XSTest v2 completions (es2_lib/judge_check.py)."""

from __future__ import annotations

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
