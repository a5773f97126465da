"""Figures and tables of the results (DESIGN.md §5): each function draws one figure or builds one table from
plain data (lists, dicts, DataFrames) that the figures notebook read from the run folder.

Figures: probe accuracy per layer with the ES2 layers (the separability premise, paper §1), separation at
the ES2 layers before and after training, DSR against the perturbation an embedding attack used, the
training curves with the KL stop, and the refused / incoherent / compliant shares of the attacked responses
(ES2's claim that attacks now produce gibberish). Tables: DSR per model × attack (the paper's DSR is the
keyword "autodan" judge; harm-free = refused + incoherent beside it) and capability. Tables are written as
CSV (numbers) and Markdown (formatted cells, "0.67 [0.46, 0.88]" for a rate with its interval).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # figures without pyplot: no global state, no backend needed to save PNG
from matplotlib.ticker import MaxNLocator

from ..runs import atomic_path

MODEL_LABELS = {"base": "base", "es2": "ES2"}
MODEL_COLORS = {"base": "tab:gray", "es2": "tab:blue"}
SHARE_COLORS = {"refused": "tab:green", "incoherent": "tab:orange", "compliant": "tab:red"}
NOT_RUN = "not run"
ATTACK_LABELS = {"none": "no attack", "repe": "RepE", "soft_prompt": "Soft Prompt", "scav": "SCAV",
                 "autodan": "AutoDAN", "gcg": "GCG"}  # Table 1's rows, in the paper's order
DSR_COLUMN = 'DSR (paper: keyword "autodan")'
CAPABILITY_MEASURES = ["MMLU-Pro accuracy", "GPQA accuracy", "XSTest over-refusal", "harmless KL(base ‖ ES2)"]
ATTACK_STAGES = {"none": "02_es2_training", "repe": "03_embedding_attacks", "soft_prompt": "03_embedding_attacks",
                 "scav": "03_embedding_attacks", "autodan": "04_prompt_attacks", "gcg": "04_prompt_attacks"}
DPI = 100


# --- cells and tables ---------------------------------------------------------------------------------------------

def fmt_number(value: float | None, digits: int = 2) -> str:
    """A number with `digits` decimals; None or NaN becomes an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def fmt_rate(rate: Mapping[str, float] | None, digits: int = 2) -> str:
    """A rate with its interval, "0.67 [0.46, 0.88]"; a rate without interval is just the value; None -> "–"."""
    if rate is None:
        return "–"
    if rate.get("low") is None or rate.get("high") is None:
        return fmt_number(rate["value"], digits)
    return f"{rate['value']:.{digits}f} [{rate['low']:.{digits}f}, {rate['high']:.{digits}f}]"


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table of `df` (columns only, no index): numeric columns right-aligned, "|" escaped."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    align = ["---:" if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) else "---"
             for c in df.columns]
    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(numbers: pd.DataFrame, shown: pd.DataFrame, stem: Path, note: str = "") -> tuple[Path, Path]:
    """Write `numbers` as `<stem>.csv` and `shown` (formatted cells) as `<stem>.md` under `note`, atomically."""
    stem = Path(stem)
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    with atomic_path(csv) as tmp:
        numbers.to_csv(tmp, index=False)
    with atomic_path(md) as tmp:
        tmp.write_text((note.strip() + "\n\n" if note.strip() else "") + markdown_table(shown))
    return csv, md



def perturbation_l2(perturbation: Any) -> float:
    """The L2 size of a perturbation record ({"l2": ...} or a bare number); NaN when it has none."""
    value = perturbation.get("l2") if isinstance(perturbation, Mapping) else perturbation
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _label(attack: str) -> str:
    return ATTACK_LABELS.get(attack, attack)


def _setting(entry: Mapping[str, Any] | None) -> str:
    """The reported setting of a swept attack, flagged when every setting of the sweep was mostly incoherent."""
    if not entry or not entry.get("setting"):
        return "–"
    flag = entry.get("all_incoherent") and entry.get("settings", 1) > 1
    return entry["setting"] + (" (every setting mostly incoherent)" if flag else "")


def _rate_columns(prefix: str, rate: Mapping[str, float] | None) -> dict[str, float]:
    rate = rate or {}
    return {prefix: rate.get("value", math.nan), f"{prefix}_low": rate.get("low", math.nan),
            f"{prefix}_high": rate.get("high", math.nan)}


