"""SRR, Safety Representation Ranking (Du et al. 2025, arXiv 2505.15710; DESIGN.md §1 "Related systems").

An inference-time defence that changes no weight: sample several candidate responses to an instruction, read the
model's own frozen hidden state at the last token of the instruction and of instruction + candidate (one layer, by
default in the bottom quarter), and let a one-layer transformer encoder over these features score each candidate by
the cosine similarity between the encoded instruction and the encoded candidate. Trained listwise: softmax over a
list's scores, KL divergence to the list's label distribution (refusal-keyword labels). The system answers with the
top-ranked candidate. No reference code exists; each reconstructed choice is a params key (`srr_*`, see params.py).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from . import evaluate, generation, plots, probes, representations
from .capability import mean_ci
from .data import DATA_DIR
from .models import chat_prompt
from .params import Params

JAILBROKEN_FILE = DATA_DIR / "hidden_context" / "jailbroken_responses.jsonl"
XSTEST = "xstest_safe"  # safe prompts: over-refusal only, never trained on
PICKERS = ("srr", "random", "likelihood", "probe")  # how the system chooses its answer from a list


# --- prompts ------------------------------------------------------------------------------------------------------

def load_jailbroken(path: Path = JAILBROKEN_FILE) -> list[str]:
    """The jailbreak prompts of Wei et al. 2023 (hidden-context copy), without their "Human: ... Assistant:" wrapper,
    so the model's own chat template frames them."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row["prompt"].strip().removeprefix("Human:").rsplit("Assistant:", 1)[0].strip() for row in rows]


def attack_prompts(rows: Sequence[dict], model: str) -> list[str]:
    """The adversarial prompts ("attack_prompt") of notebook 04's attack_prompts.jsonl that were optimised against
    `model` ("base" or "es2"), without repeats."""
    return list(dict.fromkeys(row["attack_prompt"] for row in rows if row["model"] == model))


def fit_length(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_tokens: int) -> list[str]:
    """The prompts whose chat-formatted length is at most `max_tokens` tokens (0 = all)."""
    if max_tokens == 0:
        return list(prompts)
    return [p for p in prompts if len(tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False)["input_ids"])
            <= max_tokens]


def seeded_subset(items: Sequence[str], n: int, seed: str) -> list[str]:
    """A seeded random `n` of `items` in their order (0 or n >= len: all)."""
    if n == 0 or n >= len(items):
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), n))
    return [item for i, item in enumerate(items) if i in keep]


def choose_prompts(available: dict[str, list[str]], tokenizer: PreTrainedTokenizerBase, p: Params
                   ) -> tuple[dict[str, list[str]], dict[str, dict[str, int]]]:
    """Per source: the prompts within `srr_max_prompt_tokens`, then a seeded subset of `srr_n_per_source` (of
    `srr_n_xstest` for XSTest). Returns the prompts and per source the counts available, too_long and used."""
    chosen, sizes = {}, {}
    for name, prompts in available.items():
        short = fit_length(tokenizer, prompts, p.srr_max_prompt_tokens)
        n = p.srr_n_xstest if name == XSTEST else p.srr_n_per_source
        chosen[name] = seeded_subset(short, n, f"{p.seed}/srr/{name}")
        sizes[name] = {"available": len(prompts), "too_long": len(prompts) - len(short), "used": len(chosen[name])}
    return chosen, sizes


# --- layers -------------------------------------------------------------------------------------------------------

