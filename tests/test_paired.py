"""Paired tests between models on the same prompts (es2_lib/paired.py)."""

from __future__ import annotations

import pytest

from es2_lib import paired


def _rows(model: str, attack: str, setting: str, refused: list[bool]) -> list[dict]:
    return [{"model": model, "attack": attack, "setting": setting, "prompt": f"p{i}", "refused": r,
             "refused_jbb": r and i % 2 == 0} for i, r in enumerate(refused)]


def test_paired_table_pairs_reported_settings_on_shared_prompts_and_corrects_across_the_table():
    responses = (_rows("base", "repe", "coeff=-0.1", [False] * 10) + _rows("base", "repe", "coeff=-0.2", [True] * 10)
                 + _rows("es2", "repe", "coeff=-0.2", [True] * 9 + [False]) + _rows("stl", "repe", "coeff=-0.1",
                                                                                  [False] * 9 + [True])
                 + _rows("stl", "gcg", "", [True] * 10))  # no base row for GCG: not paired
    settings = {("base", "repe"): "coeff=-0.1", ("es2", "repe"): "coeff=-0.2", ("stl", "repe"): "coeff=-0.1",
                ("stl", "gcg"): ""}
    rows = paired.paired_table(responses, settings)
    assert [(r["model"], r["judge"]) for r in rows] == [("es2", "autodan"), ("es2", "jailbreakbench"),
                                                          ("stl", "autodan"), ("stl", "jailbreakbench")]
    es2 = rows[0]
    assert es2["n"] == 10 and es2["reference_rate"]["value"] == 0.0 and es2["rate"]["value"] == 0.9
    assert es2["mcnemar"]["b_only"] == 9 and es2["mcnemar"]["p"] == pytest.approx(2 * 0.5 ** 9)
    assert es2["holm"]["p_holm"] == pytest.approx(4 * 2 * 0.5 ** 9) and es2["holm"]["holds"]
    assert rows[1]["rate"]["value"] == 0.5  # the JailbreakBench flags are the row's own
    assert rows[2]["mcnemar"]["p"] == 1.0 and not rows[2]["holm"]["holds"]
