"""Multiple-choice scoring (es2_lib/multiple_choice.py): letter log-probs, letter tokens, answer extraction."""

from __future__ import annotations

import math

import pytest
import torch

from es2_lib import models, multiple_choice
from es2_lib.benchmarks import LETTERS, Question

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
    rows = multiple_choice.answer_questions(model, tokenizer, QUESTIONS, batch_size=3)
    for q, row in zip(QUESTIONS, rows):
        context = models.chat_prompt(tokenizer, multiple_choice.question_text(q)) + multiple_choice.ANSWER_PREFIX
        # a letter's likelihood sums its two spellings, "B" and " B"
        expected = [math.log(sum(math.exp(_continuation_logprob(model, tokenizer, context, v))
                                 for v in (letter, " " + letter))) for letter in LETTERS[: len(q.options)]]
        assert row["logprobs"] == pytest.approx(expected, abs=1e-4)
        assert row["choice"] == max(range(len(expected)), key=expected.__getitem__)
        assert row["correct"] == (row["choice"] == q.answer)
        assert row["letter_mass"] == pytest.approx(sum(math.exp(x) for x in expected), rel=1e-4)
        p = [math.exp(x) / row["letter_mass"] for x in expected]  # renormalised over the options
        assert row["logprob_correct"] == pytest.approx(math.log(p[q.answer]), abs=1e-4)
        assert row["brier"] == pytest.approx(sum((pk - (k == q.answer)) ** 2 for k, pk in enumerate(p)), abs=1e-4)
    one_by_one = multiple_choice.letter_logprobs(model, tokenizer, QUESTIONS, batch_size=1)
    assert [r["logprobs"] for r in rows] == [pytest.approx(s, abs=1e-4) for s in one_by_one]


def test_scorer_follows_a_planted_preference(lively):
    """Adding a large bonus to the logit of "C" makes every question with three or more options answer C."""
    model, tokenizer = lively
    (c_id,) = tokenizer("C", add_special_tokens=False)["input_ids"]
    bonus = torch.zeros(model.config.vocab_size)
    bonus[c_id] = 30.0
    handle = model.get_output_embeddings().register_forward_hook(lambda module, args, out: out + bonus)
    try:
        rows = multiple_choice.answer_questions(model, tokenizer, QUESTIONS[:2], batch_size=2)
    finally:
        handle.remove()
    assert [r["choice"] for r in rows] == [2, 2]


def test_letter_tokens_are_derived_from_the_tokenizer(tiny):
    _, tokenizer = tiny
    ids = multiple_choice.letter_token_ids(tokenizer, "The answer is (", 10)
    assert len(ids) == 10 and all(1 <= len(v) <= 2 for v in ids)
    assert tokenizer.decode(ids[0][0]).strip() == "A" and tokenizer.decode(ids[9][0]).strip() == "J"
    assert len({i for v in ids for i in v}) == sum(map(len, ids))


@pytest.mark.parametrize("text,n,expected", [
    ("The answer is (C).", 4, 2), ("the answer is B", 4, 1), ("Answer: D", 4, 3),
    ("I would pick A, no wait, B is right", 4, 1), ("The answer is (J)", 4, None), ("no idea", 10, None),
])
def test_extract_letter_follows_mmlu_pro_rules(text, n, expected):
    assert multiple_choice.extract_letter(text, n) == expected


@pytest.mark.slow
def test_embedded_model_follows_the_answer_format(embedded):
    """The embedded model puts nearly all next-token probability on the option letters after the answer prefix,
    and its greedy answer names the letter that scores highest. (It is too weak to get easy questions right
    reliably: it prefers "A".)"""
    model, tokenizer = embedded
    rows = multiple_choice.answer_questions(model, tokenizer, QUESTIONS, batch_size=3, max_new_tokens=12)
    assert all(r["letter_mass"] > 0.8 for r in rows)
    assert [r["generated"] for r in rows] == [r["choice"] for r in rows]
