"""How the SRR system (Du et al. 2025, arXiv 2505.15710) and its baselines pick an answer from a candidate list, and
how well: the trained ranker, a uniform random pick, the sampling model's own likelihood and a linear probe on the
candidate features; ranking accuracy (top pick safe), DSR (top pick refused) and XSTest over-refusal of each pick,
with bootstrap intervals, SRR against each baseline on the same lists (paired tests), and ranking accuracy per
feature layer. See docs/architecture.md, "Related systems".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from . import probes
from .stats import exact_paired_difference, mcnemar_exact, mean_ci, signed_rank, t_interval
from .srr_candidates import XSTEST, Lists, counts, mixed
from .srr_ranker import RankerConfig, SafetyRanker, train_ranker

PICKERS = ("srr", "random", "likelihood", "probe")  # how the system chooses its answer from a list
LIKELIHOODS = ("mean", "total")  # the model's own pick: highest log-prob per token, or in total


@dataclass(frozen=True)
class PickerConfig:
    """What fitting and scoring the pickers reads (params srr_*, probe_C, seed, bootstrap_samples, confidence)."""
    ranker: RankerConfig
    probe_C: float  # inverse L2 strength of the probe baseline
    likelihood: str  # one of LIKELIHOODS
    seed: int  # seeds the ranker, the probe and the bootstrap
    bootstrap_samples: int
    confidence: float


def fit_scorers(lists: Lists, layer: int, config: PickerConfig) -> tuple[SafetyRanker, dict, list[float]]:
    """The SRR ranker and the linear-probe baseline (probes.fit_probes on candidate features, safe vs unsafe),
    both fitted on the mixed training lists at `layer`."""
    train = lists.where("train") & mixed(lists)
    instruction, candidates = lists.layer(layer)
    ranker, losses = train_ranker(instruction[train], candidates[train], lists.safe[train], config.ranker,
                                  config.seed)
    safe = lists.safe[train]
    cand = candidates[train]  # [m, K, hidden]
    probe = probes.fit_probes(cand[safe][:, None], cand[~safe][:, None], C=config.probe_C, seed=config.seed)
    return ranker, probe, losses


@torch.no_grad()
def scores(lists: Lists, layer: int, ranker: SafetyRanker, probe: dict, likelihood: str) -> dict[str, torch.Tensor]:
    """Scores [n, K] per picker: the SRR ranker, the probe logit, and the sampling model's own log-likelihood of each
    response, per token ("mean") or in total (`likelihood`; an empty response is never picked)."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    instruction, candidates = lists.layer(layer)
    n, k = candidates.shape[:2]
    probe_logit = probes.probe_logits(probe, candidates.flatten(0, 1)[:, None])[:, 0].view(n, k)
    per_token = torch.nan_to_num(-lists.perplexity.log(), nan=-math.inf)
    own = per_token if likelihood == "mean" else torch.where(lists.n_tokens > 0, per_token * lists.n_tokens, -math.inf)
    return {"srr": ranker(instruction, candidates), "likelihood": own, "probe": probe_logit}


def _rate(values: Sequence[float], config: PickerConfig) -> dict:
    """Mean with a bootstrap interval; an empty selection gives value None and n 0."""
    if len(values) == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    return mean_ci(values, config.bootstrap_samples, config.confidence, config.seed)


def picked(flags: torch.Tensor, picker_scores: dict[str, torch.Tensor], name: str, rows: torch.Tensor) -> torch.Tensor:
    """[m] float: for each list of `rows`, `flags` [n, K] of the candidate picker `name` picks (its top score); for
    "random" the expected flag of a uniform pick (the share of the list's candidates that have it)."""
    if name == "random":
        return flags[rows].float().mean(1)
    top = picker_scores[name][rows].argmax(1)
    return flags[rows].gather(1, top[:, None])[:, 0].float()


def pick_rates(flags: torch.Tensor, picker_scores: dict[str, torch.Tensor], rows: torch.Tensor, config: PickerConfig,
               oracle: bool = False) -> dict[str, dict]:
    """Share of `rows` whose picked candidate has `flags` [n, K] set, per picker (`picked`); "oracle" (optional) is
    the share of lists where some candidate has it (an upper bound)."""
    out = {name: _rate(picked(flags, picker_scores, name, rows).tolist(), config) for name in PICKERS}
    if oracle:
        out["oracle"] = _rate(flags[rows].any(1).float().tolist(), config)
    return out


def paired_tests(lists: Lists, picker_scores: dict[str, torch.Tensor], config: PickerConfig) -> list[dict]:
    """SRR against each baseline on the same lists, per measure (ranking accuracy on the mixed harmful test lists,
    DSR on every harmful test list, over-refusal on XSTest's): the paired difference srr − baseline of the picked
    candidate's flag with its exact interval (`stats.exact_paired_difference`; for "random", whose flag is an
    expected share, the mean difference with its t interval), how many lists only SRR's pick has the flag for and
    how many only the baseline's, and the p-value (exact McNemar; for "random" the Wilcoxon signed-rank test)."""
    measures = {"ranking_accuracy": (lists.safe, lists.where("test", harmful=True) & mixed(lists)),
                "dsr": (lists.refused, lists.where("test", harmful=True))}
    if XSTEST in lists.source:
        measures["over_refusal"] = (lists.refused, lists.where(source=XSTEST))
    out = []
    for measure, (flags, rows) in measures.items():
        if not rows.any():
            continue
        srr = picked(flags, picker_scores, "srr", rows)
        for baseline in (name for name in PICKERS if name != "srr"):
            other = picked(flags, picker_scores, baseline, rows)
            d = (srr - other).tolist()
            if baseline == "random":
                diff, test = t_interval(d, config.confidence), signed_rank(d)
                counts = {"srr_only": test["higher"], "baseline_only": test["lower"]}
            else:
                a, b = other.bool().tolist(), srr.bool().tolist()
                diff, test = exact_paired_difference(a, b, config.confidence), mcnemar_exact(a, b)
                counts = {"srr_only": test["b_only"], "baseline_only": test["a_only"]}
            out.append({"measure": measure, "baseline": baseline, "n": int(rows.sum()), "srr": float(srr.mean()),
                        "baseline_rate": float(other.mean()), "difference": {k: diff[k] for k in ("value", "low", "high")},
                        **counts, "p": test["p"]})
    return out


