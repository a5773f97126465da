"""The figures and tables of the attack stages 03 and 04 (docs/architecture.md, "Attacks"; paper: the DSR table):
DSR against the perturbation of each embedding attack, the reported setting of every embedding attack, the prompt
attacks' DSR table with their search record, and the best target cross-entropy per search step."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure

from . import ATTACK_LABELS, MODEL_COLORS, MODEL_LABELS, fmt_number, fmt_rate
from .figures import dsr_vs_perturbation, sweep_points
from .tables import Reported, dsr_table
from ..attacks import Outcome
from ..results import AttackEntry

PERTURBATION_AXES = {"repe": "L2 added per layer and position", "scav": "mean ‖ε‖ at the prompt's last token",
                     "soft_prompt": "mean L2 drift of a control embedding"}  # what each embedding attack's L2 is


def embedding_sweep(table: pd.DataFrame) -> Figure:
    """DSR (with interval) and harm-free rate against the perturbation, a panel per embedding attack and a line per
    model through its no-attack point at 0. `table`: stage 03's results.csv rows (one per attack setting)."""
    fig = dsr_vs_perturbation(sweep_points(table))
    for ax in fig.axes:
        attack = next((a for a, label in ATTACK_LABELS.items() if label == ax.get_title()), None)
        if attack in PERTURBATION_AXES:
            ax.set_xlabel(PERTURBATION_AXES[attack])
    return fig


def reported_settings(chosen: Iterable[AttackEntry]) -> pd.DataFrame:
    """One row per reported (model, attack) of stage 03: its setting, the rates with intervals, the three shares and
    the perturbation."""
    return pd.DataFrame([{
        "model": MODEL_LABELS[e.model], "attack": e.attack, "setting": e.setting, "DSR": fmt_rate(vars(e.summary.dsr)),
        "DSR (JBB)": fmt_rate(vars(e.summary.dsr_jbb)), "harm-free": fmt_rate(vars(e.summary.harm_free)),
        "refused / incoherent / compliant": f"{e.summary.refused:.2f} / {e.summary.incoherent:.2f} / "
                                            f"{e.summary.compliant:.2f}",
        "perturbation (L2)": fmt_number(e.perturbation["l2"], 3),
        "relative": fmt_number(e.perturbation.get("relative"), 3)} for e in chosen])


def prompt_attack_table(entries: Sequence[AttackEntry], search: Mapping[str, Mapping[str, dict]],
                        stage: str = "04_prompt_attacks") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 1's rows of the prompt attacks (numbers, formatted cells) with each search's record beside them:
    success rate, median steps to success and mean final target CE. `search[model][attack]` is
    prompt_search.search_summary of that attack (none for "no attack"); a row per model, base first."""
    models = ["base", *dict.fromkeys(e.model for e in entries if e.model != "base")]
    numbers, shown = dsr_table([Reported(stage, e) for e in entries], models)
    ran = (numbers.status == "ok").to_numpy()
    numbers, shown = numbers[ran], shown[ran]
    found = [search.get(m, {}).get(a, {}) for m, a in zip(numbers.model, numbers.attack)]
    numbers = numbers.assign(search_success=[s.get("success_rate") for s in found],
                             steps_to_success=[s.get("steps_to_success_median") for s in found],
                             final_loss=[s.get("final_loss_mean") for s in found])
    shown = shown.assign(**{"search success": [fmt_number(v) for v in numbers.search_success],
                            "median steps to success": [fmt_number(v, 0) for v in numbers.steps_to_success],
                            "final target CE": [fmt_number(v) for v in numbers.final_loss]})
    return numbers, shown


def loss_curves(outcomes: Mapping[str, Sequence[Outcome]], attacks: Sequence[str] = ("gcg", "autodan")) -> Figure:
    """Best target cross-entropy per step of each attacked prompt, a panel per prompt attack and a colour per model
    (`outcomes[model]`: that model's outcomes of stage 04; a search ends at its first success)."""
    fig = Figure(figsize=(9, 3.4))
    for k, attack in enumerate(attacks):
        ax = fig.add_subplot(1, len(attacks), k + 1)
        for which, model_outcomes in outcomes.items():
            outcome = next(o for o in model_outcomes if o.attack == attack)
            for i, losses in enumerate(outcome.extra["losses"]):
                ax.plot(range(len(losses)), losses, color=MODEL_COLORS[which], alpha=0.8, marker=".",
                        label=MODEL_LABELS[which] if i == 0 else None)
        ax.set(title=ATTACK_LABELS[attack], xlabel="step" if attack == "gcg" else "generation",
               ylabel="best target cross-entropy")
        ax.legend()
    fig.tight_layout()
    return fig


def breaking_curves(curves: Mapping[str, Mapping[str, Sequence[Mapping]]], xlabels: Mapping[str, str],
                    log: bool = True, title: str = "Per-prompt breaking budgets: DSR against the attack's budget") -> Figure:
    """One panel per attack (`curves[attack][model]`: `breaking.curve` rows, budget weakest first): the share of
    prompts still refusing against the budget (a log axis unless not `log`) with its exact interval as a band, a
    line per model."""
    fig = Figure(figsize=(3.6 * len(curves) + 1.6, 3.4), layout="constrained")
    axes = fig.subplots(1, len(curves), sharey=True, squeeze=False)[0]
    for ax, (attack, by_model) in zip(axes, curves.items()):
        for model, rows in by_model.items():
            x = [r["budget"] for r in rows]
            ax.plot(x, [r["value"] for r in rows], marker="o", ms=3, color=MODEL_COLORS.get(model),
                    label=MODEL_LABELS.get(model, model))
            ax.fill_between(x, [r["low"] for r in rows], [r["high"] for r in rows], color=MODEL_COLORS.get(model),
                            alpha=0.15, lw=0)
        ax.set(xscale="log" if log else "linear", xlabel=xlabels.get(attack, "budget"), ylim=(-0.03, 1.03))
        ax.set_title(attack, fontsize=9)
    axes[0].set_ylabel("DSR: share still refusing")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=10)
    return fig


def breaking_table(paired: Sequence[Mapping], digits: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage 09's arm-against-base rows (`breaking.paired` rows with attack, arm, holm_p, holds): numbers for CSV and
    formatted cells for Markdown."""
    numbers = pd.DataFrame(paired)
    shown = pd.DataFrame([{
        "attack": r["attack"], "arm": r["arm"], "n": r["n"], "broke (base / arm)": f"{r['broken_base']} / {r['broken_arm']}",
        "median budget (base / arm)": f"{fmt_number(r['median_base'], digits)} / {fmt_number(r['median_arm'], digits)}",
        "median ratio arm / base": fmt_number(r["median_ratio"], 2),
        "arm needs more / less": f"{r['higher']} / {r['lower']}", "Wilcoxon p": fmt_number(r["p"], 3),
        "Holm": fmt_number(r["holm_p"], 3) + (" ✓" if r["holds"] else "")} for r in paired])
    return numbers, shown
