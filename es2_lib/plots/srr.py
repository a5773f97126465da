"""The figure of stage 08, SRR (Safety Representation Ranking, Du et al. 2025, arXiv 2505.15710): ranking accuracy
and DSR of each picker's top pick per model, XSTest over-refusal, and ranking accuracy against the feature layer.
It draws from 08's results.json, so the figures stage redraws it (docs/architecture.md, "Related systems").
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..srr_pickers import PICKERS
from . import MODEL_COLORS, MODEL_LABELS


def figure(results: dict) -> Figure:
    """Four panels: ranking accuracy and DSR per picker and model, XSTest over-refusal, accuracy per feature layer."""
    fig = Figure(figsize=(15, 3.6))
    axes = fig.subplots(1, 4)
    models = list(results["models"])
    panels = [("ranking_accuracy", "all", "Ranking accuracy (top pick safe)", PICKERS),
              ("dsr", "all", "DSR of the top pick (harmful test prompts)", PICKERS + ("oracle",)),
              ("over_refusal", None, "XSTest over-refusal of the top pick", PICKERS)]
    width = 0.8 / max(1, len(models))
    for ax, (measure, source, title, pickers) in zip(axes, panels):
        for j, model in enumerate(models):
            cells = results["models"][model].get(measure, {})
            cells = cells.get(source, {}) if source else cells
            rates = [cells.get(name, {}) for name in pickers]
            value = [r.get("value") if r.get("value") is not None else np.nan for r in rates]
            err = [[v - r["low"] if r.get("low") is not None else 0 for v, r in zip(value, rates)],
                   [r["high"] - v if r.get("high") is not None else 0 for v, r in zip(value, rates)]]
            x = np.arange(len(pickers)) + (j - (len(models) - 1) / 2) * width
            ax.bar(x, value, width, yerr=err, capsize=2, color=MODEL_COLORS.get(model),
                   label=MODEL_LABELS.get(model, model))
        ax.set_xticks(range(len(pickers)), pickers, rotation=30, fontsize=8)
        ax.set(ylim=(0, 1.05), title=title)
        ax.title.set_fontsize(9)
    axes[0].legend(fontsize=8)
    ablation = results.get("ablation", {})
    for name in ("srr", "probe", "random") if ablation.get("layers") else ():
        values = [r["value"] if r["value"] is not None else np.nan for r in ablation[name]]
        axes[3].plot(ablation["layers"], values, marker="o", label=name)
    axes[3].set(ylim=(0, 1.05), xlabel="feature layer", title="Ranking accuracy vs layer (base)")
    axes[3].title.set_fontsize(9)
    if ablation.get("layers"):
        axes[3].legend(fontsize=8)
    return fig
