"""The one batcher and the prompt + target helper: order, padding, and logits only where they are scored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from es2_lib import batching, generation, hooks, models, representations


def test_length_sorted_is_longest_first_and_covers_every_index():
    batches = batching.length_sorted([3, 9, 1, 9, 5], batch_size=2)
    assert batches == [[1, 3], [4, 0], [2]]
    assert batching.length_sorted([], 4) == []


def test_left_pad_and_targets_are_right_aligned():
    batch = batching.prompt_target_batch([[5, 6, 7], [8]], [[1], [2, 3]], pad_id=0, device="cpu")
    assert batch.input_ids.tolist() == [[5, 6, 7, 1], [0, 8, 2, 3]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    assert batch.targets.tolist() == [[batching.IGNORE, 1], [2, 3]]


def test_target_nll_equals_a_full_forward_per_row(lively):
    model, tokenizer = lively
    prompts = [tokenizer(models.chat_prompt(tokenizer, q), add_special_tokens=False)["input_ids"]
               for q in ["Hi", "Tell me about the tides of the northern sea"]]
    targets = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ["Sure, here is a plan", "No"]]
    batch = batching.prompt_target_batch(prompts, targets, tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        nll = batching.target_nll(model, batch)
        for row, (prompt, target) in enumerate(zip(prompts, targets)):
            ids = torch.tensor([prompt + target])
            logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt) - 1:-1].float()
            expected = F.cross_entropy(logits, torch.tensor(target), reduction="none")
            torch.testing.assert_close(nll[row, -len(target):], expected, atol=1e-4, rtol=1e-4)
    assert nll[1, 0] == 0  # the shorter target's padding is not scored


def test_tail_logits_runs_the_head_on_the_scored_positions_only(tiny):
    model, tokenizer = tiny
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(tuple(a[0].shape[:-1])))
    ids, mask = batching.left_pad([[1, 2, 3, 4, 5], [6, 7]], tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        shifted = batching.tail_logits(model, ids, mask, k=2, shift=1)
        last = batching.tail_logits(model, ids, mask, k=1)
        next_token = batching.last_logits(model, ids, mask)
        full = model(input_ids=ids, attention_mask=mask, position_ids=hooks.position_ids(mask)).logits.float()
    assert seen == [(2, 2), (2, 1), (2,), (2, ids.shape[1])]
    torch.testing.assert_close(shifted, full[:, -3:-1])
    torch.testing.assert_close(last, full[:, -1:])
    torch.testing.assert_close(next_token, full[:, -1])


def test_a_prompt_too_long_for_the_model_is_a_clear_error(tiny):
    model, tokenizer = tiny
    batching.check_fits([10, 2000], 2048, new_tokens=48)
    with pytest.raises(ValueError, match=r"1 of 2 prompts are too long .* prompt 1 has 2001 tokens .* \+ 48 new.* "
                                         r"the model takes 2048 positions"):
        batching.check_fits([10, 2001], 2048, new_tokens=48)
    long = "word " * 3000  # past the tiny model's 2048 positions
    with pytest.raises(ValueError, match="too long for the model"):
        generation.generate(model, tokenizer, ["hi", long], max_new_tokens=4, batch_size=2)
    with pytest.raises(ValueError, match="too long for the model"):
        representations.last_token_states(model, tokenizer, [long], [1])
