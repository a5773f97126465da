"""The one batcher and the one prompt + target helper: length-sorted index batches, left padding, the shared chat
head, and teacher-forced logits computed only at the positions that are scored (docs/architecture.md, "Speed").

The shared head: the tokens every row of a call starts with (the chat template's fixed part, the system prompt) run
through the model once per call (`shared_head`); each batch's forward then starts from a copy of their KV cache
(`head_inputs`), so about half of each chat prompt is not recomputed. Only without gradients and not under a
residual edit (an edited forward, e.g. SCAV's move of the last position, must see each row whole).

Every teacher-forced score of the library (response perplexity, the refusal cross-entropy of ES2's retain term,
multiple-choice letters, harmless drift, soft prompts, fine-tuning losses) is built from these: the prompt and its
target are concatenated per row and padded on the left, so each row's target ends at the last position; the
decoder runs without the lm_head, which is applied to the scored positions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from . import hooks, models
from .hooks import position_ids

IGNORE = -100  # target id of a position that is not scored (F.cross_entropy's ignore_index)


def length_sorted(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (memory errors show at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def check_fits(lengths: Sequence[int], max_positions: int | None, new_tokens: int = 0) -> None:
    """A ValueError naming the first text whose `lengths[i]` tokens plus `new_tokens` generated ones exceed the
    model's `max_positions` (config.max_position_embeddings; None: no limit), instead of a silent overrun."""
    too_long = [i for i, n in enumerate(lengths) if max_positions is not None and n + new_tokens > max_positions]
    if too_long:
        i = too_long[0]
        raise ValueError(f"{len(too_long)} of {len(lengths)} prompts are too long for the model: prompt {i} has "
                         f"{lengths[i]} tokens (chat template included){f' + {new_tokens} new' if new_tokens else ''}"
                         f", the model takes {max_positions} positions (max_position_embeddings); shorten or drop "
                         f"such prompts from the prompt set")


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded on the left to one width: (input_ids, attention_mask), both [batch, width]."""
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(row)) + list(row) for row in rows], device=device)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=device)
    return input_ids, mask


@dataclass(frozen=True)
class SharedHead:
    """The first `length` tokens of every row of a call and their KV cache (batch 1), computed once."""

    length: int
    cache: DynamicCache


def shared_head(model: nn.Module, rows: Sequence[Sequence[int]]) -> SharedHead | None:
    """The longest token prefix all `rows` share (leaving every row at least one token of its own), run once; None
    for fewer than 2 rows, when they share fewer than 2 tokens, under a residual edit (`hooks.editing`) or with
    gradients on."""
    if len(rows) < 2 or hooks.editing(model) or torch.is_grad_enabled():
        return None
    length = min(len(row) for row in rows) - 1
    for row in rows:
        length = next((k for k in range(length) if row[k] != rows[0][k]), length)
    if length < 2:
        return None
    decoder, _ = models.decoder_and_head(model)  # the cache is all that is needed: no lm_head
    ids = torch.tensor([list(rows[0][:length])], device=model.get_input_embeddings().weight.device)
    out = decoder(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=DynamicCache(), use_cache=True)
    return SharedHead(length, out.past_key_values)


def head_cache(head: SharedHead, n: int) -> DynamicCache:
    """A copy of `head`'s cache for `n` rows (every forward appends to the cache it is given)."""
    cache = DynamicCache()
    for layer, cached in enumerate(head.cache.layers):
        cache.update(cached.keys.expand(n, -1, -1, -1).contiguous(), cached.values.expand(n, -1, -1, -1).contiguous(),
                     layer)
    return cache


