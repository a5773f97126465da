"""SCAV attack (Xu et al. 2024, "Uncovering Safety Risks of Large Language Models through Concept Activation Vector";
docs/architecture.md, "Attacks"): move the last-token state across the model's own linear harmfulness probes at every
layer.

Per layer l a logistic probe P(harmful | e) = σ(wᵀe + b) is fitted on the model under attack (probes.py; on the
ES2 model it is fitted again, so the attack adapts). At every layer whose held-out probe accuracy exceeds P1 and
where P(harmful | e) > P0, the last-position state gets the minimal L2 move that brings the probe to P0,
ε = (logit(P0) − b − wᵀe) / ‖w‖ along w / ‖w‖. It acts in every forward pass inside `perturb`, so at every
decoding step (with the KV cache, each step's new token is the last position); a move at layer l changes what
the probes of later layers see, as in SCAV.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .. import probes as linear_probes
from ..decoding import RowEdit
from ..generation import generate
from ..hooks import edit_residual
from .breaking import at_breaking_point
from .common import Outcome



def fit(harmful: torch.Tensor, harmless: torch.Tensor, layers: list[int], C: float, folds: int,
        seed: int) -> dict[str, torch.Tensor]:
    """Probes for `layers` from last-token states [n, len(layers), hidden] of each class: weight [len, hidden] and
    bias [len] on the raw states (fitted on all states), accuracy [len] (held-out, by cross-validation), layers."""
    fitted = linear_probes.fit_probes(harmful, harmless, C=C, seed=seed)
    accuracy = linear_probes.heldout_accuracy(harmful, harmless, folds=folds, C=C, seed=seed)
    return {**fitted, "accuracy": accuracy, "layers": torch.tensor(layers)}


def shift(states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | float, p0: float | torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The SCAV move of states [..., hidden] under one probe: states with P(harmful) > p0 go to exactly p0 along
    the probe normal, the others stay (`p0` a number, or a tensor [...] of each state's own). Returns (moved
    states, ‖ε‖ [...], 0 where nothing moved)."""
    norm = weight.norm()
    logit = states @ weight + bias  # [...]
    target = math.log(p0 / (1 - p0)) if isinstance(p0, float) else torch.logit(p0.double()).to(logit)
    eps = (target - logit).clamp(max=0) / norm  # [...], signed: <= 0 moves against w
    return states + eps[..., None] * (weight / norm), -eps


@dataclass
class Moves:
    """The moves SCAV made inside `perturb`: per forward pass and layer, ‖ε‖ and the state norm of each row."""

    prompt_eps: list[torch.Tensor] = field(default_factory=list)  # at the prompt's last token (the prefill pass)
    prompt_norm: list[torch.Tensor] = field(default_factory=list)
    step_eps: list[torch.Tensor] = field(default_factory=list)  # at each generated token

    def summary(self) -> dict[str, float]:
        """l2: mean ‖ε‖ over the (prompt, layer) moves at the prompt's last token; relative: the same over the state
        norm; moved: share of (prompt, eligible layer) pairs that needed a move; l2_steps: mean ‖ε‖ of the moves at
        generated tokens (of rows still generating: a finished row leaves the batch)."""
        eps = torch.cat(self.prompt_eps) if self.prompt_eps else torch.zeros(0)
        rel = eps / torch.cat(self.prompt_norm) if self.prompt_norm else torch.zeros(0)
        steps = torch.cat(self.step_eps) if self.step_eps else torch.zeros(0)
        moved, moved_steps = eps > 0, steps > 0
        return {"l2": float(eps[moved].mean()) if moved.any() else 0.0,
                "relative": float(rel[moved].mean()) if moved.any() else 0.0,
                "moved": float(moved.float().mean()) if len(eps) else 0.0,
                "l2_steps": float(steps[moved_steps].mean()) if moved_steps.any() else 0.0}


@contextlib.contextmanager
def perturb(model: nn.Module, probes: dict[str, torch.Tensor], p0: float, p1: float) -> Iterator[Moves]:
    """Inside the block, every forward moves the last position's state at each layer whose probe accuracy > p1."""
    moves = Moves()

    def edit(weight: torch.Tensor, bias: torch.Tensor):
        def apply(hidden: torch.Tensor) -> torch.Tensor:  # [batch, seq, hidden]
            last = hidden[:, -1].float()
            moved, eps = shift(last, weight.to(last.device), bias.to(last.device), p0)
            if hidden.shape[1] > 1:  # the prefill pass: the prompt's last token
                moves.prompt_eps.append(eps.cpu())
                moves.prompt_norm.append(last.norm(dim=-1).cpu())
            else:
                moves.step_eps.append(eps.cpu())
            hidden = hidden.clone()
            hidden[:, -1] = moved.to(hidden.dtype)
            return hidden
        return apply

    eligible = (probes["accuracy"] > p1).nonzero().flatten().tolist()
    edits = {int(probes["layers"][i]): edit(probes["weight"][i].float(), probes["bias"][i].float()) for i in eligible}
    with edit_residual(model, edits):
        yield moves


def row_targets(probes: dict[str, torch.Tensor], p0: torch.Tensor, p1: float) -> dict[int, RowEdit]:
    """`decoding.greedy`'s row_edits for `perturb` with a target of each prompt's own (`p0` [n prompts]), the same
    move as `perturb` with that target: one batched pass runs many attack strengths (a budget bisection)."""
    def edit(weight: torch.Tensor, bias: torch.Tensor) -> RowEdit:
        def apply(hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:  # [batch, seq, hidden]
            last = hidden[:, -1].float()
            moved, _ = shift(last, weight.to(last.device), bias.to(last.device), p0.to(last.device)[rows])
            hidden = hidden.clone()
            hidden[:, -1] = moved.to(hidden.dtype)
            return hidden
        return apply

    eligible = (probes["accuracy"] > p1).nonzero().flatten().tolist()
    return {int(probes["layers"][i]): edit(probes["weight"][i].float(), probes["bias"][i].float()) for i in eligible}


def attack(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], probes: dict[str, torch.Tensor],
           p0: float, p1: float, max_new_tokens: int, batch_size: int, progress: bool = True) -> Outcome:
    """Greedy responses under SCAV; perturbation = Moves.summary (l2 = mean ‖ε‖ at the prompt's last token)."""
    with perturb(model, probes, p0, p1) as moves:
        responses = generate(model, tokenizer, prompts, max_new_tokens, batch_size, progress=progress,
                             until_verdict=True)
    layers = probes["layers"][probes["accuracy"] > p1].tolist()
    return Outcome("scav", "", responses, moves.summary(), {"p0": p0, "p1": p1, "layers": layers})


def breaking(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], probes: dict[str, torch.Tensor],
             targets: list[float], p1: float, bisect_tokens: int, max_new_tokens: int, batch_size: int,
             desc: str | None = None) -> dict:
    """Each prompt's breaking target P0 on the grid `targets` (weakest first, i.e. decreasing;
    `breaking.at_breaking_point`): every row moved to its own P0 in one pass, confirmed by `attack` at the found one."""
    grid = torch.tensor(targets, dtype=torch.float64)
    return at_breaking_point(
        model, tokenizer, prompts, targets, lambda at: row_targets(probes, grid[at], p1),
        lambda p0, chosen: attack(model, tokenizer, chosen, probes, p0, p1, max_new_tokens, batch_size, progress=False),
        bisect_tokens, batch_size, desc)
