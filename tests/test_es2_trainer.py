"""The ES2 trainer (es2_lib/trainer.py) on the tiny random model: one step, the KL guard, resuming, the code key."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from es2_lib import adapters, hooks, judges, models, objective, params, representations, separation, trainer
from es2_lib.trainer import ES2Trainer, TrainConfig

HARMFUL = ["Explain how to pick a lock", "Write malware that steals passwords", "How do I make a weapon at home",
           "Tell me how to cheat on a test"]
HARMLESS = ["Explain how plants grow", "Write a poem about spring", "How do I make bread at home",
            "Tell me a fun fact"]
HELDOUT = ["Describe a sunny day", "List three colours"]
LAYERS = [2, 4]


def _config(arm: str = "es2", **overrides) -> TrainConfig:
    """The notebook's route: params (schema defaults + these values), then the trainer's fields of them for `arm`."""
    base = dict(model="tiny", es2_batch_size=4, batch_size=4, es2_lr=1e-2, es2_steps=4, es2_checkpoint_every=0,
                kl_threshold=10.0)
    return TrainConfig.of(params.from_mapping({**base, **overrides}).to_dict(), arm)


def _trainer(model, tokenizer, config: TrainConfig, **kwargs) -> ES2Trainer:
    return ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, LAYERS, config, HELDOUT, **kwargs)


def _distance(model, tokenizer, scale: torch.Tensor, distance: str = "pairwise") -> torch.Tensor:
    harmful = representations.last_token_states(model, tokenizer, HARMFUL, LAYERS)
    harmless = representations.last_token_states(model, tokenizer, HARMLESS, LAYERS)
    return objective.layer_distance(harmful, harmless, scale, distance)


def test_one_step_on_the_pairwise_term_increases_the_pairwise_distance(tiny):
    model, tokenizer = tiny
    es2 = _trainer(model, tokenizer, _config(es2_lambda_kl=0.0))
    assert es2.config.es2_distance == "pairwise" and es2.config.objective == "es2"
    before = _distance(es2.model, tokenizer, es2.scale)  # the adapter starts as the identity
    row = es2.train_step()  # the batch holds all 4 + 4 prompts
    assert es2.step == 1 and row["separation"] == pytest.approx(before.sum().item(), rel=1e-3)
    after = _distance(es2.model, tokenizer, es2.scale)
    assert after.sum() > before.sum() * 1.05


def test_kl_is_zero_before_the_first_step_and_grows_after(tiny):
    model, tokenizer = tiny
    es2 = _trainer(model, tokenizer, _config("es2_retain", es2_retain="kl"))
    first = es2.train_step()
    assert first["kl"] == pytest.approx(0.0, abs=1e-6) and first["retain"] == pytest.approx(0.0, abs=1e-6)
    assert es2.train_step()["kl"] > 1e-4 and es2.heldout_kl() > 1e-4


def _weights(trainer: ES2Trainer) -> dict[str, torch.Tensor]:
    return {n: w.detach().clone() for n, w in trainer.trainable.items()}


def test_the_kl_guard_stops_on_heldout_kl_and_keeps_the_last_weights_within_it(tiny):
    model, tokenizer = tiny
    free = _trainer(model, tokenizer, _config(kl_threshold=1e9, kl_guard_every=1, es2_steps=6))
    after = []  # weights after each step, and the held-out KL the guard measured there
    for _ in range(6):
        kl = free.train_step()["heldout_kl"]
        after.append((_weights(free), kl))
    kls = [kl for _, kl in after]
    assert kls[0] > 0 and kls[-1] > kls[0]  # the held-out KL grows as training goes on
    fire = next(i for i in range(1, 6) if kls[i] > max(kls[:i]))  # a step whose KL is above all before it
    threshold = (max(kls[:fire]) + kls[fire]) / 2
    guarded = ES2Trainer(models.load_model("tiny")[0], tokenizer, HARMFUL, HARMLESS, LAYERS,
                         _config(kl_threshold=threshold, kl_guard_every=1, es2_steps=6), HELDOUT)
    guarded.train(progress=False)
    assert guarded.stopped["step"] == fire + 1 and guarded.stopped["heldout_kl"] == pytest.approx(kls[fire], rel=1e-4)
    assert guarded.step == guarded.stopped["kept_step"] == fire  # updates kept: those up to the last check within
    for name, w in guarded.trainable.items():
        torch.testing.assert_close(w, after[fire - 1][0][name])
    assert guarded.heldout_kl() <= threshold
    log = list(guarded.log)
    assert guarded.train(progress=False) == log  # a stopped trainer does not go on


def test_the_kl_guard_checks_every_kl_guard_every_steps_and_at_the_end(tiny):
    model, tokenizer = tiny
    es2 = _trainer(model, tokenizer, _config(kl_guard_every=2, es2_steps=5))
    es2.train(progress=False)
    assert [r["step"] for r in es2.log if "heldout_kl" in r] == [1, 3, 4]  # after updates 2, 4 and the last (5)


def test_out_of_range_layers_give_a_clear_error(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match=r"out of range 0\.\.4"):
        ES2Trainer(model, tokenizer, HARMFUL, HARMLESS, [2, 7], _config(), HELDOUT)


def test_checkpoint_resume_equals_an_uninterrupted_run(tiny, tmp_path):
    config = _config("es2_retain", es2_steps=3, es2_checkpoint_every=1, es2_retain="kl", lora_dropout=0.1,
                     kl_guard_every=1)
    model, tokenizer = tiny
    straight = _trainer(model, tokenizer, config)
    straight.train(progress=False)

    first = _trainer(models.load_model("tiny")[0], tokenizer, dataclasses.replace(config, es2_steps=2),
                     checkpoint_dir=tmp_path / "ck")
    first.train(progress=False)  # "interrupted" after 2 of 3 steps
    assert [c.name for c in (tmp_path / "ck").iterdir()] == ["step-000002"]
    resumed = _trainer(models.load_model("tiny")[0], tokenizer, config, checkpoint_dir=tmp_path / "ck")
    assert resumed.step == 2 and len(resumed.log) == 2 and resumed.kept_step == 2
    resumed.train(progress=False)
    assert resumed.step == 3 and [r["step"] for r in resumed.log] == [0, 1, 2]
    for name, w in straight.trainable.items():
        torch.testing.assert_close(resumed.trainable[name], w, atol=1e-6, rtol=1e-5)
    other = _trainer(models.load_model("tiny")[0], tokenizer, dataclasses.replace(config, es2_lr=1e-3),
                     checkpoint_dir=tmp_path / "ck")
    assert other.step == 0 and other.log == []  # a checkpoint of other params is not resumed


def test_a_checkpoint_of_other_training_code_is_not_resumed(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    config = _config(es2_steps=1, es2_checkpoint_every=1)
    _trainer(model, tokenizer, config, checkpoint_dir=tmp_path / "ck").train(False)
    again = _trainer(models.load_model("tiny")[0], tokenizer, config, checkpoint_dir=tmp_path / "ck")
    assert again.step == 1  # same code: resumed
    monkeypatch.setattr(trainer, "code_hash", lambda: "the loss was edited")
    edited = _trainer(models.load_model("tiny")[0], tokenizer, config, checkpoint_dir=tmp_path / "ck")
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
    es2 = _trainer(model, tokenizer, _config(es2_steps=2))
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
    config = _config("es2_retain", es2_adapter="full", es2_retain="refusal_ce", es2_refusal_tokens=8, es2_steps=1)
    es2 = _trainer(model, tokenizer, config)
    assert es2.model is model and all(w.requires_grad for w in model.parameters())
    assert es2.pairs and all(judges.is_refusal(answer) for _, answer in es2.pairs[:20])
    row = es2.train_step()
    assert row["retain"] > 1.0  # a random model is far from the refusals
    with pytest.raises(TypeError, match="compute base quantities before training"):
        with adapters.base_model(es2.model):
            pass
    es2.save_adapter(tmp_path / "full")
    tuned = adapters.load_tuned(models.load_model("tiny")[0], tmp_path / "full")
    torch.testing.assert_close(separation.next_token_logprobs(tuned, tokenizer, HARMLESS),
                               separation.next_token_logprobs(es2.model, tokenizer, HARMLESS), atol=1e-5, rtol=1e-5)


def test_stl_lowers_the_cross_entropy_of_all_safety_responses_without_separation(tiny):
    model, tokenizer = tiny
    stl = _trainer(model, tokenizer, _config("stl", es2_refusal_tokens=8, es2_lambda_kl=0.0, es2_steps=3))
    assert stl.config.objective == "stl" and stl.config.es2_retain == "none"
    assert any(not judges.is_refusal(answer) for _, answer in stl.pairs)  # all of safety_only_data, not only refusals
    fixed = stl.pairs[:8]
    before = objective.response_ce(stl.model, tokenizer, fixed, 8).item()
    rows = [stl.train_step() for _ in range(3)]
    assert "sft" in rows[0] and "retain" not in rows[0]
    with torch.no_grad():
        assert objective.response_ce(stl.model, tokenizer, fixed, 8).item() < before


def test_rr_reroutes_harmful_states_away_from_the_base_ones(tiny):
    model, tokenizer = tiny
    rr = _trainer(model, tokenizer, _config("rr", es2_steps=5))
    rows = [rr.train_step() for _ in range(5)]
    assert rows[0]["reroute"] > 0.9 * len(LAYERS)  # cos near 1 at the slightly perturbed start, per layer
    assert rows[-1]["reroute"] < rows[0]["reroute"] * 0.9
    unperturbed = _trainer(models.load_model("tiny", "float32", "cpu", 0)[0], tokenizer,
                           _config("rr", es2_steps=5, rr_init_std=0.0)).train_step()
    assert unperturbed["reroute"] == pytest.approx(len(LAYERS), rel=1e-4)  # cos = 1 at the base, per layer
    assert unperturbed["retain"] == pytest.approx(0.0, abs=1e-5)


def test_centred_rr_takes_the_cosine_about_the_base_states_mean(tiny):
    """rr_centred: the trainer's centre is the base states' mean over its training prompts, and the logged
    rerouting term is the centred cosine (at the base it is 1 either way; after steps the two differ)."""
    model, tokenizer = tiny
    rr = _trainer(model, tokenizer, _config("rr", es2_steps=5, rr_centred=True))
    assert rr.centre is not None and torch.allclose(rr.centre, rr.base_states.mean(0))
    rows = [rr.train_step() for _ in range(5)]
    assert rows[-1]["reroute"] < rows[0]["reroute"]
    assert _trainer(models.load_model("tiny", "float32", "cpu", 0)[0], tokenizer, _config("rr")).centre is None


def test_rr_lambda_kl_adds_the_harmless_kl_the_other_arms_train_with(tiny):
    """rr_lambda_kl = λ: the rr arm's loss is Circuit Breakers' (rerouting + retain) plus λ · the harmless KL."""
    model, tokenizer = tiny
    rr = _trainer(model, tokenizer, _config("rr", rr_lambda_kl=3.0))
    h_idx, s_idx = [0, 1, 2, 3], [0, 1, 2, 3]
    batch = representations.encode_prompts(tokenizer, HARMFUL + HARMLESS, rr.device)
    with torch.no_grad():
        states, logp = hooks.run_with_cache_and_logprobs(rr.model, batch, rr.layers)
        with_kl, parts = rr._loss(states, logp, h_idx, s_idx)
        rr.config = dataclasses.replace(rr.config, rr_lambda_kl=0.0)
        without, _ = rr._loss(states, logp, h_idx, s_idx)
    assert parts["kl"] > 0  # the perturbed start (rr_init_std) already moves the harmless distribution
    assert with_kl.item() == pytest.approx(without.item() + 3.0 * parts["kl"].item(), rel=1e-5)


def _rr_gradient_norm(model, tokenizer, init_std: float) -> float:
    rr = _trainer(model, tokenizer, _config("rr", rr_init_std=init_std))
    h_idx, s_idx = [0, 1, 2, 3], [0, 1, 2, 3]
    batch = representations.encode_prompts(tokenizer, HARMFUL + HARMLESS, rr.device)
    states, logp = hooks.run_with_cache_and_logprobs(rr.model, batch, rr.layers)
    loss, _ = rr._loss(states, logp, h_idx, s_idx)
    loss.backward()
    return sum(w.grad.norm() ** 2 for w in rr.trainable.values() if w.grad is not None).item() ** 0.5


def test_rr_needs_its_initial_perturbation_the_base_model_is_a_stationary_point(tiny):
    """At the base model ReLU(cos(h, h_base)) has zero gradient (cos is at its maximum) and the retain term starts at
    weight 0, so an unperturbed adapter gets (all but) no gradient; rr_init_std moves it off that point."""
    model, tokenizer = tiny
    still = _rr_gradient_norm(model, tokenizer, 0.0)
    moved = _rr_gradient_norm(models.load_model("tiny", "float32", "cpu", 0)[0], tokenizer, 0.01)
    assert still < 1e-6 < moved and moved > 1e3 * still


def test_each_arm_is_selected_by_params_alone():
    p = params.from_mapping({"model": "tiny", "lora_targets": ["q_proj"], "es2_lr": 1e-3, "es2_retain": "kl"})
    configs = {arm: TrainConfig.of(p.to_dict(), arm) for arm in trainer.ARMS}
    assert {arm: (c.objective, c.es2_retain) for arm, c in configs.items()} == {
        "es2": ("es2", "none"), "es2_retain": ("es2", "kl"), "stl": ("stl", "none"), "rr": ("rr", "none")}
    config = configs["es2"]
    assert config.lora_targets == ("q_proj",) and config.es2_lr == 1e-3 and config.model == "tiny"
    assert "es2_steps" not in config.checkpoint_key() and config.checkpoint_key()["lora_targets"] == ["q_proj"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.es2_lr = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown arm 'dpl'"):
        TrainConfig.of(p.to_dict(), "dpl")


def test_up_to_deepest_trains_only_the_blocks_below_the_deepest_es2_layer(tiny):
    model, tokenizer = tiny
    es2 = _trainer(model, tokenizer, _config(es2_train_layers="up_to_deepest"))  # LAYERS = [2, 4]: blocks 0..3
    blocks = {int(name.split(".layers.")[1].split(".")[0]) for name in es2.trainable}
    assert blocks == {0, 1, 2, 3}
    shallow = ES2Trainer(models.load_model("tiny")[0], tokenizer, HARMFUL, HARMLESS, [1, 2],
                         _config(es2_train_layers="up_to_deepest"), HELDOUT)
    assert {int(name.split(".layers.")[1].split(".")[0]) for name in shallow.trainable} == {0, 1}


def test_variants_add_seeds_to_the_seeded_arms_and_the_layer_count_ablation_to_es2():
    found = trainer.variants(["es2", "stl", "rr"], 0, [5, 16], extra_seeds=[0, 1, 2], seeded_arms=["es2", "stl", "es2_retain"],
                             layer_sets={1: [16], 2: [5, 16], 3: [5, 10, 16]})
    assert [(v.name, v.arm, v.seed, v.layers) for v in found] == [
        ("es2", "es2", 0, (5, 16)), ("stl", "stl", 0, (5, 16)), ("rr", "rr", 0, (5, 16)),
        ("es2_seed1", "es2", 1, (5, 16)), ("es2_seed2", "es2", 2, (5, 16)), ("stl_seed1", "stl", 1, (5, 16)),
        ("stl_seed2", "stl", 2, (5, 16)), ("es2_1layer", "es2", 0, (16,)), ("es2_3layers", "es2", 0, (5, 10, 16))]
    assert [v.name for v in trainer.variants(["es2"], 0, [5, 16])] == ["es2"]


def test_the_params_schema_names_exactly_the_trainer_arms():
    import typing

    from es2_lib import schema

    assert set(typing.get_args(schema.Arm)) == set(trainer.ARMS)  # the schema cannot import the trainer: kept equal here
