"""GCG: greedy coordinate gradient search for an adversarial suffix (Zou et al. 2023, Algorithm 1; docs/architecture.md,
"Attacks").

A suffix of `n_tokens` tokens, initialised to "! ! …", is appended to a harmful instruction and optimised so
that the model's cross-entropy on a target answer ("Sure, here is …") falls. Each step takes the gradient of
that loss with respect to the one-hot suffix, draws `search_width` single-token swaps from the top-k tokens
of each position, drops swaps whose prompt does not re-tokenise to the same tokens, scores the rest in
batches and keeps the best (the current suffix counts as a candidate, so the loss never rises).

Speed (docs/architecture.md, "Speed"): the KV cache of the fixed prompt before the suffix is computed once; a
candidate that swaps position i also reuses the current suffix's cache up to i (candidates are sorted by position);
the 150k-wide head is applied only at the target positions. The gradient for the next step is taken once the
step has moved (a step that does not move keeps it), and its forward pass also gives the new suffix's loss
and cache. Scoring is `prompt_search.target_losses`, the one scoring function of both prompt attacks.

Screening: with a `screen` copy of the model in a cheaper dtype (bfloat16 for a float32 model: twice the
matmul throughput on CPUs with AVX512-BF16 and on GPUs), that copy scores every candidate, with its softmax over
only the tokens the model finds likely at the target positions for the current suffix (its top `SCREEN_TOP_TOKENS`
at each; on the embedded model the rest of the vocabulary held 0.04–0.24 % of the probability there on average,
and the candidates' errors from it differed by under 0.001, against up to 0.037 from bfloat16), and the model
itself decides: only candidates whose screened loss is within `margin` of the screened minimum are scored again in the
model's own dtype (a shortlist of one is scored by the gradient pass it needs anyway), and the best of those is
kept. The gradient, and so the proposals, are the model's own, every recorded loss is an exact one, and a
screened search takes the same steps as an exact one for as long as each step's exact best is on the shortlist
(bench/README.md measures how often it is).
"""

from __future__ import annotations

import functools
from copy import deepcopy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from ..judges import is_refusal
from ..models import decoder_and_head
from ..progress import progress
from .budgets import GCGBudget
from .common import Outcome, timed
from .prompt_search import (KV, AttackResult, chat_around, cross_entropy, encode, expand_cache, outcome, prefix_kv,
                            respond, target_losses)

SCREEN_TOP_TOKENS = 1024  # per target position: the screening softmax's tokens (with the targets: ~7k of 152k)


