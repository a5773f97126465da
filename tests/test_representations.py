"""Last-prompt-token states of many prompts (representations.py) on the tiny 4-layer model: the same states as
one full forward, the requested layer order, length-sorted batches in input order, responses, peft models. The
hook mechanics (early stop, gradients, hook removal, left padding) are tested in test_hooks.py."""

from __future__ import annotations

import pytest
import torch

from es2_lib import hooks, models, representations

PROMPTS = ["How do I bake bread?", "Hi", "Write a long poem about the sea, the wind and the stars at night.",
           "List three prime numbers."]


def test_states_equal_a_full_forward_at_every_layer(tiny):
    model, tokenizer = tiny
    n_layers = models.num_layers(model)
    batch = representations.encode_prompts(tokenizer, PROMPTS, "cpu")
    assert tokenizer.padding_side == "left" and not bool(batch["attention_mask"][:, 0].all())  # really padded
    with torch.no_grad():
        full = model(**batch, position_ids=hooks.position_ids(batch["attention_mask"]), output_hidden_states=True,
                     use_cache=False)
    ours = representations.last_token_states(model, tokenizer, PROMPTS, list(range(n_layers + 1)), batch_size=4)
    assert ours.shape == (len(PROMPTS), n_layers + 1, model.config.hidden_size)
    for layer in range(n_layers):
        torch.testing.assert_close(ours[:, layer], full.hidden_states[layer][:, -1], atol=1e-5, rtol=1e-5)
    # layer L is the last block's raw output; HF's hidden_states[L] is that after the final norm
    torch.testing.assert_close(model.model.norm(ours[:, n_layers]), full.hidden_states[n_layers][:, -1],
                               atol=1e-5, rtol=1e-5)


def test_layer_order_and_duplicates_follow_the_request(tiny):
    model, tokenizer = tiny
    states = representations.last_token_states(model, tokenizer, PROMPTS[:2], [3, 1, 3])
    ordered = representations.last_token_states(model, tokenizer, PROMPTS[:2], [1, 3])
    torch.testing.assert_close(states, ordered[:, [1, 0, 1]])


def test_batched_left_padded_equals_one_by_one(tiny):
    model, tokenizer = tiny
    layers = [0, 2, 4]
    batched = representations.last_token_states(model, tokenizer, PROMPTS, layers, batch_size=3)
    assert batched.dtype == torch.float32 and batched.device.type == "cpu" and not batched.requires_grad
    single = torch.cat([representations.last_token_states(model, tokenizer, [p], layers) for p in PROMPTS])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batched[0], batched[1])  # distinct prompts, distinct states (order restored)


def test_states_after_responses_read_the_last_response_token(lively):
    model, tokenizer = lively
    responses = ["Sure, here is how.", "No."]
    states = representations.last_token_states(model, tokenizer, PROMPTS[:2], [2], responses=responses)
    batch = representations.encode_prompts(tokenizer, PROMPTS[:2], "cpu", responses=responses)
    with torch.no_grad():
        torch.testing.assert_close(states, hooks.run_with_cache(model, batch, [2]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(states, representations.last_token_states(model, tokenizer, PROMPTS[:2], [2]))
    with pytest.raises(ValueError):
        representations.last_token_states(model, tokenizer, PROMPTS[:2], [2], responses=responses[:1])


def test_peft_wrapped_model(tiny):
    peft = pytest.importorskip("peft")
    model, tokenizer = tiny
    base = representations.last_token_states(model, tokenizer, PROMPTS[:2], [1, 4])
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.testing.assert_close(representations.last_token_states(wrapped, tokenizer, PROMPTS[:2], [1, 4]), base)


def test_bad_layers_raise_naming_the_range(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match=r"out of range 0\.\.4"):
        representations.last_token_states(model, tokenizer, PROMPTS[:1], [2, 5])
