"""Hidden representations of prompts: the residual stream at the last prompt token (paper Section 3; the layer
convention and reads are those of hooks.py, see docs/architecture.md, 'Representations').

ES2's separation loss, the linear probes that find the emergence layers, and the embedding attacks (SCAV, RepE) all
read the residual-stream state of the last prompt token after the chat template with the generation prompt:
layer 0 is the embedding output, layer `l` the output of decoder block `l` before the final norm. This module
chat-formats and tokenizes prompts (left padding, so position -1 is every row's last prompt token) and reads those
states for many prompts in length-sorted batches, from the cache of the chat template's fixed head
(`batching.shared_head`); each read stops the forward after the deepest requested layer.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BatchEncoding, PreTrainedTokenizerBase

from . import batching, hooks, models
from .progress import progress as progress_bar


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
    layers = hooks.check_layers(model, layers)
    device = model.get_input_embeddings().weight.device
    texts = _texts(tokenizer, prompts, responses)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    batching.check_fits([len(row) for row in ids], getattr(model.config, "max_position_embeddings", None))
    batches = batching.length_sorted([len(row) for row in ids], batch_size)  # longest first: memory peaks early
    states = torch.empty(len(prompts), len(layers), model.config.hidden_size)  # [n, layers, hidden]
    with torch.inference_mode():
        head = batching.shared_head(model, ids)  # the chat template's fixed head, run once
        for index in progress_bar(batches, desc="hidden states") if progress else batches:
            batch = batching.head_inputs([ids[i] for i in index], tokenizer.pad_token_id, device, head)
            states[index] = hooks.run_with_cache(model, batch, layers).float().cpu()
    return states
