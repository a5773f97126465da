"""Greedy decoding with continuous batching: a row leaves the batch as soon as its answer is known (EOS, its token
budget, or a caller's stop rule such as a verdict that can no longer change) and a waiting prompt takes its place,
so no forward is spent on finished rows (docs/architecture.md, "Speed").

The batch shares one left-padded KV cache (`DynamicCache`): a joining prompt is prefilled on its own and its cache
is padded on the left to the batch's length (or the batch's to its), a leaving row is dropped from every layer,
and columns that only padding uses any more are cut. Positions count real tokens only (`hooks.position_ids`), so a
row decodes as it would alone, up to floating-point differences of the batch shape. Works on plain and
peft-wrapped causal language models, under residual-stream edits (`hooks.edit_residual`), and with edits of each
prompt's own (`row_edits`).

The tokens every prompt of a call starts with (the chat template's fixed head: the system prompt) run through the
model once per call (`batching.shared_head`); each prefill starts from their cache.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from es2_lib import hooks
from es2_lib.batching import SharedHead, check_fits, head_inputs, shared_head
from es2_lib.hooks import position_ids
from es2_lib.models import chat_prompt
from es2_lib.progress import progress as progress_bar

Stop = Callable[[str], bool]  # decoded response so far -> True when nothing more is needed
RowEdit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (residual [batch, seq, hidden], prompt index of
# each batch row [batch]) -> edited residual: an edit of each prompt's own (e.g. its own RepE coefficient)


@dataclass
class _Row:
    index: int  # position of the prompt in the caller's list
    tokens: list[int] = field(default_factory=list)  # generated so far
    nll: float = 0.0  # summed negative log-probability of its tokens that are not special tokens
    scored: int = 0  # how many tokens that sum counts


def prefill(model: PreTrainedModel, rows: Sequence[Sequence[int]] | Sequence[torch.Tensor], pad_id: int,
            head: SharedHead | None = None) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
    """One forward over `rows`, token ids (from `head`'s cache when given, `batching.shared_head`) or input
    embeddings [length, hidden] each, left-padded: next-token logits at each row's last position [n, vocab], the KV
    cache and its mask [n, width]."""
    embed = model.get_input_embeddings()
    if rows and isinstance(rows[0], torch.Tensor):  # embeddings, padded with the pad token's
        pad = embed(torch.tensor([pad_id], device=embed.weight.device))[0]
        width = max(len(r) for r in rows)
        inputs = {"inputs_embeds": torch.stack([torch.cat([pad.expand(width - len(r), -1), r]) for r in rows]),
                  "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows],
                                                 device=embed.weight.device)}
        inputs["position_ids"] = position_ids(inputs["attention_mask"])
    else:
        inputs = head_inputs(rows, pad_id, embed.weight.device, head)
    past = {} if head else {"past_key_values": DynamicCache()}
    out = model(**inputs, **past, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], out.past_key_values, inputs["attention_mask"]


def _pad_cache_left(cache: DynamicCache, width: int) -> None:
    """Left-pad every layer of `cache` with zero keys and values to `width` positions (masked out by the caller)."""
    for layer in cache.layers:
        missing = width - layer.keys.shape[-2]
        if missing > 0:
            pad = lambda t: torch.cat([t.new_zeros(*t.shape[:-2], missing, t.shape[-1]), t], -2)  # noqa: E731
            layer.keys, layer.values = pad(layer.keys), pad(layer.values)


def _join(cache: DynamicCache, mask: torch.Tensor, new: DynamicCache, new_mask: torch.Tensor
          ) -> tuple[DynamicCache, torch.Tensor]:
    """The batch cache and mask with the prefilled rows of `new` appended (both left-padded to one width)."""
    width = max(mask.shape[1], new_mask.shape[1])
    for c in (cache, new):
        _pad_cache_left(c, width)
    pad_mask = lambda m: torch.cat([m.new_zeros(m.shape[0], width - m.shape[1]), m], 1)  # noqa: E731
    for layer, joining in zip(cache.layers, new.layers):
        layer.keys = torch.cat([layer.keys, joining.keys], 0)
        layer.values = torch.cat([layer.values, joining.values], 0)
    return cache, torch.cat([pad_mask(mask), pad_mask(new_mask)], 0)


def _keep(cache: DynamicCache, mask: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Keep batch rows `rows` of the cache (in place) and of the mask, and cut the columns only padding uses."""
    index = torch.tensor(rows, device=mask.device)
    mask = mask[index]
    first = int(mask.any(0).long().argmax())  # the leftmost column some remaining row uses
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[index, ..., first:, :], layer.values[index, ..., first:, :]
    return mask[:, first:]


def greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 8,
    stop: Stop | None = None,
    chat: bool = True,
    progress: bool = False,
    row_edits: Mapping[int, RowEdit] | None = None,
) -> list[str]:
    """Greedy responses to `prompts` (in the chat template when `chat`), stripped, in input order; a row stops at
    EOS, after `max_new_tokens`, or as soon as `stop(decoded response so far)` is true (its text is then that).
    `row_edits[l]` edits the residual stream at layer l in every forward, knowing which prompt each row is, so a
    prompt keeps its own edit while rows come and go."""
    return greedy_tokens(model, tokenizer, _prompt_ids(tokenizer, prompts, chat), max_new_tokens, batch_size, stop,
                         progress, row_edits)


