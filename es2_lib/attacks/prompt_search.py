"""What the two prompt-attack searches (GCG and AutoDAN-HGA) share: the chat prompt around the attacked text, the
target cross-entropy of a batch of rows after a cached fixed prefix, the short greedy success check, the record of
one search and the `Outcome` of a whole attack (docs/architecture.md, "Attacks").

`target_losses` is the one scoring function of both searches (GCG's candidates, AutoDAN's fitness): the KV cache of
the fixed prompt before the attacked text is computed once and reused, and the 150k-wide head runs only at the
target positions (docs/architecture.md, "Speed").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import DynamicCache, PreTrainedTokenizerBase

from .. import data, decoding
from ..generation import generate
from ..judges import is_refusal
from ..models import chat_prompt, decoder_and_head
from .common import Outcome

KV = list[tuple[Tensor, Tensor]]  # per decoder layer: keys and values [batch, kv_heads, length, head_dim]
MARK = "<<es2-attack-slot>>"  # where the attacked text goes in the chat template


# --- the prompt around the attacked text ------------------------------------------------------------

def chat_around(tokenizer: PreTrainedTokenizerBase, user_before: str = "") -> tuple[str, str]:
    """The chat-template text before and after the attacked part of the user turn, whose content is
    `user_before` + attacked text; the `after` text ends with the generation prompt."""
    text = chat_prompt(tokenizer, user_before + MARK)
    if text.count(MARK) != 1:
        raise ValueError(f"the chat template of {tokenizer.name_or_path!r} does not keep the user text verbatim")
    before, after = text.split(MARK)
    return before, after


def encode(tokenizer: PreTrainedTokenizerBase, text: str, device: torch.device | str = "cpu") -> Tensor:
    """Token ids of a piece of chat text (special-token strings parsed, none added). [length]"""
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long, device=device)


# --- scoring: target cross-entropy with a cached prefix ---------------------------------------------

def prefix_kv(model: nn.Module, ids: Tensor) -> KV:
    """The KV cache of a fixed token prefix [length], batch 1, without gradients."""
    decoder, _ = decoder_and_head(model)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        decoder(input_ids=ids[None], past_key_values=cache, use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


def expand_cache(model: nn.Module, kv: KV, batch: int, length: int) -> DynamicCache:
    """A fresh cache holding the first `length` positions of `kv`, expanded to `batch` rows. Forward calls
    append to a DynamicCache in place, so every call gets its own and `kv` itself is never changed."""
    if length > kv[0][0].shape[2]:
        raise ValueError(f"a cache of {kv[0][0].shape[2]} positions cannot supply the first {length}")
    data = [(k[:, :, :length].expand(batch, -1, -1, -1), v[:, :, :length].expand(batch, -1, -1, -1)) for k, v in kv]
    return DynamicCache(ddp_cache_data=data, config=model.config)


def target_losses(model: nn.Module, kv: KV, kv_length: int, rows: Tensor, lengths: Tensor, n_target: int,
                  vocab: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of the last `n_target` real tokens of each row, after the first `kv_length` cached
    positions. `rows` [batch, width] are right-padded token ids and `lengths` [batch] their real lengths
    (right padding needs no attention mask under a causal mask). The last column is not fed (no row's last token
    predicts a target) and the head runs only at the target positions; `vocab` (sorted token ids, the targets
    among them), when given, limits the softmax to those tokens. [batch]"""
    decoder, lm_head = decoder_and_head(model)
    batch = rows.shape[0]
    past = expand_cache(model, kv, batch, kv_length) if kv_length > 0 else None
    hidden = decoder(input_ids=rows[:, :-1], past_key_values=past, use_cache=past is not None).last_hidden_state
    offsets = torch.arange(n_target, device=rows.device)
    predict_at = (lengths - n_target - 1)[:, None] + offsets  # [b, n_target]: positions predicting the targets
    states = hidden.gather(1, predict_at[..., None].expand(-1, -1, hidden.shape[-1]))  # [b, n_target, h]
    targets = rows.gather(1, predict_at + 1)  # [b, n_target]
    if vocab is None:
        logits = lm_head(states).float()  # [b, n_target, vocab]
    else:
        bias = None if lm_head.bias is None else lm_head.bias[vocab]
        logits = torch.nn.functional.linear(states, lm_head.weight[vocab], bias).float()  # [b, n_target, len(vocab)]
        targets = torch.searchsorted(vocab, targets)
    return cross_entropy(logits, targets).mean(1)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-token cross-entropy [...] of logits [..., vocab]: logsumexp minus the target logit, which reads the
    vocabulary once instead of materialising log-softmax."""
    return torch.logsumexp(logits, -1) - logits.gather(-1, targets[..., None])[..., 0]


def respond(model: nn.Module, tokenizer: PreTrainedTokenizerBase, ids: Tensor, max_new_tokens: int) -> str:
    """Greedy response to one tokenised chat prompt [length], for the success checks (`is_refusal`): it stops
    as soon as the keyword judge counts it a refusal, so a failed check ends at its refusal's opening words."""
    return decoding.greedy_tokens(model, tokenizer, [ids.tolist()], max_new_tokens, batch_size=1, stop=is_refusal)[0]


