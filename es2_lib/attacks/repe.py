"""RepE attack (Zou et al. 2023, "Representation Engineering"; docs/architecture.md, "Attacks"): steer the model away
from refusing by adding a multiple of its own harmfulness direction to the residual stream while it answers.

Direction: per layer, the first principal component of the differences between paired harmful and harmless
last-token states. RepE takes the PCA of differences whose pair order is flipped at random, which centres them;
the uncentred SVD used here has the same first component without the random draw. It is signed to point from
harmless to harmful. The attack adds `coeff · unit_l · d_l` to the output of each decoder block l of a band of
layers, at every position and at every generation step; negative coefficients push toward harmless. `unit_l`
is a length per layer (the base model's mean last-token norm), so one coefficient is the same absolute move on
the base and on the ES2 model.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..decoding import RowEdit
from ..generation import generate
from ..hooks import edit_residual
from .breaking import at_breaking_point
from .common import Outcome



def band(num_layers: int, layers: tuple[int, ...] | list[int], depth: tuple[float, ...] | list[float]) -> list[int]:
    """The steered layers: `layers` when given, else every decoder layer from depth[0]·L to depth[1]·L (rounded)."""
    if layers:
        bad = [l for l in layers if not 1 <= l <= num_layers]
        if bad:
            raise ValueError(f"repe_layers {bad} out of range 1..{num_layers} (decoder block outputs)")
        return sorted(set(layers))
    first, last = (max(1, min(num_layers, round(f * num_layers))) for f in depth)
    return list(range(first, last + 1))


def fit(harmful: torch.Tensor, harmless: torch.Tensor) -> dict[str, torch.Tensor]:
    """RepE directions from last-token states [n, layers, hidden] of each class (paired by index).

    Returns `direction` [layers, hidden] (unit, harmless -> harmful) and `norm` [layers] (mean state norm of
    both classes, the natural unit of a coefficient)."""
    n = min(len(harmful), len(harmless))
    if n < 1:
        raise ValueError("RepE needs at least one harmful and one harmless prompt")
    diffs = (harmful[:n] - harmless[:n]).double().transpose(0, 1)  # [layers, n, hidden]
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    direction = vh[:, 0]  # [layers, hidden], unit norm
    agrees = torch.einsum("lnh,lh->l", diffs, direction) >= 0  # [layers]: the mean difference projects positively
    sign = torch.where(agrees, 1.0, -1.0).double()
    norm = torch.cat([harmful, harmless]).float().norm(dim=-1).mean(0)
    return {"direction": (direction * sign[:, None]).float(), "norm": norm}


@contextlib.contextmanager
def steer(model: nn.Module, layers: list[int], direction: torch.Tensor, unit: torch.Tensor, coeff: float) -> Iterator[None]:
    """Inside the block, every forward adds coeff · unit[i] · direction[i] at all positions of layer layers[i]."""
    shifts = coeff * unit[:, None].float() * direction.float()  # [layers, hidden]

    def add(shift: torch.Tensor):
        return lambda hidden: hidden + shift.to(hidden.device, hidden.dtype)

    with edit_residual(model, {layer: add(shift) for layer, shift in zip(layers, shifts)}):
        yield


def row_steering(layers: list[int], direction: torch.Tensor, unit: torch.Tensor, coeffs: torch.Tensor
                 ) -> dict[int, RowEdit]:
    """`decoding.greedy`'s row_edits for `steer` with a coefficient of each prompt's own (`coeffs` [n prompts]),
    the same shift as `steer` with that coefficient: one batched pass runs many attack strengths (a budget
    bisection, one strength per prompt)."""
    def add(unit_l: torch.Tensor, direction_l: torch.Tensor) -> RowEdit:
        def edit(hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            scale = coeffs.float().to(hidden.device)[rows] * unit_l.float().to(hidden.device)  # [batch]
            return hidden + (scale[:, None, None] * direction_l.float().to(hidden.device)).to(hidden.dtype)
        return edit

    return {layer: add(u, d) for layer, u, d in zip(layers, unit, direction)}


def attack(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], layers: list[int],
    fitted: dict[str, torch.Tensor], unit: torch.Tensor, coeff: float, coeffs: tuple[float, ...], max_new_tokens: int,
    batch_size: int, progress: bool = True,
) -> Outcome:
    """Greedy responses under steering with one coefficient. Perturbation: `l2` = the norm added at each steered
    layer and position (mean over the band), `relative` = that over this model's own mean state norm there;
    `coeffs` (the whole sweep) is recorded in the budget."""
    with steer(model, layers, fitted["direction"], unit, coeff):
        responses = generate(model, tokenizer, prompts, max_new_tokens, batch_size, progress=progress,
                             until_verdict=True)
    added = abs(coeff) * unit.float()  # [layers]
    return Outcome("repe", f"coeff={coeff:g}", responses,
                   {"l2": float(added.mean()), "relative": float((added / fitted["norm"]).mean()), "coeff": coeff},
                   {"coeffs": list(coeffs), "layers": layers})


def breaking(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], layers: list[int],
             fitted: dict[str, torch.Tensor], unit: torch.Tensor, coeffs: list[float], bisect_tokens: int,
             max_new_tokens: int, batch_size: int, desc: str | None = None) -> dict:
    """Each prompt's breaking coefficient on the grid `coeffs` (weakest first; `breaking.at_breaking_point`): the
    bisection steers every row with its own coefficient in one pass, the confirmation is `attack` at the found one."""
    grid = torch.tensor(coeffs, dtype=torch.float32)
    return at_breaking_point(
        model, tokenizer, prompts, coeffs, lambda at: row_steering(layers, fitted["direction"], unit, grid[at]),
        lambda coeff, chosen: attack(model, tokenizer, chosen, layers, fitted, unit, coeff, tuple(coeffs),
                                     max_new_tokens, batch_size, progress=False), bisect_tokens, batch_size, desc)