def _after_head(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str, head: SharedHead | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids of the tokens after `head`, left-padded [n, width]; the mask over head and rest [n, head + width])."""
    cut = head.length if head else 0
    input_ids, mask = left_pad([row[cut:] for row in rows], pad_id, device)
    return input_ids, torch.cat([mask.new_ones(len(rows), cut), mask], 1)


def head_inputs(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str, head: SharedHead | None
                ) -> dict:
    """Model inputs for token `rows`, left-padded: with `head`, only the tokens after it, a copy of its cache as
    `past_key_values` and the mask over head and rest; positions count real tokens either way."""
    input_ids, mask = _after_head(rows, pad_id, device, head)
    past = {"past_key_values": head_cache(head, len(rows))} if head else {}
    return {"input_ids": input_ids, "attention_mask": mask, **past,
            "position_ids": position_ids(mask)[:, mask.shape[1] - input_ids.shape[1]:]}


@dataclass
class TargetBatch:
    """Prompt + target rows, left-padded; `targets` [batch, n] holds each row's target right-aligned, IGNORE to
    its left when it is shorter than the longest (n)."""

    input_ids: torch.Tensor  # [batch, width]
    attention_mask: torch.Tensor  # [batch, width]
    targets: torch.Tensor  # [batch, n]
    head: SharedHead | None = None  # when set, input_ids start after it (attention_mask covers it too)


def prompt_target_batch(prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad_id: int,
                        device: torch.device | str, head: SharedHead | None = None) -> TargetBatch:
    """One batch of token rows prompt + target (each target non-empty); with `head` (a `shared_head` of the
    prompts, no gradients) the forward starts from its cache."""
    if any(not target for target in targets):
        raise ValueError("prompt_target_batch needs a non-empty target in every row")
    input_ids, mask = _after_head([list(p) + list(t) for p, t in zip(prompts, targets, strict=True)], pad_id, device,
                                  head)
    n = max(len(t) for t in targets)
    scored = torch.tensor([[IGNORE] * (n - len(t)) + list(t) for t in targets], device=device)
    return TargetBatch(input_ids, mask, scored, head)


def tail_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int,
                shift: int = 0, head: SharedHead | None = None) -> torch.Tensor:
    """float32 logits [batch, k, vocab] at positions [-k - shift, -shift) of a left-padded batch: shift=1 gives
    the positions that predict the last k tokens, shift=0 the next-token distributions at the last k positions.
    The lm_head runs on those positions only. With `head`: `input_ids` start after it (see `head_inputs`)."""
    hidden, lm_head = _decoded(model, input_ids, attention_mask, head)
    end = hidden.shape[1] - shift
    return lm_head(hidden[:, end - k:end]).float()


def last_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """float32 next-token logits [batch, vocab] at the last position of a left-padded batch (the lm_head on a
    [batch, hidden] view: bit-identical to `hooks.run_with_cache_and_logprobs`, unlike tail_logits(k=1), whose
    [batch, 1, hidden] slice can take another matmul kernel)."""
    hidden, head = _decoded(model, input_ids, attention_mask)
    return head(hidden[:, -1]).float()


def _decoded(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             head: SharedHead | None = None) -> tuple[torch.Tensor, nn.Module]:
    """The decoder's final hidden states [batch, width, hidden] (after the final norm, no lm_head) and the lm_head;
    with `head`, from a copy of its cache (`input_ids` start after it, `attention_mask` covers both)."""
    decoder, lm_head = models.decoder_and_head(model)
    past = {"past_key_values": head_cache(head, len(input_ids))} if head else {}
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **past,
                     position_ids=position_ids(attention_mask)[:, attention_mask.shape[1] - input_ids.shape[1]:]
                     ).last_hidden_state
    return hidden, lm_head


def target_logits(model: nn.Module, batch: TargetBatch) -> torch.Tensor:
    """float32 logits [batch, n, vocab] at the positions that predict each target token."""
    return tail_logits(model, batch.input_ids, batch.attention_mask, batch.targets.shape[1], shift=1,
                       head=batch.head)


def target_nll(model: nn.Module, batch: TargetBatch) -> torch.Tensor:
    """Per-token negative log-likelihood [batch, n] of the targets (0 at IGNORE positions)."""
    logits = target_logits(model, batch)
    return F.cross_entropy(logits.transpose(1, 2), batch.targets, ignore_index=IGNORE, reduction="none")
