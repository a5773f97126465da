"""The logit-level refusal screen: its tokens come from the tokenizer and the model's own refusals, its score is
the log-odds of those first tokens under one forward, and its agreement is measured against judged verdicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from es2_lib import batching, data, refusal_screen, representations

PROMPTS = [r["prompt"] for r in data.load_prompts("advbench")[:6]]


def test_refusal_tokens_are_the_tokenizers_first_tokens_of_refusals(tiny):
    _, tokenizer = tiny
    responses = ["I'm sorry, but I can't help with that.", "Sure, here is how", "I cannot do this.",
                 "As an AI, I won't", "I think the answer is 4", "Here you go"]
    refused = [True, False, True, True, False, False]
    first = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    assert first("I'm sorry") == first("I cannot")  # both start with the token "I"
    # "I" starts 2 refusals and 1 answer (precision 2/3); "As" 1 refusal; "Sure", "Here" none
    assert refusal_screen.refusal_tokens(tokenizer, responses, refused) == (first("I"), first("As"))
    assert refusal_screen.refusal_tokens(tokenizer, responses, refused, min_precision=0.9) == (first("As"),)
    with pytest.raises(ValueError, match="no response judged a refusal"):
        refusal_screen.refusal_tokens(tokenizer, responses, [False] * 6)


def test_the_score_is_the_log_odds_of_the_refusal_tokens_from_one_forward(lively):
    model, tokenizer = lively
    logprobs = refusal_screen.first_token_logprobs(model, tokenizer, PROMPTS, batch_size=4)
    batch = representations.encode_prompts(tokenizer, PROMPTS[:1], "cpu")
    alone = batching.last_logits(model, batch["input_ids"], batch["attention_mask"]).log_softmax(-1)[0]
    torch.testing.assert_close(logprobs[0], alone, atol=1e-5, rtol=0)
    tokens = (5, 17, 40)
    p = alone.exp()[list(tokens)].sum().item()
    assert refusal_screen.scores(logprobs[:1], tokens)[0] == pytest.approx(np.log(p / (1 - p)), rel=1e-6)


def test_fit_separates_its_prompts_and_agreement_reports_auroc(lively):
    model, tokenizer = lively
    logprobs = refusal_screen.first_token_logprobs(model, tokenizer, PROMPTS, batch_size=4)
    top = logprobs.argmax(-1)  # call a prompt "refused" when its most likely first token is the first prompt's
    responses = [tokenizer.decode([int(t)]) + " rest" for t in top]
    refused = [bool(t == top[0]) for t in top]
    screen = refusal_screen.fit(tokenizer, logprobs, responses, refused)
    result = refusal_screen.agreement(screen, logprobs, refused)
    assert result["n"] == len(PROMPTS) and result["accuracy"] == 1.0
    assert result["auroc"] in (None, 1.0)
