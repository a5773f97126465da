"""Refusal-direction ablation (Arditi et al. 2024, "Refusal in Language Models Is Mediated by a Single Direction";
docs/architecture.md, "Attacks"): the cheap white-box attack that has broken other representation-level defences.

The direction is the difference of the mean harmful and mean harmless last-token states at one layer, fitted on the
model under attack (adaptive). It is projected out of the residual stream at every layer and position, h ← h −
(h·r̂) r̂ (the input of the first block and the output of every block), so no layer can write it. The layer is chosen
on the dev split, never on the attacked prompts: the candidate whose ablation leaves the fewest dev prompts refused.
Arditi et al. also screen candidates by the harmless KL and by whether adding the direction induces refusal; this
module uses the refusal rate alone.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .. import judges, models
from ..generation import generate
from ..hooks import edit_residual
from .common import Outcome


def directions(harmful: torch.Tensor, harmless: torch.Tensor) -> torch.Tensor:
    """Unit difference-in-means directions [layers, hidden] from last-token states [n, layers, hidden] per class."""
    diff = harmful.float().mean(0) - harmless.float().mean(0)
    return diff / diff.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@contextlib.contextmanager
def ablated(model: nn.Module, direction: torch.Tensor) -> Iterator[None]:
    """Inside the block, `direction` [hidden] is projected out of the residual stream at every layer 0..L."""
    unit = direction.float() / direction.float().norm()

    def project_out(hidden: torch.Tensor) -> torch.Tensor:
        r = unit.to(hidden.device, hidden.dtype)
        return hidden - (hidden @ r)[..., None] * r

    with edit_residual(model, {layer: project_out for layer in range(models.num_layers(model) + 1)}):
        yield


def choose_layer(model: nn.Module, tokenizer: PreTrainedTokenizerBase, dev_prompts: list[str],
                 fitted: torch.Tensor, candidates: list[int], max_new_tokens: int, batch_size: int
                 ) -> tuple[int, dict[int, float]]:
    """The candidate layer (fitted[l - 1] is layer l's direction) whose ablation leaves the smallest share of the dev
    harmful prompts refused (the paper's keyword judge; greedy, stopped at the verdict; ties to the earlier layer),
    and that share for every candidate."""
    refused = {}
    for layer in candidates:
        with ablated(model, fitted[layer - 1]):
            responses = generate(model, tokenizer, dev_prompts, max_new_tokens, batch_size, until_verdict=True)
        refused[layer] = sum(judges.refusals(responses)) / len(responses)
    return min(candidates, key=lambda l: (refused[l], l)), refused


def attack(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], fitted: torch.Tensor,
           layer: int, harmful_states: torch.Tensor, max_new_tokens: int, batch_size: int,
           dev_refused: dict[int, float]) -> Outcome:
    """Greedy responses with layer `layer`'s direction ablated everywhere. Perturbation: `relative` = the mean share
    of a harmful state's norm that lies along the direction at that layer (`harmful_states` [n, layers, hidden],
    the fit prompts', unablated), `l2` that component's mean length; the budget records the dev refusal rates that
    chose the layer."""
    at = harmful_states[:, layer - 1].float()
    along = (at @ fitted[layer - 1].float()).abs()
    with ablated(model, fitted[layer - 1]):
        responses = generate(model, tokenizer, prompts, max_new_tokens, batch_size, progress=True,
                             until_verdict=True)
    return Outcome("ablation", f"layer={layer}", responses,
                   {"l2": float(along.mean()), "relative": float((along / at.norm(dim=-1)).mean()), "layer": layer},
                   {"dev_refused": {str(l): r for l, r in dev_refused.items()}})
