"""Stage 02's held-out evaluation of every arm (paper Section 3 and its separation figure) beside the base model.

`measure` takes one model's states at every layer, greedy responses (harmful ones only up to their refusal
verdict: generation.generate's until_verdict) and harmless next-token distributions on the eval prompts; `compare`
turns two measurements into the separation per layer, the tuned/base ratios at the ES2 layers and the harmless KL,
perplexity and refusal rate; `evaluate_model` adds the judged responses to other sets (out-of-distribution harmful
prompts, XSTest's safe prompts), `arm_row` one row of the arms table and `paired_comparisons` the paired tests that
say how much of a gain is separation and how much refusal training. See docs/architecture.md, 'Arms'.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from . import batching, evaluate, generation, hooks, judges, models, probes, representations, results, stats
from .objective import harmless_kl, layer_distance


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
            max_new_tokens: int, n_harmless_responses: int = 0, reference: list[str] | None = None) -> dict:
    """What 02 compares between base and ES2 on the held-out prompts `prompts["harmful"|"harmless"]`: last-token
    states at every layer 0..L, greedy responses (harmless ones only to the first `n_harmless_responses`, 0 = all:
    they are read whole, so they cost the most), next-token log-probs after the harmless prompts, and the
    perplexity under `model` of the harmless `reference` responses (default: its own)."""
    layers = list(range(models.num_layers(model) + 1))
    classes = ("harmful", "harmless")
    states = {c: representations.last_token_states(model, tokenizer, prompts[c], layers, batch_size) for c in classes}
    harmless = prompts["harmless"]
    answered = {"harmful": prompts["harmful"], "harmless": harmless[:n_harmless_responses or len(harmless)]}
    responses = {c: generation.generate(model, tokenizer, answered[c], max_new_tokens, batch_size, progress=True,
                                        until_verdict=c == "harmful")  # harmless ones are read whole (reference)
                 for c in classes}
    return {"states": states, "responses": responses,
            "harmless_logp": next_token_logprobs(model, tokenizer, harmless, batch_size),
            "harmless_ppl": evaluate.response_perplexity(model, tokenizer, answered["harmless"],
                                                         reference or responses["harmless"], batch_size)}


def compare(base: dict, tuned: dict, layers: list[int], probe_folds: int, probe_C: float, seed: int,
            kl_threshold: float, kl_direction: str) -> dict:
    """Separation per layer on the held-out states (cross-validated probe accuracy; the paper's mean pairwise L2
    distance and the centroid distance on the base model's scale, the centroid distance on each model's own;
    Fisher ratio), the tuned/base ratios at the ES2 `layers`, the harmless next-token KL in the training's
    direction (`kl_direction`, with its `kl_threshold` beside it) and perplexity, and the refusal rates of the
    harmless responses."""
    scale = probes.mean_norm(base["states"]["harmful"], base["states"]["harmless"])
    separation = {name: probes.separation_metrics(m["states"]["harmful"], m["states"]["harmless"], scale,
                                                  probe_folds, probe_C, seed)
                  | {"pairwise_distance": layer_distance(m["states"]["harmful"], m["states"]["harmless"], scale,
                                                         "pairwise").tolist()}
                  for name, m in (("base", base), ("es2", tuned))}
    ratio = {key: [separation["es2"][key][l] / max(separation["base"][key][l], 1e-12) for l in layers]
             for key in ("pairwise_distance", "centroid_distance", "centroid_distance_own_norm", "fisher")}
    kl = harmless_kl(base["harmless_logp"], tuned["harmless_logp"], kl_direction)  # [n]
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


def evaluate_model(model: nn.Module, tokenizer: PreTrainedTokenizerBase, heldout: dict[str, list[str]],
                   other_sets: Mapping[str, list[str]], batch_size: int, max_new_tokens: int, incoherent_ppl: float,
                   is_base: bool, n_harmless_responses: int = 0, reference: list[str] | None = None) -> dict:
    """Everything 02 reports of one model (base or an arm): `measure` on the held-out eval prompts; the judged
    responses (`evaluate.judge`) to the harmful eval prompts (set "harmful_eval") and to every other set
    (`other_sets[name]`: out-of-distribution harmful sets for DSR, "xstest_..." sets for over-refusal; stopped at
    the verdict, `evaluate.generate_and_judge`); and the base network's perplexity of the model's own harmless eval responses (their coherence)."""
    measured = measure(model, tokenizer, heldout, batch_size, max_new_tokens, n_harmless_responses, reference)
    responses = {"harmful_eval": measured["responses"]["harmful"]}
    judged = {"harmful_eval": evaluate.judge(model, tokenizer, heldout["harmful"], responses["harmful_eval"],
                                             batch_size, incoherent_ppl, is_base)}
    for name, prompts in other_sets.items():
        responses[name], judged[name] = evaluate.generate_and_judge(model, tokenizer, prompts, max_new_tokens,
                                                                    batch_size, incoherent_ppl, is_base, progress=True)
    score = evaluate.response_perplexity if is_base else evaluate.base_perplexity
    answered = measured["responses"]["harmless"]
    own = score(model, tokenizer, heldout["harmless"][:len(answered)], answered, batch_size)
    return {"measured": measured, "responses": responses, "judged": judged, "harmless_base_ppl": own}


def arm_row(evaluated: dict, metrics: dict | None, training: dict | None, incoherent_ppl: float,
            confidence: float) -> dict:
    """One row of 02's arms table (a model evaluated by `evaluate_model`; `metrics` from `compare` against the
    base, `training` its steps and KL guard; both None for the base): exact intervals on every rate, each DSR and
    over-refusal under both keyword judges (the JailbreakBench one's keys end in "_jbb")."""
    rate = lambda flags: stats.exact_rate(flags, confidence)  # noqa: E731
    judged = evaluated["judged"]
    ppl = [p for p in (evaluated["harmless_base_ppl"] or []) if not math.isnan(p)]
    harmful = [r for name, rows in judged.items() if not name.startswith("xstest") for r in rows]
    row = {}
    for field in judges.FLAG_FIELDS.values():
        suffix = field[len("refused"):]  # "" for the paper's judge, "_jbb"
        row |= {f"dsr_{name}{suffix}": rate([r[field] for r in rows]) for name, rows in judged.items()
                if not name.startswith("xstest")}
        row |= {f"over_refusal_{name}{suffix}": rate([r[field] for r in rows]) for name, rows in judged.items()
                if name.startswith("xstest")}
    row |= {"harmless_refused": rate(judges.refusals(evaluated["measured"]["responses"]["harmless"])),
            "harmless_incoherent": rate([p > incoherent_ppl for p in ppl]) if ppl else None,
            "harmless_base_ppl_median": float(np.median(ppl)) if ppl else None,
            "harmful_incoherent": rate([r["incoherent"] for r in harmful])}
    if metrics is not None:
        row |= {"layers": metrics["es2_layers"], "ratio_at_layers": metrics["ratio_at_es2_layers"],
                "heldout_kl": metrics["harmless_kl"]["mean"]}
    return row | (training or {})


# (tuned, reference, what the difference says): the paired comparisons of "how much is separation"
COMPARISONS = (("es2", "base", "separation alone"), ("es2_retain", "es2", "the retain term on top of separation"),
               ("stl", "base", "refusal training alone (STL)"),
               ("es2_retain", "stl", "ES2 + retain against refusal training alone"), ("rr", "base", "rerouting (RR)"))


def paired_comparisons(judged: Mapping[str, Mapping[str, list[dict]]], confidence: float, samples: int,
                       seed: int) -> list[dict]:
    """For each comparison of COMPARISONS whose two models were evaluated (`judged[model][set]`, `evaluate.judge`
    rows on the same prompts), per set and keyword judge (`judges.FLAG_FIELDS`): the paired difference of the refused
    share (tuned − reference) with its interval and the exact McNemar test."""
    rows = []
    for tuned, reference, what in COMPARISONS:
        if tuned not in judged or reference not in judged:
            continue
        for name in judged[tuned]:
            for judge, field in judges.FLAG_FIELDS.items():
                a = [r[field] for r in judged[reference][name]]
                b = [r[field] for r in judged[tuned][name]]
                diff = stats.paired_difference(a, b, samples, confidence, seed)
                rows.append({"tuned": tuned, "reference": reference, "what": what, "set": name, "judge": judge,
                             "reference_rate": float(np.mean(a)), "tuned_rate": float(np.mean(b)),
                             "difference": diff, "mcnemar": stats.mcnemar_exact(a, b)})
    return rows


def measures(row: Mapping) -> dict[str, float | None]:
    """The scalar measures of an `arm_row` row: each rate's value, the mean pairwise-distance ratio over its ES2
    layers, the held-out harmless KL and the median base perplexity of its harmless responses."""
    out = {key: value["value"] for key, value in row.items() if isinstance(value, dict) and "value" in value}
    ratio = row.get("ratio_at_layers", {}).get("pairwise_distance")
    out["pairwise_ratio"] = float(np.mean(ratio)) if ratio else None
    out["heldout_kl"] = row.get("heldout_kl")
    out["harmless_base_ppl_median"] = row.get("harmless_base_ppl_median")
    return out


def seed_spread(table: Mapping[str, Mapping], groups: Mapping[str, list[str]]) -> dict[str, dict[str, dict]]:
    """Per arm, over its trainings at different seeds (`groups[arm]`: their keys in `table`, `arm_row` rows): the
    mean, standard deviation (ddof 1), min and max of each of `measures`."""
    spread = {}
    for arm, keys in groups.items():
        rows = [measures(table[key]) for key in keys]
        spread[arm] = {}
        for measure in rows[0]:
            values = [r[measure] for r in rows if r.get(measure) is not None]
            if values:
                spread[arm][measure] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if
                                        len(values) > 1 else 0.0, "min": min(values), "max": max(values),
                                        "n": len(values)}
    return spread
