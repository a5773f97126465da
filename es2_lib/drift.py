"""Harmless drift: how far fine-tuning moved the model's next-token distribution on ordinary text, as
KL(p_base ‖ p_tuned) over the held-out harmless prompts and the base model's responses to them, and the
responses' perplexity under each model; reference responses (Alpaca, Code Alpaca) are scored by their NLL alone,
under each model on its own (`evaluate.response_nll`, `paired_nll`: the base once for every arm)
(docs/architecture.md, 'Metrics'; the paper's "comparable general capabilities" claim).
"""

from __future__ import annotations

import contextlib
import math
from typing import ContextManager, Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from . import batching
from .adapters import base_model
from .benchmarks import subset
from .objective import kl_divergence
from .models import chat_prompt
from .progress import progress as progress_bar
from .stats import mean_ci


def base_view(tuned: nn.Module, base: nn.Module | None = None) -> ContextManager[nn.Module]:
    """The base model: `base` when given (full fine-tuning leaves no base inside the tuned model, so the caller
    keeps a second copy), else `tuned` with its LoRA adapter disabled (adapters.base_model; no second copy)."""
    return contextlib.nullcontext(base) if base is not None else base_model(tuned)


@torch.inference_mode()
def harmless_drift(
    tuned: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 8,
    base: nn.Module | None = None,
    progress: bool = False,
) -> list[dict]:
    """Per (prompt, response): KL(p_base ‖ p_tuned) of the next-token distributions from the last prompt token
    through the response's last token, as {kl (mean over those positions), kl_first (at the last prompt
    token)}, and the response's summed NLL under each model {nll_base, nll_tuned, tokens}.

    The base is `base_view(tuned, base)`. Tokenization matches evaluate.response_perplexity (chat prompt +
    response tokens, no EOS)."""
    device = next(tuned.parameters()).device
    prompt_ids = [tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    resp_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
    out: list[dict] = [{} for _ in prompts]
    batches = batching.length_sorted([len(p) + len(r) for p, r in zip(prompt_ids, resp_ids)], batch_size)
    for batch in progress_bar(batches, desc="harmless drift") if progress else batches:
        input_ids, mask = batching.left_pad([prompt_ids[i] + resp_ids[i] for i in batch], tokenizer.pad_token_id,
                                            device)
        width, k = input_ids.shape[1], 1 + max(len(resp_ids[i]) for i in batch)  # k scored positions
        with base_view(tuned, base) as reference:  # next-token log-probs [batch, k, vocab] at the last k positions
            base_lp = torch.log_softmax(batching.tail_logits(reference, input_ids, mask, k), dim=-1)
        tuned_lp = torch.log_softmax(batching.tail_logits(tuned, input_ids, mask, k), dim=-1)
        kl = kl_divergence(base_lp, tuned_lp)  # [batch, k]
        targets = input_ids[:, width - k + 1 :].unsqueeze(-1)  # [batch, k-1, 1]: the token each position predicts
        nll_base = -base_lp[:, :-1].gather(-1, targets).squeeze(-1)  # [batch, k-1]
        nll_tuned = -tuned_lp[:, :-1].gather(-1, targets).squeeze(-1)
        for row, i in enumerate(batch):
            r = len(resp_ids[i])  # this row's response fills the last r of the k-1 predicted positions
            out[i] = {"kl": kl[row, k - 1 - r :].mean().item(), "kl_first": kl[row, k - 1 - r].item(),
                      "nll_base": nll_base[row, k - 1 - r :].sum().item(),
                      "nll_tuned": nll_tuned[row, k - 1 - r :].sum().item(), "tokens": r}
    return out


def truncated_pairs(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[dict], n: int, max_tokens: int,
                    seed: int) -> list[dict]:
    """A seeded `n` of {prompt, response} reference pairs (0: all), each response cut to its first `max_tokens`
    tokens, so that scoring them (`harmless_drift`) costs a bounded forward per pair."""
    cut = []
    for pair in subset(pairs, n, seed):
        ids = tokenizer(pair["response"], add_special_tokens=False)["input_ids"]
        cut.append({"prompt": pair["prompt"], "response": tokenizer.decode(ids[:max_tokens]) if len(ids) > max_tokens
                    else pair["response"]})
    return cut


def paired_nll(base: Sequence[dict], tuned: Sequence[dict]) -> list[dict]:
    """`evaluate.response_nll` rows of the same responses under base and tuned, zipped into {nll_base, nll_tuned,
    tokens} (the NLL fields of `harmless_drift` rows, without the KL); responses without tokens are left out."""
    return [{"nll_base": b["nll"], "nll_tuned": t["nll"], "tokens": b["tokens"]}
            for b, t in zip(base, tuned, strict=True) if b["tokens"]]


def corpus_perplexity(rows: Sequence[dict], which: str) -> float | None:
    """exp of the token-weighted mean NLL of `rows` under `which` ("base" or "tuned"); None without tokens."""
    tokens = sum(r["tokens"] for r in rows)
    return math.exp(sum(r[f"nll_{which}"] for r in rows) / tokens) if tokens else None


def drift_summary(rows: Sequence[dict], samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean KL(base ‖ tuned) per prompt and at the first response token (with intervals), and the corpus
    perplexity of the responses under each model (exp of the token-weighted mean NLL; None without tokens)."""
    return {"kl": mean_ci([r["kl"] for r in rows], samples, confidence, seed),
            "kl_first": mean_ci([r["kl_first"] for r in rows], samples, confidence, seed),
            "ppl_base": corpus_perplexity(rows, "base"), "ppl_tuned": corpus_perplexity(rows, "tuned"),
            "tokens": sum(r["tokens"] for r in rows)}
