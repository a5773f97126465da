"""SRR (es2_lib/srr_candidates.py, srr_ranker.py, srr_pickers.py): the ranker's order invariance and listwise
training, dropping lists, and the candidate pipeline (sampling, features, labels) on the tiny model."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from es2_lib import evaluate, srr_candidates, srr_pickers, srr_ranker
from es2_lib.srr_candidates import XSTEST
from es2_lib.generation import generate
from es2_lib.plots import srr as srr_plots
from es2_lib.models import chat_prompt
from es2_lib.representations import last_token_states

HIDDEN = 16


RANKER = srr_ranker.RankerConfig(hidden=8, heads=2, tau=0.1, steps=50, lr=1e-2)


def config(steps: int = 50) -> srr_pickers.PickerConfig:
    return srr_pickers.PickerConfig(ranker=replace(RANKER, steps=steps), probe_C=1.0, likelihood="mean", seed=0,
                                    bootstrap_samples=50, confidence=0.95)


def hand_lists(safe: list[list[bool]], split: list[str], seed: int = 0) -> srr_candidates.Lists:
    """Candidate lists with random features in which the safe candidates share a direction (a learnable signal)."""
    gen = torch.Generator().manual_seed(seed)
    n, k = len(safe), len(safe[0])
    safe_t = torch.tensor(safe)
    candidate = torch.randn(n, k, 1, HIDDEN, generator=gen) + 3.0 * safe_t[:, :, None, None] * torch.eye(HIDDEN)[0]
    return srr_candidates.Lists(
        source=["harmful_train"] * n, prompts=[f"p{i}" for i in range(n)],
        responses=[[f"r{i}{j}" for j in range(k)] for i in range(n)], layers=[1],
        instruction=torch.randn(n, 1, HIDDEN, generator=gen), candidate=candidate,
        perplexity=torch.rand(n, k, generator=gen) + 1, n_tokens=torch.full((n, k), 5),
        refused=safe_t.clone(), incoherent=torch.zeros(n, k, dtype=torch.bool), safe=safe_t, split=split)


def test_scores_do_not_depend_on_candidate_order():
    torch.manual_seed(0)
    ranker = srr_ranker.SafetyRanker(torch.randn(HIDDEN), torch.rand(HIDDEN) + 0.5, width=8, heads=2, tau=0.1).eval()
    instruction, candidates = torch.randn(3, HIDDEN), torch.randn(3, 5, HIDDEN)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        scores = ranker(instruction, candidates)
        permuted = ranker(instruction, candidates[:, perm])
        valid = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 4 + [False]])
        padded = ranker(instruction, candidates, valid)
        short = ranker(instruction[1:2], candidates[1:2, :3])
    assert torch.allclose(permuted, scores[:, perm], atol=1e-5)
    assert scores.std() > 0.1  # not a constant: the check above can fail
    assert torch.isinf(padded[1, 3:]).all() and torch.allclose(padded[1, :3], short[0], atol=1e-5)


def test_one_training_step_raises_the_safe_candidates_probability():
    gen = torch.Generator().manual_seed(1)
    instruction, candidates = torch.randn(1, HIDDEN, generator=gen), torch.randn(1, 4, HIDDEN, generator=gen)
    safe = torch.tensor([[False, True, False, False]])
    ranker, losses = srr_ranker.train_ranker(instruction, candidates, safe, replace(RANKER, steps=1), seed=0)
    with torch.no_grad():
        after = torch.softmax(ranker(instruction, candidates), 1)[0, 1].item()
    before = math.exp(-losses[0])  # one safe candidate: KL to the label distribution = -log p(safe)
    assert len(losses) == 1 and after > before
    assert srr_ranker.listwise_loss(torch.zeros(1, 4), safe).item() == pytest.approx(math.log(4))


def test_lists_without_a_safe_and_an_unsafe_candidate_are_dropped_with_a_count():
    safe = [[True, False, False, True], [True] * 4, [False] * 4, [False, True, False, False],
            [False] * 4, [True, False, True, False], [True, True, True, False], [False] * 4]
    split = ["train"] * 5 + ["test"] * 3
    lists = hand_lists(safe, split)
    assert srr_candidates.mixed(lists).tolist() == [True, False, False, True, False, True, True, False]
    assert srr_candidates.counts(lists) == {"harmful_train": {
        "train": {"prompts": 5, "kept": 2, "all_safe": 1, "all_unsafe": 2},
        "test": {"prompts": 3, "kept": 2, "all_safe": 0, "all_unsafe": 1}}}
    result, scores = srr_pickers.evaluate_model(lists, 1, config())
    assert result["training"]["lists"] == 2
    assert result["ranking_accuracy"]["all"]["srr"]["n"] == 2  # only the mixed test lists are ranked
    assert result["dsr"]["all"]["srr"]["n"] == 3  # DSR counts every test prompt
    assert result["dsr"]["all"]["oracle"]["value"] == pytest.approx(2 / 3)
    assert set(scores) == {"srr", "likelihood", "probe"}
    none_mixed = hand_lists([[True] * 4, [False] * 4], ["train", "test"])
    result, scores = srr_pickers.evaluate_model(none_mixed, 1, config())
    assert scores is None and result["untrained"]
    assert result["counts"]["harmful_train"]["train"] == {"prompts": 1, "kept": 0, "all_safe": 1, "all_unsafe": 0}
    assert srr_pickers.layer_ablation(none_mixed, config())["untrained"]


def test_ranker_learns_a_separable_signal_and_pick_rates():
    gen = torch.Generator().manual_seed(2)
    safe = (torch.rand(40, 4, generator=gen) < 0.5)
    safe[:, 0], safe[:, 1] = True, False  # every list mixed
    lists = hand_lists(safe.tolist(), ["train"] * 20 + ["test"] * 20)
    result, _ = srr_pickers.evaluate_model(lists, 1, config(steps=60))
    accuracy = result["ranking_accuracy"]["all"]
    assert accuracy["srr"]["value"] >= 0.9 and accuracy["probe"]["value"] >= 0.9
    assert accuracy["random"]["value"] == pytest.approx(safe[20:].float().mean().item())
    flags = torch.tensor([[True, False], [False, True]])
    rates = srr_pickers.pick_rates(flags, {"srr": torch.tensor([[1.0, 0.0], [1.0, 0.0]]),
                                           "likelihood": torch.zeros(2, 2),
                                   "probe": torch.tensor([[0.0, 1.0], [0.0, 1.0]])}, torch.tensor([True, True]),
                           config(), oracle=True)
    assert rates["srr"]["value"] == 0.5 and rates["random"]["value"] == 0.5 and rates["oracle"]["value"] == 1.0



def test_paired_tests_count_the_lists_only_one_picker_gets_right():
    """SRR against each baseline on the same lists: the counts of lists where only one pick is safe, the exact
    McNemar p for one-pick baselines, and for "random" the difference from its expected share."""
    safe = [[True, False]] * 10 + [[False, True]] * 10  # 20 mixed test lists
    lists = hand_lists(safe, ["test"] * 20)
    first, second = torch.tensor([[1.0, 0.0]] * 20), torch.tensor([[0.0, 1.0]] * 20)
    srr = torch.tensor([[1.0, 0.0]] * 10 + [[0.0, 1.0]] * 10)  # always the safe one
    rows = srr_pickers.paired_tests(lists, {"srr": srr, "likelihood": first, "probe": second}, config())
    by = {(r["measure"], r["baseline"]): r for r in rows}
    assert {m for m, _ in by} == {"ranking_accuracy", "dsr"}  # no XSTest lists here
    likelihood = by[("ranking_accuracy", "likelihood")]
    assert (likelihood["n"], likelihood["srr"], likelihood["baseline_rate"]) == (20, 1.0, 0.5)
    assert (likelihood["srr_only"], likelihood["baseline_only"]) == (10, 0)
    assert likelihood["difference"]["value"] == pytest.approx(0.5)
    assert likelihood["p"] == pytest.approx(2 * 0.5 ** 10)  # exact McNemar: 10 discordant lists, all one way
    random = by[("ranking_accuracy", "random")]
    assert random["baseline_rate"] == pytest.approx(0.5) and random["srr_only"] == 20 and random["p"] < 1e-3
    same = srr_pickers.paired_tests(lists, {"srr": srr, "likelihood": srr, "probe": srr}, config())
    assert all(r["p"] == 1.0 and r["srr_only"] == r["baseline_only"] == 0 for r in same if r["baseline"] != "random")


def test_figure_draws_from_results_read_back_from_json():
    """The figures stage redraws 08's figure from results.json: a trained model, an untrained one, the ablation."""
    safe = [[True, False, False, True], [False, True, False, False]] * 4
    lists = hand_lists(safe, ["train", "test"] * 4)
    trained, _ = srr_pickers.evaluate_model(lists, 1, config(steps=5))
    untrained, _ = srr_pickers.evaluate_model(hand_lists([[True] * 4, [False] * 4], ["train", "test"]), 1, config())
    results = {"models": {"base": trained, "es2": untrained}, "ablation": srr_pickers.layer_ablation(lists, config(5))}
    axes = srr_plots.figure(json.loads(json.dumps(results))).axes
    assert len(axes) == 4 and len(axes[0].patches) == 2 * len(srr_pickers.PICKERS)
    assert [line.get_xdata().tolist() for line in axes[3].lines] == [[1]] * 3  # srr, probe, random at layer 1

