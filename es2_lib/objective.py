"""The ES2 objective (paper Section 3): L = L_dist + lambda * KL, plus a retain term that keeps refusals.

L_dist rewards the distance between harmful and harmless last-prompt-token states at the ES2 layers; the KL of the
next token on harmless prompts, KL(p_base || p_ES2), keeps ordinary behaviour; the retain term (next-token KL on
harmful prompts, or the cross-entropy of refusals) keeps the model refusing. The choices the paper leaves open
are params keys; see docs/architecture.md, 'ES2 objective'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from . import batching, models


def layer_distance(harmful: torch.Tensor, harmless: torch.Tensor, scale: torch.Tensor, distance: str) -> torch.Tensor:
    """Distance [layers] between harmful states [b_h, layers, hidden] and harmless states [b_s, layers, hidden].

    centroid: ‖mean h − mean s‖ / scale; pairwise: mean over pairs ‖h_i − s_j‖ / scale (scale [layers] = the base
    model's mean state norm per layer); bounded: ‖mean ĥ − mean ŝ‖ of unit-normalised states, in [0, 2], which
    inflating norms cannot raise."""
    if distance == "centroid":
        return (harmful.mean(0) - harmless.mean(0)).norm(dim=-1) / scale
    if distance == "pairwise":
        return torch.cdist(harmful.transpose(0, 1), harmless.transpose(0, 1)).mean((1, 2)) / scale
    if distance == "bounded":
        return (F.normalize(harmful, dim=-1).mean(0) - F.normalize(harmless, dim=-1).mean(0)).norm(dim=-1)
    raise ValueError(f"unknown es2_distance {distance!r}; expected 'centroid', 'pairwise' or 'bounded'")


def kl_divergence(base_logp: torch.Tensor, tuned_logp: torch.Tensor) -> torch.Tensor:
    """KL(p_base ‖ p_tuned) per row of log-probabilities [batch, vocab] -> [batch] (nats)."""
    return (base_logp.exp() * (base_logp - tuned_logp)).sum(-1)


def es2_loss(
    harmful_states: torch.Tensor,  # [b_h, layers, hidden] last-prompt-token states of harmful prompts
    harmless_states: torch.Tensor,  # [b_s, layers, hidden] the same for harmless prompts
    scale: torch.Tensor,  # [layers] the base model's mean state norm per ES2 layer
    harmless_logp: torch.Tensor,  # [b_s, vocab] next-token log-probs of the tuned model on harmless prompts
    base_harmless_logp: torch.Tensor,  # [b_s, vocab] the same under the base model
    retain: torch.Tensor,  # [] retain term on harmful prompts (0 when es2_retain = "none")
    *,
    distance: str,  # es2_distance: "centroid" | "pairwise" | "bounded"
    margin: float,  # es2_margin: a layer's distance stops being rewarded above this; 0: no cap
    lambda_kl: float,  # es2_lambda_kl
    retain_weight: float,  # es2_retain_weight
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """loss = −Σ_layers min(d_l, margin) + λ·KL(base ‖ tuned)[harmless] + w·retain, and its parts."""
    d = layer_distance(harmful_states.float(), harmless_states.float(), scale, distance)  # [layers]
    rewarded = d.clamp(max=margin) if margin > 0 else d  # the hinge stops rewarding
    kl = kl_divergence(base_harmless_logp, harmless_logp).mean()  # []
    loss = -rewarded.sum() + lambda_kl * kl + retain_weight * retain
    return loss, {"distance": d, "kl": kl, "retain": retain,
                  "harmful_norm": harmful_states.float().norm(dim=-1).mean(0) / scale,  # [layers], 1 = base mean
                  "harmless_norm": harmless_states.float().norm(dim=-1).mean(0) / scale}


def refusal_ce(model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]],
               n_tokens: int) -> torch.Tensor:
    """Mean cross-entropy of the first `n_tokens` tokens of each refusal after its chat prompt (teacher forcing),
    averaged over all scored tokens of the batch."""
    prompts = [tokenizer(models.chat_prompt(tokenizer, q), add_special_tokens=False)["input_ids"] for q, _ in pairs]
    refusals = [tokenizer(a, add_special_tokens=False)["input_ids"][:n_tokens] for _, a in pairs]
    batch = batching.prompt_target_batch(prompts, refusals, tokenizer.pad_token_id,
                                         model.get_input_embeddings().weight.device)
    logits = batching.target_logits(model, batch)  # [b, n, vocab] float32 at the refusal positions only
    return F.cross_entropy(logits.transpose(1, 2), batch.targets, ignore_index=batching.IGNORE)
