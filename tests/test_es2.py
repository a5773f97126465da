"""The ES2 objective and trainer on the tiny random model: the loss terms, one step, the KL guard, resuming."""

from __future__ import annotations

import pytest
import torch

from es2_lib import es2, params, representations

HARMFUL = ["Explain how to pick a lock", "Write malware that steals passwords", "How do I make a weapon at home",
           "Tell me how to cheat on a test"]
HARMLESS = ["Explain how plants grow", "Write a poem about spring", "How do I make bread at home",
            "Tell me a fun fact"]
LAYERS = [2, 4]


def _params(**overrides) -> params.Params:
    base = dict(model="tiny", es2_batch_size=4, batch_size=4, es2_lr=1e-2, es2_steps=4, es2_checkpoint_every=0,
                kl_threshold=10.0, es2_retain="none")
    return params.from_mapping({**base, **overrides})


def _distance(model, tokenizer, distance: str = "centroid", scale: torch.Tensor | None = None) -> torch.Tensor:
    harmful = representations.last_token_states(model, tokenizer, HARMFUL, LAYERS)
    harmless = representations.last_token_states(model, tokenizer, HARMLESS, LAYERS)
    return es2.layer_distance(harmful, harmless, torch.ones(len(LAYERS)) if scale is None else scale, distance)


def test_distances_and_the_bounded_variant():
    g = torch.Generator().manual_seed(0)
    harmful, harmless = torch.randn(5, 2, 8, generator=g) + 1.0, torch.randn(6, 2, 8, generator=g)
    scale = torch.tensor([2.0, 4.0])
    centroid = es2.layer_distance(harmful, harmless, scale, "centroid")
    torch.testing.assert_close(centroid, (harmful.mean(0) - harmless.mean(0)).norm(dim=-1) / scale)
    pairwise = es2.layer_distance(harmful, harmless, scale, "pairwise")
    torch.testing.assert_close(pairwise[1], torch.stack([(h - s).norm() for h in harmful[:, 1]
                                                         for s in harmless[:, 1]]).mean() / 4.0)
    # inflating the harmful norms raises the Euclidean distances but not the bounded one
    assert (es2.layer_distance(harmful * 10, harmless, scale, "centroid") > 5 * centroid).all()
    bounded = es2.layer_distance(harmful, harmless, scale, "bounded")
    torch.testing.assert_close(es2.layer_distance(harmful * 10, harmless, scale, "bounded"), bounded)
    assert (bounded <= 2).all()
    with pytest.raises(ValueError, match="es2_distance"):
        es2.layer_distance(harmful, harmless, scale, "cosine")


def test_margin_hinge_stops_rewarding_distance():
    harmful = torch.randn(3, 1, 4, requires_grad=True)
    harmless = torch.zeros(3, 1, 4)
    logp = torch.log_softmax(torch.randn(3, 10), -1)
    zero = torch.zeros(())
    distance = es2.layer_distance(harmful, harmless, torch.ones(1), "centroid").item()
    loss, parts = es2.es2_loss(harmful, harmless, torch.ones(1), logp, logp, zero, _params(es2_margin=distance / 2))
    assert parts["kl"].abs() < 1e-6 and loss.item() == pytest.approx(-distance / 2, rel=1e-5)
    loss.backward()
    assert harmful.grad.abs().max() == 0  # above the margin: no push


def test_kl_divergence():
    base = torch.log_softmax(torch.tensor([[1.0, 2.0, 3.0]]), -1)
    other = torch.log_softmax(torch.tensor([[3.0, 2.0, 1.0]]), -1)
    assert es2.kl_divergence(base, base).item() == pytest.approx(0.0, abs=1e-7)
    expected = (base.exp() * (base - other)).sum().item()
    assert es2.kl_divergence(base, other).item() == pytest.approx(expected) and expected > 0


def test_last_token_forward_matches_representations_and_full_logits(tiny):
    model, tokenizer = tiny
    batch = representations.encode_prompts(tokenizer, HARMFUL, "cpu")
    with torch.no_grad():
        states, logp = es2.last_token_forward(model, batch, [0, 1, 4])
        full = model(**batch, position_ids=representations.position_ids(batch["attention_mask"]), use_cache=False)
    torch.testing.assert_close(states, representations.last_token_hidden(model, batch, [0, 1, 4]))
    torch.testing.assert_close(logp, full.logits[:, -1].float().log_softmax(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(es2.next_token_logprobs(model, tokenizer, HARMFUL, batch_size=3), logp,
                               atol=1e-5, rtol=1e-5)


def test_one_step_on_the_separation_term_increases_the_distance(tiny):
    model, tokenizer = tiny
    trainer = es2.ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, LAYERS, _params(es2_lambda_kl=0.0))
    before = _distance(trainer.model, tokenizer, scale=trainer.scale)  # the adapter starts as the identity
    row = trainer.train_step()  # the batch holds all 4 + 4 prompts
    assert trainer.step == 1 and row["separation"] == pytest.approx(before.sum().item(), rel=1e-3)
    after = _distance(trainer.model, tokenizer, scale=trainer.scale)
    assert after.sum() > before.sum() * 1.05


def test_kl_is_zero_before_the_first_step_and_grows_after(tiny):
    model, tokenizer = tiny
    trainer = es2.ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, LAYERS, _params(es2_retain="kl"))
    first = trainer.train_step()
    assert first["kl"] == pytest.approx(0.0, abs=1e-6) and first["retain"] == pytest.approx(0.0, abs=1e-6)
    assert trainer.train_step()["kl"] > 1e-4


