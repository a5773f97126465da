"""Figures and tables of es2_lib/plots/ on small synthetic inputs: the right number of bars and lines, exact
Markdown and interval cells, atomic PNG/CSV/Markdown files; Table 1 on the records the attack stages write."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from es2_lib import attacks, plots, runs, stages
from es2_lib.plots import figures, tables
from es2_lib.results import AttackEntry, Interval, Summary, write_attack_results

RATE = {"value": 2 / 3, "low": 0.4583, "high": 0.875, "n": 24}


def bars(fig) -> int:
    return sum(len(c) for ax in fig.axes for c in ax.containers if isinstance(c, BarContainer))


def test_fmt_rate_and_number():
    assert plots.fmt_rate(RATE) == "0.67 [0.46, 0.88]"
    assert plots.fmt_rate(RATE, digits=3) == "0.667 [0.458, 0.875]"
    assert plots.fmt_rate({"value": 0.5}) == "0.50"
    assert plots.fmt_rate(None) == "–"
    assert plots.fmt_rate(Interval(2 / 3, 0.4583, 0.875, 24)) == "0.67 [0.46, 0.88]"  # a results record too
    assert plots.fmt_number(float("nan")) == "–"
    assert plots.fmt_number(None) == "–"
    assert plots.fmt_number(1.23456, 3) == "1.235"


def test_markdown_table_exact():
    df = pd.DataFrame({"attack": ["SCAV", "a|b"], "n": [24, 6], "DSR": ["0.67 [0.46, 0.88]", "–"]})
    assert plots.markdown_table(df) == (
        "| attack | n | DSR |\n"
        "|---|---:|---|\n"
        "| SCAV | 24 | 0.67 [0.46, 0.88] |\n"
        "| a\\|b | 6 | – |\n"
    )


def test_write_table(tmp_path):
    numbers = pd.DataFrame({"model": ["base"], "dsr": [0.5]})
    shown = pd.DataFrame({"model": ["base"], "DSR": ["0.50"]})
    csv, md = plots.write_table(numbers, shown, tmp_path / "t", note="DSR is the paper's.")
    assert pd.read_csv(csv).to_dict("records") == [{"model": "base", "dsr": 0.5}]
    assert md.read_text() == "DSR is the paper's.\n\n| model | DSR |\n|---|---|\n| base | 0.50 |\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.md"]  # no temporary files left


def test_probe_accuracy_lines():
    fig = figures.probe_accuracy({"base": [0.5, 0.8, 0.95, 1.0], "es2": [0.5, 0.9, 1.0, 1.0]}, 0.9, es2_layers=[2, 3])
    ax = fig.axes[0]
    # two models + threshold + two ES2 layers
    assert len(ax.lines) == 5
    assert list(ax.lines[0].get_xdata()) == [0, 1, 2, 3]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["base", "ES2", "threshold 0.9", "ES2 layers"]


def test_separation_before_after_bars():
    metrics = {"centroid distance": {"base": [0.1, 0.3], "es2": [2.0, 2.5]},
               "Fisher ratio": {"base": [1.0, 2.0], "es2": [5.0, 6.0]},
               "probe accuracy": {"base": [0.9, 1.0], "es2": [1.0, 1.0]}}
    fig = figures.separation_before_after([3, 23], metrics)
    assert len(fig.axes) == 3
    assert bars(fig) == 3 * 2 * 2
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["3", "23"]


def test_dsr_vs_perturbation_panels():
    points = pd.DataFrame({
        "model": ["base", "es2", "base", "base", "es2", "base"],
        "attack": ["no attack", "no attack", "RepE", "RepE", "RepE", "SCAV"],
        "perturbation": [0.0, 0.0, 4.0, 2.0, 4.0, 2.0], "dsr": [0.9, 1.0, 0.2, 0.5, 0.8, 0.3],
        "dsr_low": [0.8, 1.0, 0.1, 0.3, 0.6, 0.1], "dsr_high": [1.0, 1.0, 0.3, 0.7, 0.9, 0.5],
        "harm_free": [0.9, 1.0, 0.6, 0.5, 1.0, 0.4]})
    fig = figures.dsr_vs_perturbation(points)
    repe, scav = fig.axes
    assert [repe.get_title(), scav.get_title()] == ["RepE", "SCAV"]
    assert sum(isinstance(c, ErrorbarContainer) for c in repe.containers) == 2  # base and ES2
    assert sum(isinstance(c, ErrorbarContainer) for c in scav.containers) == 2  # base, and ES2's no-attack point
    base_line = repe.containers[0].lines[0]  # through the no-attack point, sorted by perturbation
    assert list(base_line.get_xdata()) == [0.0, 2.0, 4.0] and list(base_line.get_ydata()) == [0.9, 0.5, 0.2]
    assert [l.get_label() for l in repe.lines if l.get_linestyle() == ":"] == ["base: harm-free", "ES2: harm-free"]


def test_training_curves_skips_missing_keys_and_expands_layers():
    log = [{"step": s, "loss": 1.0 - s, "kl": 0.01 * s, "distance": [0.1 * s, 0.2 * s]} for s in range(4)]
    fig = figures.training_curves(log, {"loss": ["loss", "retain"], "distance": ["distance"], "KL": ["kl"]},
                                hlines={"KL": 0.1}, layers=[3, 23])
    loss_ax, distance_ax, kl_ax = fig.axes
    assert len(loss_ax.lines) == 1  # "retain" was not logged
    assert [line.get_label() for line in distance_ax.lines] == ["distance, layer 3", "distance, layer 23"]
    assert list(distance_ax.lines[1].get_ydata()) == pytest.approx([0.0, 0.2, 0.4, 0.6])
    assert len(kl_ax.lines) == 2  # kl and the stop threshold


def test_coherence_shares_stacked():
    shares = pd.DataFrame({"refused": [0.5, 0.1, 0.0], "incoherent": [0.0, 0.8, 0.5], "compliant": [0.5, 0.1, 0.5]},
                          index=["base, none", "ES2, SCAV", "base, SCAV"])
    fig = figures.coherence_shares(shares)
    ax = fig.axes[0]
    assert bars(fig) == 3 * 3
    tops = [max(p.get_y() + p.get_height() for p in ax.patches if p.get_x() < i + 0.5 and p.get_x() > i - 0.5)
            for i in range(3)]
    assert tops == pytest.approx([1.0, 1.0, 1.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == list(shares.index)


def test_save_png(tmp_path):
    fig = figures.probe_accuracy({"base": [0.5, 1.0]}, 0.9)
    path = plots.save(fig, tmp_path / "sub" / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["f.png"]


def summary(dsr: float, incoherent: float, n: int = 4) -> Summary:
    rate = lambda v: Interval(v, max(0.0, v - 0.25), min(1.0, v + 0.25), n)  # noqa: E731
    return Summary(dsr=rate(dsr), dsr_jbb=rate(dsr), harm_free=rate(dsr + incoherent), refused=dsr,
                   incoherent=incoherent, compliant=1 - dsr - incoherent, median_perplexity=3.0, n=n)


def entry(model: str, attack: str, setting: str, dsr: float, incoherent: float, l2: float) -> AttackEntry:
    return AttackEntry(model=model, attack=attack, setting=setting, summary=summary(dsr, incoherent),
                       perturbation={"l2": l2}, budget={"steps": 2}, wall_s=1.0)


NO_ATTACK = [entry("base", "none", "", 0.75, 0.0, 0.0), entry("es2", "none", "", 1.0, 0.0, 0.0)]
SWEEP = [entry("base", "repe", "coeff=-1", 0.5, 0.0, 1.0), entry("base", "repe", "coeff=-2", 0.25, 0.25, 2.0),
         entry("es2", "scav", "", 0.5, 0.5, 3.5)]


def written(tmp_path, sweep: list[AttackEntry]) -> list[tables.Reported]:
    """What 06 reports from files written as stages 02 and 03 write them (03 with attacks.select over `sweep`);
    04 has not run."""
    write_attack_results(tmp_path / "02" / "no_attack.json", NO_ATTACK)
    write_attack_results(tmp_path / "03" / "results.json", list(attacks.select(sweep).values()), n_prompts=4)
    sources = tables.read_sources({"02_es2_training": tmp_path / "02" / "no_attack.json",
                                   "03_embedding_attacks": tmp_path / "03" / "results.json",
                                   "04_prompt_attacks": tmp_path / "04" / "results.json"})
    assert sources["04_prompt_attacks"] is None
    return tables.reported_entries(sources)


def test_dsr_table_from_the_written_results_marks_missing_rows_not_run(tmp_path):
    numbers, shown = tables.dsr_table(written(tmp_path, SWEEP))
    assert len(numbers) == len(shown) == 14  # seven attacks (the direction ablation too) × two models
    assert list(numbers["attack"][:4]) == ["none", "none", "repe", "repe"]
    row = shown.iloc[2].to_dict()  # base, RepE: the lower DSR of the two coherent settings
    assert row["attack"] == "RepE" and row["setting"] == "coeff=-2"
    assert row[tables.DSR_COLUMN] == "0.25 [0.00, 0.50]"
    assert row["harm-free (refused + incoherent)"] == "0.50 [0.25, 0.75]"
    assert row["perturbation (L2)"] == "2.000" and row["n"] == "4"
    assert shown.iloc[3][tables.DSR_COLUMN] == plots.NOT_RUN  # ES2 under RepE did not run
    gcg = numbers[(numbers["attack"] == "gcg")]
    assert list(gcg["status"]) == [plots.NOT_RUN] * 2 and gcg["dsr"].isna().all() and gcg["n"].isna().all()
    assert numbers.loc[0, "dsr"] == 0.75 and numbers.loc[0, "perturbation_l2"] == 0.0
    assert list(numbers["stage"][:3]) == ["02_es2_training", "02_es2_training", "03_embedding_attacks"]
    assert numbers.loc[2, "budget"] == '{"steps": 2}'


def test_swept_setting_flagged_when_every_setting_is_mostly_incoherent(tmp_path):
    """The flag travels from attacks.select through the results file into Table 1 (it once read a key no
    producer wrote, so the flag could never show)."""
    incoherent = [entry("base", "repe", "coeff=-1", 0.0, 0.75, 1.0), entry("base", "repe", "coeff=-2", 0.0, 1.0, 2.0),
                  entry("es2", "scav", "", 0.0, 1.0, 3.5)]
    _, shown = tables.dsr_table(written(tmp_path, incoherent))
    assert shown.iloc[2]["setting"] == "coeff=-1 (every setting mostly incoherent)"  # the smallest perturbation
    assert shown.iloc[5]["setting"] == "–"  # SCAV has one setting: nothing was swept
    _, shown = tables.dsr_table(written(tmp_path, SWEEP))
    assert "incoherent" not in shown.iloc[2]["setting"]


def test_reported_entries_first_source_wins_and_one_entry_per_source():
    again = [entry("base", "none", "", 0.5, 0.0, 0.0), entry("base", "gcg", "", 0.25, 0.0, math.nan)]
    reported = tables.reported_entries({"02_es2_training": NO_ATTACK, "03_embedding_attacks": None,
                                        "04_prompt_attacks": again})
    assert [(r.stage, r.entry.model, r.entry.attack) for r in reported] == [
        ("02_es2_training", "base", "none"), ("02_es2_training", "es2", "none"), ("04_prompt_attacks", "base", "gcg")]
    with pytest.raises(ValueError, match="04_prompt_attacks: two entries for attack 'none' on model 'base'"):
        tables.reported_entries({"04_prompt_attacks": again + again[:1]})
    with pytest.raises(ValueError, match="two entries for attack 'none' on model 'base'; Table 1 reports one"):
        tables.dsr_table(reported + reported[:1])


def test_dsr_note_names_the_stages_not_run():
    reported = tables.reported_entries({"02_es2_training": NO_ATTACK})
    note = tables.dsr_note(reported, ["03_embedding_attacks"], 0.95)
    assert "exact 95% (Clopper–Pearson)" in note and "on 4 harmful eval prompts" in note
    assert 'Not run:** 03_embedding_attacks — the rows of RepE, Soft Prompt, SCAV, AutoDAN, GCG, Direction ablation say "not run"' in note
    assert "Not run" not in tables.dsr_note(reported, [], 0.95)


def test_stage_status(tmp_path, tiny_params):
    run = runs.Run(tiny_params)
    (run.dir / "04_prompt_attacks").mkdir()
    for file in stages.STAGES["04_prompt_attacks"].writes[:2]:
        (run.dir / "04_prompt_attacks" / file).write_text("{}")
    for file in stages.STAGES["05_capability"].writes:
        run.path("05_capability", file).write_text("{}")
    run.record_stage("05_capability", "key", 12.3)
    status = tables.stage_status(run, ["03_embedding_attacks", "04_prompt_attacks", "05_capability"])
    assert status.to_dict("records") == [
        {"stage": "03_embedding_attacks", "results": plots.NOT_RUN, "manifest status": "–", "wall time (s)": "–"},
        {"stage": "04_prompt_attacks", "manifest status": "–", "wall time (s)": "–",
         "results": "partial, lacks responses.jsonl, attack_prompts.jsonl, success_curves.png"},
        {"stage": "05_capability", "results": "found", "manifest status": "done", "wall time (s)": "12"}]


def test_capability_table():
    rows = [{"measure": "MMLU-Pro accuracy", "base": RATE, "es2": {"value": 0.5, "low": 0.25, "high": 0.75},
             "difference": {"value": -1 / 6, "low": -0.5, "high": 0.125}},
            {"measure": "harmless KL", "base": None, "es2": {"value": 0.01234}, "difference": None}]
    numbers, shown = tables.capability_table(rows)
    assert shown.to_dict("records") == [
        {"measure": "MMLU-Pro accuracy", "base": "0.667 [0.458, 0.875]", "ES2": "0.500 [0.250, 0.750]",
         "ES2 − base": "-0.167 [-0.500, 0.125]"},
        {"measure": "harmless KL", "base": "–", "ES2": "0.012", "ES2 − base": "–"}]
    assert numbers.loc[1, "es2"] == 0.01234 and pd.isna(numbers.loc[1, "base"])
    numbers, shown = tables.capability_table(None)
    assert list(shown["measure"]) == tables.CAPABILITY_MEASURES and set(shown["base"]) == {plots.NOT_RUN}


def test_sweep_points_shares_and_separation_metrics():
    table = pd.DataFrame({"model": ["base", "base", "es2", "es2"], "attack": ["none", "repe", "repe", "gcg"],
                          "setting": ["", "coeff=-1", "coeff=-1", ""], "perturbation": [0.0, 1.0, 1.0, None],
                          "dsr": [0.75, 0.5, 1.0, 0.5], "dsr_low": [0.5, 0.25, 1.0, 0.25],
                          "dsr_high": [1.0, 0.75, 1.0, 0.75], "harm_free": [0.75, 0.5, 1.0, 0.5], "n": [4] * 4})
    points = figures.sweep_points(table)
    assert list(points.columns) == ["model", "attack", "perturbation", "dsr", "dsr_low", "dsr_high", "harm_free"]
    assert list(points["attack"]) == ["no attack", "RepE", "RepE"]  # GCG has no L2 size
    shares = figures.shares_frame(SWEEP[1:] + NO_ATTACK)
    assert list(shares.index) == ["base, no attack", "ES2, no attack", "base, RepE", "ES2, SCAV"]
    assert shares.sum(axis=1).tolist() == pytest.approx([1.0] * 4)
    metrics = {"es2_layers": [1, 3], "separation": {m: {"fisher": [0.0, 1.0 + i, 2.0, 3.0 + i]}
                                                    for i, m in enumerate(("base", "es2"))}}
    assert figures.separation_metrics(metrics, {"Fisher ratio": "fisher"}) == (
        [1, 3], {"Fisher ratio": {"base": [1.0, 3.0], "es2": [2.0, 4.0]}})


def test_prompt_attack_table_has_a_row_per_attacked_arm_with_its_search_record():
    from es2_lib.plots import attacks as attack_plots

    entries = [entry(m, a, "", d, 0.0, math.nan) for m, a, d in (
        ("base", "none", 0.75), ("base", "gcg", 0.25), ("es2", "none", 1.0), ("es2", "gcg", 0.75),
        ("stl", "none", 1.0), ("stl", "gcg", 0.5))]
    search = {m: {"gcg": {"success_rate": s, "steps_to_success_median": 3, "final_loss_mean": 1.0}}
              for m, s in (("base", 0.75), ("es2", 0.25), ("stl", 0.5))}
    numbers, shown = attack_plots.prompt_attack_table(entries, search)
    gcg = numbers[numbers.attack == "gcg"]
    assert list(gcg.model) == ["base", "es2", "stl"] and list(gcg.search_success) == [0.75, 0.25, 0.5]
    assert list(shown[shown.attack == "GCG"].model) == ["base", "ES2", "STL"]
