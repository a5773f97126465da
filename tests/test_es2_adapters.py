"""Adapters (es2_lib/adapters.py) on the tiny random model: LoRA or every weight, the base back, save and load."""

from __future__ import annotations

import pytest
import torch

from es2_lib import adapters, models, separation

PROMPTS = ["Explain how plants grow", "Write a poem about spring"]
LORA = dict(seed=0, lora_r=4, lora_alpha=8.0, lora_dropout=0.0, lora_targets=["q_proj", "v_proj"])


def _nudge(model) -> None:
    """Move every trainable weight, as a training step would."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weight in (w for w in model.parameters() if w.requires_grad):
            weight.add_(0.5 * torch.randn(weight.shape, generator=gen))


def test_lora_trains_only_the_adapter_and_saves_and_loads(tiny, tmp_path):
    model, tokenizer = tiny
    base = separation.next_token_logprobs(model, tokenizer, PROMPTS)
    tuned = adapters.attach_adapter(model, "lora", **LORA)
    trainable = [n for n, w in tuned.named_parameters() if w.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    torch.testing.assert_close(separation.next_token_logprobs(tuned, tokenizer, PROMPTS), base)  # B starts at 0
    _nudge(tuned)
    expected = separation.next_token_logprobs(tuned, tokenizer, PROMPTS)
    assert not torch.allclose(expected, base, atol=1e-4)
    with adapters.base_model(tuned):
        torch.testing.assert_close(separation.next_token_logprobs(tuned, tokenizer, PROMPTS), base)
    assert adapters.save_adapter(tuned, tmp_path / "adapter") == tmp_path / "adapter"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temporary folder left
    loaded = adapters.load_tuned(models.load_model("tiny")[0], tmp_path / "adapter")
    torch.testing.assert_close(separation.next_token_logprobs(loaded, tokenizer, PROMPTS), expected)
    half = adapters.load_tuned(models.load_model("tiny", dtype="bfloat16")[0], tmp_path / "adapter")
    assert {w.dtype for n, w in half.named_parameters() if "lora_" in n} == {torch.bfloat16}  # the base's dtype


def test_full_fine_tuning_has_no_base_model_and_loads_its_weights(tiny, tmp_path):
    model, tokenizer = tiny
    tuned = adapters.attach_adapter(model, "full", **LORA)
    assert tuned is model and all(w.requires_grad for w in model.parameters())
    with pytest.raises(TypeError, match="compute base quantities before training"):
        with adapters.base_model(tuned):
            pass
    _nudge(tuned)
    adapters.save_adapter(tuned, tmp_path / "full")
    loaded = adapters.load_tuned(models.load_model("tiny")[0], tmp_path / "full")
    torch.testing.assert_close(separation.next_token_logprobs(loaded, tokenizer, PROMPTS),
                               separation.next_token_logprobs(tuned, tokenizer, PROMPTS))
    with pytest.raises(FileNotFoundError, match="neither a peft adapter"):
        adapters.load_tuned(model, tmp_path)



def test_perturb_moves_lora_b_off_zero_and_full_weights_by_their_own_scale(tiny):
    model, tokenizer = tiny
    base = separation.next_token_logprobs(model, tokenizer, PROMPTS)
    tuned = adapters.attach_adapter(model, "lora", **LORA)
    a_before = {n: w.clone() for n, w in tuned.named_parameters() if "lora_A" in n}
    adapters.perturb(tuned, 0.01, seed=0)
    b = [w for n, w in tuned.named_parameters() if "lora_B" in n]
    assert all(w.abs().max() > 0 for w in b) and torch.cat([w.flatten() for w in b]).std().item() == pytest.approx(0.01, rel=0.1)
    assert all(torch.equal(w, a_before[n]) for n, w in tuned.named_parameters() if "lora_A" in n)
    assert not torch.allclose(separation.next_token_logprobs(tuned, tokenizer, PROMPTS), base)
    full = adapters.attach_adapter(models.load_model("tiny", "float32", "cpu", 0)[0], "full", **LORA)
    before = {n: w.clone() for n, w in full.named_parameters()}
    adapters.perturb(full, 0.01, seed=0)
    name, w = next((n, w) for n, w in full.named_parameters() if w.ndim == 2 and before[n].std() > 0)
    assert (w - before[name]).std().item() == pytest.approx(0.01 * before[name].std().item(), rel=0.1)
