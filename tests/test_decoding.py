"""Continuous-batching greedy decoding: the text of every row equals its unbatched greedy text, finished rows
leave the batch (no forward is spent on them), and it works under peft and residual-stream edits."""

from __future__ import annotations

import peft
import pytest
import torch

from es2_lib import batching, data, decoding, hooks, models

PROMPTS = [r["prompt"] for r in data.load_prompts("advbench")[:13]]


def _alone(model, tokenizer, prompts, max_new_tokens):
    """Each prompt generated on its own by `model.generate` (no batch, no padding)."""
    out = []
    for prompt in prompts:
        enc = tokenizer(models.chat_prompt(tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def test_rows_joining_and_leaving_equal_unbatched_greedy(lively):
    model, tokenizer = lively
    # 13 prompts through 4 rows: rows refill as others finish, the cache is padded, merged and cut
    assert decoding.greedy(model, tokenizer, PROMPTS, 12, batch_size=4) == _alone(model, tokenizer, PROMPTS, 12)


def test_a_row_that_stops_early_leaves_and_the_others_keep_their_text(lively):
    model, tokenizer = lively
    full = _alone(model, tokenizer, PROMPTS, 16)
    steps: list[int] = []
    count = lambda module, args, kwargs: steps.append((args or [kwargs.get("hidden_states")])[0].shape[0])  # noqa: E731
    hook = models.decoder_layers(model)[0].register_forward_pre_hook(count, with_kwargs=True)
    try:
        early = decoding.greedy(model, tokenizer, PROMPTS, 16, batch_size=4, stop=lambda text: len(text.strip()) >= 12)
    finally:
        hook.remove()
    for short, long in zip(early, full):
        assert long.startswith(short) and (len(short) >= 12 or short == long)
    assert any(len(s) < len(f) for s, f in zip(early, full))
    # each forward's rows are the rows still running: fewer row-steps than 13 prompts x 16 tokens
    assert sum(steps) < len(PROMPTS) * 16


def test_peft_and_a_residual_edit_for_every_row(lively):
    model, tokenizer = lively
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    for name, weight in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=0.5)
    assert decoding.greedy(lora, tokenizer, PROMPTS[:6], 8, batch_size=2) == _alone(lora, tokenizer, PROMPTS[:6], 8)
    shift = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with hooks.edit_residual(model, {2: lambda h: h + shift}):
        edited = decoding.greedy(model, tokenizer, PROMPTS[:6], 8, batch_size=2)
        assert edited == _alone(model, tokenizer, PROMPTS[:6], 8)
    assert edited != decoding.greedy(model, tokenizer, PROMPTS[:6], 8, batch_size=2)


def test_each_row_keeps_its_own_edit_as_rows_come_and_go(lively):
    model, tokenizer = lively
    prompts = PROMPTS[:7]
    shifts = torch.randn(len(prompts), model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    edited = decoding.greedy(model, tokenizer, prompts, 10, batch_size=3,
                             stop=lambda text: len(text.strip()) >= 8 * (1 + len(text) % 3),  # rows leave unevenly
                             row_edits={2: lambda h, rows: h + shifts[rows][:, None, :]})
    for i, prompt in enumerate(prompts):
        with hooks.edit_residual(model, {2: lambda h, i=i: h + shifts[i]}):
            alone = decoding.greedy(model, tokenizer, [prompt], 10, batch_size=1,
                                    stop=lambda text: len(text.strip()) >= 8 * (1 + len(text) % 3))
        assert edited[i] == alone[0], i
    assert len(set(edited)) > 1


def test_the_chat_head_runs_once_and_not_under_an_edit_or_with_gradients(lively):
    model, tokenizer = lively
    ids = tokenizer([models.chat_prompt(tokenizer, p) for p in PROMPTS[:4]], add_special_tokens=False)["input_ids"]
    assert batching.shared_head(model, ids) is None  # gradients on: a training forward must see each row whole
    with torch.inference_mode():
        head = batching.shared_head(model, ids)
        with hooks.edit_residual(model, {1: lambda h: h}):
            assert batching.shared_head(model, ids) is None
        logits, _, mask = decoding.prefill(model, ids, tokenizer.pad_token_id, head)
        whole, _, _ = decoding.prefill(model, ids, tokenizer.pad_token_id)
    fixed = models.chat_prompt(tokenizer, "\x00").split("\x00")[0]  # the template up to the user's text
    assert head is not None and head.length == len(tokenizer(fixed, add_special_tokens=False)["input_ids"])
    assert all(row[:head.length] == ids[0][:head.length] for row in ids)
    assert mask.shape[1] == max(len(row) for row in ids)
    torch.testing.assert_close(logits, whole, atol=1e-4, rtol=1e-4)


def test_the_decoding_pass_scores_each_response_like_a_forward_over_its_tokens(lively):
    model, tokenizer = lively
    prompts = PROMPTS[:7]
    responses, perplexities = decoding.greedy_scored(model, tokenizer, prompts, 9, batch_size=3)
    assert responses == decoding.greedy(model, tokenizer, prompts, 9, batch_size=3)
    for prompt, ppl in zip(prompts, perplexities):  # each prompt alone: model.generate's tokens, then one forward
        enc = tokenizer(models.chat_prompt(tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
        ids = model.generate(**enc, max_new_tokens=9, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        with torch.inference_mode():
            logprobs = model(ids).logits[0, :-1].float().log_softmax(-1)
        start = enc["input_ids"].shape[1]
        new = ids[0, start:]
        chosen = logprobs[start - 1:].gather(1, new[:, None])[:, 0]
        kept = ~torch.isin(new, torch.tensor(tokenizer.all_special_ids))
        assert kept.any()
        assert ppl == pytest.approx(float(torch.exp(-chosen[kept].mean())), rel=1e-4)