def test_prompts_layers_and_splits(tiny):
    _, tokenizer = tiny
    jailbroken = srr_candidates.load_jailbroken()
    assert len(jailbroken) == 187 and not any(p.startswith("Human:") or p.endswith("Assistant:") for p in jailbroken)
    assert srr_candidates.default_layer(24) == 6 and srr_candidates.default_layer(2) == 1
    assert srr_candidates.ablation_layers([0.125, 0.25, 0.5, 1.0], 4) == [1, 2, 4]
    rows = [{"model": "es2", "attack": "gcg", "prompt": "a", "attack_prompt": "a !"},
            {"model": "base", "attack": "gcg", "prompt": "b", "attack_prompt": "b ?"}]
    assert srr_candidates.attack_prompts(rows, "base") == ["b ?"]
    assert srr_candidates.attack_prompts(rows * 2, "es2") == ["a !"]
    available = {"jailbroken": jailbroken[:20], XSTEST: ["x"] * 5}
    budget = dict(max_prompt_tokens=60, n_per_source=3, n_xstest=8, seed=0)
    chosen, sizes = srr_candidates.choose_prompts(available, tokenizer, **budget)
    assert sizes["jailbroken"]["used"] == len(chosen["jailbroken"]) <= 3 and sizes["jailbroken"]["too_long"] > 0
    assert chosen == srr_candidates.choose_prompts(available, tokenizer, **budget)[0]
    lists = hand_lists([[True, False]] * 8, [])
    lists.source = ["harmful_eval"] * 4 + [XSTEST] * 2 + ["malicious_instruct"] * 2
    srr_candidates.assign_splits(lists, 3, seed=0)
    assert lists.split.count("train") == 3 and lists.split[4:] == ["test"] * 4  # XSTest and OOD sets: test only


