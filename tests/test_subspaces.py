"""Safety-subspace tests (weight_updates, mso, subspace_projection, fine_tuning, plots/subspaces): MSO, its random
baseline, projections and the fine-tunes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from es2_lib import adapters, data, fine_tuning, generation, judges, mso, subspace_projection, weight_updates
from es2_lib.plots import subspaces as subspace_plots
from es2_lib.schema import Params
from es2_lib.weight_updates import dense


def orthonormal(d: int, k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


def low_rank(out: int, inp: int, r: int, seed: int) -> weight_updates.Factored:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, r, generator=g), torch.randn(r, inp, generator=g)


def test_mso_of_a_subspace_with_itself_is_one_and_with_an_orthogonal_one_zero():
    q = orthonormal(32, 10, 0)
    assert mso.mso(q, q) == pytest.approx(1.0, abs=1e-6)
    assert mso.mso(q[:, :4], q) == pytest.approx(1.0, abs=1e-6)  # contained: 1 whatever the sizes
    assert mso.mso(q[:, :4], q[:, 4:]) == pytest.approx(0.0, abs=1e-6)
    rotated = q[:, :5] @ orthonormal(5, 5, 1)  # another basis of the same subspace
    assert mso.mso(q[:, :5], rotated) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("k_a,k_b", [(3, 3), (2, 10), (12, 5)])
def test_random_baseline_matches_mean_mso_of_random_subspaces(k_a, k_b):
    d, trials = 48, 400
    mean = sum(mso.mso(orthonormal(d, k_a, 2 * t), orthonormal(d, k_b, 2 * t + 1)) for t in range(trials)) / trials
    assert mso.random_mso(k_a, k_b, d) == max(k_a, k_b) / d
    assert mean == pytest.approx(mso.random_mso(k_a, k_b, d), rel=0.08)


def test_left_singular_and_energy_of_a_factored_matrix_match_the_dense_svd():
    delta = low_rank(40, 30, 6, 0)
    u, s = weight_updates.left_singular(delta)
    u_ref, s_ref, _ = torch.linalg.svd(delta[0] @ delta[1])
    assert u.shape == (40, 6)
    assert torch.allclose(s, s_ref[:6], rtol=1e-4)
    assert torch.allclose((u.T @ u_ref[:, :6]).abs(), torch.eye(6), atol=1e-4)  # same directions up to sign
    assert weight_updates.energy(delta) == pytest.approx(float((delta[0] @ delta[1]).pow(2).sum()), rel=1e-5)


def test_projecting_onto_k_components_keeps_exactly_their_share_of_the_energy():
    delta = low_rank(40, 30, 6, 1)
    u, s = weight_updates.left_singular(delta)
    total = weight_updates.energy(delta)
    for k in range(1, 7):
        inside = subspace_projection.project(delta, u[:, :k])
        outside = subspace_projection.project(delta, u[:, :k], complement=True)
        share = float(s[:k].pow(2).sum() / s.pow(2).sum())
        assert weight_updates.energy(inside) / total == pytest.approx(share, rel=1e-5)
        assert weight_updates.energy(outside) / total == pytest.approx(1 - share, abs=1e-5)
        assert torch.allclose(dense(inside) + dense(outside), dense(delta), atol=1e-4)


def test_project_update_onto_itself_and_onto_an_orthogonal_reference():
    delta = low_rank(40, 30, 8, 2)
    u, s = weight_updates.left_singular(delta)
    update = {"w": delta}
    projected, info = subspace_projection.project_update(update, update, 0.5)  # k = 4 of 8 directions of itself
    assert info["k_mean"] == 4 and info["rank_mean"] == 8
    assert info["energy_kept"] == pytest.approx(float(s[:4].pow(2).sum() / s.pow(2).sum()), rel=1e-5)
    assert info["energy_random"] == pytest.approx(4 / 40)
    # a reference whose column space is orthogonal to the update's: nothing inside, everything outside
    orth = orthonormal(40, 16, 3)
    update = {"w": (orth[:, :8] @ torch.randn(8, 8), torch.randn(8, 30))}
    reference = {"w": (orth[:, 8:] @ torch.randn(8, 8), torch.randn(8, 30))}
    assert subspace_projection.project_update(update, reference, 0.99)[1]["energy_kept"] == pytest.approx(0.0, abs=1e-6)
    outside = subspace_projection.project_update(update, reference, 0.99, complement=True)[1]
    assert outside["energy_kept"] == pytest.approx(1.0)


def test_energy_and_projection_ranks():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert [mso.energy_rank(s, f) for f in (0.1, 9 / 14, 0.65, 0.99, 1.0)] == [1, 1, 2, 3, 3]
    assert [subspace_projection.projection_rank(8, f) for f in (0.01, 0.25, 0.5, 0.75, 0.99)] == [1, 2, 4, 6, 8]
    assert subspace_projection.projection_rank(0, 0.5) == 0
    with pytest.raises(ValueError, match="fraction"):
        mso.energy_rank(s, 0.0)


def test_random_band_bounds_the_mso_of_random_subspaces_and_not_a_shared_one():
    d, k_a, k_b = 64, 4, 6
    values = [mso.mso(orthonormal(d, k_a, 2 * t), orthonormal(d, k_b, 2 * t + 1)) for t in range(200)]
    high = mso.random_band(k_a, k_b, d)
    assert mso.random_mso(k_a, k_b, d) < high < 1
    assert 0.88 <= sum(v <= high for v in values) / len(values) <= 0.99  # about 95 % of random pairs fall below
    shared = orthonormal(d, k_b, 0)
    assert mso.mso(shared[:, :k_a], shared) > high


def test_centred_activation_overlap_sees_the_variation_not_the_shared_mean():
    """Two groups that vary in orthogonal directions around one large shared mean: uncentred, each low-rank basis
    is the mean direction and the MSO is near 1; centred, the bases are the orthogonal variations, MSO near 0."""
    g = torch.Generator().manual_seed(0)
    axes = torch.linalg.qr(torch.randn(16, 16, generator=g))[0]
    mean = 20 * axes[:, 0]
    x = mean + torch.randn(30, 1, generator=g) * axes[:, 1] + 0.5 * torch.randn(30, 1, generator=g) * axes[:, 2]
    y = mean + torch.randn(30, 1, generator=g) * axes[:, 3] + 0.5 * torch.randn(30, 1, generator=g) * axes[:, 4]
    groups = {"x": x[:, None], "y": y[:, None]}
    raw, = mso.activation_overlap(groups, [("x", "y")], [1], [0.9])
    centred, = mso.activation_overlap(groups, [("x", "y")], [1], [0.9], centred=True)
    assert raw["mso"] > 0.9 > raw["random_high"] and centred["mso"] < 0.05
    assert centred["k_a"] >= 1 and raw["k_a"] == 1


def test_weight_overlap_rows_and_baseline():
    shared = orthonormal(24, 4, 0)
    a = {"m": (shared @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0])), torch.randn(4, 16))}
    b = {"m": (shared @ torch.randn(4, 4), torch.randn(4, 16)), "other": low_rank(24, 16, 2, 1)}
    rows = mso.weight_overlap({"a": a, "b": b}, [0.5, 0.99])
    assert {r["matrix"] for r in rows} == {"m"}  # only matrices both updates change
    last = [r for r in rows if r["fraction"] == 0.99][0]
    assert last["k_a"] == 4 and last["mso"] == pytest.approx(1.0, abs=1e-5)  # same column space
    assert last["random"] == pytest.approx(max(last["k_a"], last["k_b"]) / 24)


def test_activation_overlap_and_depth_layers():
    assert mso.depth_layers(24, [0.65, 0.9]) == [16, 17, 18, 19, 20, 21]
    assert mso.depth_layers(4, [0.65, 0.9]) == [3]
    g = torch.Generator().manual_seed(0)
    common = torch.randn(20, 2, 8, generator=g)
    groups = {"x": common, "y": common @ torch.linalg.qr(torch.randn(8, 8, generator=g))[0], "z": common.clone()}
    rows = mso.activation_overlap(groups, [("x", "z"), ("x", "y")], [5, 7], [0.5, 0.9])
    assert len(rows) == 2 * 2 * 2 and {r["layer"] for r in rows} == {5, 7}
    assert all(r["mso"] == pytest.approx(1.0, abs=1e-5) for r in rows if r["b"] == "z")
    assert all(r["d"] == 8 and 1 <= r["k_a"] <= 8 for r in rows)


def test_combine_sums_updates_exactly():
    a, b = {"m": low_rank(12, 10, 2, 0), "n": torch.ones(3)}, {"m": low_rank(12, 10, 3, 1), "n": torch.ones(3)}
    total = weight_updates.combine(a, b)
    assert total["m"][0].shape == (12, 5)
    assert torch.allclose(dense(total["m"]), dense(a["m"]) + dense(b["m"]), atol=1e-5)
    assert torch.equal(total["n"], 2 * torch.ones(3))


def test_applied_adds_an_update_and_restores_the_exact_weights(tiny):
    model, _ = tiny
    name = next(n for n in weight_updates.decoder_matrices(model) if "q_proj" in n)
    weight = dict(model.named_parameters())[name]
    original = weight.detach().clone()
    delta = low_rank(*weight.shape, 2, 0)
    with weight_updates.applied(model, {name: delta}):
        assert torch.allclose(weight, original + delta[0] @ delta[1], atol=1e-5)
    assert torch.equal(weight, original)
    with pytest.raises(KeyError, match="lacks"):
        with weight_updates.applied(model, {"no.such.weight": delta}):
            pass


def test_fine_tune_returns_a_lora_update_and_leaves_the_model_unchanged(tiny, tiny_params, tmp_path):
    model, tokenizer = tiny
    before = {n: w.detach().clone() for n, w in model.named_parameters()}
    pairs = [{"prompt": f"Write a function number {i}.", "response": f"def f{i}():\n    return {i}"} for i in range(6)]
    p = tiny_params.replace(lora_targets=["q_proj", "v_proj"])
    attach = lambda m: adapters.attach_adapter(m, p.es2_adapter, p.seed, p.lora_r, p.lora_alpha, p.lora_dropout,
                                               p.lora_targets)
    update, log = fine_tuning.fine_tune(model, tokenizer, pairs, attach, steps=3, lr=1e-2, batch_size=2,
                                        response_tokens=8, seed=p.seed)
    assert len(log) == 3 and all(math.isfinite(r["loss"]) for r in log)
    assert type(model).__name__ == "Qwen2ForCausalLM"  # the LoRA layers are gone again
    assert all(torch.equal(w, before[n]) for n, w in model.named_parameters())
    layers = model.config.num_hidden_layers
    assert len(update) == 2 * layers and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in update)
    assert set(update) <= weight_updates.decoder_matrices(model)
    assert sum(weight_updates.energy(d) for d in update.values()) > 0
    # a saved adapter reads back as the same update, again without changing the model
    tuned = attach(model)
    for name, module in tuned.named_modules():
        if name.endswith("lora_B.default"):
            torch.nn.init.normal_(module.weight, std=0.1)
    expected = weight_updates.lora_update(tuned)
    tuned.save_pretrained(tmp_path / "adapter")
    model = tuned.unload()
    read = weight_updates.saved_update(model, tmp_path / "adapter")
    assert set(read) == set(expected)
    assert all(torch.allclose(dense(read[n]), dense(expected[n])) for n in read)
    assert all(torch.equal(w, before[n]) for n, w in model.named_parameters())


def test_full_update_factors_decoder_matrices_and_keeps_other_changes_dense(tiny):
    model, _ = tiny
    before = {n: w.detach().clone() for n, w in model.named_parameters()}
    params = dict(model.named_parameters())
    matrix = next(iter(sorted(weight_updates.decoder_matrices(model))))
    norm = next(n for n, w in params.items() if w.ndim == 1)
    with torch.no_grad():
        params[matrix].add_(torch.outer(torch.ones(params[matrix].shape[0]), torch.ones(params[matrix].shape[1])))
        params[norm].add_(1.0)
    update = weight_updates.full_update(model, before)
    assert set(update) == {matrix, norm}
    assert isinstance(update[matrix], tuple) and update[matrix][0].shape[1] == 1  # rank 1
    assert torch.allclose(update[norm], torch.ones_like(update[norm]))


def test_draw_pairs_are_disjoint_seeded_and_filtered(tiny):
    _, tokenizer = tiny
    pairs = data.load_pairs("hidden_context_unsafe")
    draw = dict(max_prompt_tokens=200, seed=0, skip_refusals=True)
    draws = fine_tuning.draw_pairs(tokenizer, pairs, {"a": 5, "b": 5}, **draw)
    again = fine_tuning.draw_pairs(tokenizer, pairs, {"a": 5, "b": 5}, **draw)
    assert draws == again and len(draws["a"]) == len(draws["b"]) == 5
    assert not {r["prompt"] for r in draws["a"]} & {r["prompt"] for r in draws["b"]}
    from es2_lib import judges
    assert not any(judges.is_refusal(r["response"]) for r in draws["a"] + draws["b"])
    rest = fine_tuning.draw_pairs(tokenizer, pairs, {"a": 5, "rest": None}, **draw)
    assert rest["a"] == draws["a"] and len(rest["rest"]) > 5 and draws["b"] == rest["rest"][:5]
    with pytest.raises(ValueError, match="only"):
        fine_tuning.draw_pairs(tokenizer, pairs, {"a": 500}, max_prompt_tokens=200, seed=0)


def test_target_pairs_pair_prompts_with_their_targets_and_name_a_missing_one():
    rows = data.load_prompts("advbench")[:3]
    pairs = fine_tuning.target_pairs(rows, "advbench")
    assert [p["prompt"] for p in pairs] == [r["prompt"] for r in rows]
    assert all(p["response"].startswith("Sure, here") for p in pairs)
    with pytest.raises(ValueError, match=r"my split: 1 of 2 prompts have no target.*subspace_harmful_pairs"):
        fine_tuning.target_pairs([rows[0], {"prompt": "Say hi"}], "my split")


def test_harmful_fine_tune_on_targets_makes_the_embedded_model_refuse_less(embedded):
    """07's harmful fine-tune with the schema's defaults on AdvBench prompts, judged on 16 others."""
    model, tokenizer = embedded
    P = Params()
    advbench = data.load_prompts("advbench")
    held_out = [r["prompt"] for r in advbench[200:216]]
    attach = lambda m: adapters.attach_adapter(m, P.es2_adapter, P.seed, P.lora_r, P.lora_alpha, P.lora_dropout,
                                               P.lora_targets)
    pairs = fine_tuning.target_pairs(advbench[:P.subspace_sft_steps * P.subspace_sft_batch_size], "advbench")
    update, _ = fine_tuning.fine_tune(model, tokenizer, pairs, attach, steps=P.subspace_sft_steps,
                                      lr=P.subspace_harmful_lr, batch_size=P.subspace_sft_batch_size,
                                      response_tokens=P.subspace_sft_response_tokens, seed=P.seed)
    respond = lambda: generation.generate(model, tokenizer, held_out, P.subspace_max_new_tokens, P.batch_size)
    before = sum(judges.refusals(respond()))
    with weight_updates.applied(model, update):
        after = sum(judges.refusals(respond()))
    assert before >= 6 and after <= before - 5, (before, after)


def test_load_pairs_reads_both_fine_tuning_sets():
    code = data.load_pairs("code_alpaca")
    unsafe, safe = data.load_pairs("hidden_context_unsafe"), data.load_pairs("hidden_context_safe")
    assert len(code) == 2015 and all(r["prompt"] and r["response"].strip() for r in code)
    assert len(unsafe) == len(safe) == 187 and unsafe[0]["prompt"] == safe[0]["prompt"]
    assert not unsafe[0]["prompt"].startswith("Human:") and not unsafe[0]["prompt"].endswith("Assistant:")
    with pytest.raises(data.DataError, match="unknown"):
        data.load_pairs("nope")


def test_entanglement_follows_its_rule():
    weight = {"es2 vs useful": (0.2, 0.1), "es2 vs harmful": (0.8, 0.1), "useful vs harmful": (0.3, 0.1)}
    activation = {("base", "harmful A vs useful B"): (0.5, 0.1), ("base", "harmful A vs harmful B"): (0.9, 0.1),
                  ("base", "useful A vs useful B"): (0.95, 0.1)}
    projection = [{"update": u, "fraction": 0.99, "energy_kept": e, "energy_random": 0.01}
                  for u, e in (("useful", 0.02), ("harmful", 0.3))]
    benign = {"es2": (0.9, {3: 2.0}), "es2+benign": (0.5, {3: 1.0})}
    said = mso.entanglement(weight, activation, projection, benign)
    assert said["weight"] == {"useful_harmful": pytest.approx(3.0), "es2_harmful": pytest.approx(8.0),
                              "es2_useful": pytest.approx(2.0), "lean": "harmful"}
    assert said["projection"]["fraction"] == 0.99 and said["projection"]["harmful"]["energy_kept"] == 0.3
    assert said["activation"] == {"base": {"cross": 0.5, "within": 0.9, "separate": True}}
    assert said["benign"] == {"dsr_before": 0.9, "dsr_after": 0.5, "separation_kept": 0.5}
    weight["es2 vs useful"] = (0.7, 0.1)
    activation[("base", "harmful A vs useful B")] = (0.88, 0.1)
    said = mso.entanglement(weight, activation, projection[:1], {"es2": benign["es2"]})
    assert said["weight"]["lean"] is None and not said["activation"]["base"]["separate"]
    assert said["projection"] is None and said["benign"] is None


def test_figures_draw_from_results_read_back_from_json():
    """The figures stage redraws 07's figures from results.json, where layer keys have become strings."""
    weight = [{"pair": f"{a} vs {b}", "fraction": f, "mso": 0.5, "random": 0.1, "matrices": 3}
              for a, b in (("es2", "useful"), ("es2", "harmful"), ("useful", "harmful")) for f in (0.5, 0.9)]
    ax = subspace_plots.weight_mso_figure(weight).axes[0]
    assert len(ax.lines) == 6 and "3 matrices" in ax.get_title()
    activation = [{"model": m, "pair": p, "fraction": f, "mso": 0.4, "random": 0.2} for m in ("base", "es2")
                  for p in ("harmful A vs useful B", "harmful A vs harmful B", "useful A vs useful B")
                  for f in (0.5, 0.9)]
    fig = subspace_plots.activation_mso_figure(activation, [18, 22], 8)
    assert [len(ax.lines) for ax in fig.axes] == [4, 4] and "layers 18–22" in fig.axes[0].get_title()
    rate = {"dsr": {"value": 0.5, "low": 0.25, "high": 0.75}, "n": 8}
    models = ("base", "es2", "es2+benign", "stl", "stl+benign")  # every arm before and after its benign fine-tune
    benign = {m: {"separation": {k: {"1": 1.0 + i, "24": 2.0} for k in ("centroid_distance", "fisher")},
                  "dsr_none": rate, "dsr_scav": rate} for i, m in enumerate(models)}
    axes = subspace_plots.benign_figure(json.loads(json.dumps(benign)), [1, 24]).axes
    assert [p.get_height() for p in axes[0].patches[:2]] == [1.0, 2.0] and len(axes[2].patches) == 2 * len(models)
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == [
        "base", "ES2", "ES2 + benign FT", "STL", "STL + benign FT"]
    assert [bool(p.get_hatch()) for p in axes[0].patches[::2]] == [False, False, True, False, True]
    assert "8 prompts" in axes[2].get_title()
