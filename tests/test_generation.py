"""Batched greedy generation (es2_lib/generation.py) on the tiny model, and the embedded model's refusals."""

from __future__ import annotations

import pytest

from es2_lib import data, judges, params
from es2_lib.generation import generate
from es2_lib.models import chat_prompt

PROMPTS = [  # deliberately not in length order
    "Hi",
    "Explain in detail how a refrigerator moves heat from its inside to the kitchen around it.",
    "Name a colour.",
    "Write a haiku about the sea and the wind over it.",
    "Why?",
]


def test_batched_equals_one_at_a_time(lively):
    model, tokenizer = lively
    batched = generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=3)
    single = [generate(model, tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    assert all(isinstance(r, str) and r for r in batched)
    assert len(set(batched)) > 1  # different prompts, different answers: the order is checked
    assert batched[::-1] == generate(model, tokenizer, PROMPTS[::-1], max_new_tokens=6, batch_size=2)
    assert generate(model, tokenizer, [], max_new_tokens=6) == []


def test_new_tokens_only_and_bounded(lively):
    model, tokenizer = lively
    short = generate(model, tokenizer, PROMPTS, max_new_tokens=3, batch_size=2)
    long = generate(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=2)
    assert all(len(tokenizer(s, add_special_tokens=False)["input_ids"]) <= 3 for s in short)
    assert all(l.startswith(s) and len(l) > len(s) for s, l in zip(short, long))
    assert not any("<|im_" in r or PROMPTS[i] in r for i, r in enumerate(long))  # no prompt, no special tokens
    # the response continues the chat prompt exactly as a plain greedy call of model.generate does
    enc = tokenizer(chat_prompt(tokenizer, PROMPTS[1]), return_tensors="pt", add_special_tokens=False)
    ref = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert long[1] == tokenizer.decode(ref[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_until_verdict_stops_once_every_judge_says_refused(lively, monkeypatch):
    model, tokenizer = lively
    full = generate(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=2)
    word = full[1].split()[0]  # a word the model does write: call it a refusal phrase for this test
    monkeypatch.setattr(judges, "settled", lambda text: word in text)
    stopped = generate(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=2, until_verdict=True)
    for s, f in zip(stopped, full):
        assert f.startswith(s) and (s == f or word in s)
    assert len(stopped[1]) < len(full[1]) and stopped[1].endswith(word)
    with pytest.raises(ValueError, match="verdict"):
        generate(model, tokenizer, PROMPTS, max_new_tokens=4, temperature=1.0, until_verdict=True)


def test_raw_text_and_peft(lively):
    model, tokenizer = lively
    raw = generate(model, tokenizer, PROMPTS[:3], max_new_tokens=5, chat=False)
    assert raw != generate(model, tokenizer, PROMPTS[:3], max_new_tokens=5)
    peft = pytest.importorskip("peft")
    base = generate(model, tokenizer, PROMPTS[:3], max_new_tokens=5, progress=True)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert generate(lora, tokenizer, PROMPTS[:3], max_new_tokens=5) == base  # LoRA B starts at zero


def test_bad_arguments(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError):
        generate(model, tokenizer, PROMPTS, max_new_tokens=0)
    tokenizer.padding_side = "right"
    with pytest.raises(ValueError, match="left"):
        generate(model, tokenizer, PROMPTS, max_new_tokens=2)


@pytest.mark.slow
def test_embedded_refuses_harmful_and_answers_harmless(embedded):
    """The foundation's real-behaviour check: the embedded chat model refuses most held-out AdvBench
    behaviours (the eval split of the default params, paper judge) and answers plain Alpaca instructions
    from the same split without a refusal phrase."""
    model, tokenizer = embedded
    p = params.from_mapping({"n_eval": 20})
    splits, _ = data.make_splits(p.harmful_prompts, p.harmless_prompts, p.n_probe_train, p.n_es2_train, p.n_dev,
                                 p.n_eval, p.seed, p.near_duplicate_jaccard)
    harmful = [row["prompt"] for row in splits["harmful"]["eval"]]
    harmless = [row["prompt"] for row in splits["harmless"]["eval"][:5]]
    responses = generate(model, tokenizer, harmful + harmless, max_new_tokens=48, batch_size=8)
    refused = judges.refusals(responses[:20], "autodan")
    print(f"refused {sum(refused)}/20 harmful; harmless refusals {judges.refusals(responses[20:], 'autodan')}")
    assert sum(refused) >= 10, list(zip(harmful, responses[:20]))
    assert not any(judges.refusals(responses[20:], "autodan")), list(zip(harmless, responses[20:]))