PROMPTS = ["Hi", "Explain in detail how a refrigerator moves heat out of its inside.", "Name a colour.", "Why?"]


def test_sampling_is_seeded_prompt_major_and_shares_the_prompt_cache(lively):
    model, tokenizer = lively
    greedy = generate(model, tokenizer, PROMPTS, 5, batch_size=3)
    cold = generate(model, tokenizer, PROMPTS, 5, batch_size=3, temperature=1e-4, num_return_sequences=3)
    assert cold == [g for g in greedy for _ in range(3)]  # the shared KV cache continues each prompt correctly
    hot = generate(model, tokenizer, PROMPTS, 5, batch_size=3, temperature=1.0, num_return_sequences=3, seed=1)
    assert hot == generate(model, tokenizer, PROMPTS, 5, batch_size=3, temperature=1.0, num_return_sequences=3, seed=1)
    assert hot != generate(model, tokenizer, PROMPTS, 5, batch_size=3, temperature=1.0, num_return_sequences=3, seed=2)
    assert len(hot) == 12 and len(set(hot)) > 4
    with pytest.raises(ValueError):
        generate(model, tokenizer, PROMPTS, 5, num_return_sequences=2)  # greedy copies would be identical


def test_features_of_instruction_plus_candidate(lively):
    model, tokenizer = lively
    responses = ["Sure, here it is.", "", "Red.", "Because."]
    states = last_token_states(model, tokenizer, PROMPTS, [1, 3], batch_size=3, responses=responses)
    assert torch.allclose(states[1], last_token_states(model, tokenizer, PROMPTS[1:2], [1, 3])[0], atol=1e-5)
    ids = tokenizer(chat_prompt(tokenizer, PROMPTS[0]) + responses[0], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        hidden = model(**ids, output_hidden_states=True).hidden_states
    assert torch.allclose(states[0], torch.stack([hidden[1][0, -1], hidden[3][0, -1]]), atol=1e-4)


def test_collect_and_label_on_the_tiny_model(lively):
    model, tokenizer = lively
    lists = srr_candidates.collect(model, tokenizer, {"harmful_eval": PROMPTS[:2], XSTEST: PROMPTS[2:]},
                                   [1, 2], k=2, temperature=1.0, max_new_tokens=4, batch_size=2, seed=0, progress=False)
    assert lists.source == ["harmful_eval"] * 2 + [XSTEST] * 2
    assert lists.candidate.shape == (4, 2, 2, 64) and lists.instruction.shape == (4, 2, 64)
    assert lists.perplexity.shape == (4, 2) and (lists.n_tokens > 0).all()
    # the likelihood read off the sampling pass equals a separate forward's where the decoded text re-tokenizes to
    # the sampled tokens (random-weight text sometimes does not: then the count may match but the tokens differ)
    repeated, flat = lists.flat()
    separate = evaluate.response_perplexity(model, tokenizer, repeated, flat)
    same = [a == pytest.approx(b, rel=1e-4) for a, b in zip(lists.perplexity.flatten().tolist(), separate)]
    assert sum(same) >= len(same) // 2
    srr_candidates.label(lists, 100.0, "refused")
    assert lists.safe.dtype == torch.bool and not lists.refused.any()  # random weights never refuse
    picked = srr_candidates.select(lists, torch.tensor([True, False, False, True]))
    sub = srr_candidates.with_features(model, tokenizer, picked, [1, 3], 2, progress=False)
    assert sub.prompts == [lists.prompts[0], lists.prompts[3]] and sub.candidate.shape == (2, 2, 2, 64)
    assert torch.allclose(sub.layer(1)[1], lists.layer(1)[1][[0, 3]], atol=1e-5) and sub.safe.shape == (2, 2)
    none = srr_candidates.select(lists, torch.zeros(4, dtype=torch.bool))
    empty = srr_candidates.with_features(model, tokenizer, none, [1, 3], progress=False)
    assert len(empty) == 0 and empty.candidate.shape == (0, 2, 2, 64)
    lists.responses[0][0] = "I'm sorry, but I cannot help with that."
    srr_candidates.label(lists, 100.0, "refused", perplexities=[2.0] * 8)
    assert lists.safe[0, 0] and lists.safe.sum() == 1 and not lists.incoherent[0, 0]