def stage_status(found: Mapping[str, Any], manifest_stages: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per stage: whether its results were found, its manifest status and wall time."""
    rows = []
    for stage, results in found.items():
        info = manifest_stages.get(stage, {})
        rows.append({"stage": stage, "results": "found" if results is not None else NOT_RUN,
                     "manifest status": info.get("status", "–"),
                     "wall time (s)": fmt_number(info.get("wall_s"), 0)})
    return pd.DataFrame(rows)


def no_attack_entries(evaluation: Mapping[str, Mapping[str, Any]], stage: str = "02_es2_training") -> list[dict]:
    """The no-attack entries of the ES2 stage's eval.json ({"base": summary, "es2": summary}), perturbation 0."""
    return [{"model": model, "attack": "none", "setting": "", "summary": summary, "perturbation": {"l2": 0.0},
             "budget": {}, "stage": stage} for model, summary in evaluation.items()]


def reported_entries(results: Mapping[str, Any], stage: str) -> list[dict]:
    """The entry reported for each (model, attack) of an attack stage's results.json, tagged with the stage.

    Either {model: {attack: entry}} (the stage already chose one setting per attack) or {"entries": [...]} / a
    list, where an attack with several settings must have exactly one marked `selected`: this module does not
    choose among them. An entry is {model, attack, setting, summary (evaluate.summarize), perturbation, budget}."""
    if isinstance(results, Mapping) and "entries" not in results:
        return [{"setting": "", **entry, "stage": stage} for model in MODEL_LABELS
                for entry in (results.get(model) or {}).values()]
    groups: dict[tuple[str, str], list[dict]] = {}
    for e in results if isinstance(results, list) else results["entries"]:
        groups.setdefault((e["model"], e["attack"]), []).append({"setting": "", **e, "stage": stage})
    reported = []
    for (model, attack), group in groups.items():
        chosen = group if len(group) == 1 else [e for e in group if e.get("selected")]
        if len(chosen) != 1:
            raise ValueError(f"{stage}/results.json: {len(group)} settings of attack {attack!r} on model {model!r} "
                             f"and {len(chosen)} marked selected; expected exactly one")
        reported.append(chosen[0])
    return reported


def dsr_note(entries: Sequence[Mapping[str, Any]], not_run: Sequence[str], confidence: float | None = None) -> str:
    """The caption of Table 1: what each column is, the number of prompts, and which stages have not run."""
    sizes = sorted({e["summary"]["n"] for e in entries})
    level = f"{confidence:.0%} " if confidence else ""
    text = (f"**Table 1.** Defence success rate per model × attack on {' / '.join(map(str, sizes)) or 'the'} harmful "
            f"eval prompts. **{DSR_COLUMN}** is the paper's DSR: the share of responses containing one of the 39 "
            f"refusal phrases of AutoDAN's keyword judge, with its {level}bootstrap interval. **harm-free** = refused + "
            "incoherent (a degenerate or high-perplexity response holds no refusal phrase but nothing harmful either); "
            "DSR (JailbreakBench keywords) is a robustness check with JailbreakBench's 12 phrases; refused / "
            "incoherent / compliant add up to one. Perturbation: the L2 norm an embedding attack added (0 for no "
            "attack; – for prompt attacks). Setting: the reported point of a swept attack (chosen by its stage). n: "
            "prompts judged in that row.")
    missing = [f"{stage} ({', '.join(_label(a) for a, s in ATTACK_STAGES.items() if s == stage)})"
               for stage in not_run if stage in ATTACK_STAGES.values()]
    if missing:
        text += f" **Not run:** {'; '.join(missing)} — those rows say \"{NOT_RUN}\"."
    return text


def capability_note(results: Mapping[str, Any] | None) -> str:
    """The caption of Table 2: the scoring, the subset sizes and the verdict per benchmark (05_capability)."""
    if results is None:
        return "**Table 2.** Capability: **not run** (05_capability has written no results.json)."
    settings = results.get("settings", {})
    questions = ", ".join(f"{bench} {n}" for bench, n in settings.get("questions", {}).items())
    xstest = settings.get("xstest", {})
    verdicts = "; ".join(f"{bench}: {claim['verdict']}" for bench, claim in results.get("claim", {}).items())
    return (f"**Table 2.** Capability of the base and the ES2 model. Multiple choice scored zero-shot by the "
            f"log-likelihood of the option letter after {settings.get('answer_prefix', '?')!r} ({questions or '?'} "
            f"questions); XSTest over-refusal = share of {xstest.get('safe', '?')} safe prompts refused "
            f"(keyword judge {settings.get('judge', '?')!r}); harmless KL(base ‖ ES2) in nats per token over the "
            f"responses to {settings.get('harmless_prompts', '?')} held-out harmless prompts. ES2 − base is a paired "
            f"bootstrap interval. \"Comparable capability\" (ES2 at most {settings.get('margin', '?')} below base): "
            f"{verdicts or '?'}.")


def dsr_table(entries: Iterable[Mapping[str, Any]], models: Sequence[str] = ("base", "es2"),
              digits: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 1, DSR per attack × model: (numbers for CSV, formatted cells for Markdown).

    `entries` are the reported results, one per (model, attack): {model, attack, summary (evaluate.summarize),
    perturbation, stage, setting?}. Every attack of ATTACK_LABELS gets a row per model; one without an entry
    is marked "not run" (no number is made up). The paper's DSR is the keyword "autodan" judge; harm-free =
    refused + incoherent stands beside it, then the JailbreakBench-judge DSR and the three shares."""
    found: dict[tuple[str, str], Mapping[str, Any]] = {}
    for e in entries:
        if (e["model"], e["attack"]) in found:
            raise ValueError(f"two entries for attack {e['attack']!r} on model {e['model']!r}; Table 1 reports one")
        found[(e["model"], e["attack"])] = e
    attacks = list(ATTACK_LABELS) + [a for a in dict.fromkeys(a for _, a in found) if a not in ATTACK_LABELS]
    numbers, shown = [], []
    for attack in attacks:
        for model in models:
            entry = found.get((model, attack))
            s = entry["summary"] if entry else {}
            numbers.append({"attack": attack, "model": model, "status": "ok" if entry else NOT_RUN,
                            **_rate_columns("dsr", s.get("dsr")), **_rate_columns("harm_free", s.get("harm_free")),
                            **_rate_columns("dsr_jbb", s.get("dsr_jbb")),
                            **{k: s.get(k, math.nan) for k in ("refused", "incoherent", "compliant")},
                            "perturbation_l2": perturbation_l2(entry["perturbation"]) if entry else math.nan,
                            "n": s.get("n"), "stage": entry.get("stage", "") if entry else "",
                            "setting": entry.get("setting", "") if entry else "",
                            "budget": json.dumps(entry.get("budget") or {}, sort_keys=True) if entry else ""})
            cells = {"attack": _label(attack), "model": MODEL_LABELS.get(model, model),
                     "setting": _setting(entry)}
            if entry:
                cells.update({DSR_COLUMN: fmt_rate(s["dsr"], digits),
                              "harm-free (refused + incoherent)": fmt_rate(s["harm_free"], digits),
                              "DSR (JailbreakBench keywords)": fmt_rate(s["dsr_jbb"], digits),
                              **{k: fmt_number(s[k], digits) for k in ("refused", "incoherent", "compliant")},
                              "perturbation (L2)": fmt_number(perturbation_l2(entry["perturbation"]), 3),
                              "n": str(s["n"])})
            else:
                cells.update({DSR_COLUMN: NOT_RUN, "harm-free (refused + incoherent)": NOT_RUN,
                              **dict.fromkeys(["DSR (JailbreakBench keywords)", "refused", "incoherent", "compliant",
                                               "perturbation (L2)", "n"], "–")})
            shown.append(cells)
    numbers = pd.DataFrame(numbers)
    numbers["n"] = numbers["n"].astype("Int64")
    return numbers, pd.DataFrame(shown)


def capability_table(rows: Sequence[Mapping[str, Any]] | None, digits: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2, capability of base and ES2: (numbers for CSV, formatted cells for Markdown).

    `rows` are {measure, base, es2, difference} with each cell an interval dict, a bare {"value"} or None
    (capability.headline); None when the capability stage has not run: the measures of CAPABILITY_MEASURES
    are then listed as "not run"."""
    if rows is None:
        numbers = pd.DataFrame({"measure": CAPABILITY_MEASURES, "status": NOT_RUN})
        shown = pd.DataFrame({"measure": CAPABILITY_MEASURES, "base": NOT_RUN, "ES2": NOT_RUN, "ES2 − base": "–"})
        return numbers, shown
    numbers = pd.DataFrame([{"measure": r["measure"], "status": "ok",
                             **{k: v for col in ("base", "es2", "difference") for k, v in _rate_columns(col, r[col]).items()}}
                            for r in rows])
    shown = pd.DataFrame([{"measure": r["measure"], "base": fmt_rate(r["base"], digits), "ES2": fmt_rate(r["es2"], digits),
                           "ES2 − base": fmt_rate(r["difference"], digits)} for r in rows])
    return numbers, shown


def sweep_points(table: pd.DataFrame) -> pd.DataFrame:
    """The points of `dsr_vs_perturbation` from a flat table with one row per attack setting (an attack stage's
    results.csv: model, attack, perturbation, dsr, dsr_low, dsr_high, harm_free): attacks get their labels, rows
    without an L2 perturbation are dropped."""
    columns = ["model", "attack", "perturbation", "dsr", "dsr_low", "dsr_high", "harm_free"]
    points = table[[c for c in columns if c in table.columns]].assign(attack=table["attack"].map(_label))
    return points[points["perturbation"].notna()].reset_index(drop=True)


def shares_frame(entries: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The refused / incoherent / compliant shares of each entry, indexed "model, attack" in Table 1's order, for
    `coherence_shares`."""
    order = {attack: i for i, attack in enumerate(ATTACK_LABELS)}
    entries = sorted(entries, key=lambda e: (order.get(e["attack"], len(order)), e["model"] != "base"))
    index = [f"{MODEL_LABELS.get(e['model'], e['model'])}, {_label(e['attack'])}" for e in entries]
    return pd.DataFrame([{k: e["summary"][k] for k in SHARE_COLORS} for e in entries], index=index)


# --- figures -------------------------------------------------------------------------------------------------------

def save(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    """Save `fig` as PNG (tight bounding box), atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def probe_accuracy(
    accuracy: Mapping[str, Sequence[float]], threshold: float, es2_layers: Sequence[int] = (),
) -> Figure:
    """Held-out probe accuracy per layer 0..L, one line per model (e.g. {"base": [...], "es2": [...]}), the
    threshold that defines emergence, and the ES2 layers as vertical lines."""
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for model, acc in accuracy.items():
        ax.plot(range(len(acc)), acc, marker="o", ms=3, label=MODEL_LABELS.get(model, model),
                color=MODEL_COLORS.get(model))
    ax.axhline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:g}")
    for i, layer in enumerate(es2_layers):
        ax.axvline(layer, color="tab:purple", ls=":", lw=1.5, label="ES2 layers" if i == 0 else None)
    lowest = min((min(acc) for acc in accuracy.values() if len(acc)), default=0.5)
    ax.set(xlabel="layer (0 = embeddings)", ylabel="held-out probe accuracy", ylim=(min(0.4, lowest - 0.05), 1.02),
           title="Linear separability of harmful vs harmless prompts")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="lower right")
    return fig


def separation_before_after(
    layers: Sequence[int], metrics: Mapping[str, Mapping[str, Sequence[float]]],
) -> Figure:
    """Grouped bars at the given layers, one panel per metric: metrics = {metric: {model: [value per layer]}}
    with the values in the order of `layers` (e.g. centroid distance and Fisher ratio, base vs ES2)."""
    fig = Figure(figsize=(3.3 * len(metrics) + 0.4, 3.5), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    x = np.arange(len(layers))
    for ax, (metric, by_model) in zip(axes, metrics.items()):
        width = 0.8 / len(by_model)
        for i, (model, values) in enumerate(by_model.items()):
            ax.bar(x + (i - (len(by_model) - 1) / 2) * width, values, width, label=MODEL_LABELS.get(model, model),
                   color=MODEL_COLORS.get(model))
        ax.set_xticks(x, [str(layer) for layer in layers])
        ax.set(xlabel="layer")
        ax.set_title(metric, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle("Separation at the ES2 layers before and after training", fontsize=10)
    return fig


def dsr_vs_perturbation(points: pd.DataFrame, no_attack: str = ATTACK_LABELS["none"]) -> Figure:
    """One panel per attack: DSR (with interval bars) against perturbation size, a line per model through its
    no-attack point at 0 and the attack's settings; harm-free as a dotted line when `points` has it.

    `points` columns: model, attack, perturbation, dsr, dsr_low, dsr_high[, harm_free], one row per setting."""
    attacks = [a for a in dict.fromkeys(points["attack"]) if a != no_attack]
    fig = Figure(figsize=(3.4 * max(1, len(attacks)) + 1.6, 3.6), layout="constrained")
    axes = fig.subplots(1, max(1, len(attacks)), sharey=True, squeeze=False)[0]
    for ax, attack in zip(axes, attacks):
        for model, group in points[points["attack"].isin([no_attack, attack])].groupby("model", sort=False):
            group = group.sort_values("perturbation")
            err = np.vstack([group["dsr"] - group["dsr_low"], group["dsr_high"] - group["dsr"]])
            label = MODEL_LABELS.get(model, model)
            ax.errorbar(group["perturbation"], group["dsr"], yerr=np.clip(err, 0, None), capsize=2, marker="o",
                        color=MODEL_COLORS.get(model), label=f"{label}: DSR")
            if "harm_free" in group:
                ax.plot(group["perturbation"], group["harm_free"], ls=":", marker="x", color=MODEL_COLORS.get(model),
                        label=f"{label}: harm-free")
        ax.set(xlabel="perturbation (L2 norm added)", ylim=(-0.03, 1.03))
        ax.set_title(attack, fontsize=9)
    axes[0].set_ylabel("share of harmful prompts")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("DSR against the size of the embedding attack (0 = no attack)", fontsize=10)
    return fig


def training_curves(log: Sequence[Mapping[str, Any]], panels: Mapping[str, Sequence[str]],
                    hlines: Mapping[str, float] | None = None, layers: Sequence[int] | None = None) -> Figure:
    """One panel per entry of `panels` ({title: [log keys]}), a line per key over the logged steps; a key whose
    values are lists (one per ES2 layer, e.g. "distance") gets a line per layer, named from `layers`. `hlines`
    draws a dashed limit in a panel ({title: value}, e.g. the KL stop threshold). Keys absent from the log are
    skipped, so the figure shows what was logged."""
    fig = Figure(figsize=(3.3 * len(panels) + 0.4, 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    steps = [row.get("step", i) for i, row in enumerate(log)]
    for ax, (title, keys) in zip(axes, panels.items()):
        for key in keys:
            values = [row.get(key) for row in log]
            first = next((v for v in values if v is not None), None)
            if isinstance(first, (list, tuple)):
                names = list(layers) if layers is not None and len(layers) == len(first) else list(range(len(first)))
                for i, name in enumerate(names):
                    ax.plot(steps, [np.nan if v is None else v[i] for v in values], label=f"{key}, layer {name}")
            elif first is not None:
                ax.plot(steps, [np.nan if v is None else v for v in values], label=key)
        if hlines and title in hlines:
            ax.axhline(hlines[title], color="black", ls="--", lw=1, label=f"limit {hlines[title]:g}")
        ax.set(xlabel="step")
        ax.set_title(title, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle("ES2 training", fontsize=10)
    return fig


def coherence_shares(shares: pd.DataFrame) -> Figure:
    """Stacked bars of the refused / incoherent / compliant shares, one bar per row of `shares` (index = bar
    label such as "ES2, SCAV"; columns refused, incoherent, compliant summing to one)."""
    fig = Figure(figsize=(max(4.0, 0.55 * len(shares) + 1.5), 3.8), layout="constrained")
    ax = fig.add_subplot()
    bottom = np.zeros(len(shares))
    for share, color in SHARE_COLORS.items():
        values = shares[share].to_numpy(dtype=float)
        ax.bar(range(len(shares)), values, bottom=bottom, color=color, label=share)
        bottom += values
    ax.set_xticks(range(len(shares)), [str(i) for i in shares.index], rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="share of harmful prompts", ylim=(0, 1.0), title="What the attacked responses are")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig
