"""A logit-level refusal screen: from one forward per prompt, the log-odds that the model's response starts the
way its own refusals start (in the spirit of the refusal score of Arditi et al. 2024; docs/architecture.md,
"Speed").

The refusal tokens are not hard-coded: they are the first tokens of the model's own responses that the keyword
judge counts as refusals, on fitting prompts, kept when most responses starting with them are refusals. The
threshold is the one that best separates the fitting prompts' verdicts. It is a screen, not a judge: `agreement`
reports its AUROC and accuracy against generate-and-judge verdicts on other prompts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from es2_lib import batching, decoding
from es2_lib.batching import check_fits, length_sorted
from es2_lib.models import chat_prompt


@dataclass(frozen=True)
class RefusalScreen:
    """The first tokens that start the model's refusals, and the log-odds above which a prompt counts as refused."""

    tokens: tuple[int, ...]
    threshold: float


def first_token_logprobs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                         batch_size: int = 8, row_edits: Mapping[int, decoding.RowEdit] | None = None
                         ) -> torch.Tensor:
    """log P(first response token) [n, vocab] for each chat-formatted prompt, from one forward each (from the chat
    head's cache, `batching.shared_head`), float32 on the CPU. `row_edits` as in `decoding.greedy`: each prompt its
    own edit (e.g. its own attack strength), so one pass screens a different strength per prompt."""
    ids = tokenizer([chat_prompt(tokenizer, p) for p in prompts], add_special_tokens=False)["input_ids"]
    check_fits([len(row) for row in ids], getattr(model.config, "max_position_embeddings", None), 1)
    out = torch.empty(len(prompts), model.get_output_embeddings().out_features)
    with torch.inference_mode(), decoding.edited_rows(model, row_edits) as in_batch:
        head = batching.shared_head(model, ids)
        for index in length_sorted([len(row) for row in ids], batch_size):
            in_batch[:] = [torch.tensor(index, device=model.get_input_embeddings().weight.device)]
            logits, _, _ = decoding.prefill(model, [ids[i] for i in index], tokenizer.pad_token_id, head)
            out[index] = logits.float().log_softmax(-1).cpu()
    return out


def refusal_tokens(tokenizer: PreTrainedTokenizerBase, responses: Sequence[str], refused: Sequence[bool],
                   min_precision: float = 0.5) -> tuple[int, ...]:
    """The first tokens (as the tokenizer encodes each response) of refused responses, kept when at least
    `min_precision` of all responses that start with that token are refused; most frequent first."""
    firsts = [ids[0] if ids else None for ids in tokenizer(list(responses), add_special_tokens=False)["input_ids"]]
    starts, refusals = Counter(firsts), Counter(f for f, r in zip(firsts, refused) if r)
    kept = [t for t, n in refusals.most_common() if t is not None and n / starts[t] >= min_precision]
    if not kept:
        raise ValueError("no response judged a refusal: the refusal tokens cannot be found; fit on prompts the "
                         "model refuses")
    return tuple(kept)


def scores(logprobs: torch.Tensor, tokens: Sequence[int]) -> np.ndarray:
    """log P(first token in `tokens`) - log P(first token not in `tokens`) per row of `logprobs` [n, vocab]."""
    inside = torch.logsumexp(logprobs[:, list(tokens)], -1).double()
    return (inside - torch.log1p(-inside.exp().clamp(max=1 - 1e-12))).numpy()


def fit(tokenizer: PreTrainedTokenizerBase, logprobs: torch.Tensor, responses: Sequence[str],
        refused: Sequence[bool]) -> RefusalScreen:
    """The screen from fitting prompts: their first-token log-probs, the model's responses and the judge's
    verdicts; the threshold maximises accuracy on them (midpoint between neighbouring scores)."""
    tokens = refusal_tokens(tokenizer, responses, refused)
    s, y = scores(logprobs, tokens), np.asarray(refused, bool)
    ordered = np.sort(s)
    candidates = np.concatenate([[ordered[0] - 1], (ordered[1:] + ordered[:-1]) / 2, [ordered[-1] + 1]])
    accuracy = [((s > c) == y).mean() for c in candidates]
    return RefusalScreen(tokens, float(candidates[int(np.argmax(accuracy))]))


def agreement(screen: RefusalScreen, logprobs: torch.Tensor, refused: Sequence[bool]) -> dict:
    """AUROC of the screen's scores against judged verdicts, and its accuracy at the threshold (n prompts)."""
    s, y = scores(logprobs, screen.tokens), np.asarray(refused, bool)
    auroc = float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None  # undefined with one class only
    return {"n": len(y), "auroc": auroc, "accuracy": float(((s > screen.threshold) == y).mean()),
            "screened_refused": float((s > screen.threshold).mean()), "judged_refused": float(y.mean())}