@functools.lru_cache(maxsize=4)
def allowed_tokens(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> Tensor:
    """Tokens a suffix may use: printable ASCII text, no special tokens, inside the embedding matrix
    (as nanoGCG's `allow_non_ascii=False`). Decoding the vocabulary takes a second, so it is cached. [vocab]"""
    n = min(len(tokenizer), vocab_size)
    texts = tokenizer.batch_decode(torch.arange(n)[:, None])
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    allowed[:n] = torch.tensor([bool(t) and t.isascii() and t.isprintable() for t in texts])
    allowed[[i for i in tokenizer.all_special_ids if i < vocab_size]] = False
    return allowed



# --- GCG -----------------------------------------------------------------------------------------

def screen_copy(model: nn.Module, dtype: str | None) -> nn.Module | None:
    """A copy of `model` in `dtype` for GCG's screening, or None when `dtype` is None or already the model's."""
    if dtype is None or getattr(torch, dtype) == next(model.parameters()).dtype:
        return None
    return deepcopy(model).to(getattr(torch, dtype)).eval()


@dataclass
class _Replica:
    """One copy of the attacked model and the KV cache of the prompt before the suffix under it."""
    model: nn.Module
    kv_before: KV


class GCG:
    """The state of one GCG search: the token pieces of the prompt, and the current suffix with its exact loss,
    its gradient, its KV caches (under the model and the screening copy) and the screening softmax's tokens."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, instruction: str, target: str,
                 n_tokens: int = 20, topk: int = 256, search_width: int = 512, batch_size: int = 128, seed: int = 0,
                 screen: nn.Module | None = None, margin: float = 0.02):
        self.tokenizer = tokenizer
        self.topk, self.search_width, self.batch_size, self.margin = topk, search_width, batch_size, margin
        self.verified: list[int] = []  # per step: candidates scored in the model's own dtype
        device = next(model.parameters()).device
        self.before_text, self.after_text = chat_around(tokenizer, instruction)
        self.instruction = instruction
        self.before = encode(tokenizer, self.before_text, device)
        self.after = encode(tokenizer, self.after_text, device)
        self.target = encode(tokenizer, target, device)
        self.suffix = encode(tokenizer, " !" * n_tokens, device)  # "! ! …", through the tokenizer
        if len(self.suffix) != n_tokens or not self._retokenises(self.suffix[None]).all():
            raise ValueError(f"the initial suffix {' !' * n_tokens!r} is not {n_tokens} stable tokens for "
                             f"{tokenizer.name_or_path!r}")
        embeddings = model.get_input_embeddings().weight  # [vocab, hidden]
        self.allowed = allowed_tokens(tokenizer, embeddings.shape[0]).to(device)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.exact = _Replica(model, prefix_kv(model, self.before))
        self.screen = _Replica(screen, prefix_kv(screen, self.before)) if screen is not None else None
        self.loss, self.grad, self.kv, self.likely = self._gradient(self.suffix)
        self.kv_screen = self._extend_kv(self.screen, self.suffix) if self.screen else None

    @property
    def message(self) -> str:
        """The user message: the instruction followed by the decoded suffix."""
        return self.instruction + self.tokenizer.decode(self.suffix)

    def prompt_ids(self) -> Tensor:
        """The chat prompt's tokens, ending with the generation prompt. [length]"""
        return torch.cat([self.before, self.suffix, self.after])

    def _extend_kv(self, replica: _Replica, suffix: Tensor) -> KV:
        """The KV cache of the prefix followed by `suffix` under `replica` (no gradient)."""
        cache = expand_cache(replica.model, replica.kv_before, 1, len(self.before))
        with torch.no_grad():
            decoder_and_head(replica.model)[0](input_ids=suffix[None], past_key_values=cache, use_cache=True)
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _gradient(self, suffix: Tensor) -> tuple[float, Tensor, KV, Tensor]:
        """The model's target CE of `suffix` [n_tokens], its gradient w.r.t. the one-hot suffix [n_tokens, vocab],
        the KV cache of prefix + suffix (one forward and one backward pass), and the sorted ids of the tokens
        likely at the target positions (each one's top `SCREEN_TOP_TOKENS`, and the targets)."""
        model = self.exact.model
        embed = model.get_input_embeddings()
        one_hot = torch.zeros(len(suffix), embed.weight.shape[0], dtype=embed.weight.dtype, device=suffix.device)
        one_hot.scatter_(1, suffix[:, None], 1.0)
        one_hot.requires_grad_(True)
        tail = torch.cat([self.after, self.target[:-1]])  # the last target token predicts nothing
        embeds = torch.cat([one_hot @ embed.weight, embed(tail)])[None]  # [1, suffix + tail, hidden]
        cache = expand_cache(model, self.exact.kv_before, 1, len(self.before))
        decoder, lm_head = decoder_and_head(model)
        hidden = decoder(inputs_embeds=embeds, past_key_values=cache, use_cache=True).last_hidden_state
        logits = lm_head(hidden[0, -len(self.target):]).float()  # [n_target, vocab]
        loss = cross_entropy(logits, self.target).mean()
        grad = torch.autograd.grad(loss, one_hot)[0]
        end = len(self.before) + len(suffix)
        kv = [(layer.keys[:, :, :end].detach(), layer.values[:, :, :end].detach()) for layer in cache.layers]
        top = logits.detach().topk(min(SCREEN_TOP_TOKENS, logits.shape[-1]), -1).indices
        return loss.item(), grad, kv, torch.unique(torch.cat([top.flatten(), self.target]))

    def _move_if_better(self, candidate: Tensor) -> None:
        """Make `candidate` [n_tokens] the current suffix if the model's loss of it (from the gradient pass the
        next step needs) is below the current one."""
        loss, grad, kv, likely = self._gradient(candidate)
        if loss < self.loss:
            self.suffix, self.loss, self.grad, self.kv, self.likely = candidate, loss, grad, kv, likely
            self.kv_screen = self._extend_kv(self.screen, candidate) if self.screen else None

    def _sample(self, grad: Tensor) -> Tensor:
        """`search_width` single-token swaps: positions spread evenly over the suffix, each token drawn from
        that position's top-k by negative gradient (Zou et al.'s sampler); duplicates and no-ops dropped."""
        n_tokens = len(self.suffix)
        scores = (-grad).masked_fill(~self.allowed, -torch.inf)  # [n_tokens, vocab]
        top = scores.topk(self.topk, dim=1).indices  # [n_tokens, topk]
        positions = torch.arange(self.search_width, device=grad.device) * n_tokens // self.search_width
        picks = torch.randint(self.topk, (self.search_width,), generator=self.generator).to(grad.device)
        candidates = self.suffix.repeat(self.search_width, 1)
        candidates[torch.arange(self.search_width), positions] = top[positions, picks]
        candidates = torch.unique(candidates, dim=0)
        return candidates[(candidates != self.suffix).any(1)]

    def _retokenises(self, candidates: Tensor) -> Tensor:
        """Which candidates give back exactly their tokens when the whole chat prompt is re-tokenised from
        text (so the prompt a user sends is the one optimised; implies the same suffix length). [n] bool"""
        texts = [self.before_text + s + self.after_text for s in self.tokenizer.batch_decode(candidates)]
        expected = torch.cat([self.before.expand(len(candidates), -1), candidates,
                              self.after.expand(len(candidates), -1)], 1).cpu()
        encoded = self.tokenizer(texts, add_special_tokens=False, padding=True, padding_side="left",
                                 return_tensors="pt")
        same_length = encoded["attention_mask"].sum(1) == expected.shape[1]
        width = min(expected.shape[1], encoded["input_ids"].shape[1])
        same_ids = (encoded["input_ids"][:, -width:] == expected[:, -width:]).all(1)  # left-padded
        return (same_length & same_ids).to(candidates.device)

    def _score(self, replica: _Replica, candidates: Tensor, positions: Tensor, kv_suffix: KV,
               vocab: Tensor | None = None) -> Tensor:
        """Target CE under `replica` of each candidate suffix [n, n_tokens], in batches of `batch_size` sorted by
        the first swapped position so a batch recomputes only from its earliest swap onward (`kv_suffix`: the
        cache of prefix + current suffix under the same replica; `vocab`: see `target_losses`). [n], float32"""
        order = positions.argsort()
        tail = torch.cat([self.after, self.target])
        losses = torch.empty(len(candidates), device=candidates.device)
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            first = int(positions[index].min())
            rows = torch.cat([candidates[index, first:], tail.expand(len(index), -1)], 1)
            lengths = torch.full((len(index),), rows.shape[1], device=rows.device)
            losses[index] = target_losses(replica.model, kv_suffix, len(self.before) + first, rows, lengths,
                                          len(self.target), vocab).to(losses.dtype)
        return losses

    def _screened(self, candidates: Tensor) -> Tensor:
        """The candidates worth an exact score, by their losses under the screening copy. [m, n_tokens]"""
        screened = self._score(self.screen, candidates, self._positions(candidates), self.kv_screen, self.likely)
        return candidates[self._shortlist(screened)]

    def _shortlist(self, screened: Tensor) -> Tensor:
        """Which screened losses [n] are within `margin` of their minimum and below the current loss + margin / 2
        (screening errors partly cancel in differences, not against the exact current loss). [n] bool"""
        return (screened <= screened.min() + self.margin) & (screened < self.loss + self.margin / 2)

    def _positions(self, candidates: Tensor) -> Tensor:
        """The swapped position of each candidate. [n]"""
        return (candidates != self.suffix).int().argmax(1)

    def step(self) -> float:
        """One GCG iteration; returns the best loss so far (never higher than before the step). With screening,
        the screening copy ranks the candidates and the model scores the shortlist."""
        with torch.no_grad():
            candidates = self._sample(self.grad)
            candidates = candidates[self._retokenises(candidates)]
            if self.screen is not None and len(candidates) > 1:
                candidates = self._screened(candidates)
            self.verified.append(len(candidates))
            if len(candidates) > 1:
                losses = self._score(self.exact, candidates, self._positions(candidates), self.kv)
                best = int(losses.argmin())
                candidates = candidates[best:best + 1] if losses[best].item() < self.loss else candidates[:0]
        if len(candidates):
            self._move_if_better(candidates[0])
        return self.loss


def run_gcg(model: nn.Module, tokenizer: PreTrainedTokenizerBase, instruction: str, target: str, steps: int,
            n_tokens: int = 20, topk: int = 256, search_width: int = 512, batch_size: int = 128,
            check_every: int = 10, check_tokens: int = 32, seed: int = 0, show_progress: bool = False,
            screen: nn.Module | None = None, margin: float = 0.02) -> AttackResult:
    """GCG on one instruction for up to `steps` steps. Every `check_every` steps (and before the first) a
    short greedy response to the current prompt is judged by the keyword judge; the search stops at the
    first response that is not a refusal. `screen` and `margin`: see `GCG` (screening)."""
    gcg = GCG(model, tokenizer, instruction, target, n_tokens, topk, search_width, batch_size, seed, screen, margin)
    result = AttackResult(instruction, gcg.message, losses=[gcg.loss])
    loop = range(steps + 1)
    for step in progress(loop, desc="gcg") if show_progress else loop:
        if step > 0:
            result.losses.append(gcg.step())
        if step % check_every == 0 or step == steps:
            result.check_response = respond(model, tokenizer, gcg.prompt_ids(), check_tokens)
            if not is_refusal(result.check_response):
                result.success_step = step
                break
    result.attack_prompt = gcg.message
    return result


def attack(model: nn.Module, tokenizer: PreTrainedTokenizerBase, rows: list[dict], budget: GCGBudget,
           max_new_tokens: int, batch_size: int, seed: int) -> Outcome:
    """GCG on each harmful row {"prompt", "target"} (row i seeded `seed + i`) and the responses it obtains
    (`max_new_tokens`, greedy, in batches of `batch_size`)."""
    def run() -> Outcome:
        screen = screen_copy(model, budget.screen_dtype)
        results = [run_gcg(model, tokenizer, row["prompt"], row["target"], budget.steps, budget.suffix_tokens,
                           budget.topk, budget.search_width, budget.batch_size, budget.check_every, budget.check_tokens,
                           seed + i, screen=screen, margin=budget.screen_margin)
                   for i, row in enumerate(progress(rows, desc="gcg prompts"))]
        return outcome("gcg", model, tokenizer, results, budget.record(screen is not None), max_new_tokens, batch_size)
    return timed(run)
