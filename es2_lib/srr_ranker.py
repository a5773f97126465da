"""The ranker of SRR, Safety Representation Ranking (Du et al. 2025, arXiv 2505.15710): a one-layer transformer
encoder over the [instruction, candidate_1..K] features that scores each candidate by the cosine similarity of the
encoded instruction and the encoded candidate, trained listwise (softmax over a list's scores, KL divergence to the
list's label distribution). No reference code exists; each reconstructed choice is a `RankerConfig` field (params
keys `srr_*`). See docs/architecture.md, "Related systems".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class RankerConfig:
    """The ranker's shape and training (params srr_hidden, srr_heads, srr_tau, srr_steps, srr_lr)."""
    hidden: int  # width of the encoder
    heads: int  # attention heads of the encoder layer
    tau: float  # temperature: score = cosine / tau
    steps: int  # full-batch Adam steps
    lr: float  # Adam learning rate


class SafetyRanker(nn.Module):
    """One-layer transformer encoder over [instruction, candidate_1..K] features; score_i = cos(instr, cand_i) / tau.

    Features are standardised with the training set's mean and std, projected to `width`, tagged with a learned
    role embedding (instruction or candidate) and encoded jointly, with no positions: the candidates form a set, so
    a candidate's score does not depend on the order of the list."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, width: int, heads: int, tau: float):
        super().__init__()
        self.register_buffer("mean", mean)  # [hidden]
        self.register_buffer("std", std)  # [hidden]
        self.tau = tau
        self.project = nn.Linear(mean.numel(), width)
        self.role = nn.Embedding(2, width)  # 0 = instruction, 1 = candidate
        self.encoder = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                                  batch_first=True)

    def forward(self, instruction: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Scores [batch, K] of candidates [batch, K, hidden] for instructions [batch, hidden]; `valid` [batch, K]
        marks real candidates (padding gets -inf)."""
        valid = torch.ones(candidates.shape[:2], dtype=torch.bool) if valid is None else valid
        tokens = torch.cat([instruction[:, None], candidates], 1)  # [batch, 1 + K, hidden]
        roles = torch.ones(tokens.shape[1], dtype=torch.long)
        roles[0] = 0
        x = self.project((tokens - self.mean) / self.std) + self.role(roles)  # [batch, 1 + K, width]
        pad = torch.cat([torch.zeros(len(valid), 1, dtype=torch.bool), ~valid], 1)
        encoded = self.encoder(x, src_key_padding_mask=pad)
        scores = F.cosine_similarity(encoded[:, :1], encoded[:, 1:], dim=-1) / self.tau  # [batch, K]
        return scores.masked_fill(~valid, -math.inf)


def listwise_loss(scores: torch.Tensor, safe: torch.Tensor) -> torch.Tensor:
    """Mean over lists of KL(label distribution ‖ softmax(scores)); the label distribution spreads a list's mass
    evenly over its safe candidates. scores, safe: [batch, K]."""
    target = safe.float() / safe.float().sum(1, keepdim=True)
    log_p = torch.log_softmax(scores, 1)
    terms = torch.where(target > 0, target * (target.clamp_min(1e-12).log() - log_p), torch.zeros_like(log_p))
    return terms.sum(1).mean()


def train_ranker(instruction: torch.Tensor, candidates: torch.Tensor, safe: torch.Tensor, config: RankerConfig,
                 seed: int) -> tuple[SafetyRanker, list[float]]:
    """Fit a ranker on mixed lists (instruction [n, hidden], candidates [n, K, hidden], safe [n, K]) by full-batch
    Adam for `config.steps` steps, seeded by `seed`; returns it in eval mode and the loss per step."""
    if len(instruction) == 0:
        raise ValueError("no training list holds both a safe and an unsafe candidate; sample more prompts or more "
                         "candidates (srr_n_per_source, srr_k)")
    features = torch.cat([instruction, candidates.flatten(0, 1)])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ranker = SafetyRanker(features.mean(0), features.std(0).clamp_min(1e-6), config.hidden, config.heads,
                              config.tau)
        optimiser = torch.optim.Adam(ranker.parameters(), lr=config.lr)
        losses = []
        for _ in range(config.steps):
            loss = listwise_loss(ranker(instruction, candidates), safe)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
    return ranker.eval(), losses
