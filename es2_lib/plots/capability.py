"""The capability stage's table and figure (stage 05; the figures stage builds Table 2 from the same rows):
the headline measures of base and ES2 with the paired difference, as labelled rows, Table 2 with a row group per
attacked arm, and the bar chart of accuracy and refusal rates beside the log-probability of the correct option
per benchmark (docs/architecture.md, 'Metrics').
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from . import MODEL_COLORS, MODEL_LABELS
from .tables import capability_table

BENCHMARK_LABELS = {"arc_challenge": "ARC-Challenge", "mmlu": "MMLU", "mmlu_pro": "MMLU-Pro", "gpqa": "GPQA diamond"}
REFERENCE_LABELS = {"alpaca": "Alpaca", "code_alpaca": "Code Alpaca"}
CONTINUOUS_LABELS = {"logprob_correct": ("mean log-probability of the correct option", "log P(correct)"),
                     "brier": ("Brier score (lower is better)", "Brier")}


def benchmarks(results: dict) -> list[str]:
    """The multiple-choice benchmarks in `results` (stage 05's), in BENCHMARK_LABELS' order."""
    return [bench for bench in BENCHMARK_LABELS if bench in results["base"]]


def headline(results: dict) -> list[dict]:
    """The rows of the capability table (notebook 05; Table 2 of the figures stage via `capability_table`),
    {measure, short (a plot label), base, es2, difference}, each cell an interval dict (or a bare {"value"};
    None where it does not apply). XSTest rates use the paper's keyword judge ("autodan")."""
    modes = {"letter": ("letter log-likelihood", "letter"), "generate": ("generated answer", "generated")}
    rows = []
    for bench in benchmarks(results):
        label, base, tuned = BENCHMARK_LABELS[bench], results["base"][bench], results["es2"][bench]
        chance = f"; chance {base['chance']:.2f}" if "chance" in base else ""
        for mode in [m for m in modes if m in base]:
            rows.append({"measure": f"{label} accuracy ({modes[mode][0]}{chance})", "short": f"{label} ({modes[mode][1]})",
                         "base": base[mode]["overall"], "es2": tuned[mode]["overall"],
                         "difference": results["difference"][bench][mode]})
        for measure, (long, short) in CONTINUOUS_LABELS.items():
            if measure in base:
                rows.append({"measure": f"{label} {long}", "short": f"{label} {short}", "base": base[measure],
                             "es2": tuned[measure], "difference": results["difference"][bench][measure]})
        if "letter_mass" in base:
            rows.append({"measure": f"{label} probability on the option letters", "short": f"{label} letter mass",
                         "base": base["letter_mass"], "es2": tuned["letter_mass"], "difference": None})
    for metric, label, short in (("over_refusal", "XSTest over-refusal (safe prompts refused)", "XSTest over-refusal"),
                                 ("unsafe_refusal", "XSTest unsafe prompts refused", "XSTest unsafe refused")):
        rows.append({"measure": label, "short": short, "base": results["base"]["xstest"][metric]["autodan"],
                     "es2": results["es2"]["xstest"][metric]["autodan"],
                     "difference": results["difference"]["xstest"][metric]})
    for name, rate in results["base"].get("over_refusal", {}).items():
        rows.append({"measure": f"{name} over-refusal (harmless prompts refused)", "short": f"{name} over-refusal",
                     "base": rate["autodan"], "es2": results["es2"]["over_refusal"][name]["autodan"],
                     "difference": results["difference"]["over_refusal"][name]})
    for name, scored in results["base"].get("reference", {}).items():
        rows.append({"measure": f"{REFERENCE_LABELS.get(name, name)} reference responses: NLL per token (nats)",
                     "short": f"{name} NLL", "base": scored["nll"], "es2": results["es2"]["reference"][name]["nll"],
                     "difference": results["difference"]["reference"][name]["nll"]})
    ppl_base, ppl_es2 = results["base"]["harmless"]["ppl"], results["es2"]["harmless"]["ppl"]
    rows.append({"measure": "harmless KL(base ‖ tuned), nats per token", "short": "harmless KL", "base": None,
                 "es2": results["es2"]["harmless"]["kl"], "difference": None})
    rows.append({"measure": "harmless perplexity of base responses", "short": "harmless perplexity",
                 "base": {"value": ppl_base}, "es2": {"value": ppl_es2},
                 "difference": {"value": ppl_es2 - ppl_base} if ppl_base is not None else None})
    return rows


def arm_results(results: dict) -> dict[str, dict]:
    """Stage 05's results per attacked arm ({arm: base-vs-arm results}; a results file of one arm: {"es2": it})."""
    return results.get("arms") or {"es2": results}


def arms_table(results: dict, digits: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 with a row group per attacked arm: each arm's `headline` rows against base (numbers for CSV, with
    the arm's columns named "tuned"; formatted cells for Markdown, the arm named in each row)."""
    numbers, shown = [], []
    for arm, r in arm_results(results).items():
        n, s = capability_table(headline(r), digits)
        numbers.append(n.rename(columns=lambda c: "tuned" + c[3:] if c.startswith("es2") else c).assign(arm=arm))
        s = s.rename(columns={"ES2": "arm", "ES2 − base": "arm − base"})
        s.insert(0, "model", MODEL_LABELS.get(arm, arm))
        shown.append(s)
    return pd.concat(numbers, ignore_index=True), pd.concat(shown, ignore_index=True)


def capability_bars(results: dict) -> Figure:
    """Two panels of base and ES2 bars with their intervals: the headline rates (accuracies, letter mass, XSTest
    refusals: the rows of `headline` in [0, 1]) and the mean log-probability of the correct option per benchmark
    (it moves before accuracy does)."""
    not_rates = tuple(s for _, s in CONTINUOUS_LABELS.values()) + ("NLL", "harmless KL", "harmless perplexity")
    rows = [r for r in headline(results) if not r["short"].endswith(not_rates)]
    panels = {"Accuracy and refusal rates": {r["short"]: r for r in rows},
              "Mean log P(correct option), renormalised over the options": {
                  BENCHMARK_LABELS[b]: {w: results[w][b]["logprob_correct"] for w in ("base", "es2")}
                  for b in benchmarks(results) if "logprob_correct" in results["base"][b]}}
    fig = Figure(figsize=(11, 3.8))
    for ax, (title, cells) in zip(fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]}), panels.items()):
        for offset, which in ((-0.2, "base"), (0.2, "es2")):
            ci = [c[which] for c in cells.values()]
            ax.bar([i + offset for i in range(len(ci))], [c["value"] for c in ci], 0.4, capsize=2,
                   yerr=[[c["value"] - c["low"] for c in ci], [c["high"] - c["value"] for c in ci]],
                   color=MODEL_COLORS[which], label=MODEL_LABELS[which])
        ax.set_xticks(range(len(cells)), list(cells), rotation=35, ha="right", fontsize=8)
        ax.set(title=title, **({"ylim": (0, 1)} if title.startswith("Accuracy") else {}))
    ax.legend(fontsize=8)
    return fig