def greedy_scored(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                  max_new_tokens: int, batch_size: int = 8, stop: Stop | None = None, chat: bool = True,
                  progress: bool = False, row_edits: Mapping[int, RowEdit] | None = None
                  ) -> tuple[list[str], list[float]]:
    """`greedy`, and each response's perplexity under the model that wrote it, from the decoding pass's own
    log-probabilities of its tokens (special tokens such as EOS left out; NaN for a response without tokens): no
    second forward. Under `row_edits` it is the edited model's perplexity."""
    rows = _prompt_ids(tokenizer, prompts, chat)
    with edited_rows(model, row_edits) as in_batch:
        return _greedy(model, tokenizer, rows, max_new_tokens, batch_size, stop, progress, in_batch, score=True)


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, prompts: list[str], chat: bool) -> list[list[int]]:
    """The token ids of each prompt, in the chat template when `chat`."""
    texts = [chat_prompt(tokenizer, p) for p in prompts] if chat else list(prompts)
    return [list(row) for row in tokenizer(texts, add_special_tokens=not chat)["input_ids"]] if texts else []


def greedy_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  ids: Sequence[Sequence[int]] | Sequence[torch.Tensor], max_new_tokens: int, batch_size: int = 8,
                  stop: Stop | None = None, progress: bool = False,
                  row_edits: Mapping[int, RowEdit] | None = None) -> list[str]:
    """`greedy` for prompts given as token ids (e.g. an attack's exact token sequence, which need not survive a
    round trip through text) or as input embeddings [length, hidden] each (e.g. with a soft prompt inside)."""
    rows = [row if isinstance(row, torch.Tensor) else list(row) for row in ids]
    with edited_rows(model, row_edits) as in_batch:
        return _greedy(model, tokenizer, rows, max_new_tokens, batch_size, stop, progress, in_batch)[0]


@contextlib.contextmanager
def edited_rows(model: PreTrainedModel, row_edits: Mapping[int, RowEdit] | None) -> Iterator[list[torch.Tensor]]:
    """Inside the block every forward applies `row_edits[l]` at layer l; the caller sets the yielded list to
    [prompt index of each batch row] before each forward, so each row gets its own prompt's edit."""
    in_batch: list[torch.Tensor] = []
    edits = {layer: (lambda edit: lambda h: edit(h, in_batch[0]))(edit) for layer, edit in (row_edits or {}).items()}
    with hooks.edit_residual(model, edits):
        yield in_batch


