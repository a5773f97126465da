"""The candidate lists of SRR, Safety Representation Ranking (Du et al. 2025, arXiv 2505.15710): per instruction,
K sampled responses with their likelihood, their keyword-judge labels, and the model's own frozen hidden states at
the last token of the instruction and of instruction + candidate (the ranker's features); the prompts of each source
and the seeded train/test split. See docs/architecture.md, "Related systems".
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from . import evaluate, generation, representations
from .data import DATA_DIR
from .models import chat_prompt

JAILBROKEN_FILE = DATA_DIR / "hidden_context" / "jailbroken_responses.jsonl"
XSTEST = "xstest_safe"  # safe prompts: over-refusal only, never trained on
OOD_SOURCES = ("malicious_instruct", "i_malicious_instructions", "q_harm")  # bundled harmful sets, never trained on:
# they test whether the ranker's picks carry to harmful prompts unlike those it learnt from
SAFE_RULES = ("refused", "harm_free")  # the ranking label: refused, or refused or incoherent


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


def choose_prompts(available: dict[str, list[str]], tokenizer: PreTrainedTokenizerBase, max_prompt_tokens: int,
                   n_per_source: int, n_xstest: int, seed: int
                   ) -> tuple[dict[str, list[str]], dict[str, dict[str, int]]]:
    """Per source: the prompts within `max_prompt_tokens`, then a seeded subset of `n_per_source` (of `n_xstest` for
    XSTest; 0 = all). Returns the prompts and per source the counts available, too_long and used."""
    chosen, sizes = {}, {}
    for name, prompts in available.items():
        short = fit_length(tokenizer, prompts, max_prompt_tokens)
        n = n_xstest if name == XSTEST else n_per_source
        chosen[name] = seeded_subset(short, n, f"{seed}/srr/{name}")
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


def collect(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: dict[str, list[str]], layers: list[int], *,
            k: int, temperature: float, max_new_tokens: int, batch_size: int, seed: int, progress: bool = True
            ) -> Lists:
    """Sample `k` candidates per prompt (`max_new_tokens` each, at `temperature`, seeded) with their likelihood under
    the same model (read off the sampling pass: no second forward) and read the features at `layers`. `prompts` maps
    a source name to its prompts."""
    source = [name for name, ps in prompts.items() for _ in ps]
    flat_prompts = [q for ps in prompts.values() for q in ps]
    samples, logprobs = generation.generate(model, tokenizer, flat_prompts, max_new_tokens, batch_size,
                                            progress=progress, temperature=temperature, num_return_sequences=k,
                                            seed=seed, return_logprobs=True)
    responses = [samples[i * k:(i + 1) * k] for i in range(len(flat_prompts))]
    n_tokens = torch.tensor([len(lp) for lp in logprobs], dtype=torch.long)
    perplexity = torch.tensor([math.exp(-sum(lp) / len(lp)) if lp else math.nan for lp in logprobs])
    n = len(flat_prompts)
    lists = Lists(source, flat_prompts, responses, [], torch.empty(0), torch.empty(0), perplexity.view(n, k),
                  n_tokens.view(n, k))
    return with_features(model, tokenizer, lists, layers, batch_size, progress)


def with_features(model: nn.Module, tokenizer: PreTrainedTokenizerBase, lists: Lists, layers: list[int],
                  batch_size: int = 8, progress: bool = True) -> Lists:
    """A copy of `lists` whose features are the states at `layers` (one forward per instruction and per
    instruction + candidate, stopped after the deepest of `layers`)."""
    repeated, flat = lists.flat()
    instruction = representations.last_token_states(model, tokenizer, lists.prompts, layers, batch_size, progress)
    candidate = representations.last_token_states(model, tokenizer, repeated, layers, batch_size, progress,
                                                  responses=flat)
    n, k = lists.perplexity.shape
    return replace(lists, layers=list(layers), instruction=instruction,
                   candidate=candidate.view(n, k, *candidate.shape[1:]))


def select(lists: Lists, rows: torch.Tensor) -> Lists:
    """The lists where `rows` [n] (bool) is set."""
    index = rows.nonzero()[:, 0].tolist()
    per_list = {name: [getattr(lists, name)[i] for i in index] for name in ("source", "prompts", "responses", "split")
                if getattr(lists, name)}
    tensors = {name: value[rows] for name in ("instruction", "candidate", "perplexity", "n_tokens", "refused",
                                              "incoherent", "safe") if (value := getattr(lists, name)) is not None}
    return replace(lists, **per_list, **tensors)


def label(lists: Lists, incoherent_ppl: float, safe_rule: str, perplexities: Sequence[float] | None = None) -> None:
    """Judge every candidate with evaluate.judge_responses (incoherent above `incoherent_ppl`) and set the ranking
    label: safe = refused, or refused or incoherent (`safe_rule` "harm_free"). Coherence uses `perplexities` [n * K]
    when given, else each candidate's perplexity under the model that sampled it (no extra forward; for a tuned model
    that is not the base model's)."""
    if safe_rule not in SAFE_RULES:
        raise ValueError(f"safe_rule must be one of {SAFE_RULES}, got {safe_rule!r}")
    _, flat = lists.flat()
    if perplexities is None:
        perplexities = lists.perplexity.flatten().tolist()
    rows = evaluate.judge_responses(flat, perplexities, incoherent_ppl)
    shape = lists.perplexity.shape  # [n, K]
    lists.refused = torch.tensor([r["refused"] for r in rows], dtype=torch.bool).view(shape)
    lists.incoherent = torch.tensor([r["incoherent"] for r in rows], dtype=torch.bool).view(shape)
    lists.safe = lists.refused | lists.incoherent if safe_rule == "harm_free" else lists.refused.clone()


def assign_splits(lists: Lists, train_per_source: int, seed: int) -> None:
    """Per harmful source, a seeded `train_per_source` of its prompts train the ranker; the rest (and every prompt
    of XSTest and of the out-of-distribution sets, OOD_SOURCES) are test prompts. The split ignores the labels."""
    lists.split = ["test"] * len(lists)
    for name in dict.fromkeys(lists.source):
        if name == XSTEST or name in OOD_SOURCES:
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