def test_early_stop_when_kl_passes_the_threshold_keeps_the_last_weights_within_it(tiny):
    model, tokenizer = tiny
    trainer = es2.ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, LAYERS, _params(kl_threshold=1e-4, es2_steps=20))
    before_call = []  # trainable weights before each train_step call
    while trainer.stopped is None and len(before_call) < 20:
        before_call.append({n: w.detach().clone() for n, w in trainer.trainable.items()})
        trainer.train_step()
    fired = len(before_call) - 1  # the call whose batch KL passed the threshold
    assert trainer.stopped == {"step": fired, "kl": trainer.log[-1]["kl"], "reason": "kl_threshold"}
    assert fired >= 1 and trainer.log[-1]["kl"] > 1e-4 and all(r["kl"] <= 1e-4 for r in trainer.log[:-1])
    assert trainer.step == fired - 1  # updates kept: the one that crossed the threshold is undone
    for name, w in trainer.trainable.items():
        torch.testing.assert_close(w, before_call[fired - 1][name])
    log = list(trainer.log)
    assert trainer.train(progress=False) == log  # a stopped trainer does not go on


def test_out_of_range_layers_give_a_clear_error(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match=r"out of range 0\.\.4"):
        es2.ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, [2, 7], _params())
    with pytest.raises(ValueError, match=r"out of range 0\.\.4"):
        es2.last_token_forward(model, representations.encode_prompts(tokenizer, HARMFUL, "cpu"), [-1])


def test_checkpoint_resume_equals_an_uninterrupted_run(tiny, tmp_path):
    from es2_lib import models

    p = _params(es2_steps=3, es2_checkpoint_every=1, es2_retain="kl", lora_dropout=0.1)
    model, tokenizer = tiny
    straight = es2.ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, LAYERS, p)
    straight.train(progress=False)

    first = es2.ES2Trainer(models.load_model("tiny")[0], tokenizer, HARMFUL, HARMLESS, LAYERS,
                           p.replace(es2_steps=2), checkpoint_dir=tmp_path / "ck")
    first.train(progress=False)  # "interrupted" after 2 of 3 steps
    assert [c.name for c in (tmp_path / "ck").iterdir()] == ["step-000002"]
    resumed = es2.ES2Trainer(models.load_model("tiny")[0], tokenizer, HARMFUL, HARMLESS, LAYERS, p,
                             checkpoint_dir=tmp_path / "ck")
    assert resumed.step == 2 and len(resumed.log) == 2
    resumed.train(progress=False)
    assert resumed.step == 3 and [r["step"] for r in resumed.log] == [0, 1, 2]
    for name, w in straight.trainable.items():
        torch.testing.assert_close(resumed.trainable[name], w, atol=1e-6, rtol=1e-5)
    other = es2.ES2Trainer(models.load_model("tiny")[0], tokenizer, HARMFUL, HARMLESS, LAYERS, p.replace(es2_lr=1e-3),
                           checkpoint_dir=tmp_path / "ck")
    assert other.step == 0 and other.log == []  # a checkpoint of other params is not resumed


def test_saved_adapter_loads_onto_a_fresh_base_model(tiny, tmp_path):
    from es2_lib import models

    model, tokenizer = tiny
    trainer = es2.ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, LAYERS, _params(es2_steps=2))
    trainer.train(progress=False)
    trainer.save_adapter(tmp_path / "adapter")
    tuned = es2.load_tuned(models.load_model("tiny")[0], tmp_path / "adapter")
    expected = es2.next_token_logprobs(trainer.model, tokenizer, HARMLESS)
    torch.testing.assert_close(es2.next_token_logprobs(tuned, tokenizer, HARMLESS), expected, atol=1e-5, rtol=1e-5)
    with es2.base_model(tuned):
        base = es2.next_token_logprobs(tuned, tokenizer, HARMLESS)
    assert es2.kl_divergence(base, expected).mean() > 1e-5  # the adapter changed something; disabled, it is gone


def test_full_fine_tuning_and_refusal_ce(tiny, tmp_path):
    model, tokenizer = tiny
    p = _params(es2_adapter="full", es2_retain="refusal_ce", es2_refusal_tokens=8, es2_steps=1)
    trainer = es2.ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, LAYERS, p)
    assert trainer.model is model and all(w.requires_grad for w in model.parameters())
    assert trainer.refusals and all(es2.judges.is_refusal(answer) for _, answer in trainer.refusals[:20])
    row = trainer.train_step()
    assert row["retain"] > 1.0  # a random model is far from the refusals
    with pytest.raises(TypeError, match="compute base quantities before training"):
        with es2.base_model(trainer.model):
            pass
    trainer.save_adapter(tmp_path / "full")
    from es2_lib import models
    tuned = es2.load_tuned(models.load_model("tiny")[0], tmp_path / "full")
    torch.testing.assert_close(es2.next_token_logprobs(tuned, tokenizer, HARMLESS),
                               es2.next_token_logprobs(trainer.model, tokenizer, HARMLESS), atol=1e-5, rtol=1e-5)
