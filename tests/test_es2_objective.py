"""The arms' objectives (es2_lib/objective.py): the distances, the margin hinge, both KL directions, the rerouting
loss and the response cross-entropy."""

from __future__ import annotations

import pytest
import torch

from es2_lib import objective

KNOBS = dict(distance="centroid", lambda_kl=2.0, retain_weight=0.5)


def test_distances_and_the_bounded_variant():
    g = torch.Generator().manual_seed(0)
    harmful, harmless = torch.randn(5, 2, 8, generator=g) + 1.0, torch.randn(6, 2, 8, generator=g)
    scale = torch.tensor([2.0, 4.0])
    centroid = objective.layer_distance(harmful, harmless, scale, "centroid")
    torch.testing.assert_close(centroid, (harmful.mean(0) - harmless.mean(0)).norm(dim=-1) / scale)
    pairwise = objective.layer_distance(harmful, harmless, scale, "pairwise")
    torch.testing.assert_close(pairwise[1], torch.stack([(h - s).norm() for h in harmful[:, 1]
                                                         for s in harmless[:, 1]]).mean() / 4.0)
    # inflating the harmful norms raises the Euclidean distances but not the bounded one
    assert (objective.layer_distance(harmful * 10, harmless, scale, "centroid") > 5 * centroid).all()
    bounded = objective.layer_distance(harmful, harmless, scale, "bounded")
    torch.testing.assert_close(objective.layer_distance(harmful * 10, harmless, scale, "bounded"), bounded)
    assert (bounded <= 2).all()
    with pytest.raises(ValueError, match="es2_distance"):
        objective.layer_distance(harmful, harmless, scale, "cosine")


def test_margin_hinge_stops_rewarding_distance():
    harmful = torch.randn(3, 1, 4, requires_grad=True)
    harmless = torch.zeros(3, 1, 4)
    logp = torch.log_softmax(torch.randn(3, 10), -1)
    zero = torch.zeros(())
    distance = objective.layer_distance(harmful, harmless, torch.ones(1), "centroid").item()
    kl = objective.harmless_kl(logp, logp, "tuned_base").mean()
    loss, parts = objective.es2_loss(harmful, harmless, torch.ones(1), kl, zero, margin=distance / 2, **KNOBS)
    assert parts["kl"].abs() < 1e-6 and loss.item() == pytest.approx(-distance / 2, rel=1e-5)
    loss.backward()
    assert harmful.grad.abs().max() == 0  # above the margin: no push


def test_loss_adds_the_weighted_kl_and_retain_terms():
    harmful, harmless = torch.ones(2, 1, 3), torch.zeros(2, 1, 3)  # centroid distance sqrt(3) on scale 1
    base = torch.log_softmax(torch.tensor([[1.0, 2.0, 3.0]] * 2), -1)
    tuned = torch.log_softmax(torch.tensor([[3.0, 2.0, 1.0]] * 2), -1)
    kl = objective.harmless_kl(base, tuned, "tuned_base").mean()
    loss, parts = objective.es2_loss(harmful, harmless, torch.ones(1), kl, torch.tensor(0.8), margin=0.0, **KNOBS)
    assert loss.item() == pytest.approx(-3 ** 0.5 + 2.0 * kl.item() + 0.5 * 0.8, rel=1e-6)
    assert parts["distance"].item() == pytest.approx(3 ** 0.5) and parts["retain"].item() == pytest.approx(0.8)


def test_kl_divergence_and_its_two_directions():
    base = torch.log_softmax(torch.tensor([[1.0, 2.0, 3.0]]), -1)
    other = torch.log_softmax(torch.tensor([[4.0, 2.0, 1.0]]), -1)
    assert objective.kl_divergence(base, base).item() == pytest.approx(0.0, abs=1e-7)
    expected = (base.exp() * (base - other)).sum().item()
    assert objective.kl_divergence(base, other).item() == pytest.approx(expected) and expected > 0
    reverse = (other.exp() * (other - base)).sum().item()  # KL(p_tuned || p_base), the paper's direction
    assert objective.harmless_kl(base, other, "tuned_base").item() == pytest.approx(reverse)
    assert objective.harmless_kl(base, other, "base_tuned").item() == pytest.approx(expected) != pytest.approx(reverse)
    with pytest.raises(ValueError, match="es2_kl"):
        objective.harmless_kl(base, other, "symmetric")


