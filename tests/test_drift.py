"""Harmless drift (es2_lib/drift.py): zero without change, equal to a direct KL and to response perplexity."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from es2_lib import drift, evaluate, models


def test_harmless_drift_is_zero_without_change_and_matches_a_direct_kl(lively):
    model, tokenizer = lively
    tuned = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    prompts, responses = ["Say hi", "Tell me a much longer story about a dragon"], ["Hello there friend", ""]
    fresh = drift.harmless_drift(tuned, tokenizer, prompts, responses, batch_size=2)
    assert all(abs(r["kl"]) < 1e-5 and r["nll_base"] == pytest.approx(r["nll_tuned"]) for r in fresh)
    assert [r["tokens"] for r in fresh] == [3, 0]
    with torch.no_grad():
        for name, weight in tuned.named_parameters():
            if "lora_B" in name:
                weight.copy_(0.5 * torch.randn_like(weight))
    rows = drift.harmless_drift(tuned, tokenizer, prompts, responses, batch_size=2)
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
    assert all(abs(r["kl"]) < 1e-7 for r in drift.harmless_drift(tuned, tokenizer, prompts, responses, base=tuned))
    with pytest.raises(TypeError, match="fully fine-tuned"):
        drift.harmless_drift(tuned.get_base_model(), tokenizer, prompts, responses)


def test_reference_nll_scored_alone_equals_the_drift_rows_nll(lively):
    """The reference responses' NLL under each model on its own (`evaluate.response_nll` + `drift.paired_nll`, the
    base scored once for every arm) equals `harmless_drift`'s NLL fields; empty responses are left out."""
    model, tokenizer = lively
    tuned = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, weight in tuned.named_parameters():
            if "lora_B" in name:
                weight.copy_(0.5 * torch.randn_like(weight))
    prompts, responses = ["Say hi", "Tell me a much longer story about a dragon", "x"], ["Hello there friend", "Once upon", ""]
    with tuned.disable_adapter():
        base_rows = evaluate.response_nll(tuned, tokenizer, prompts, responses, batch_size=2)
    rows = drift.paired_nll(base_rows, evaluate.response_nll(tuned, tokenizer, prompts, responses, batch_size=2))
    expected = drift.harmless_drift(tuned, tokenizer, prompts[:2], responses[:2], batch_size=2)
    assert len(rows) == 2 and any(abs(r["nll_base"] - r["nll_tuned"]) > 1e-2 for r in rows)  # the adapter acts
    for got, want in zip(rows, expected):
        assert got["tokens"] == want["tokens"]
        assert got["nll_base"] == pytest.approx(want["nll_base"], rel=1e-4)
        assert got["nll_tuned"] == pytest.approx(want["nll_tuned"], rel=1e-4)
    assert drift.corpus_perplexity(rows, "tuned") == pytest.approx(
        math.exp(sum(r["nll_tuned"] for r in rows) / sum(r["tokens"] for r in rows)))