# --- one search and a whole attack -----------------------------------------------------------------

@dataclass
class AttackResult:
    """One attacked prompt: the adversarial user message and how the search went."""
    instruction: str
    attack_prompt: str  # the user message to send: instruction + adversarial text
    losses: list[float] = field(default_factory=list)  # best target CE after each step (index 0: before any)
    success_step: int | None = None  # first checked step whose short greedy response the keyword judge passes
    check_response: str = ""  # that short response (or the last checked one)

    @property
    def final_loss(self) -> float:
        return self.losses[-1]

    @property
    def steps(self) -> int:
        return len(self.losses) - 1


def outcome(attack: str, model: nn.Module, tokenizer: PreTrainedTokenizerBase, results: list[AttackResult],
            budget: dict, max_new_tokens: int, batch_size: int) -> Outcome:
    """An `Outcome` of a prompt attack: greedy responses (`max_new_tokens`, up to the verdict) to the adversarial prompts, the
    budget, the size of the perturbation (mean tokens added to the instruction; prompt attacks have no L2), and
    per prompt the search record (for responses.jsonl and the loss-curve figure). `common.timed` fills its wall
    time."""
    responses = generate(model, tokenizer, [r.attack_prompt for r in results], max_new_tokens, batch_size,
                         until_verdict=True)
    extra = {"attack_prompt": [r.attack_prompt for r in results], "success_step": [r.success_step for r in results],
             "steps": [r.steps for r in results], "final_loss": [r.final_loss for r in results],
             "losses": [r.losses for r in results]}
    added = [len(encode(tokenizer, r.attack_prompt)) - len(encode(tokenizer, r.instruction)) for r in results]
    return Outcome(attack, "", responses, {"added_tokens": sum(added) / len(added)}, budget, extra=extra)


def search_summary(extra: dict) -> dict:
    """Across prompts: the share whose search found a success, steps to first success (median over those that
    did, and per prompt), and the final target loss (mean, and per prompt)."""
    steps = [s for s in extra["success_step"] if s is not None]
    losses = extra["final_loss"]
    return {"success_rate": len(steps) / len(losses), "steps_to_success_median": float(torch.tensor(steps).median())
            if steps else None, "steps_to_success": extra["success_step"], "final_loss_mean": sum(losses) / len(losses),
            "final_loss": losses, "steps_run": extra["steps"]}


def with_targets(rows: list[dict]) -> list[dict]:
    """`rows` {"prompt", "target"}, checked: a prompt attack optimises toward each row's own target."""
    return data.with_targets(rows, "the attacked prompts", "give the prompt file a 'target' column")


def attack_prompt_rows(model_name: str, outcomes: list[Outcome], rows: list[dict]) -> list[dict]:
    """The adversarial prompt each search found, one row per (prompt attack, attacked row), for attack_prompts.jsonl
    (later stages reuse them): {model, attack, prompt, target, attack_prompt, success_step, final_loss}."""
    return [{"model": model_name, "attack": o.attack, "prompt": row["prompt"], "target": row["target"],
             **{key: o.extra[key][i] for key in ("attack_prompt", "success_step", "final_loss")}}
            for o in outcomes if o.extra for i, row in enumerate(rows)]
