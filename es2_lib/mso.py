"""Mode subspace overlap (MSO), the overlap measure of Ponkshe et al. 2025 (arXiv 2505.14185), in weight space and
in activation space. A basis at energy fraction η is the fewest top singular directions whose squared singular values
reach η of the total; MSO(Q_a, Q_b) = ‖Q_aᵀQ_b‖²_F / min(k_a, k_b), against max(k_a, k_b)/d, its mean for random
subspaces. Weight bases are left singular vectors of an update's matrices (the output space: LoRA's A starts from the
same seeded init in every fine-tune, so input spaces would overlap by construction); activation bases span the
last-token states [n, hidden] of a prompt set, uncentred (the paper's) or centred on the set's own mean, so that
the basis holds the set's variation and not the direction of its mean (uncentred, a low-rank basis is close to the
mean direction, and the MSO of two sets close to the angle between their means, which ES2 trains to open). Each
row's random baseline comes with the upper quantile of random subspaces' MSO (`random_band`), so "above chance"
is a test, not a ratio. See docs/architecture.md, "Related systems".
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch

from .weight_updates import Update, left_singular

SELECTIVE = 1.5  # one overlap counts as larger than another only beyond this factor
DISTINCT = 0.8  # activation subspaces count as separate when the cross-class MSO is below this share of within-class


def energy_rank(singular: torch.Tensor, fraction: float) -> int:
    """The fewest top singular directions whose squared values reach `fraction` of the total energy."""
    if not 0 < fraction <= 1:
        raise ValueError(f"energy fraction must be in (0, 1], got {fraction}")
    if singular.numel() == 0:
        return 0
    share = singular.double().pow(2).cumsum(0) / singular.double().pow(2).sum()
    return min(int((share < fraction - 1e-9).sum()) + 1, singular.numel())


def basis(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Orthonormal basis [d, k] of a matrix's column space [d, n] capturing `fraction` of its energy."""
    u, s, _ = torch.linalg.svd(values.double(), full_matrices=False)
    return u[:, :energy_rank(s, fraction)].float()


def mso(q_a: torch.Tensor, q_b: torch.Tensor) -> float:
    """Mode subspace overlap ‖Q_aᵀQ_b‖²_F / min(k_a, k_b) of orthonormal bases [d, k_a], [d, k_b]: 1 when one
    subspace contains the other, 0 when they are orthogonal."""
    if q_a.shape[0] != q_b.shape[0]:
        raise ValueError(f"bases live in different spaces: {q_a.shape[0]} vs {q_b.shape[0]} dimensions")
    k = min(q_a.shape[1], q_b.shape[1])
    if k == 0:
        raise ValueError("MSO of an empty subspace is undefined")
    return float((q_a.double().T @ q_b.double()).pow(2).sum() / k)


def random_mso(k_a: int, k_b: int, d: int) -> float:
    """Expected MSO of two independent uniformly random subspaces of dimensions k_a, k_b in R^d: E‖Q_aᵀQ_b‖²_F =
    k_a·k_b/d, so the expectation is max(k_a, k_b)/d."""
    return max(k_a, k_b) / d


