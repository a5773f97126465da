"""Supervised fine-tuning that returns its weight update: the "useful" (Code Alpaca), "harmful" (affirmative targets or
jailbroken responses) and benign updates whose subspaces Ponkshe et al. 2025 (arXiv 2505.14185) compare with ES2's,
and the seeded, disjoint draws of the (prompt, response) pairs they train on. See docs/architecture.md, "Related
systems".
"""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from . import data, judges, models, objective
from .progress import progress as progress_bar
from .weight_updates import Update, full_update, lora_update


def draw_pairs(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[dict], sizes: dict[str, int | None],
               max_prompt_tokens: int, seed: int, skip_refusals: bool = False) -> dict[str, list[dict]]:
    """Disjoint seeded draws {name: rows} of {prompt, response} rows whose chat prompt has at most
    `max_prompt_tokens` tokens, in the order of `sizes` (the last size may be None: all the remaining ones); with
    `skip_refusals`, responses the paper's keyword judge counts as refusals are left out (e.g. the "unsafe"
    responses that still say "As an AI language model")."""
    order = list(range(len(pairs)))
    random.Random(f"{seed}/pairs").shuffle(order)
    prompt_tokens = lambda row: len(tokenizer(models.chat_prompt(tokenizer, row["prompt"]),
                                              add_special_tokens=False)["input_ids"])
    usable = [pairs[i] for i in order if prompt_tokens(pairs[i]) <= max_prompt_tokens
              and not (skip_refusals and judges.is_refusal(pairs[i]["response"]))]
    if None in list(sizes.values())[:-1]:
        raise ValueError(f"only the last size may be None (all the remaining pairs), got {sizes}")
    fixed = sum(n for n in sizes.values() if n is not None)
    if fixed + (None in sizes.values()) > len(usable):
        raise ValueError(f"asked for {fixed} pairs ({sizes}) but only {len(usable)} of {len(pairs)} have a prompt of "
                         f"at most {max_prompt_tokens} tokens"
                         + (" and a non-refusal response" if skip_refusals else ""))
    draws, start = {}, 0
    for name, n in sizes.items():
        draws[name] = usable[start:] if n is None else usable[start:start + n]
        start += len(draws[name])
    return draws


def target_pairs(rows: Sequence[dict], what: str) -> list[dict]:
    """{prompt, response} pairs of harmful prompts and their affirmative targets ("Sure, here is ..."): the harmful
    fine-tuning attack (Qi et al. 2023) in its shortest form, the model learns to open compliantly and goes on by
    itself. A row without a target is a DataError naming `what`."""
    checked = data.with_targets(list(rows), what, "give the prompt file a 'target' column or set "
                                "subspace_harmful_pairs: hidden_context")
    return [{"prompt": r["prompt"], "response": r["target"]} for r in checked]


def fine_tune(model: nn.Module, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[dict],
              attach: Callable[[nn.Module], nn.Module], *, steps: int, lr: float, batch_size: int,
              response_tokens: int, seed: int, name: str = "fine-tune") -> tuple[Update, list[dict]]:
    """Supervised fine-tuning from the model's current weights, returning its update and leaves `model` as it was.

    `attach` makes the model trainable: it returns a peft LoRA wrapper (its layers are trained, read and removed)
    or the model itself with trainable weights (full tuning: every weight is restored after reading the change);
    stage 07 passes ES2's adapter settings. The loss is the cross-entropy of the first `response_tokens` response
    tokens after the chat prompt (objective.response_ce), AdamW at a constant `lr`, batches drawn in an order seeded by
    `seed` and `name` (also the progress label) that cycles through `pairs`."""
    if isinstance(model, PeftModel):
        raise TypeError("fine_tune needs a plain model (apply other updates with `applied`, not a peft wrapper)")
    if not pairs:
        raise ValueError("fine_tune needs at least one pair")
    requires_grad = {n: w.requires_grad for n, w in model.named_parameters()}
    tuned = attach(model)
    before = None if isinstance(tuned, PeftModel) else {n: w.detach().clone() for n, w in model.named_parameters()}
    trainable = [w for w in tuned.parameters() if w.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    order = [i for epoch in range(math.ceil(steps * batch_size / len(pairs)))
             for i in random.Random(f"{seed}/{name}/{epoch}").sample(range(len(pairs)), len(pairs))]
    log = []
    try:
        tuned.train()
        for step in progress_bar(range(steps), desc=name):
            batch = [pairs[i] for i in order[step * batch_size:(step + 1) * batch_size]]
            loss = objective.response_ce(tuned, tokenizer, [(r["prompt"], r["response"]) for r in batch], response_tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            log.append({"step": step, "loss": loss.item()})
        update = lora_update(tuned) if before is None else full_update(model, before)
    finally:  # leave the model as it came, also when training fails
        tuned.eval()
        if before is None:
            tuned.unload()
        else:
            with torch.no_grad():
                for param, weight in model.named_parameters():
                    weight.copy_(before[param])
        for param, weight in model.named_parameters():
            weight.requires_grad_(requires_grad[param])
    return update, log