def _greedy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ids: list[list[int]] | list[torch.Tensor],
            max_new_tokens: int, batch_size: int, stop: Stop | None, progress: bool, in_batch: list[torch.Tensor],
            score: bool = False) -> tuple[list[str], list[float]]:
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"greedy needs max_new_tokens >= 1 and batch_size >= 1, got {max_new_tokens}, {batch_size}")
    check_fits([len(row) for row in ids], getattr(model.config, "max_position_embeddings", None), max_new_tokens)
    with torch.inference_mode():  # None under edits (row_edits included) and for embeddings
        head = shared_head(model, ids) if ids and not isinstance(ids[0], torch.Tensor) else None
    waiting = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # longest first: memory peaks early
    eos = model.generation_config.eos_token_id  # what generate stops at: an id or a list of ids
    eos = set(eos if isinstance(eos, list) else [tokenizer.eos_token_id if eos is None else eos])
    responses, perplexities = [""] * len(ids), [math.nan] * len(ids)
    special = set(tokenizer.all_special_ids)
    device = model.get_input_embeddings().weight.device
    rows: list[_Row] = []
    cache, mask, last = DynamicCache(), torch.zeros(0, 0, dtype=torch.long, device=device), None
    bar = progress_bar(None, desc="generate", total=len(ids)) if progress else None
    with torch.inference_mode():
        while waiting or rows:
            joining = [_Row(i) for i in waiting[:batch_size - len(rows)]]
            waiting = waiting[len(joining):]
            in_batch[:] = [torch.tensor([r.index for r in (joining or rows)], device=device)]
            if joining:  # prefill the joining prompts on their own, then merge them into the batch
                logits, new_cache, new_mask = prefill(model, [ids[r.index] for r in joining], tokenizer.pad_token_id,
                                                      head)
                step_logits = logits
                first = logits.argmax(-1)
                cache, mask = (new_cache, new_mask) if not rows else _join(cache, mask, new_cache, new_mask)
                last = first if not rows else torch.cat([last, first])
                rows += joining
            else:  # one decoding step for every row
                step_mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
                out = model(input_ids=last[:, None], attention_mask=step_mask,
                            position_ids=mask.sum(1, keepdim=True), past_key_values=cache, use_cache=True,
                            logits_to_keep=1)
                step_logits = out.logits[:, -1]
                cache, mask, last = out.past_key_values, step_mask, step_logits.argmax(-1)
            # log P(chosen token) of each row that got one (the joining rows, or all); only when scoring
            chosen = (step_logits.gather(1, (first if joining else last)[:, None])[:, 0].float()
                      - step_logits.float().logsumexp(-1)).tolist() if score else None
            kept = []
            for j, row in enumerate(rows):
                if joining and j < len(rows) - len(joining):  # a running row: no new token, nothing to check
                    kept.append(j)
                    continue
                row.tokens.append(int(last[j]))
                if chosen is not None and row.tokens[-1] not in special:
                    row.nll -= chosen[j - (len(rows) - len(joining)) if joining else j]
                    row.scored += 1
                finished = row.tokens[-1] in eos or len(row.tokens) >= max_new_tokens  # decode only when needed
                if not finished and stop is not None:
                    finished = stop(tokenizer.decode(row.tokens, skip_special_tokens=True))
                if finished:
                    responses[row.index] = tokenizer.decode(row.tokens, skip_special_tokens=True).strip()
                    if row.scored:
                        perplexities[row.index] = math.exp(row.nll / row.scored)
                    if bar:
                        bar.update(1)
                else:
                    kept.append(j)
            if len(kept) < len(rows):
                if kept:
                    mask, last = _keep(cache, mask, kept), last[torch.tensor(kept, device=device)]
                else:
                    cache, mask = DynamicCache(), torch.zeros(0, 0, dtype=torch.long, device=device)
                rows = [rows[j] for j in kept]
    if bar:
        bar.close()
    return responses, perplexities
