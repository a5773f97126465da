"""The figures of the figures stage (06): probe accuracy per layer with the ES2 layers (the separability premise,
paper §1), separation at the ES2 layers before and after training, DSR against the size of an embedding attack,
the training curves with the KL stop, and the refused / incoherent / compliant shares of the attacked responses
(ES2's claim that attacks now produce gibberish); docs/architecture.md, "Metrics".

Each function draws one figure from plain data (lists, dicts, DataFrames) and returns it; `plots.save` writes it.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import ATTACK_LABELS, MODEL_COLORS, SHARE_COLORS, attack_label, model_label
from ..results import AttackEntry


def probe_accuracy(
    accuracy: Mapping[str, Sequence[float]], threshold: float, es2_layers: Sequence[int] = (),
) -> Figure:
    """Held-out probe accuracy per layer 0..L, one line per model (e.g. {"base": [...], "es2": [...]}), the
    threshold that defines emergence, and the ES2 layers as vertical lines."""
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for model, acc in accuracy.items():
        ax.plot(range(len(acc)), acc, marker="o", ms=3, label=model_label(model), color=MODEL_COLORS.get(model))
    ax.axhline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:g}")
    for i, layer in enumerate(es2_layers):
        ax.axvline(layer, color="tab:purple", ls=":", lw=1.5, label="ES2 layers" if i == 0 else None)
    lowest = min((min(acc) for acc in accuracy.values() if len(acc)), default=0.5)
    ax.set(xlabel="layer (0 = embeddings)", ylabel="held-out probe accuracy", ylim=(min(0.4, lowest - 0.05), 1.02),
           title="Linear separability of harmful vs harmless prompts")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="lower right")
    return fig


def separation_by_layer(curves: Mapping[str, Sequence[float]], es2_layers: Sequence[int] = (),
                        symlog: Sequence[str] = ()) -> Figure:
    """One panel per measure of the base model's separation over layers 0..L ({title: [value per layer]}), the
    ES2 layers as vertical lines; the panels named in `symlog` get a symmetric-log y axis."""
    fig = Figure(figsize=(4.5 * len(curves), 3.2))
    for ax, (title, values) in zip(fig.subplots(1, len(curves)), curves.items()):
        ax.plot(range(len(values)), list(values), marker="o", ms=3, color=MODEL_COLORS["base"])
        for i, layer in enumerate(es2_layers):
            ax.axvline(layer, color="tab:purple", ls=":", lw=1.5, label="ES2 layers" if i == 0 else None)
        ax.set(xlabel="layer (0 = embeddings)", title=title)
        if title in symlog:
            ax.set_yscale("symlog", linthresh=1.0)
    fig.axes[0].legend(fontsize=8)
    return fig


def pca_panels(panels: Mapping[str, tuple[np.ndarray, np.ndarray, Sequence[float]]]) -> Figure:
    """One scatter per panel title of 2-D PCA coordinates: {title: (harmful [n, 2], harmless [n, 2], explained
    variance ratio of PC1 and PC2)}, as `probes.pca_2d` returns them."""
    fig = Figure(figsize=(3.3 * len(panels), 3.2))
    for ax, (title, (harmful, harmless, explained)) in zip(fig.subplots(1, len(panels)), panels.items()):
        ax.scatter(*harmless.T, s=8, color="tab:green", label="harmless")
        ax.scatter(*harmful.T, s=8, color="tab:red", label="harmful")
        ax.set(title=title, xlabel=f"PC1 ({explained[0]:.0%})", ylabel=f"PC2 ({explained[1]:.0%})", xticks=[],
               yticks=[])
    fig.axes[0].legend(fontsize=8)
    return fig


def rate_bars(rates: Mapping[str, Mapping[str, float]], ylabel: str, title: str) -> Figure:
    """One bar per model with its interval: rates = {model: {"value", "low", "high"}} (e.g. the no-attack DSR)."""
    fig = Figure(figsize=(4.5, 3.2))
    ax = fig.add_subplot()
    for i, (model, rate) in enumerate(rates.items()):
        ax.bar(i, rate["value"], yerr=[[rate["value"] - rate["low"]], [rate["high"] - rate["value"]]], capsize=3,
               color=MODEL_COLORS[model])
    ax.set_xticks(range(len(rates)), [model_label(m) for m in rates])
    ax.set(ylim=(0, 1.05), ylabel=ylabel, title=title)
    return fig


def grouped_rates(panels: Mapping[str, Mapping[str, Mapping[str, float]]], ylabel: str, columns: int = 3) -> Figure:
    """One panel per entry of `panels` ({title: {model: {"value", "low", "high"}}}), `columns` to a row: a bar per
    model with its interval (e.g. no-attack DSR per eval set and arm)."""
    ncols = min(columns, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(3.2 * ncols + 0.4, 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (title, rates) in zip(axes, panels.items()):
        for i, (model, rate) in enumerate(rates.items()):
            ax.bar(i, rate["value"], yerr=[[rate["value"] - rate["low"]], [rate["high"] - rate["value"]]], capsize=3,
                   color=MODEL_COLORS.get(model))
        ax.set_xticks(range(len(rates)), [model_label(m) for m in rates], rotation=30, fontsize=8)
        ax.set(ylim=(0, 1.05), ylabel=ylabel)
        ax.set_title(title, fontsize=9)
    return fig


def arm_curves(logs: Mapping[str, Sequence[Mapping[str, Any]]], panels: Mapping[str, str],
               hlines: Mapping[str, float] | None = None) -> Figure:
    """One panel per entry of `panels` ({title: log key}), a line per arm of `logs` ({arm: training log}) over
    the steps where that key was logged (e.g. the KL guard's held-out KL); `hlines` as in `training_curves`."""
    fig = Figure(figsize=(3.6 * len(panels) + 0.4, 3.4), layout="constrained")
    for ax, (title, key) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items()):
        for arm, log in logs.items():
            rows = [r for r in log if r.get(key) is not None]
            ax.plot([r["step"] + 1 for r in rows], [r[key] for r in rows], marker="o", ms=3, label=model_label(arm),
                    color=MODEL_COLORS.get(arm))
        if hlines and title in hlines:
            ax.axhline(hlines[title], color="black", ls="--", lw=1, label=f"limit {hlines[title]:g}")
        ax.set(xlabel="updates")
        ax.set_title(title, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    return fig


SEPARATION_PANELS = {"centroid distance / base mean norm": "centroid_distance",
                     "centroid distance / own mean norm": "centroid_distance_own_norm",
                     "Fisher ratio": "fisher", "held-out probe accuracy": "accuracy"}


def separation_metrics(metrics: Mapping[str, Any], panels: Mapping[str, str] = SEPARATION_PANELS,
                       models: Sequence[str] = ("base", "es2")) -> tuple[list[int], dict[str, dict[str, list[float]]]]:
    """The ES2 layers and the input of `separation_before_after` from 02's metrics.json: `panels` maps a panel
    title to a key of its per-model separation (a list over layers 0..L; {"Fisher ratio": "fisher", ...}), read at
    each ES2 layer."""
    layers = list(metrics["es2_layers"])
    at = lambda model, key: [metrics["separation"][model][key][layer] for layer in layers]  # noqa: E731
    return layers, {title: {m: at(m, key) for m in models} for title, key in panels.items()}


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
            ax.bar(x + (i - (len(by_model) - 1) / 2) * width, values, width, label=model_label(model),
                   color=MODEL_COLORS.get(model))
        ax.set_xticks(x, [str(layer) for layer in layers])
        ax.set(xlabel="layer")
        ax.set_title(metric, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle("Separation at the ES2 layers before and after training", fontsize=10)
    return fig


def sweep_points(table: pd.DataFrame) -> pd.DataFrame:
    """The points of `dsr_vs_perturbation` from a flat table with one row per attack setting (an attack stage's
    results.csv: model, attack, perturbation, dsr, dsr_low, dsr_high, harm_free): attacks get their labels, rows
    without an L2 perturbation are dropped."""
    columns = ["model", "attack", "perturbation", "dsr", "dsr_low", "dsr_high", "harm_free"]
    points = table[[c for c in columns if c in table.columns]].assign(attack=table["attack"].map(attack_label))
    return points[points["perturbation"].notna()].reset_index(drop=True)


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
            label = model_label(model)
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
                    hlines: Mapping[str, float] | None = None, layers: Sequence[int] | None = None,
                    title: str = "ES2 training") -> Figure:
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
    fig.suptitle(title, fontsize=10)
    return fig


def shares_frame(entries: Iterable[AttackEntry]) -> pd.DataFrame:
    """The refused / incoherent / compliant shares of each entry, indexed "model, attack" in Table 1's order, for
    `coherence_shares`."""
    order = {attack: i for i, attack in enumerate(ATTACK_LABELS)}
    entries = sorted(entries, key=lambda e: (order.get(e.attack, len(order)), e.model != "base"))
    index = [f"{model_label(e.model)}, {attack_label(e.attack)}" for e in entries]
    return pd.DataFrame([{k: getattr(e.summary, k) for k in SHARE_COLORS} for e in entries], index=index)


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
