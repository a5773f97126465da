"""The trainable part of an ES2 model (paper Section 3): a LoRA adapter through peft, or every weight.

`attach_adapter` makes the model trainable, `base_model` gives the base network back without a second copy (the
LoRA adapter disabled), `save_adapter` / `load_tuned` write a trained adapter and put it back on a freshly loaded
base model. See docs/architecture.md, 'Arms'.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

from . import models, runs


def attach_adapter(model: nn.Module, adapter: str, seed: int, lora_r: int, lora_alpha: float, lora_dropout: float,
                   lora_targets: Sequence[str], blocks: Sequence[int] | None = None) -> nn.Module:
    """`adapter` "lora": a LoRA-wrapped PeftModel (only the adapter trains; its initial weights drawn after
    `torch.manual_seed(seed)`); "full": the model itself with every weight trainable. `blocks`: only these decoder
    blocks (0-based) get LoRA, or with "full" train (None: all blocks; "full" then trains every weight)."""
    torch.manual_seed(seed)
    if adapter == "lora":
        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                            target_modules=list(lora_targets), task_type="CAUSAL_LM",
                            layers_to_transform=None if blocks is None else list(blocks))
        with warnings.catch_warnings():  # peft calls a deprecated transformers property
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)
    if blocks is None:
        for weight in model.parameters():
            weight.requires_grad_(True)
        return model
    for weight in model.parameters():
        weight.requires_grad_(False)
    layers = models.decoder_layers(model)
    for block in blocks:
        for weight in layers[block].parameters():
            weight.requires_grad_(True)
    return model


def perturb(model: nn.Module, std: float, seed: int) -> None:
    """Move a just-attached adapter off the base model: LoRA's B matrices (zero at init) drawn from N(0, std²); for
    full fine-tuning each trainable weight gets noise of `std` times its own standard deviation. An objective that
    is stationary at the base model (RR's ReLU(cos(h, h_base)) has zero gradient at h = h_base) needs this."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if not weight.requires_grad or (isinstance(model, PeftModel) and "lora_B" not in name):
                continue
            noise = torch.randn(weight.shape, generator=generator).to(weight.device, weight.dtype)
            weight.add_(noise * (std if isinstance(model, PeftModel) else std * weight.float().std().item()))


@contextlib.contextmanager
def base_model(model: nn.Module) -> Iterator[nn.Module]:
    """The base network: a PeftModel with its adapter disabled (no second copy); other models cannot."""
    if not isinstance(model, PeftModel):
        raise TypeError("the base model of a fully fine-tuned model is gone: compute base quantities before training")
    with model.disable_adapter():
        yield model


def save_adapter(model: nn.Module, target: str | Path) -> Path:
    """Save a trained model's adapter (peft format; every weight after full fine-tuning) atomically into `target`."""
    target = Path(target)
    with runs.atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
    return target


def load_tuned(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Apply a saved ES2 adapter to a freshly loaded base model; returns it in eval mode (a PeftModel for LoRA,
    so `base_model(model)` gives the base back; the model itself with the tuned weights for full tuning). LoRA
    weights take the base model's dtype (peft would keep them float32 beside bfloat16 weights: slower, every
    forward casting)."""
    adapter_dir = Path(adapter_dir)
    if (adapter_dir / "adapter_config.json").is_file():
        with warnings.catch_warnings():  # peft calls a deprecated transformers property
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return PeftModel.from_pretrained(model, adapter_dir, autocast_adapter_dtype=False).eval()
    files = sorted(adapter_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{adapter_dir} holds neither a peft adapter nor safetensors weights")
    expected = set(model.state_dict())
    for file in files:
        weights = load_file(str(file))
        unknown = set(weights) - expected
        if unknown:
            raise ValueError(f"{file} holds weights the model lacks, e.g. {sorted(unknown)[0]!r}")
        model.load_state_dict(weights, strict=False)
    return model.eval()
