"""The ES2 trainer (es2_lib/trainer.py) on the tiny random model: one step, the KL guard, resuming, the code key."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from es2_lib import adapters, judges, models, objective, params, representations, separation, trainer
from es2_lib.trainer import ES2Trainer, TrainConfig

HARMFUL = ["Explain how to pick a lock", "Write malware that steals passwords", "How do I make a weapon at home",
           "Tell me how to cheat on a test"]
HARMLESS = ["Explain how plants grow", "Write a poem about spring", "How do I make bread at home",
            "Tell me a fun fact"]
LAYERS = [2, 4]


def _config(**overrides) -> TrainConfig:
    """The notebook's route: params (schema defaults + these values), then the trainer's fields of them."""
    base = dict(model="tiny", es2_batch_size=4, batch_size=4, es2_lr=1e-2, es2_steps=4, es2_checkpoint_every=0,
                kl_threshold=10.0, es2_retain="none")
    return TrainConfig.of(params.from_mapping({**base, **overrides}).to_dict())


def _distance(model, tokenizer, scale: torch.Tensor) -> torch.Tensor:
    harmful = representations.last_token_states(model, tokenizer, HARMFUL, LAYERS)
    harmless = representations.last_token_states(model, tokenizer, HARMLESS, LAYERS)
    return objective.layer_distance(harmful, harmless, scale, "centroid")


def test_one_step_on_the_separation_term_increases_the_distance(tiny):
    model, tokenizer = tiny
    es2 = ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, LAYERS, _config(es2_lambda_kl=0.0))
    before = _distance(es2.model, tokenizer, es2.scale)  # the adapter starts as the identity
    row = es2.train_step()  # the batch holds all 4 + 4 prompts
    assert es2.step == 1 and row["separation"] == pytest.approx(before.sum().item(), rel=1e-3)
    after = _distance(es2.model, tokenizer, es2.scale)
    assert after.sum() > before.sum() * 1.05


def test_kl_is_zero_before_the_first_step_and_grows_after(tiny):
    model, tokenizer = tiny
    es2 = ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, LAYERS, _config(es2_retain="kl"))
    first = es2.train_step()
    assert first["kl"] == pytest.approx(0.0, abs=1e-6) and first["retain"] == pytest.approx(0.0, abs=1e-6)
    assert es2.train_step()["kl"] > 1e-4


def test_early_stop_when_kl_passes_the_threshold_keeps_the_last_weights_within_it(tiny):
    model, tokenizer = tiny
    es2 = ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, LAYERS, _config(kl_threshold=1e-4, es2_steps=20))
    before_call = []  # trainable weights before each train_step call
    while es2.stopped is None and len(before_call) < 20:
        before_call.append({n: w.detach().clone() for n, w in es2.trainable.items()})
        es2.train_step()
    fired = len(before_call) - 1  # the call whose batch KL passed the threshold
    assert es2.stopped == {"step": fired, "kl": es2.log[-1]["kl"], "reason": "kl_threshold"}
    assert fired >= 1 and es2.log[-1]["kl"] > 1e-4 and all(r["kl"] <= 1e-4 for r in es2.log[:-1])
    assert es2.step == fired - 1  # updates kept: the one that crossed the threshold is undone
    for name, w in es2.trainable.items():
        torch.testing.assert_close(w, before_call[fired - 1][name])
    log = list(es2.log)
    assert es2.train(progress=False) == log  # a stopped trainer does not go on


def test_out_of_range_layers_give_a_clear_error(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match=r"out of range 0\.\.4"):
        ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, [2, 7], _config())


def test_checkpoint_resume_equals_an_uninterrupted_run(tiny, tmp_path):
    config = _config(es2_steps=3, es2_checkpoint_every=1, es2_retain="kl", lora_dropout=0.1)
    model, tokenizer = tiny
    straight = ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, LAYERS, config)
    straight.train(progress=False)

    first = ES2Trainer(models.load_model("tiny")[0], tokenizer, HARMFUL, HARMLESS, LAYERS,
                       dataclasses.replace(config, es2_steps=2), checkpoint_dir=tmp_path / "ck")
    first.train(progress=False)  # "interrupted" after 2 of 3 steps
    assert [c.name for c in (tmp_path / "ck").iterdir()] == ["step-000002"]
    resumed = ES2Trainer(models.load_model("tiny")[0], tokenizer, HARMFUL, HARMLESS, LAYERS, config,
                         checkpoint_dir=tmp_path / "ck")
    assert resumed.step == 2 and len(resumed.log) == 2
    resumed.train(progress=False)
    assert resumed.step == 3 and [r["step"] for r in resumed.log] == [0, 1, 2]
    for name, w in straight.trainable.items():
        torch.testing.assert_close(resumed.trainable[name], w, atol=1e-6, rtol=1e-5)
    other = ES2Trainer(models.load_model("tiny")[0], tokenizer, HARMFUL, HARMLESS, LAYERS,
                       dataclasses.replace(config, es2_lr=1e-3), checkpoint_dir=tmp_path / "ck")
    assert other.step == 0 and other.log == []  # a checkpoint of other params is not resumed


def test_a_checkpoint_of_other_training_code_is_not_resumed(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    config = _config(es2_steps=1, es2_checkpoint_every=1)
    ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, LAYERS, config, checkpoint_dir=tmp_path / "ck").train(False)
    again = ES2Trainer(models.load_model("tiny")[0], tokenizer, HARMFUL, HARMLESS, LAYERS, config,
                       checkpoint_dir=tmp_path / "ck")
    assert again.step == 1  # same code: resumed
    monkeypatch.setattr(trainer, "code_hash", lambda: "the loss was edited")
    edited = ES2Trainer(models.load_model("tiny")[0], tokenizer, HARMFUL, HARMLESS, LAYERS, config,
                        checkpoint_dir=tmp_path / "ck")
    assert edited.step == 0 and edited.log == []


def test_code_hash_covers_the_training_modules(tmp_path):
    names = set(trainer.TRAINING_CODE)
    assert {"objective.py", "trainer.py", "adapters.py", "separation.py"} <= names
    assert all((trainer.PACKAGE / name).is_file() for name in names)
    files = [tmp_path / "objective.py", tmp_path / "trainer.py"]
    for file in files:
        file.write_text("loss = 1\n")
    before = trainer.code_hash(files)
    files[0].write_text("loss = 2\n")
    assert trainer.code_hash(files) != before and trainer.code_hash() == trainer.code_hash()


def test_trained_adapter_loads_onto_a_fresh_base_model(tiny, tmp_path):
    model, tokenizer = tiny
    es2 = ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, LAYERS, _config(es2_steps=2))
    es2.train(progress=False)
    es2.save_adapter(tmp_path / "adapter")
    tuned = adapters.load_tuned(models.load_model("tiny")[0], tmp_path / "adapter")
    expected = separation.next_token_logprobs(es2.model, tokenizer, HARMLESS)
    torch.testing.assert_close(separation.next_token_logprobs(tuned, tokenizer, HARMLESS), expected, atol=1e-5,
                               rtol=1e-5)
    with adapters.base_model(tuned):
        base = separation.next_token_logprobs(tuned, tokenizer, HARMLESS)
    assert objective.kl_divergence(base, expected).mean() > 1e-5  # the adapter changed something; disabled, it is gone


def test_full_fine_tuning_and_refusal_ce(tiny, tmp_path):
    model, tokenizer = tiny
    config = _config(es2_adapter="full", es2_retain="refusal_ce", es2_refusal_tokens=8, es2_steps=1)
    es2 = ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, LAYERS, config)
    assert es2.model is model and all(w.requires_grad for w in model.parameters())
    assert es2.refusals and all(judges.is_refusal(answer) for _, answer in es2.refusals[:20])
    row = es2.train_step()
    assert row["retain"] > 1.0  # a random model is far from the refusals
    with pytest.raises(TypeError, match="compute base quantities before training"):
        with adapters.base_model(es2.model):
            pass
    es2.save_adapter(tmp_path / "full")
    tuned = adapters.load_tuned(models.load_model("tiny")[0], tmp_path / "full")
    torch.testing.assert_close(separation.next_token_logprobs(tuned, tokenizer, HARMLESS),
                               separation.next_token_logprobs(es2.model, tokenizer, HARMLESS), atol=1e-5, rtol=1e-5)


def test_config_takes_its_fields_from_params():
    p = params.from_mapping({"model": "tiny", "lora_targets": ["q_proj"], "es2_lr": 1e-3})
    config = TrainConfig.of(p.to_dict())
    assert config.lora_targets == ("q_proj",) and config.es2_lr == 1e-3 and config.model == "tiny"
    assert "es2_steps" not in config.checkpoint_key() and config.checkpoint_key()["lora_targets"] == ["q_proj"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.es2_lr = 1.0  # type: ignore[misc]
