"""Last-prompt-token residual stream on the tiny 4-layer model: values, layer convention, early stop, gradients."""

from __future__ import annotations

import pytest
import torch

from es2_lib import models, representations

PROMPTS = ["How do I bake bread?", "Hi", "Write a long poem about the sea, the wind and the stars at night.",
           "List three prime numbers."]


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_states_equal_full_forward_and_raw_last_block(tiny):
    model, tokenizer = tiny
    n_layers = models.num_layers(model)
    batch = representations.encode_prompts(tokenizer, PROMPTS, "cpu")
    assert tokenizer.padding_side == "left" and not bool(batch["attention_mask"][:, 0].all())  # really padded
    raw_last = {}
    handle = models.decoder_layers(model)[-1].register_forward_hook(lambda m, a, out: raw_last.update(h=out))
    with torch.no_grad():
        full = model(**batch, position_ids=representations.position_ids(batch["attention_mask"]),
                     output_hidden_states=True, use_cache=False)
        ours = representations.last_token_hidden(model, batch, list(range(n_layers + 1)))
    handle.remove()
    assert ours.shape == (len(PROMPTS), n_layers + 1, model.config.hidden_size)
    for layer in range(n_layers):
        torch.testing.assert_close(ours[:, layer], full.hidden_states[layer][:, -1], atol=1e-5, rtol=1e-5)
    # layer L is the raw output of the last block; HF's hidden_states[L] is that after the final norm
    torch.testing.assert_close(ours[:, n_layers], raw_last["h"][:, -1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours[:, n_layers], full.hidden_states[n_layers][:, -1], atol=1e-3)
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


def test_forward_stops_after_deepest_layer(tiny):
    model, tokenizer = tiny
    blocks = models.decoder_layers(model)
    calls = {name: 0 for name in ["block1", "block2", "block3", "block4", "norm", "lm_head"]}
    modules = dict(zip(calls, [*blocks, model.model.norm, model.get_output_embeddings()]))
    for name, module in modules.items():
        module.register_forward_hook(lambda m, a, out, name=name: calls.__setitem__(name, calls[name] + 1))
    batch = representations.encode_prompts(tokenizer, PROMPTS[:2], "cpu")
    representations.last_token_hidden(model, batch, [2, 1])
    assert calls == dict(block1=1, block2=1, block3=0, block4=0, norm=0, lm_head=0)
    representations.last_token_hidden(model, batch, [0])
    assert calls["block1"] == 1  # layer 0 alone: no block runs
    representations.last_token_hidden(model, batch, [4])
    assert calls == dict(block1=2, block2=2, block3=1, block4=1, norm=0, lm_head=0)


def test_gradients_flow_to_first_block(tiny):
    model, tokenizer = tiny
    batch = representations.encode_prompts(tokenizer, PROMPTS[:2], "cpu")
    states = representations.last_token_hidden(model, batch, [1, 2])
    assert states.requires_grad
    states.pow(2).sum().backward()
    grad = models.decoder_layers(model)[0].mlp.down_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert models.decoder_layers(model)[3].mlp.down_proj.weight.grad is None  # never ran


def test_peft_wrapped_model(tiny):
    peft = pytest.importorskip("peft")
    model, tokenizer = tiny
    base = representations.last_token_states(model, tokenizer, PROMPTS[:2], [1, 4])
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.testing.assert_close(representations.last_token_states(wrapped, tokenizer, PROMPTS[:2], [1, 4]), base)
    batch = representations.encode_prompts(tokenizer, PROMPTS[:2], "cpu")
    representations.last_token_hidden(wrapped, batch, [1]).sum().backward()
    lora_b = models.decoder_layers(wrapped)[0].self_attn.v_proj.lora_B["default"].weight
    assert lora_b.grad is not None and lora_b.grad.abs().sum() > 0


def test_bad_layers_raise_naming_the_range(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match=r"^layer 30 is out of range 0\.\.4 for "):
        representations.check_layers(model, [1, 30])
    for layers in [[5], [-1], [], [1.0], [True]]:
        with pytest.raises(ValueError, match=r"0\.\.4"):
            representations.check_layers(model, layers)
    with pytest.raises(ValueError, match=r"0\.\.4"):
        representations.last_token_states(model, tokenizer, PROMPTS[:1], [2, 5])
    assert representations.check_layers(model, (0, 4)) == [0, 4]


def test_hooks_removed_also_after_an_error(tiny):
    model, tokenizer = tiny
    before = _hook_count(model)
    batch = representations.encode_prompts(tokenizer, PROMPTS[:2], "cpu")
    representations.last_token_hidden(model, batch, [0, 2, 4])
    assert _hook_count(model) == before

    def fail(module, args, output):
        raise RuntimeError("block 2 failed")

    failing = models.decoder_layers(model)[1].register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="block 2 failed"):
        representations.last_token_hidden(model, batch, [1, 3])
    failing.remove()
    assert _hook_count(model) == before


def test_right_padding_is_refused(tiny):
    model, tokenizer = tiny
    tokenizer.padding_side = "right"
    batch = representations.encode_prompts(tokenizer, PROMPTS[:2], "cpu")
    with pytest.raises(ValueError, match="left padding"):
        representations.last_token_hidden(model, batch, [1])
