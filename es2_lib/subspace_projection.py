"""The projection test of Ponkshe et al. 2025 (arXiv 2505.14185): keep the part of an update inside (or outside) the
top-k left singular subspace of a reference update's same matrix, k = ⌈fraction · rank⌉, and measure the energy it
keeps against what a random k-dimensional subspace would keep. See docs/architecture.md, "Related systems".
"""

from __future__ import annotations

import math

import torch

from .weight_updates import Factored, Update, energy, left_singular


def projection_rank(rank: int, fraction: float) -> int:
    """k = ⌈fraction · rank⌉ of a reference update's `rank` singular directions (at least 1 when rank > 0)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"projection fraction must be in (0, 1], got {fraction}")
    return min(rank, max(1, math.ceil(fraction * rank - 1e-9))) if rank else 0


def project(delta: Factored, q: torch.Tensor, complement: bool = False) -> Factored:
    """The part of left @ right inside span(q) (q [out, k] orthonormal), or outside it: (I − QQᵀ)·ΔW."""
    left, right = delta
    inside = q @ (q.T @ left)  # [out, r]
    return (left - inside if complement else inside), right


def project_update(update: Update, reference: Update, fraction: float, complement: bool = False) -> tuple[Update, dict]:
    """Project every matrix of `update` onto (or off) the top-k left singular subspace of the same matrix of
    `reference`, k = projection_rank(rank of the reference's matrix, fraction). A parameter the reference leaves
    unchanged has an empty subspace there (so it is dropped, or kept whole for the complement).

    Returns the projected update and {energy_kept: Σ‖PΔ‖²/Σ‖Δ‖², energy_random: the share a random
    subspace of the same k would keep in expectation, k_mean, rank_mean}."""
    projected: Update = {}
    total = kept = expected = 0.0
    ks, ranks = [], []
    for name, delta in update.items():
        e = energy(delta)
        total += e
        ref = reference.get(name)
        if isinstance(delta, tuple) and isinstance(ref, tuple):
            u, s = left_singular(ref)
            k = projection_rank(s.numel(), fraction)
            ks.append(k)
            ranks.append(s.numel())
            projected[name] = project(delta, u[:, :k], complement)
            kept += energy(projected[name])
            share = k / u.shape[0]
            expected += e * (1 - share if complement else share)
        elif complement:
            projected[name] = delta
            kept += e
            expected += e
    if total == 0:
        raise ValueError("cannot project an update that changes nothing")
    return projected, {"energy_kept": kept / total, "energy_random": expected / total,
                       "k_mean": sum(ks) / len(ks) if ks else 0.0,
                       "rank_mean": sum(ranks) / len(ranks) if ranks else 0.0}