def test_rr_loss_is_zero_for_states_orthogonal_to_the_base_ones_and_counts_the_harmless_drift():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 2, 8, generator=g)
    orthogonal = torch.randn(4, 2, 8, generator=g)
    orthogonal -= (orthogonal * base).sum(-1, keepdim=True) / base.norm(dim=-1, keepdim=True) ** 2 * base
    harmless = torch.randn(3, 2, 8, generator=g)
    scale = torch.tensor([2.0, 4.0])
    loss, parts = objective.rr_loss(orthogonal, base, harmless, harmless, scale, retain_weight=1.0)
    assert parts["reroute"].item() == pytest.approx(0.0, abs=1e-6) and loss.item() == pytest.approx(0.0, abs=1e-6)
    _, same = objective.rr_loss(base, base, harmless, harmless, scale, 1.0)
    assert same["reroute"].item() == pytest.approx(2.0)  # cos = 1 at both layers
    _, opposite = objective.rr_loss(-base, base, harmless + 1.0, harmless, scale, 0.5)
    assert opposite["reroute"].item() == 0.0  # ReLU: pointing away is as good as orthogonal
    expected = (torch.ones(3, 2) * 8 ** 0.5 / scale).mean(0).sum().item()  # each state moved by (1, ..., 1)
    assert opposite["retain"].item() == pytest.approx(expected, rel=1e-5)


def test_centred_rr_sees_past_the_direction_all_states_share():
    """States = a large shared offset + a small own part: the raw cosine is near 1 whatever the own part does, so
    rerouting the own part scores as no rerouting; centred on the offset, the same move zeroes the term."""
    g = torch.Generator().manual_seed(1)
    offset = 50 * torch.randn(1, 1, 8, generator=g)
    own = torch.randn(4, 1, 8, generator=g)
    scale = torch.tensor([1.0])
    base, tuned = offset + own, offset - own  # each prompt's own part reversed
    _, raw = objective.rr_loss(tuned, base, base, base, scale, 0.0)
    _, centred = objective.rr_loss(tuned, base, base, base, scale, 0.0, centre=offset[0])
    assert raw["reroute"].item() > 0.9 and centred["reroute"].item() == 0.0
    _, untouched = objective.rr_loss(base, base, base, base, scale, 0.0, centre=offset[0])
    assert untouched["reroute"].item() == pytest.approx(1.0)


def test_rr_schedule_moves_weight_from_rerouting_to_retain():
    assert objective.rr_schedule(0, 30, 4.0) == (1.0, 0.0)  # no retain pull at the start
    assert objective.rr_schedule(15, 30, 4.0) == pytest.approx((0.75, 1.0))
    assert objective.rr_schedule(30, 30, 4.0) == pytest.approx((0.5, 2.0))
    states = torch.ones(2, 1, 4)
    loss, parts = objective.rr_loss(states, states, states + 1, states, torch.tensor([1.0]), 3.0, reroute_weight=0.5)
    assert loss.item() == pytest.approx(0.5 * parts["reroute"].item() + 3.0 * parts["retain"].item())


def test_response_ce_is_the_mean_nll_of_the_scored_response_tokens(tiny):
    """Two pairs of different lengths in one left-padded batch: the CE is the mean over all scored tokens of
    −log p(token | chat prompt, earlier tokens), each taken from an unpadded forward of its own row."""
    from es2_lib import models

    model, tokenizer = tiny
    pairs = [("How do I pick a lock?", "I cannot help with that request, sorry."), ("Hi", "No.")]
    n_tokens = 5
    nll = []
    for question, answer in pairs:
        prompt = tokenizer(models.chat_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
        response = tokenizer(answer, add_special_tokens=False)["input_ids"][:n_tokens]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0].float()  # [len, vocab]
        logp = logits[len(prompt) - 1:-1].log_softmax(-1)  # the positions that predict the response tokens
        nll += [-logp[i, token].item() for i, token in enumerate(response)]
    assert len(nll) == n_tokens + len(tokenizer("No.", add_special_tokens=False)["input_ids"]) < 2 * n_tokens
    with torch.no_grad():
        ce = objective.response_ce(model, tokenizer, pairs, n_tokens)
    assert ce.item() == pytest.approx(sum(nll) / len(nll), rel=1e-5)

