"""The hook vocabulary on the tiny 4-layer model: the layer convention, early stop, gradients, peft, edits."""

from __future__ import annotations

import pytest
import torch

from es2_lib import hooks, models, representations

PROMPTS = ["How do I bake bread?", "Hi", "Write a long poem about the sea, the wind and the stars at night.",
           "List three prime numbers."]


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _batch(tokenizer, prompts=PROMPTS):
    return representations.encode_prompts(tokenizer, prompts, "cpu")


def test_states_equal_full_forward_and_raw_last_block(tiny):
    model, tokenizer = tiny
    n_layers = models.num_layers(model)
    batch = _batch(tokenizer)
    assert tokenizer.padding_side == "left" and not bool(batch["attention_mask"][:, 0].all())  # really padded
    raw_last = {}
    handle = models.decoder_layers(model)[-1].register_forward_hook(lambda m, a, out: raw_last.update(h=out))
    with torch.no_grad():
        full = model(**batch, position_ids=hooks.position_ids(batch["attention_mask"]),
                     output_hidden_states=True, use_cache=False)
        ours = hooks.run_with_cache(model, batch, list(range(n_layers + 1)))
        every = hooks.run_with_cache(model, batch, [2], position=None)
    handle.remove()
    assert ours.shape == (len(PROMPTS), n_layers + 1, model.config.hidden_size)
    for layer in range(n_layers):
        torch.testing.assert_close(ours[:, layer], full.hidden_states[layer][:, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(every[:, 0], full.hidden_states[2], atol=1e-5, rtol=1e-5)
    # layer L is the raw output of the last block; HF's hidden_states[L] is that after the final norm
    torch.testing.assert_close(ours[:, n_layers], raw_last["h"][:, -1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours[:, n_layers], full.hidden_states[n_layers][:, -1], atol=1e-3)


def test_states_with_logprobs_equal_a_full_forward(tiny):
    model, tokenizer = tiny
    batch = _batch(tokenizer)
    with torch.no_grad():
        states, logprobs = hooks.run_with_cache_and_logprobs(model, batch, [3, 1, 4])
        full = model(**batch, position_ids=hooks.position_ids(batch["attention_mask"]), use_cache=False)
        torch.testing.assert_close(states, hooks.run_with_cache(model, batch, [3, 1, 4]))
    torch.testing.assert_close(logprobs, full.logits[:, -1].float().log_softmax(-1), atol=1e-5, rtol=1e-5)


def test_forward_stops_after_deepest_layer(tiny):
    model, tokenizer = tiny
    blocks = models.decoder_layers(model)
    calls = {name: 0 for name in ["block1", "block2", "block3", "block4", "norm", "lm_head"]}
    modules = dict(zip(calls, [*blocks, model.model.norm, model.get_output_embeddings()]))
    for name, module in modules.items():
        module.register_forward_hook(lambda m, a, out, name=name: calls.__setitem__(name, calls[name] + 1))
    batch = _batch(tokenizer, PROMPTS[:2])
    hooks.run_with_cache(model, batch, [2, 1])
    assert calls == dict(block1=1, block2=1, block3=0, block4=0, norm=0, lm_head=0)
    hooks.run_with_cache(model, batch, [0])
    assert calls["block1"] == 1  # layer 0 alone: no block runs
    hooks.run_with_cache(model, batch, [4])
    assert calls == dict(block1=2, block2=2, block3=1, block4=1, norm=0, lm_head=0)


def test_gradients_flow_and_peft_wrapped_model(tiny):
    peft = pytest.importorskip("peft")
    model, tokenizer = tiny
    batch = _batch(tokenizer, PROMPTS[:2])
    base = hooks.run_with_cache(model, batch, [1, 4]).detach()
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    states = hooks.run_with_cache(wrapped, batch, [1, 2])
    torch.testing.assert_close(hooks.run_with_cache(wrapped, batch, [1, 4]), base)  # LoRA B starts at zero
    states.pow(2).sum().backward()
    lora_b = models.decoder_layers(wrapped)[0].self_attn.v_proj.lora_B["default"].weight
    assert lora_b.grad is not None and lora_b.grad.abs().sum() > 0
    assert models.decoder_layers(wrapped)[3].self_attn.v_proj.lora_B["default"].weight.grad is None  # never ran


def test_bad_layers_raise_naming_the_range(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match=r"^layer 30 is out of range 0\.\.4 for "):
        hooks.check_layers(model, [1, 30])
    for layers in [[5], [-1], [], [1.0], [True]]:
        with pytest.raises(ValueError, match=r"0\.\.4"):
            hooks.check_layers(model, layers)
    assert hooks.check_layers(model, (0, 4)) == [0, 4]


def test_hooks_removed_also_after_an_error(tiny):
    model, tokenizer = tiny
    before = _hook_count(model)
    batch = _batch(tokenizer, PROMPTS[:2])
    hooks.run_with_cache(model, batch, [0, 2, 4])
    with hooks.edit_residual(model, {0: lambda h: h, 2: lambda h: h}):
        assert _hook_count(model) == before + 2
    assert _hook_count(model) == before

    def fail(module, args, output):
        raise RuntimeError("block 2 failed")

    failing = models.decoder_layers(model)[1].register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="block 2 failed"):
        hooks.run_with_cache(model, batch, [1, 3])
    with pytest.raises(RuntimeError, match="block 2 failed"), hooks.edit_residual(model, {3: lambda h: h}):
        model(**batch)
    failing.remove()
    assert _hook_count(model) == before


def test_right_padding_is_refused(tiny):
    model, tokenizer = tiny
    tokenizer.padding_side = "right"
    with pytest.raises(ValueError, match="left padding"):
        hooks.run_with_cache(model, _batch(tokenizer, PROMPTS[:2]), [1])


def test_edit_changes_exactly_its_layer_and_what_follows(lively):
    model, tokenizer = lively
    batch = _batch(tokenizer, PROMPTS[:2])
    shift = torch.zeros(model.config.hidden_size)
    shift[0] = 5.0
    with torch.no_grad():
        clean = hooks.run_with_cache(model, batch, [1, 2, 3])
        with hooks.edit_residual(model, {2: lambda h: h + shift}):
            edited = hooks.run_with_cache(model, batch, [1, 2, 3])
        with hooks.edit_residual(model, {0: lambda h: h * 0}):
            zeroed = hooks.run_with_cache(model, batch, [0])
    torch.testing.assert_close(edited[:, 0], clean[:, 0])  # before the edit: unchanged
    torch.testing.assert_close(edited[:, 1], clean[:, 1] + shift)  # at the edited layer: exactly the edit
    assert not torch.allclose(edited[:, 2], clean[:, 2] + shift, atol=1e-3)  # later blocks see the edit
    assert zeroed.abs().max() == 0  # an edit of layer 0 rewrites the input of block 1
