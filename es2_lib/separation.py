"""Stage 02's held-out evaluation of ES2 (paper Section 3 and its separation figure): base model vs ES2 model.

`measure` takes one model's states at every layer, greedy responses (harmful ones only up to their refusal
verdict: generation.generate's until_verdict) and harmless next-token distributions on the eval prompts; `compare` turns two measurements into the separation per layer, the ES2/base ratios at the ES2 layers
and the harmless KL(base || ES2), perplexity and refusal rate. See docs/architecture.md, 'ES2 objective'.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from . import batching, evaluate, generation, hooks, judges, models, probes, representations, results
from .objective import kl_divergence


@torch.no_grad()
def states_and_logprobs(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], layers: list[int],
                        batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-prompt-token states [n, len(layers), hidden] and next-token log-probs [n, vocab] of many prompts
    (hooks.run_with_cache_and_logprobs in consecutive batches), float32 on the CPU."""
    device = model.get_input_embeddings().weight.device
    states, logp = [], []
    for start in range(0, len(prompts), batch_size):
        batch = representations.encode_prompts(tokenizer, prompts[start:start + batch_size], device)
        s, lp = hooks.run_with_cache_and_logprobs(model, batch, layers)
        states.append(s.float().cpu())
        logp.append(lp.cpu())
    return torch.cat(states), torch.cat(logp)


@torch.no_grad()
def next_token_logprobs(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                        batch_size: int = 8) -> torch.Tensor:
    """Next-token log-probs [n, vocab] after each chat-formatted prompt, float32 on the CPU."""
    device = model.get_input_embeddings().weight.device
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = representations.encode_prompts(tokenizer, prompts[start:start + batch_size], device)
        out.append(batching.last_logits(model, batch["input_ids"], batch["attention_mask"]).log_softmax(-1).cpu())
    return torch.cat(out)


def measure(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: dict[str, list[str]], batch_size: int,
            max_new_tokens: int, reference: list[str] | None = None) -> dict:
    """What 02 compares between base and ES2 on the held-out prompts `prompts["harmful"|"harmless"]`: last-token
    states at every layer 0..L, greedy responses, next-token log-probs after the harmless prompts, and the
    perplexity under `model` of the harmless `reference` responses (default: its own)."""
    layers = list(range(models.num_layers(model) + 1))
    classes = ("harmful", "harmless")
    states = {c: representations.last_token_states(model, tokenizer, prompts[c], layers, batch_size) for c in classes}
    responses = {c: generation.generate(model, tokenizer, prompts[c], max_new_tokens, batch_size, progress=True,
                                        until_verdict=c == "harmful")  # harmless ones are read whole (reference)
                 for c in classes}
    harmless = prompts["harmless"]
    return {"states": states, "responses": responses,
            "harmless_logp": next_token_logprobs(model, tokenizer, harmless, batch_size),
            "harmless_ppl": evaluate.response_perplexity(model, tokenizer, harmless, reference or responses["harmless"],
                                                         batch_size)}


def compare(base: dict, tuned: dict, layers: list[int], probe_folds: int, probe_C: float, seed: int,
            kl_threshold: float) -> dict:
    """Separation per layer on the held-out states (cross-validated probe accuracy; centroid distance on the base
    model's scale and on each model's own; Fisher ratio), the ES2/base ratios at the ES2 `layers`, harmless
    next-token KL(base ‖ ES2) (with the training's `kl_threshold` beside it) and perplexity, and the refusal rates
    of the harmless responses."""
    scale = probes.mean_norm(base["states"]["harmful"], base["states"]["harmless"])
    separation = {name: probes.separation_metrics(m["states"]["harmful"], m["states"]["harmless"], scale,
                                                  probe_folds, probe_C, seed)
                  for name, m in (("base", base), ("es2", tuned))}
    ratio = {key: [separation["es2"][key][l] / max(separation["base"][key][l], 1e-12) for l in layers]
             for key in ("centroid_distance", "centroid_distance_own_norm", "fisher")}
    kl = kl_divergence(base["harmless_logp"], tuned["harmless_logp"])  # [n]
    ppl = {name: torch.tensor(m["harmless_ppl"]).nanmedian().item() for name, m in (("base", base), ("es2", tuned))}
    ppl = {name: None if math.isnan(value) else value for name, value in ppl.items()}  # no scorable response
    return {"es2_layers": layers, "separation": separation, "ratio_at_es2_layers": ratio,
            "harmless_kl": {"mean": kl.mean().item(), "max": kl.max().item(), "threshold": kl_threshold},
            "harmless_ppl_median": ppl,
            "harmless_refusal": {name: sum(judges.refusals(m["responses"]["harmless"])) / len(m["responses"]["harmless"])
                                 for name, m in (("base", base), ("es2", tuned))}}


def no_attack_entries(summaries: Mapping[str, dict]) -> list[results.AttackEntry]:
    """Table 1's "no attack" row: one AttackEntry per model (attack "none", no perturbation) of how its greedy
    responses to the harmful eval prompts were judged (`summaries[model]` as `evaluate.summarize` returns it)."""
    return [results.AttackEntry(model=model, attack="none", setting="", summary=results.Summary.from_dict(summary),
                                perturbation={"l2": 0.0}, budget={}) for model, summary in summaries.items()]


def response_records(prompts: Mapping[str, list[str]], measured: Mapping[str, dict],
                     judged: Mapping[str, list[dict]]) -> list[dict]:
    """Stage 02's responses.jsonl: per model and eval class (`prompts["harmful"|"harmless"]`) each prompt's greedy
    response from `measured[model]`, with its judgement `judged[model][i]` for the harmful prompts."""
    return [{"model": which, "set": f"{cls}_eval", "prompt": prompt, "response": text,
             **(judged[which][i] if cls == "harmful" else {})}
            for which, m in measured.items() for cls in ("harmful", "harmless")
            for i, (prompt, text) in enumerate(zip(prompts[cls], m["responses"][cls]))]