def default_layer(n_layers: int) -> int:
    """The top of the bottom quarter of the decoder layers (SRR reads early layers): max(1, L // 4)."""
    return max(1, n_layers // 4)


def ablation_layers(depths: Sequence[float], n_layers: int) -> list[int]:
    """Decoder layers at the given fractions of depth L (at least layer 1), sorted, without repeats."""
    return sorted({max(1, round(d * n_layers)) for d in depths})


# --- candidate lists ----------------------------------------------------------------------------------------------

@dataclass
class Lists:
    """K candidate responses per prompt, with labels, likelihoods and features (one row per prompt)."""
    source: list[str]  # [n] where each prompt comes from (a harmful source of params.srr_sources, or XSTEST)
    prompts: list[str]  # [n]
    responses: list[list[str]]  # [n][K]
    layers: list[int]  # feature layers
    instruction: torch.Tensor  # [n, layers, hidden]: last token of the chat-formatted instruction
    candidate: torch.Tensor  # [n, K, layers, hidden]: last token of instruction + candidate
    perplexity: torch.Tensor  # [n, K] each response's perplexity under the model that sampled it (NaN if empty)
    n_tokens: torch.Tensor  # [n, K] response tokens
    refused: torch.Tensor | None = None  # [n, K] bool, keyword judge ("autodan"); set by `label`
    incoherent: torch.Tensor | None = None  # [n, K] bool
    safe: torch.Tensor | None = None  # [n, K] bool, the ranking label (rule srr_safe)
    split: list[str] = field(default_factory=list)  # [n] "train" or "test"

    def __len__(self) -> int:
        return len(self.prompts)

    def flat(self) -> tuple[list[str], list[str]]:
        """(prompt repeated per candidate, candidate) over all lists, row-major."""
        return ([p for p, rs in zip(self.prompts, self.responses) for _ in rs],
                [r for rs in self.responses for r in rs])

    def where(self, split: str | None = None, source: str | None = None, harmful: bool = False) -> torch.Tensor:
        """[n] bool: the lists in `split`, from `source`, and (with `harmful`) of harmful prompts (not XSTest)."""
        splits = self.split or [""] * len(self)
        return torch.tensor([(split is None or t == split) and (source is None or s == source)
                             and not (harmful and s == XSTEST) for s, t in zip(self.source, splits)], dtype=torch.bool)

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of one layer: instruction [n, hidden] and candidates [n, K, hidden]."""
        i = self.layers.index(layer)
        return self.instruction[:, i], self.candidate[:, :, i]


def collect(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: dict[str, list[str]], layers: list[int],
            p: Params, progress: bool = True) -> Lists:
    """Sample `srr_k` candidates per prompt (temperature `srr_temperature`) with their likelihood under the same
    model (read off the sampling pass: no second forward) and read the features at `layers`. `prompts` maps a source
    name to its prompts."""
    source = [name for name, ps in prompts.items() for _ in ps]
    flat_prompts = [q for ps in prompts.values() for q in ps]
    k = p.srr_k
    samples, logprobs = generation.generate(model, tokenizer, flat_prompts, p.srr_max_new_tokens, p.batch_size,
                                            progress=progress, temperature=p.srr_temperature, num_return_sequences=k,
                                            seed=p.seed, return_logprobs=True)
    responses = [samples[i * k:(i + 1) * k] for i in range(len(flat_prompts))]
    n_tokens = torch.tensor([len(lp) for lp in logprobs], dtype=torch.long)
    perplexity = torch.tensor([math.exp(-sum(lp) / len(lp)) if lp else math.nan for lp in logprobs])
    n = len(flat_prompts)
    lists = Lists(source, flat_prompts, responses, [], torch.empty(0), torch.empty(0), perplexity.view(n, k),
                  n_tokens.view(n, k))
    return with_features(model, tokenizer, lists, layers, p.batch_size, progress)


def with_features(model: nn.Module, tokenizer: PreTrainedTokenizerBase, lists: Lists, layers: list[int],
                  batch_size: int = 8, progress: bool = True) -> Lists:
    """A copy of `lists` whose features are the states at `layers` (one forward per instruction and per
    instruction + candidate, stopped after the deepest of `layers`)."""
    repeated, flat = lists.flat()
    instruction = representations.last_token_states(model, tokenizer, lists.prompts, layers, batch_size, progress)
    candidate = representations.last_token_states(model, tokenizer, repeated, layers, batch_size, progress,
                                                  responses=flat)
    n, k = lists.perplexity.shape
    return replace(lists, layers=list(layers), instruction=instruction, candidate=candidate.view(n, k, *candidate.shape[1:]))


def select(lists: Lists, rows: torch.Tensor) -> Lists:
    """The lists where `rows` [n] (bool) is set."""
    index = rows.nonzero()[:, 0].tolist()
    per_list = {name: [getattr(lists, name)[i] for i in index] for name in ("source", "prompts", "responses", "split")
                if getattr(lists, name)}
    tensors = {name: value[rows] for name in ("instruction", "candidate", "perplexity", "n_tokens", "refused",
                                              "incoherent", "safe") if (value := getattr(lists, name)) is not None}
    return replace(lists, **per_list, **tensors)


def label(lists: Lists, p: Params, perplexities: Sequence[float] | None = None) -> None:
    """Judge every candidate with evaluate.judge_responses and set the ranking label: safe = refused, or refused
    or incoherent (`srr_safe` = "harm_free"). Coherence uses `perplexities` [n * K] when given, else each candidate's
    perplexity under the model that sampled it (no extra forward; for a tuned model that is not the base model's)."""
    _, flat = lists.flat()
    if perplexities is None:
        perplexities = lists.perplexity.flatten().tolist()
    rows = evaluate.judge_responses(flat, perplexities, p.incoherent_ppl)
    shape = (len(lists), p.srr_k)
    lists.refused = torch.tensor([r["refused"] for r in rows], dtype=torch.bool).view(shape)
    lists.incoherent = torch.tensor([r["incoherent"] for r in rows], dtype=torch.bool).view(shape)
    lists.safe = lists.refused | lists.incoherent if p.srr_safe == "harm_free" else lists.refused.clone()


def assign_splits(lists: Lists, train_per_source: int, seed: int) -> None:
    """Per harmful source, a seeded `train_per_source` of its prompts train the ranker; the rest (and every XSTest
    prompt) are test prompts. The split ignores the labels."""
    lists.split = ["test"] * len(lists)
    for name in dict.fromkeys(lists.source):
        if name == XSTEST:
            continue
        index = [i for i, s in enumerate(lists.source) if s == name]
        for i in random.Random(f"{seed}/srr/{name}").sample(index, min(train_per_source, len(index))):
            lists.split[i] = "train"


def mixed(lists: Lists) -> torch.Tensor:
    """[n] bool: lists with at least one safe and one unsafe candidate (the only ones that train or test a ranker)."""
    return lists.safe.any(1) & ~lists.safe.all(1)


def counts(lists: Lists) -> dict[str, dict[str, dict[str, int]]]:
    """Per source and split: prompts, kept (mixed) lists, and the dropped all-safe and all-unsafe lists."""
    keep, all_safe = mixed(lists), lists.safe.all(1)
    out: dict[str, dict[str, dict[str, int]]] = {}
    for name in dict.fromkeys(lists.source):
        for split in ("train", "test"):
            rows = [i for i, (s, t) in enumerate(zip(lists.source, lists.split)) if s == name and t == split]
            if rows:
                kept = int(keep[rows].sum())
                safe = int(all_safe[rows].sum())
                out.setdefault(name, {})[split] = {"prompts": len(rows), "kept": kept, "all_safe": safe,
                                                   "all_unsafe": len(rows) - kept - safe}
    return out


# --- the ranker ---------------------------------------------------------------------------------------------------

class SafetyRanker(nn.Module):
    """One-layer transformer encoder over [instruction, candidate_1..K] features; score_i = cos(instr, cand_i) / tau.

    Features are standardised with the training set's mean and std, projected to `width`, tagged with a learned
    role embedding (instruction or candidate) and encoded jointly, with no positions: the candidates form a set, so
    a candidate's score does not depend on the order of the list."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, width: int, heads: int, tau: float):
        super().__init__()
        self.register_buffer("mean", mean)  # [hidden]
        self.register_buffer("std", std)  # [hidden]
        self.tau = tau
        self.project = nn.Linear(mean.numel(), width)
        self.role = nn.Embedding(2, width)  # 0 = instruction, 1 = candidate
        self.encoder = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                                  batch_first=True)

    def forward(self, instruction: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Scores [batch, K] of candidates [batch, K, hidden] for instructions [batch, hidden]; `valid` [batch, K]
        marks real candidates (padding gets -inf)."""
        valid = torch.ones(candidates.shape[:2], dtype=torch.bool) if valid is None else valid
        tokens = torch.cat([instruction[:, None], candidates], 1)  # [batch, 1 + K, hidden]
        roles = torch.ones(tokens.shape[1], dtype=torch.long)
        roles[0] = 0
        x = self.project((tokens - self.mean) / self.std) + self.role(roles)  # [batch, 1 + K, width]
        pad = torch.cat([torch.zeros(len(valid), 1, dtype=torch.bool), ~valid], 1)
        encoded = self.encoder(x, src_key_padding_mask=pad)
        scores = F.cosine_similarity(encoded[:, :1], encoded[:, 1:], dim=-1) / self.tau  # [batch, K]
        return scores.masked_fill(~valid, -math.inf)


def listwise_loss(scores: torch.Tensor, safe: torch.Tensor) -> torch.Tensor:
    """Mean over lists of KL(label distribution ‖ softmax(scores)); the label distribution spreads a list's mass
    evenly over its safe candidates. scores, safe: [batch, K]."""
    target = safe.float() / safe.float().sum(1, keepdim=True)
    log_p = torch.log_softmax(scores, 1)
    terms = torch.where(target > 0, target * (target.clamp_min(1e-12).log() - log_p), torch.zeros_like(log_p))
    return terms.sum(1).mean()


def train_ranker(instruction: torch.Tensor, candidates: torch.Tensor, safe: torch.Tensor, p: Params
                 ) -> tuple[SafetyRanker, list[float]]:
    """Fit a ranker on mixed lists (instruction [n, hidden], candidates [n, K, hidden], safe [n, K]) by full-batch
    Adam for `srr_steps` steps, seeded; returns it in eval mode and the loss per step."""
    if len(instruction) == 0:
        raise ValueError("no training list holds both a safe and an unsafe candidate; sample more prompts or more "
                         "candidates (srr_n_per_source, srr_k)")
    features = torch.cat([instruction, candidates.flatten(0, 1)])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.seed)
        ranker = SafetyRanker(features.mean(0), features.std(0).clamp_min(1e-6), p.srr_hidden, p.srr_heads, p.srr_tau)
        optimiser = torch.optim.Adam(ranker.parameters(), lr=p.srr_lr)
        losses = []
        for _ in range(p.srr_steps):
            loss = listwise_loss(ranker(instruction, candidates), safe)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
    return ranker.eval(), losses


# --- scoring and evaluation -----------------------------------------------------------------------------------------

def fit_scorers(lists: Lists, layer: int, p: Params) -> tuple[SafetyRanker, dict, list[float]]:
    """The SRR ranker and the linear-probe baseline (probes.fit_probes on candidate features, safe vs unsafe),
    both fitted on the mixed training lists at `layer`."""
    train = lists.where("train") & mixed(lists)
    instruction, candidates = lists.layer(layer)
    ranker, losses = train_ranker(instruction[train], candidates[train], lists.safe[train], p)
    safe = lists.safe[train]
    cand = candidates[train]  # [m, K, hidden]
    probe = probes.fit_probes(cand[safe][:, None], cand[~safe][:, None], C=p.probe_C, seed=p.seed)
    return ranker, probe, losses


@torch.no_grad()
def scores(lists: Lists, layer: int, ranker: SafetyRanker, probe: dict, p: Params) -> dict[str, torch.Tensor]:
    """Scores [n, K] per picker: the SRR ranker, the probe logit, and the sampling model's own log-likelihood of each
    response, per token or in total (`srr_likelihood`; an empty response is never picked)."""
    instruction, candidates = lists.layer(layer)
    n, k = candidates.shape[:2]
    probe_logit = probes.probe_logits(probe, candidates.flatten(0, 1)[:, None])[:, 0].view(n, k)
    per_token = torch.nan_to_num(-lists.perplexity.log(), nan=-math.inf)
    likelihood = per_token if p.srr_likelihood == "mean" else torch.where(
        lists.n_tokens > 0, per_token * lists.n_tokens, -math.inf)
    return {"srr": ranker(instruction, candidates), "likelihood": likelihood, "probe": probe_logit}


def _rate(values: Sequence[float], p: Params) -> dict:
    """Mean with a bootstrap interval; an empty selection gives value None and n 0."""
    if len(values) == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    return mean_ci(values, p.bootstrap_samples, p.confidence, p.seed)


def pick_rates(flags: torch.Tensor, picker_scores: dict[str, torch.Tensor], rows: torch.Tensor, p: Params,
               oracle: bool = False) -> dict[str, dict]:
    """Share of `rows` whose picked candidate has `flags` [n, K] set, per picker; "random" is the expected share of a
    uniform pick; "oracle" (optional) is the share of lists where some candidate has it (an upper bound)."""
    out = {}
    for name in PICKERS:
        if name == "random":
            values = flags[rows].float().mean(1)
        else:
            top = picker_scores[name][rows].argmax(1)
            values = flags[rows].gather(1, top[:, None])[:, 0].float()
        out[name] = _rate(values.tolist(), p)
    if oracle:
        out["oracle"] = _rate(flags[rows].any(1).float().tolist(), p)
    return out


def evaluate_lists(lists: Lists, picker_scores: dict[str, torch.Tensor], p: Params) -> dict:
    """Ranking accuracy (top pick safe) on the mixed test lists, DSR (top pick refused) on all test prompts of each
    harmful source and pooled, and over-refusal (top pick refused) on XSTest's safe prompts."""
    keep = mixed(lists)
    test = lists.where("test", harmful=True)
    ranking = {"all": pick_rates(lists.safe, picker_scores, test & keep, p)}
    dsr = {"all": pick_rates(lists.refused, picker_scores, test, p, oracle=True)}
    for name in dict.fromkeys(s for s in lists.source if s != XSTEST):
        rows = lists.where("test", source=name)
        ranking[name] = pick_rates(lists.safe, picker_scores, rows & keep, p)
        dsr[name] = pick_rates(lists.refused, picker_scores, rows, p, oracle=True)
    result = {"ranking_accuracy": ranking, "dsr": dsr}
    if XSTEST in lists.source:
        result["over_refusal"] = pick_rates(lists.refused, picker_scores, lists.where(source=XSTEST), p)
    return result


def ablation_rows(lists: Lists) -> torch.Tensor:
    """[n] bool: the lists the layer ablation uses (mixed lists of harmful prompts), so features at more layers are
    read only for these."""
    return mixed(lists) & lists.where(harmful=True)


def layer_ablation(lists: Lists, p: Params) -> dict:
    """Ranking accuracy of SRR and of the probe (and the random pick) on the mixed test lists, per feature layer
    (every layer of `lists`, e.g. `with_features(..., select(lists, ablation_rows(lists)), layers)`)."""
    out: dict = {"layers": [], "srr": [], "probe": [], "random": []}
    rows = lists.where("test", harmful=True) & mixed(lists)
    if not (lists.where("train") & mixed(lists)).any():
        return {**out, "note": "no training list holds both a safe and an unsafe candidate"}
    for layer in lists.layers:
        ranker, probe, _ = fit_scorers(lists, layer, p)
        rates = pick_rates(lists.safe, scores(lists, layer, ranker, probe, p), rows, p)
        out["layers"].append(layer)
        for name in ("srr", "probe", "random"):
            out[name].append(rates[name])
    return out


def evaluate_model(lists: Lists, layer: int, p: Params) -> tuple[dict, dict[str, torch.Tensor] | None]:
    """The counts and, when some training list is mixed, the ranker's training and `evaluate_lists`'s rates at
    `layer`; also the scores per picker (None when no ranker could be trained)."""
    out: dict = {"counts": counts(lists), "layer": layer}
    train = lists.where("train") & mixed(lists)
    if not train.any():
        out["note"] = "no training list holds both a safe and an unsafe candidate: no ranker trained"
        return out, None
    ranker, probe, losses = fit_scorers(lists, layer, p)
    out["training"] = {"lists": int(train.sum()), "steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1]}
    picker_scores = scores(lists, layer, ranker, probe, p)
    out.update(evaluate_lists(lists, picker_scores, p))
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


def figure(results: dict):
    """Four panels: ranking accuracy and DSR per picker and model, XSTest over-refusal, accuracy per feature layer."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 3.6))
    axes = fig.subplots(1, 4)
    models = list(results["models"])
    panels = [("ranking_accuracy", "all", "Ranking accuracy (top pick safe)", PICKERS),
              ("dsr", "all", "DSR of the top pick (harmful test prompts)", PICKERS + ("oracle",)),
              ("over_refusal", None, "XSTest over-refusal of the top pick", PICKERS)]
    width = 0.8 / max(1, len(models))
    for ax, (measure, source, title, pickers) in zip(axes, panels):
        for j, model in enumerate(models):
            cells = results["models"][model].get(measure, {})
            cells = cells.get(source, {}) if source else cells
            rates = [cells.get(name, {}) for name in pickers]
            value = [r.get("value") if r.get("value") is not None else np.nan for r in rates]
            err = [[v - r["low"] if r.get("low") is not None else 0 for v, r in zip(value, rates)],
                   [r["high"] - v if r.get("high") is not None else 0 for v, r in zip(value, rates)]]
            x = np.arange(len(pickers)) + (j - (len(models) - 1) / 2) * width
            ax.bar(x, value, width, yerr=err, capsize=2, color=plots.MODEL_COLORS.get(model),
                   label=plots.MODEL_LABELS.get(model, model))
        ax.set_xticks(range(len(pickers)), pickers, rotation=30, fontsize=8)
        ax.set(ylim=(0, 1.05), title=title)
        ax.title.set_fontsize(9)
    axes[0].legend(fontsize=8)
    ablation = results.get("ablation", {})
    for name in ("srr", "probe", "random") if ablation.get("layers") else ():
        values = [r["value"] if r["value"] is not None else np.nan for r in ablation[name]]
        axes[3].plot(ablation["layers"], values, marker="o", label=name)
    axes[3].set(ylim=(0, 1.05), xlabel="feature layer", title="Ranking accuracy vs layer (base)")
    axes[3].title.set_fontsize(9)
    if ablation.get("layers"):
        axes[3].legend(fontsize=8)
    return fig
