"""Hidden representations of prompts: the residual stream at the last prompt token (DESIGN.md §1, "Representation").

ES2's separation loss, the linear probes that find the emergence layers, and the embedding attacks (SCAV, RepE) all
read the residual-stream state of the last prompt token after the chat template with the generation prompt.
Layer convention: layer `l` in `0..L` (L = `config.num_hidden_layers`); 0 is the embedding output (the input of
decoder block 1), `l` is the output of decoder block `l`, *before* the final norm. Note that HF's
`output_hidden_states=True` returns the last entry *after* the final norm (Qwen2, Llama, ...), so our layer L is
not `hidden_states[L]`; layers 0..L-1 are. Following DESIGN.md §7 the forward stops after the deepest requested
layer: later blocks, the final norm and the lm_head never run.
"""

from __future__ import annotations

import numbers
from typing import Iterable, Mapping

import torch
from torch import nn
from transformers import BatchEncoding, PreTrainedTokenizerBase

from . import models
from .progress import progress as progress_bar


class _StopForward(Exception):
    """Raised from the hook of the deepest requested layer to end the forward pass there."""


def check_layers(model: nn.Module, layers: Iterable[int]) -> list[int]:
    """Return `layers` as a list of ints, or raise ValueError naming the valid range 0..L."""
    n_layers = models.num_layers(model)
    config = model.config
    path = getattr(config, "_name_or_path", "")
    name = f"{path} ({config.model_type})" if path else config.model_type
    layers = list(layers)
    if not layers:
        raise ValueError(f"no layers requested; choose layers in 0..{n_layers} for {name}")
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise ValueError(f"layer {layer!r} is not an int; choose layers in 0..{n_layers} for {name}")
        if not 0 <= layer <= n_layers:
            raise ValueError(f"layer {layer} is out of range 0..{n_layers} for {name}")
    return [int(layer) for layer in layers]


def _texts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str] | None) -> list[str]:
    """Each prompt in the chat template with the generation prompt, followed by its response when given."""
    texts = [models.chat_prompt(tokenizer, prompt) for prompt in prompts]
    if responses is None:
        return texts
    return [text + response for text, response in zip(texts, responses, strict=True)]


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], device: torch.device | str,
                   responses: list[str] | None = None) -> BatchEncoding:
    """Chat-format the user prompts (with the generation prompt) and tokenize them as one padded batch.

    The tokenizer from `models.load_model` pads on the left, so position -1 is every row's last prompt token
    (with `responses`: each prompt is followed by its response, and position -1 is the response's last token)."""
    texts = _texts(tokenizer, prompts, responses)
    return tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt").to(device)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens (as `generate` does), so a left-padded row matches its unpadded self."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_hidden(model: nn.Module, batch: Mapping[str, torch.Tensor], layers: list[int]) -> torch.Tensor:
    """Residual stream at the last position of a left-padded batch: [batch, len(layers), hidden], differentiable.

    `batch` holds `attention_mask` and `input_ids` (or `inputs_embeds`). Forward hooks on the decoder blocks
    capture the states; the hook of the deepest requested layer ends the forward, so no later block and no
    lm_head runs. Works for peft-wrapped models; the hooks are removed also when the forward fails."""
    layers = check_layers(model, layers)
    mask = batch["attention_mask"]
    if not bool(mask[:, -1].all()):
        raise ValueError("last_token_hidden needs left padding (tokenizer.padding_side = 'left'): "
                         "some rows do not end in a real token")
    blocks = models.decoder_layers(model)
    deepest = max(layers)
    captured: dict[int, torch.Tensor] = {}  # layer -> [batch, hidden]

    def capture(layer: int, hidden: torch.Tensor) -> None:
        captured[layer] = hidden[:, -1]
        if layer == deepest:
            raise _StopForward

    def embedding_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        capture(0, args[0] if args else kwargs["hidden_states"])

    def block_hook(layer: int):
        def hook(module: nn.Module, args: tuple, output) -> None:
            capture(layer, output[0] if isinstance(output, tuple) else output)
        return hook

    handles = []
    try:
        if 0 in layers:
            handles.append(blocks[0].register_forward_pre_hook(embedding_hook, with_kwargs=True))
        for layer in sorted(set(layers) - {0}):
            handles.append(blocks[layer - 1].register_forward_hook(block_hook(layer)))
        inputs = {key: batch[key] for key in ("input_ids", "inputs_embeds") if key in batch}
        model(**inputs, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
        raise RuntimeError(f"the forward pass of {type(model).__name__} never reached decoder block {deepest}")
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([captured[layer] for layer in layers], dim=1)


def last_token_states(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    layers: list[int],
    batch_size: int = 8,
    progress: bool = False,
    responses: list[str] | None = None,
) -> torch.Tensor:
    """Last-prompt-token states of many prompts: float32 on CPU, [n, len(layers), hidden], no grad.

    With `responses` (one per prompt): the states at the last token of each response after its chat prompt.
    Prompts are batched by token length (less padding) and returned in the input order. The model is used in
    whatever mode it is in (`models.load_model` returns it in eval mode)."""
    layers = check_layers(model, layers)
    device = model.get_input_embeddings().weight.device
    texts = _texts(tokenizer, prompts, responses)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])  # longest first: memory peaks early
    states = torch.empty(len(prompts), len(layers), model.config.hidden_size)  # [n, layers, hidden]
    starts = range(0, len(prompts), batch_size)
    with torch.inference_mode():
        for start in progress_bar(starts, desc="hidden states") if progress else starts:
            index = order[start:start + batch_size]
            batch = encode_prompts(tokenizer, [prompts[i] for i in index], device,
                                   None if responses is None else [responses[i] for i in index])
            states[index] = last_token_hidden(model, batch, layers).float().cpu()
    return states
