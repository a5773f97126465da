"""Capability checks (es2_lib/capability.py): letter scoring, benchmark readers, GPQA secrecy, drift, statistics."""

from __future__ import annotations

import builtins
import gzip
import io
import json
import math
import os
import subprocess

import pytest
import torch
from peft import LoraConfig, get_peft_model

from es2_lib import capability, evaluate, models
from es2_lib.capability import BenchmarkError, Question
from es2_lib.runs import ROOT

QUESTIONS = [  # different option counts and lengths, so left padding and per-question letters matter
    Question("q1", "math", "What is 2 + 3?", ("4", "5", "6"), 1),
    Question("q2", "history", "Which of these events happened first, according to the standard textbook "
             "chronology used in most schools?", ("The moon landing", "The printing press", "The internet",
                                                   "The steam engine", "Writing"), 4),
    Question("q3", "biology", "Cells?", ("Yes", "No"), 0),
]


def _continuation_logprob(model, tokenizer, context: str, text: str) -> float:
    """log P(text | context) by a plain forward pass of context + text through the model's own head."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    full = tokenizer(context + text, add_special_tokens=False)["input_ids"]
    assert full[: len(ctx)] == ctx
    n = len(full) - len(ctx)
    with torch.no_grad():  # logits for the positions that predict the n continuation tokens (and one more)
        logprobs = torch.log_softmax(model(torch.tensor([full]), logits_to_keep=n + 1).logits[0].float(), -1)
    return sum(logprobs[j, full[len(ctx) + j]].item() for j in range(n))


def test_letter_scores_equal_full_forward_loglik_and_pick_the_best(lively):
    model, tokenizer = lively
    rows = capability.answer_questions(model, tokenizer, QUESTIONS, batch_size=3)
    for q, row in zip(QUESTIONS, rows):
        context = models.chat_prompt(tokenizer, capability.question_text(q)) + capability.ANSWER_PREFIX
        # a letter's likelihood sums its two spellings, "B" and " B"
        expected = [math.log(sum(math.exp(_continuation_logprob(model, tokenizer, context, v))
                                 for v in (letter, " " + letter))) for letter in capability.LETTERS[: len(q.options)]]
        assert row["logprobs"] == pytest.approx(expected, abs=1e-4)
        assert row["choice"] == max(range(len(expected)), key=expected.__getitem__)
        assert row["correct"] == (row["choice"] == q.answer)
        assert row["letter_mass"] == pytest.approx(sum(math.exp(x) for x in expected), rel=1e-4)
    one_by_one = capability.letter_logprobs(model, tokenizer, QUESTIONS, batch_size=1)
    assert [r["logprobs"] for r in rows] == [pytest.approx(s, abs=1e-4) for s in one_by_one]


def test_scorer_follows_a_planted_preference(lively):
    """Adding a large bonus to the logit of "C" makes every question with three or more options answer C."""
    model, tokenizer = lively
    (c_id,) = tokenizer("C", add_special_tokens=False)["input_ids"]
    bonus = torch.zeros(model.config.vocab_size)
    bonus[c_id] = 30.0
    handle = model.get_output_embeddings().register_forward_hook(lambda module, args, out: out + bonus)
    try:
        rows = capability.answer_questions(model, tokenizer, QUESTIONS[:2], batch_size=2)
    finally:
        handle.remove()
    assert [r["choice"] for r in rows] == [2, 2]


def test_letter_tokens_are_derived_from_the_tokenizer(tiny):
    _, tokenizer = tiny
    ids = capability.letter_token_ids(tokenizer, "The answer is (", 10)
    assert len(ids) == 10 and all(1 <= len(v) <= 2 for v in ids)
    assert tokenizer.decode(ids[0][0]).strip() == "A" and tokenizer.decode(ids[9][0]).strip() == "J"
    assert len({i for v in ids for i in v}) == sum(map(len, ids))


@pytest.mark.parametrize("text,n,expected", [
    ("The answer is (C).", 4, 2), ("the answer is B", 4, 1), ("Answer: D", 4, 3),
    ("I would pick A, no wait, B is right", 4, 1), ("The answer is (J)", 4, None), ("no idea", 10, None),
])
def test_extract_letter_follows_mmlu_pro_rules(text, n, expected):
    assert capability.extract_letter(text, n) == expected


def _write_jsonl_gz(path, records):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def test_mmlu_pro_reader_and_clear_errors(tmp_path):
    good = {"question_id": 7, "question": "Q?", "options": ["a", "b", "c"], "answer": "C", "category": "math"}
    _write_jsonl_gz(tmp_path / "ok.jsonl.gz", [good])
    (q,) = capability.load_mmlu_pro(tmp_path / "ok.jsonl.gz")
    assert (q.id, q.category, q.options, q.answer) == ("7", "math", ("a", "b", "c"), 2)
    missing = {k: v for k, v in good.items() if k != "answer"}
    _write_jsonl_gz(tmp_path / "bad.jsonl.gz", [good, {**missing, "question_id": 8}])
    with pytest.raises(BenchmarkError, match=r"line 2 \(question_id 8\): missing field 'answer'"):
        capability.load_mmlu_pro(tmp_path / "bad.jsonl.gz")
    with pytest.raises(BenchmarkError, match=r"answer 'D' is not one of the letters ABC"):
        capability.mmlu_pro_question({**good, "answer": "D"})
    with pytest.raises(BenchmarkError, match="missing field 'options'"):
        capability.mmlu_pro_question({**good, "options": []})
    with pytest.raises(BenchmarkError, match="not found"):
        capability.load_mmlu_pro(tmp_path / "absent.jsonl.gz")


GPQA_RECORD = {"Record ID": "r1", "Question": "Q?", "Correct Answer": "right", "Incorrect Answer 1": "w1",
               "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3", "High-level domain": "Physics"}


def test_gpqa_record_shuffle_is_seeded_and_keeps_the_answer():
    positions = set()
    for rid in range(20):
        q = capability.gpqa_question({**GPQA_RECORD, "Record ID": f"r{rid}"}, seed=0)
        assert q.options[q.answer] == "right" and sorted(q.options) == ["right", "w1", "w2", "w3"]
        assert q == capability.gpqa_question({**GPQA_RECORD, "Record ID": f"r{rid}"}, seed=0)
        positions.add(q.answer)
    assert positions == {0, 1, 2, 3}
    with pytest.raises(BenchmarkError, match=r"Record ID r1\): missing field 'Correct Answer'"):
        capability.gpqa_question({**GPQA_RECORD, "Correct Answer": ""}, seed=0)
    assert "Q?" not in repr(capability.gpqa_question(GPQA_RECORD, seed=0))


def _commit_candidates() -> list[str]:
    """Every file git would show or commit: tracked plus untracked-and-not-ignored."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True)
    return [name for name in out.stdout.decode().split("\0") if name and (ROOT / name).is_file()]