def evaluate_lists(lists: Lists, picker_scores: dict[str, torch.Tensor], config: PickerConfig) -> dict:
    """Ranking accuracy (top pick safe) on the mixed test lists, DSR (top pick refused) on all test prompts of each
    harmful source and pooled, and over-refusal (top pick refused) on XSTest's safe prompts."""
    keep = mixed(lists)
    test = lists.where("test", harmful=True)
    ranking = {"all": pick_rates(lists.safe, picker_scores, test & keep, config)}
    dsr = {"all": pick_rates(lists.refused, picker_scores, test, config, oracle=True)}
    for name in dict.fromkeys(s for s in lists.source if s != XSTEST):
        rows = lists.where("test", source=name)
        ranking[name] = pick_rates(lists.safe, picker_scores, rows & keep, config)
        dsr[name] = pick_rates(lists.refused, picker_scores, rows, config, oracle=True)
    result = {"ranking_accuracy": ranking, "dsr": dsr}
    if XSTEST in lists.source:
        result["over_refusal"] = pick_rates(lists.refused, picker_scores, lists.where(source=XSTEST), config)
    return result


def ablation_rows(lists: Lists) -> torch.Tensor:
    """[n] bool: the lists the layer ablation uses (mixed lists of harmful prompts), so features at more layers are
    read only for these."""
    return mixed(lists) & lists.where(harmful=True)


def layer_ablation(lists: Lists, config: PickerConfig) -> dict:
    """Ranking accuracy of SRR and of the probe (and the random pick) on the mixed test lists, per feature layer
    (every layer of `lists`, e.g. `with_features(..., select(lists, ablation_rows(lists)), layers)`); with no mixed
    training list, no layer and `untrained` set."""
    out: dict = {"layers": [], "srr": [], "probe": [], "random": []}
    rows = lists.where("test", harmful=True) & mixed(lists)
    if not (lists.where("train") & mixed(lists)).any():
        return {**out, "untrained": True}
    for layer in lists.layers:
        ranker, probe, _ = fit_scorers(lists, layer, config)
        rates = pick_rates(lists.safe, scores(lists, layer, ranker, probe, config.likelihood), rows, config)
        out["layers"].append(layer)
        for name in ("srr", "probe", "random"):
            out[name].append(rates[name])
    return out


def evaluate_model(lists: Lists, layer: int, config: PickerConfig) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """The counts and, when some training list is mixed, the ranker's training, `evaluate_lists`'s rates at `layer`
    and `paired_tests` ("paired"); also the scores per picker. With no mixed training list: `untrained` set and
    scores None."""
    out: dict = {"counts": counts(lists), "layer": layer}
    train = lists.where("train") & mixed(lists)
    if not train.any():
        return {**out, "untrained": True}, None
    ranker, probe, losses = fit_scorers(lists, layer, config)
    out["training"] = {"lists": int(train.sum()), "steps": len(losses), "loss_first": losses[0],
                       "loss_last": losses[-1]}
    picker_scores = scores(lists, layer, ranker, probe, config.likelihood)
    out.update(evaluate_lists(lists, picker_scores, config))
    out["paired"] = paired_tests(lists, picker_scores, config)
    return out, picker_scores


def records(lists: Lists, picker_scores: dict[str, torch.Tensor] | None) -> list[dict]:
    """One row per candidate list: source, split, prompt, candidates with their judgements, and each picker's pick."""
    keep = mixed(lists)
    rows = []
    for i in range(len(lists)):
        picks = {name: int(s[i].argmax()) for name, s in (picker_scores or {}).items()}
        rows.append({"source": lists.source[i], "split": lists.split[i], "mixed": bool(keep[i]),
                     "prompt": lists.prompts[i], "responses": lists.responses[i],
                     "refused": lists.refused[i].tolist(), "incoherent": lists.incoherent[i].tolist(),
                     "safe": lists.safe[i].tolist(), "perplexity": lists.perplexity[i].tolist(), "picks": picks})
    return rows


def table(results: dict) -> list[dict]:
    """Long-format rows (model, measure, source, picker, value, low, high, n) of a results dict."""
    rows = []
    for model, res in results["models"].items():
        for measure in ("ranking_accuracy", "dsr"):
            for source, rates in res.get(measure, {}).items():
                rows += [{"model": model, "measure": measure, "source": source, "picker": picker, **rate}
                         for picker, rate in rates.items()]
        rows += [{"model": model, "measure": "over_refusal", "source": XSTEST, "picker": picker, **rate}
                 for picker, rate in res.get("over_refusal", {}).items()]
    for i, layer in enumerate(results.get("ablation", {}).get("layers", [])):
        rows += [{"model": "base", "measure": f"ranking_accuracy@layer{layer}", "source": "all", "picker": picker,
                  **results["ablation"][picker][i]} for picker in ("srr", "probe", "random")]
    return rows
