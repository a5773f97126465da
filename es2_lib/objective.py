"""The training objectives of the arms (paper Section 3 for ES2; docs/architecture.md, 'Arms').

ES2: L = L_dist + lambda * KL on harmless prompts, where L_dist rewards the distance between harmful and harmless
last-prompt-token states at the ES2 layers (the paper: the mean L2 distance over all harmful x harmless pairs) and
the KL of the next token keeps ordinary behaviour; the ES2 + retain arm adds a term that keeps the model refusing
(next-token KL on harmful prompts, or the cross-entropy of refusals). STL: the cross-entropy of safety responses
plus the same KL. RR (Circuit Breakers, Zou et al. 2024): ReLU of the cosine between tuned and base harmful states
plus the L2 distance of tuned to base harmless states. The choices the papers leave open are params keys.
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


def kl_divergence(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row of log-probabilities [batch, vocab] -> [batch] (nats)."""
    return (p_logp.exp() * (p_logp - q_logp)).sum(-1)


def harmless_kl(base_logp: torch.Tensor, tuned_logp: torch.Tensor, direction: str) -> torch.Tensor:
    """The KL term per row [batch]: `direction` "tuned_base" = KL(p_tuned ‖ p_base) (the paper's), "base_tuned" =
    KL(p_base ‖ p_tuned)."""
    if direction == "tuned_base":
        return kl_divergence(tuned_logp, base_logp)
    if direction == "base_tuned":
        return kl_divergence(base_logp, tuned_logp)
    raise ValueError(f"unknown es2_kl {direction!r}; expected 'tuned_base' or 'base_tuned'")


def es2_loss(
    harmful_states: torch.Tensor,  # [b_h, layers, hidden] last-prompt-token states of harmful prompts
    harmless_states: torch.Tensor,  # [b_s, layers, hidden] the same for harmless prompts
    scale: torch.Tensor,  # [layers] the base model's mean state norm per ES2 layer
    kl: torch.Tensor,  # [] the harmless KL term (harmless_kl, averaged)
    retain: torch.Tensor,  # [] retain term on harmful prompts (0 for the plain ES2 arm)
    *,
    distance: str,  # es2_distance: "centroid" | "pairwise" | "bounded"
    margin: float,  # es2_margin: a layer's distance stops being rewarded above this; 0: no cap
    lambda_kl: float,  # es2_lambda_kl
    retain_weight: float,  # es2_retain_weight
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """loss = −Σ_layers min(d_l, margin) + λ·KL[harmless] + w·retain, and its parts."""
    d = layer_distance(harmful_states.float(), harmless_states.float(), scale, distance)  # [layers]
    rewarded = d.clamp(max=margin) if margin > 0 else d  # the hinge stops rewarding
    loss = -rewarded.sum() + lambda_kl * kl + retain_weight * retain
    return loss, {"distance": d, "kl": kl, "retain": retain}


def rr_loss(harmful_states: torch.Tensor, base_harmful_states: torch.Tensor, harmless_states: torch.Tensor,
            base_harmless_states: torch.Tensor, scale: torch.Tensor, retain_weight: float, reroute_weight: float = 1.0,
            centre: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Representation rerouting (Circuit Breakers): c_s · Σ_layers mean ReLU(cos(h − c, h_base − c)) over the harmful
    states [b, layers, hidden] + c_r · Σ_layers mean ‖s − s_base‖ / scale over the harmless ones (c_s =
    `reroute_weight`, c_r = `retain_weight`; `rr_schedule` gives the paper's); the rerouting term is 0 once every
    tuned harmful state is orthogonal (or opposite) to its base state. `centre` [layers, hidden] (default 0, the
    paper's) is subtracted first: the base states' mean removes the direction every last-token state shares, so the
    cosine sees only what sets a prompt apart."""
    c = 0.0 if centre is None else centre.float()
    cos = F.cosine_similarity(harmful_states.float() - c, base_harmful_states.float() - c, dim=-1)  # [b, layers]
    reroute = F.relu(cos).mean(0).sum()
    retain = ((harmless_states.float() - base_harmless_states.float()).norm(dim=-1) / scale).mean(0).sum()
    return reroute_weight * reroute + retain_weight * retain, {"reroute": reroute, "retain": retain}


def rr_schedule(step: int, steps: int, retain_weight: float) -> tuple[float, float]:
    """Circuit Breakers' coefficients at `step` of `steps` (Zou et al. 2024, Algorithm 1): the rerouting weight
    falls 1 → ½ while the retain weight rises 0 → ½ · `retain_weight`. The retain term must start at zero: the base
    model is a stationary point of ReLU(cos) (its gradient there is zero), while ‖s − s_base‖ pulls back with a
    constant force, so a retain term at full weight from step 0 holds the model at the base."""
    t = step / (2 * steps)
    return 1 - t, retain_weight * t


def response_ce(model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]],
                n_tokens: int) -> torch.Tensor:
    """Mean cross-entropy of the first `n_tokens` tokens of each response after its chat prompt (teacher forcing),
    averaged over all scored tokens of the batch: the refusal retain term, STL's loss and 07's fine-tunes."""
    prompts = [tokenizer(models.chat_prompt(tokenizer, q), add_special_tokens=False)["input_ids"] for q, _ in pairs]
    responses = [tokenizer(a, add_special_tokens=False)["input_ids"][:n_tokens] for _, a in pairs]
    batch = batching.prompt_target_batch(prompts, responses, tokenizer.pad_token_id,
                                         model.get_input_embeddings().weight.device)
    logits = batching.target_logits(model, batch)  # [b, n, vocab] float32 at the response positions only
    return F.cross_entropy(logits.transpose(1, 2), batch.targets, ignore_index=batching.IGNORE)