def test_gpqa_reader_writes_nothing_and_no_repo_file_holds_a_question(monkeypatch):
    writes = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            writes.append(file)
        return real_open(file, mode, *args, **kwargs)

    def spy_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            writes.append(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(io, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    questions = capability.load_gpqa()
    monkeypatch.undo()
    assert len(questions) == 198 and writes == []
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    needles = [" ".join(q.question.split()[:8]) for q in questions[::20]]  # 10 questions, first 8 words each
    leaks = [name for name in _commit_candidates()
             if any(n in (ROOT / name).read_bytes().decode("utf-8", "ignore") for n in needles)]
    assert leaks == [], f"GPQA question text in files git could commit: {leaks}"


def test_subsets_are_seeded_stratified_and_ordered():
    qs = [Question(str(i), "ab"[i % 2], "q", ("x", "y"), 0) for i in range(20)]
    picked = capability.stratified_subset(qs, 3, seed=0)
    assert [q.category for q in picked].count("a") == 3 and [q.category for q in picked].count("b") == 3
    assert picked == capability.stratified_subset(qs, 3, seed=0) != capability.stratified_subset(qs, 3, seed=1)
    assert [int(q.id) for q in picked] == sorted(int(q.id) for q in picked)
    assert capability.stratified_subset(qs, 0, seed=0) == qs == capability.subset(qs, 50, seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        capability.subset(qs, -1, seed=0)


def test_paired_difference_and_claim_verdict():
    base = [True] * 50 + [False] * 50
    same = capability.paired_difference(base, base, samples=500)
    assert same["value"] == same["low"] == same["high"] == 0.0
    worse = capability.paired_difference(base, [False] * 10 + base[10:], samples=500)
    assert worse["value"] == pytest.approx(-0.1) and worse["lost"] == 10 and worse["gained"] == 0
    assert worse["low"] < -0.1 < worse["high"] < 0
    assert capability.claim_verdict(same, 0.02)["verdict"] == "supported"
    assert capability.claim_verdict(worse, 0.02) | {"ci_width": None} == {
        "margin": 0.02, "holds": False, "verdict": "refuted", "ci_width": None}
    wide = {"value": 0.0, "low": -0.2, "high": 0.2}
    assert capability.claim_verdict(wide, 0.02)["verdict"] == "undecided"
    with pytest.raises(ValueError, match="equally long"):
        capability.paired_difference([True], [True, False])


def test_harmless_drift_is_zero_without_change_and_matches_a_direct_kl(lively):
    model, tokenizer = lively
    tuned = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    prompts, responses = ["Say hi", "Tell me a much longer story about a dragon"], ["Hello there friend", ""]
    fresh = capability.harmless_drift(tuned, tokenizer, prompts, responses, batch_size=2)
    assert all(abs(r["kl"]) < 1e-5 and r["nll_base"] == pytest.approx(r["nll_tuned"]) for r in fresh)
    assert [r["tokens"] for r in fresh] == [3, 0]
    with torch.no_grad():
        for name, weight in tuned.named_parameters():
            if "lora_B" in name:
                weight.copy_(0.5 * torch.randn_like(weight))
    rows = capability.harmless_drift(tuned, tokenizer, prompts, responses, batch_size=2)
    ids = tokenizer(models.chat_prompt(tokenizer, prompts[0]) + responses[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        tuned_lp = torch.log_softmax(tuned(torch.tensor([ids])).logits[0, -4:].float(), -1)
        with tuned.disable_adapter():
            base_lp = torch.log_softmax(tuned(torch.tensor([ids])).logits[0, -4:].float(), -1)
    kl = (base_lp.exp() * (base_lp - tuned_lp)).sum(-1)  # [4]: last prompt token + 3 response tokens
    assert rows[0]["kl"] == pytest.approx(kl.mean().item(), rel=1e-3) and rows[0]["kl"] > 1e-3
    assert rows[0]["kl_first"] == pytest.approx(kl[0].item(), rel=1e-3)
    with tuned.disable_adapter():
        (ppl,) = evaluate.response_perplexity(tuned, tokenizer, prompts[:1], responses[:1])
    assert math.exp(rows[0]["nll_base"] / 3) == pytest.approx(ppl, rel=1e-4)
    assert all(abs(r["kl"]) < 1e-7 for r in capability.harmless_drift(tuned, tokenizer, prompts, responses, base=tuned))
    with pytest.raises(TypeError, match="fully fine-tuned"):
        capability.harmless_drift(tuned.get_base_model(), tokenizer, prompts, responses)


def test_summarize_builds_results_and_table():
    rows = {m: [{"id": str(i), "category": "ab"[i % 2], "correct": c, "generated": 0, "generated_correct": c,
                 "letter_mass": 0.9}
                for i, c in enumerate(flags)] for m, flags in (("base", [True, True, False, False]),
                                                               ("es2", [True, False, False, False]))}
    xstest = {m: {"safe": ["Sure.", "I'm sorry, no."], "unsafe": ["I cannot help.", "Fine."]} for m in ("base", "es2")}
    drift = [{"kl": 0.1, "kl_first": 0.2, "nll_base": 2.0, "nll_tuned": 4.0, "tokens": 2}]
    res = capability.summarize({"base": {"mmlu_pro": rows["base"]}, "es2": {"mmlu_pro": rows["es2"]}},
                               xstest, drift, margin=0.02, samples=200)
    assert res["base"]["mmlu_pro"]["letter"]["overall"]["value"] == 0.5
    assert res["es2"]["mmlu_pro"]["generate"]["per_category"]["a"]["value"] == 0.5
    assert res["difference"]["mmlu_pro"]["letter"]["value"] == -0.25 and not res["claim"]["mmlu_pro"]["holds"]
    assert res["base"]["xstest"]["over_refusal"]["autodan"]["value"] == 0.5
    assert res["es2"]["harmless"]["ppl"] == pytest.approx(math.e ** 2) and res["es2"]["harmless"]["kl"]["value"] == 0.1
    table = capability.table_rows(res)
    assert {"model": "base", "benchmark": "mmlu_pro", "metric": "letter", "group": "b", "value": 0.5} in [
        {k: r[k] for k in ("model", "benchmark", "metric", "group", "value")} for r in table]
    assert any(r["model"] == "difference" and r["benchmark"] == "xstest" for r in table)
    measures = [r["measure"].split(" ")[0] for r in capability.headline(res)]
    assert measures == ["MMLU-Pro"] * 3 + ["XSTest"] * 2 + ["harmless"] * 2
    sentence = capability.verdict_sentence("mmlu_pro", res["difference"]["mmlu_pro"]["letter"],
                                           res["claim"]["mmlu_pro"])
    assert "-25.0 points" in sentence and "fails on the point estimate" in sentence
    assert capability.drift_summary([{**drift[0], "tokens": 0, "nll_base": 0.0, "nll_tuned": 0.0}])["ppl_base"] is None


@pytest.mark.slow
def test_embedded_model_follows_the_answer_format(embedded):
    """The embedded model puts nearly all next-token probability on the option letters after the answer prefix,
    and its greedy answer names the letter that scores highest. (It is too weak to get easy questions right
    reliably: it prefers "A".)"""
    model, tokenizer = embedded
    rows = capability.answer_questions(model, tokenizer, QUESTIONS, batch_size=3, max_new_tokens=12)
    assert all(r["letter_mass"] > 0.8 for r in rows)
    assert [r["generated"] for r in rows] == [r["choice"] for r in rows]
