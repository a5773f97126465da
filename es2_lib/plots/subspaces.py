"""Figures of stage 07, the safety-subspace tests of Ponkshe et al. 2025 (arXiv 2505.14185): weight-space and
activation-space MSO against the energy fraction, and each arm before and after a benign fine-tune. They draw from the
records of 07's results.json, so the figures stage redraws them (docs/architecture.md, "Related systems").
"""

from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure

from . import MODEL_COLORS, MODEL_LABELS, model_label

BENIGN = "+benign"  # suffix of a model fine-tuned benignly on top of an arm ("es2+benign")


def benign_name(model: str) -> str:
    """Display name of a model of 07's benign fine-tune test: "ES2", "ES2 + benign FT"."""
    arm = model.removesuffix(BENIGN)
    return model_label(arm) + (" + benign FT" if model.endswith(BENIGN) else "")


def weight_mso_figure(weight_mso: Sequence[dict]) -> Figure:
    """MSO against energy fraction per pair of updates, with each pair's random baseline dashed.
    weight_mso: rows with pair, fraction, mso, random, matrices (mean over matrices)."""
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    pairs = list(dict.fromkeys(r["pair"] for r in weight_mso))
    for color, pair in zip(("tab:purple", "tab:red", "tab:blue"), pairs):
        rows = [r for r in weight_mso if r["pair"] == pair]
        ax.plot([r["fraction"] for r in rows], [r["mso"] for r in rows], marker="o", color=color, label=f"{pair} (MSO)")
        ax.plot([r["fraction"] for r in rows], [r["random"] for r in rows], ls="--", color=color, alpha=0.6,
                label=f"{pair} (random)")
    ax.set(xlabel="energy fraction η of each basis", ylabel="MSO, mean over matrices", ylim=(0, 1.02),
           title=f"Weight space: {weight_mso[0]['matrices']} matrices")
    ax.legend(fontsize=7)
    return fig


def activation_mso_figure(activation_mso: Sequence[dict], layers: Sequence[int], per_half: int) -> Figure:
    """MSO against energy fraction of last-token activations, one panel per model (base, ES2).
    activation_mso: rows with model, pair, fraction, mso, random (mean over `layers`)."""
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2, sharey=True)
    band = f"layers {layers[0]}–{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}"
    for ax, which in zip(axes, ("base", "es2")):
        rows = [r for r in activation_mso if r["model"] == which]
        for color, pair in zip(("tab:red", "tab:orange", "tab:green"), dict.fromkeys(r["pair"] for r in rows)):
            curve = [r for r in rows if r["pair"] == pair]
            ax.plot([r["fraction"] for r in curve], [r["mso"] for r in curve], marker="o", color=color, label=pair)
            if pair.startswith("harmful A vs useful"):
                ax.plot([r["fraction"] for r in curve], [r["random"] for r in curve], ls="--", color="gray",
                        label="random baseline")
        ax.set(title=f"{MODEL_LABELS[which]}: {band}, {per_half} prompts per half",
               xlabel="energy fraction η of each basis")
    axes[0].set(ylabel="MSO, mean over layers", ylim=(0, 1.02))
    axes[0].legend(fontsize=7)
    return fig


def benign_figure(benign: dict[str, dict], es2_layers: Sequence[int]) -> Figure:
    """Separation at the ES2 layers and DSR (no attack, SCAV) of base and each arm before and after a benign
    fine-tune (hatched: "<arm>+benign"). benign: {model: {"separation": {metric: {layer: value}}, "dsr_none":
    summary, "dsr_scav": summary}}; layer keys may be strings (as read back from JSON)."""
    fig = Figure(figsize=(10, 3.4))
    axes = fig.subplots(1, 3)
    at = lambda values, layer: {str(k): v for k, v in values.items()}[str(layer)]
    width = 0.8 / len(benign)
    for i, (which, b) in enumerate(benign.items()):
        offset = width * (i - (len(benign) - 1) / 2)
        style = dict(color=MODEL_COLORS.get(which.removesuffix(BENIGN), "tab:purple"),
                     hatch="//" if which.endswith(BENIGN) else None, edgecolor="white")
        x = [j + offset for j in range(len(es2_layers))]
        for ax, metric in zip(axes, ("centroid_distance", "fisher")):
            ax.bar(x, [at(b["separation"][metric], l) for l in es2_layers], width, label=benign_name(which), **style)
        for j, key in enumerate(("dsr_none", "dsr_scav")):
            d = b[key]["dsr"]
            axes[2].bar(j + offset, d["value"], width, yerr=[[d["value"] - d["low"]], [d["high"] - d["value"]]],
                        capsize=2, **style)
    for ax, title in zip(axes[:2], ("centroid distance / base mean norm", "Fisher ratio")):
        ax.set(xticks=range(len(es2_layers)), xticklabels=[f"layer {l}" for l in es2_layers], title=title)
    n = next(iter(benign.values()))["dsr_scav"]["n"]
    axes[2].set(xticks=[0, 1], xticklabels=["no attack", "SCAV (re-fitted)"], ylim=(0, 1.05), title=f"DSR, {n} prompts")
    axes[0].legend(fontsize=7)
    return fig
