"""The capability stage's table and figure (stage 05; the figures stage builds Table 2 from the same rows):
the headline measures of base and ES2 with the paired difference, as labelled rows, Table 2 with a row group per
attacked arm, and the bar chart of accuracy, refusal rates and MMLU-Pro accuracy per category
(docs/architecture.md, 'Metrics').
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from . import MODEL_COLORS, MODEL_LABELS
from .tables import capability_table

BENCHMARK_LABELS = {"mmlu_pro": "MMLU-Pro", "gpqa": "GPQA diamond"}


def headline(results: dict) -> list[dict]:
    """The rows of the capability table (notebook 05; Table 2 of the figures stage via `capability_table`),
    {measure, short (a plot label), base, es2, difference}, each cell an interval dict (or a bare {"value"};
    None where it does not apply). XSTest rates use the paper's keyword judge ("autodan")."""
    modes = {"letter": ("letter log-likelihood", "letter"), "generate": ("generated answer", "generated")}
    rows = []
    for bench, label in BENCHMARK_LABELS.items():
        for mode in [m for m in modes if m in results["base"].get(bench, {})]:
            rows.append({"measure": f"{label} accuracy ({modes[mode][0]})", "short": f"{label} ({modes[mode][1]})",
                         "base": results["base"][bench][mode]["overall"], "es2": results["es2"][bench][mode]["overall"],
                         "difference": results["difference"][bench][mode]})
        if "letter_mass" in results["base"].get(bench, {}):
            rows.append({"measure": f"{label} probability on the option letters", "short": f"{label} letter mass",
                         "base": results["base"][bench]["letter_mass"], "es2": results["es2"][bench]["letter_mass"],
                         "difference": None})
    for metric, label, short in (("over_refusal", "XSTest over-refusal (safe prompts refused)", "XSTest over-refusal"),
                                 ("unsafe_refusal", "XSTest unsafe prompts refused", "XSTest unsafe refused")):
        rows.append({"measure": label, "short": short, "base": results["base"]["xstest"][metric]["autodan"],
                     "es2": results["es2"]["xstest"][metric]["autodan"],
                     "difference": results["difference"]["xstest"][metric]})
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
    refusals; `headline` without its two drift rows) and MMLU-Pro letter-scored accuracy per category."""
    panels = {"Accuracy and refusal rates": {r["short"]: r for r in headline(results)[:-2]},
              "MMLU-Pro accuracy per category (letter scoring)": {
                  c: {w: results[w]["mmlu_pro"]["letter"]["per_category"][c] for w in ("base", "es2")}
                  for c in results["base"]["mmlu_pro"]["letter"]["per_category"]}}
    fig = Figure(figsize=(11, 3.8))
    for ax, (title, cells) in zip(fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]}), panels.items()):
        for offset, which in ((-0.2, "base"), (0.2, "es2")):
            ci = [c[which] for c in cells.values()]
            ax.bar([i + offset for i in range(len(ci))], [c["value"] for c in ci], 0.4, capsize=2,
                   yerr=[[c["value"] - c["low"] for c in ci], [c["high"] - c["value"] for c in ci]],
                   color=MODEL_COLORS[which], label=MODEL_LABELS[which])
        ax.set_xticks(range(len(cells)), list(cells), rotation=35, ha="right", fontsize=8)
        ax.set(ylim=(0, 1), title=title)
    ax.legend(fontsize=8)
    return fig