@lru_cache(maxsize=None)
def random_band(k_a: int, k_b: int, d: int, quantile: float = 0.95) -> float:
    """The `quantile` of the MSO of independent uniformly random subspaces of dimensions k_a, k_b in R^d, by
    simulation (seeded; by rotation invariance one subspace is fixed to the first k_a coordinates): 400 draws, fewer
    (at least 20) for large subspaces, whose MSO barely spreads."""
    draws = max(20, min(400, 4_000_000 // (d * k_b)))
    gen = torch.Generator().manual_seed(k_a * 1_000_003 + k_b * 1_009 + d)
    q_b, _ = torch.linalg.qr(torch.randn(draws, d, k_b, generator=gen, dtype=torch.float64))  # [draws, d, k_b]
    values = q_b[:, :k_a].pow(2).sum((1, 2)) / min(k_a, k_b)
    return float(torch.quantile(values, quantile))


def _row(q_a: torch.Tensor, q_b: torch.Tensor, fraction: float) -> dict:
    d, k_a, k_b = q_a.shape[0], q_a.shape[1], q_b.shape[1]
    return {"fraction": fraction, "k_a": k_a, "k_b": k_b, "d": d, "mso": mso(q_a, q_b),
            "random": random_mso(k_a, k_b, d), "random_high": random_band(k_a, k_b, d)}


def weight_overlap(updates: dict[str, Update], fractions: Sequence[float]) -> list[dict]:
    """MSO per pair of updates, matrix and energy fraction (left singular subspaces), with the random baseline.

    Rows {a, b, matrix, fraction, k_a, k_b, d, mso, random}; only matrices that both updates change count."""
    spectra = {name: {m: left_singular(d) for m, d in upd.items() if isinstance(d, tuple)}
               for name, upd in updates.items()}
    names = list(updates)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for matrix in [m for m in spectra[a] if m in spectra[b]]:
                (u_a, s_a), (u_b, s_b) = spectra[a][matrix], spectra[b][matrix]
                if s_a.numel() == 0 or s_b.numel() == 0:
                    continue
                for fraction in fractions:
                    k_a, k_b = energy_rank(s_a, fraction), energy_rank(s_b, fraction)
                    rows.append({"a": a, "b": b, "matrix": matrix, **_row(u_a[:, :k_a], u_b[:, :k_b], fraction)})
    return rows


def depth_layers(n_layers: int, depth: Sequence[float]) -> list[int]:
    """Decoder layers l in 1..L with depth[0] <= l / L <= depth[1] (at least the one nearest the band's middle)."""
    low, high = depth
    if not 0 <= low <= high <= 1:
        raise ValueError(f"activation depth must be [low, high] with 0 <= low <= high <= 1, got {list(depth)}")
    layers = [layer for layer in range(1, n_layers + 1) if low - 1e-9 <= layer / n_layers <= high + 1e-9]
    return layers or [min(max(round((low + high) / 2 * n_layers), 1), n_layers)]


def activation_overlap(groups: dict[str, torch.Tensor], pairs: Sequence[tuple[str, str]], layers: Sequence[int],
                       fractions: Sequence[float], centred: bool = False) -> list[dict]:
    """MSO between the bases of two groups' last-token states per layer and energy fraction.

    groups: name -> states [n, len(layers), hidden]; each basis spans the states' row space (each group less its
    own mean when `centred`) at the fraction of their energy. Rows {a, b, layer, fraction, k_a, k_b, d, mso,
    random, random_high}."""
    rows = []
    for index, layer in enumerate(layers):
        for a, b in pairs:
            x_a, x_b = groups[a][:, index], groups[b][:, index]  # [n, hidden]
            if centred:
                x_a, x_b = x_a - x_a.mean(0), x_b - x_b.mean(0)
            for fraction in fractions:
                q_a, q_b = basis(x_a.T, fraction), basis(x_b.T, fraction)
                rows.append({"a": a, "b": b, "layer": layer, **_row(q_a, q_b, fraction)})
    return rows


def entanglement(weight: dict[str, tuple[float, float]], activation: dict[tuple[str, str], tuple[float, float]],
                 projection: list[dict], benign: dict[str, tuple[float, dict]]) -> dict:
    """What the overlaps say, by a fixed rule (numbers and flags; the notebook words them).

    weight: {"a vs b": (MSO, random)} for the pairs of "es2", "useful", "harmful" (e.g. means over energy fractions);
    activation: {(model, "harmful A vs useful B" | "harmful A vs harmful B" | "useful A vs useful B"): (MSO, random)};
    projection: rows of the projection test for mode "onto" with update, fraction, energy_kept, energy_random;
    benign: {"base" | "es2" | "es2+benign": (DSR under SCAV, {layer: centroid distance})}.
    Returns {"weight": {useful_harmful, es2_harmful, es2_useful: MSO / random, lean: "harmful" | "useful" | None
    (ES2's overlap ratio with one update exceeds the other's by SELECTIVE)}, "projection": {fraction (the largest),
    harmful, useful: rows} or None, "activation": {model: {cross, within (the smaller within-class MSO), separate:
    cross < DISTINCT × within}}, "benign": {dsr_before, dsr_after, separation_kept (min over layers of after /
    before)} or None}."""
    ratio = {pair: m / r if r > 0 else float("inf") for pair, (m, r) in weight.items()}
    find = lambda a, b: next(v for k, v in ratio.items() if set(k.split(" vs ")) == {a, b})
    es2_h, es2_u = find("es2", "harmful"), find("es2", "useful")
    lean = "harmful" if es2_h > SELECTIVE * es2_u else "useful" if es2_u > SELECTIVE * es2_h else None
    out: dict = {"weight": {"useful_harmful": find("useful", "harmful"), "es2_harmful": es2_h, "es2_useful": es2_u,
                            "lean": lean}, "projection": None, "activation": {}, "benign": None}
    top = max(r["fraction"] for r in projection)
    kept = {r["update"]: r for r in projection if r["fraction"] == top}
    if {"useful", "harmful"} <= set(kept):
        out["projection"] = {"fraction": top, "harmful": kept["harmful"], "useful": kept["useful"]}
    for model in dict.fromkeys(m for m, _ in activation):
        cross = activation[(model, "harmful A vs useful B")][0]
        within = min(activation[(model, "harmful A vs harmful B")][0], activation[(model, "useful A vs useful B")][0])
        out["activation"][model] = {"cross": cross, "within": within, "separate": cross < DISTINCT * within}
    if {"es2", "es2+benign"} <= set(benign):
        (before, sep_before), (after, sep_after) = benign["es2"], benign["es2+benign"]
        kept_sep = min(sep_after[l] / sep_before[l] for l in sep_before if sep_before[l] > 0)
        out["benign"] = {"dsr_before": before, "dsr_after": after, "separation_kept": kept_sep}
    return out
