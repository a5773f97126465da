"""AutoDAN-HGA: a hierarchical genetic search over jailbreak templates (Liu et al. 2023, §3; docs/architecture.md,
"Attacks").

The population starts from AutoDAN's initial prompt (data/autodan), diversified by mutation; a template's
"[REPLACE]" slot is filled with the lower-cased behaviour to make the user message, as in AutoDAN's code. A
template's fitness is the target cross-entropy of its message (`gcg.target_losses`, the one scoring function
of the prompt attacks, in prompt_search.py: batched, the fixed chat prefix cached, the head only at the target
positions). Each
generation keeps the elites; every `crossover_every` generations the rest come from roulette selection and
sentence-level multi-point crossover (the paragraph level of the hierarchy), in the other generations from
word-level replacement guided by a momentum word dictionary (the word level); then a share is mutated.

Mutation is LLM-free by default: words are replaced by synonyms from the small built-in table SYNONYM_GROUPS
(AutoDAN draws synonyms from WordNet and rewrites with GPT; neither is available offline), or, when no word of
the template is in the table, two adjacent words are swapped. The "[REPLACE]" slot survives every operator.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..data import DATA_DIR
from ..judges import is_refusal
from ..progress import progress
from .budgets import AutoDANBudget
from .common import Outcome, timed
from .prompt_search import AttackResult, chat_around, encode, outcome, prefix_kv, respond, target_losses

PLACEHOLDER = "[REPLACE]"
INITIAL_PROMPT = DATA_DIR / "autodan" / "autodan_initial_prompt.txt"
# Synonym groups for LLM-free mutation: the content words of AutoDAN's initial prompt and a few words common in
# jailbreak templates, each with hand-picked near-synonyms. A word belongs to one group; matching ignores case.
SYNONYM_GROUPS = (
    ("hypothetical", "imaginary", "speculative", "theoretical", "fictional"),
    ("response", "reply", "answer", "retort"),
    ("describe", "depict", "portray", "characterize"),
    ("character", "persona", "figure", "protagonist"),
    ("planning", "intending", "preparing", "plotting", "scheming"),
    ("way", "manner", "method", "approach"),
    ("rewrite", "revise", "rephrase", "reformulate"),
    ("perspective", "viewpoint", "standpoint", "vantage"),
    ("extremely", "exceedingly", "incredibly", "remarkably", "highly"),
    ("detailed", "thorough", "elaborate", "meticulous", "comprehensive"),
    ("exact", "accurate", "specific", "explicit"),
    ("precise", "rigorous", "careful", "concrete"),
    ("information", "data", "details", "facts", "specifics"),
    ("avoid", "eschew", "shun", "evade"),
    ("generalizations", "generalities", "platitudes", "abstractions"),
    ("vagueness", "ambiguity", "imprecision", "obscurity"),
    ("format", "structure", "arrange", "organize"),
    ("list", "catalogue", "inventory", "enumeration"),
    ("ignore", "disregard", "overlook", "neglect"),
    ("instructions", "directions", "guidelines", "orders"),
)
SYNONYMS = {word: group for group in SYNONYM_GROUPS for word in group}
STOP_WORDS = frozenset("a an the and or but of to in on at by for with from as is are was were be it its this that "
                       "these those you your he she they them his her their we our i me my so if then than".split())
WORD = re.compile(r"[A-Za-z]+")
SENTENCE_BREAK = re.compile(r"(?<=[,.!?])\s+")  # AutoDAN's sentence split
MAX_SYNONYM_MUTATIONS = 10  # words replaced by one mutation (AutoDAN's replace_with_synonyms)
MAX_WORD_REPLACEMENTS = 5  # words replaced per paragraph by the word-level step (AutoDAN's HGA)
CROSSOVER_POINTS = 5  # swap points per paragraph of the sentence-level crossover (AutoDAN's num_points)


def initial_prompt() -> str:
    """AutoDAN's initial jailbreak template, with its "[REPLACE]" slot."""
    return INITIAL_PROMPT.read_text(encoding="utf-8").strip()


def fill(template: str, behaviour: str) -> str:
    """The user message of a template: its slot filled with the lower-cased behaviour (AutoDAN's convention)."""
    return template.replace(PLACEHOLDER, behaviour.lower())


# --- operators on templates ----------------------------------------------------------------------------

def _map_words(template: str, change: Callable[[int, str], str | None]) -> str:
    """Rewrite the words of a template outside its slot; `change(index, word)` returns a new word or None."""
    count = 0

    def sub(match: re.Match) -> str:
        nonlocal count
        new = change(count, match.group(0))
        count += 1
        return match.group(0) if new is None else new
    return PLACEHOLDER.join(WORD.sub(sub, part) for part in template.split(PLACEHOLDER))


def _words(template: str) -> list[str]:
    """The words of a template outside its slot, in order (the indices `_map_words` uses)."""
    return [w for part in template.split(PLACEHOLDER) for w in WORD.findall(part)]


def _same_case(new: str, old: str) -> str:
    return new.upper() if old.isupper() and len(old) > 1 else new.title() if old.istitle() else new


def mutate(template: str, rng: random.Random) -> str:
    """LLM-free mutation: up to MAX_SYNONYM_MUTATIONS words become a random synonym from SYNONYM_GROUPS; a
    template without such words gets two adjacent words swapped instead."""
    words = _words(template)
    replaceable = [i for i, w in enumerate(words) if w.lower() in SYNONYMS]
    if replaceable:
        chosen = set(rng.sample(replaceable, min(MAX_SYNONYM_MUTATIONS, len(replaceable))))

        def change(i: int, word: str) -> str | None:
            if i not in chosen:
                return None
            return _same_case(rng.choice([s for s in SYNONYMS[word.lower()] if s != word.lower()]), word)
        return _map_words(template, change)
    if len(words) < 2:
        return template
    i = rng.randrange(len(words) - 1)
    return _map_words(template, lambda j, w: words[i + 1] if j == i else words[i] if j == i + 1 else None)


def crossover(first: str, second: str, rng: random.Random, points: int = CROSSOVER_POINTS) -> tuple[str, str]:
    """Sentence-level multi-point crossover, paragraph by paragraph (AutoDAN's `crossover`): up to `points` cut
    points, and after each cut the children take the next run of sentences from either parent. A child that
    lost the slot is replaced by its parent, so both children stay valid templates."""
    children: tuple[list[str], list[str]] = ([], [])
    for para1, para2 in zip(first.split("\n\n"), second.split("\n\n")):
        s1, s2 = SENTENCE_BREAK.split(para1), SENTENCE_BREAK.split(para2)
        cuts = sorted(rng.sample(range(1, min(len(s1), len(s2))), min(points, min(len(s1), len(s2)) - 1)))
        new1, new2, last = [], [], 0
        for cut in [*cuts, None]:
            run1, run2 = s1[last:cut], s2[last:cut]
            if rng.random() < 0.5:
                run1, run2 = run2, run1
            new1 += run1
            new2 += run2
            last = cut
        children[0].append(" ".join(new1))
        children[1].append(" ".join(new2))
    child1, child2 = ("\n\n".join(c) for c in children)
    return (child1 if PLACEHOLDER in child1 else first), (child2 if PLACEHOLDER in child2 else second)


def momentum_word_dict(word_dict: dict[str, float], templates: Sequence[str],
                       scores: Sequence[float]) -> dict[str, float]:
    """AutoDAN's momentum word scores: each word's mean score over the templates that contain it, averaged
    with its previous score (scores are negative losses: higher is better)."""
    seen: dict[str, list[float]] = {}
    for template, score in zip(templates, scores):
        for word in {w.lower() for w in _words(template)} - STOP_WORDS:
            seen.setdefault(word, []).append(score)
    updated = dict(word_dict)
    for word, values in seen.items():
        mean = sum(values) / len(values)
        updated[word] = (updated[word] + mean) / 2 if word in updated else mean
    return updated


def replace_words(template: str, word_dict: dict[str, float], rate: float, rng: random.Random) -> str:
    """Word-level step of HGA: each word with synonyms is, with probability `rate`, replaced by one of its
    synonym group drawn by roulette over the momentum scores (shifted to start at 0; the word itself may win);
    at most MAX_WORD_REPLACEMENTS per paragraph."""
    floor = min(word_dict.values(), default=0.0)
    paragraphs = []
    for paragraph in template.split("\n\n"):
        replaced = 0

        def change(_: int, word: str) -> str | None:
            nonlocal replaced
            group = SYNONYMS.get(word.lower())
            if group is None or replaced >= MAX_WORD_REPLACEMENTS or rng.random() >= rate:
                return None
            weights = [word_dict.get(s, floor) - floor for s in group]
            if sum(weights) <= 0:
                return None
            replaced += 1
            return _same_case(rng.choices(group, weights)[0], word)
        paragraphs.append(_map_words(paragraph, change))
    return "\n\n".join(paragraphs)


def next_generation(population: list[str], losses: list[float], step: int, word_dict: dict[str, float],
                    n_elites: int, crossover_rate: float, mutation_rate: float, crossover_every: int,
                    rng: random.Random) -> tuple[list[str], dict[str, float]]:
    """The next population (same size) and the updated momentum word dictionary."""
    scores = [-loss for loss in losses]
    order = sorted(range(len(population)), key=lambda i: losses[i])
    elites = [population[i] for i in order[:n_elites]]
    n_children = len(population) - n_elites
    if step % crossover_every == 0:  # sentence level: roulette selection (softmax of the scores), crossover
        top = max(scores)
        parents = rng.choices(population, [math.exp(s - top) for s in scores], k=n_children + 1)
        children = []
        for first, second in zip(parents[::2], parents[1::2]):
            children += crossover(first, second, rng) if rng.random() < crossover_rate else [first, second]
    else:  # word level: momentum-guided synonym replacement in every non-elite
        word_dict = momentum_word_dict(word_dict, population, scores)
        children = [replace_words(population[i], word_dict, crossover_rate, rng) for i in order[n_elites:]]
    children = [mutate(c, rng) if rng.random() < mutation_rate else c for c in children[:n_children]]
    return elites + children, word_dict


# --- the search ----------------------------------------------------------------------------------------

class Fitness:
    """Target cross-entropy of templates for one behaviour, batched, with the chat prefix cached and every
    template scored once."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, behaviour: str, target: str,
                 batch_size: int):
        self.model, self.tokenizer, self.behaviour, self.batch_size = model, tokenizer, behaviour, batch_size
        device = next(model.parameters()).device
        before_text, after_text = chat_around(tokenizer)
        self.before, self.after = encode(tokenizer, before_text, device), encode(tokenizer, after_text, device)
        self.target = encode(tokenizer, target, device)
        self.kv = prefix_kv(model, self.before)
        self.known: dict[str, float] = {}

    def prompt_ids(self, template: str) -> torch.Tensor:
        """The chat prompt of a template, ending with the generation prompt. [length]"""
        return torch.cat([self.before, encode(self.tokenizer, fill(template, self.behaviour), self.before.device),
                          self.after])

    @torch.no_grad()
    def __call__(self, templates: Sequence[str]) -> list[float]:
        new = [t for t in dict.fromkeys(templates) if t not in self.known]
        rows = [torch.cat([encode(self.tokenizer, fill(t, self.behaviour), self.before.device), self.after,
                           self.target]) for t in new]
        order = sorted(range(len(new)), key=lambda i: len(rows[i]))  # similar lengths share a batch
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            lengths = torch.tensor([len(rows[i]) for i in index], device=self.before.device)
            batch = torch.full((len(index), int(lengths.max())), pad, device=self.before.device)
            for row, i in enumerate(index):
                batch[row, :len(rows[i])] = rows[i]
            losses = target_losses(self.model, self.kv, len(self.before), batch, lengths, len(self.target))
            self.known.update({new[i]: loss for i, loss in zip(index, losses.tolist())})
        return [self.known[t] for t in templates]


def run_autodan(model: nn.Module, tokenizer: PreTrainedTokenizerBase, instruction: str, target: str, steps: int,
                population: int = 256, elite_frac: float = 0.05, crossover_rate: float = 0.5,
                mutation_rate: float = 0.01, crossover_every: int = 5, check_every: int = 1, check_tokens: int = 32,
                batch_size: int = 8, seed: int = 0, template: str | None = None,
                show_progress: bool = False) -> AttackResult:
    """AutoDAN-HGA on one instruction for up to `steps` generations. Every `check_every` generations (and before
    the first) the best template's short greedy response is judged by the keyword judge; the search stops at
    the first that is not a refusal."""
    rng = random.Random(seed)
    start = template or initial_prompt()
    pool = [start] + [mutate(start, rng) for _ in range(population - 1)]
    n_elites = max(1, int(population * elite_frac))
    fitness = Fitness(model, tokenizer, instruction, target, batch_size)
    word_dict: dict[str, float] = {}
    result = AttackResult(instruction, fill(start, instruction))
    loop = range(steps + 1)
    for step in progress(loop, desc="autodan") if show_progress else loop:
        if step > 0:
            pool, word_dict = next_generation(pool, losses, step - 1, word_dict, n_elites, crossover_rate,
                                              mutation_rate, crossover_every, rng)
        losses = fitness(pool)
        best = min(range(len(pool)), key=lambda i: losses[i])
        result.losses.append(losses[best])
        result.attack_prompt = fill(pool[best], instruction)
        if step % check_every == 0 or step == steps:
            result.check_response = respond(model, tokenizer, fitness.prompt_ids(pool[best]), check_tokens)
            if not is_refusal(result.check_response):
                result.success_step = step
                break
    return result



def attack(model: nn.Module, tokenizer: PreTrainedTokenizerBase, rows: list[dict], budget: AutoDANBudget,
           max_new_tokens: int, batch_size: int, seed: int) -> Outcome:
    """AutoDAN-HGA on each harmful row {"prompt", "target"} (row i seeded `seed + i`; fitness in batches of
    `batch_size`) and the responses it obtains (`max_new_tokens`, greedy)."""
    def run() -> Outcome:
        results = [run_autodan(model, tokenizer, row["prompt"], row["target"], budget.steps, budget.population,
                               budget.elite_frac, budget.crossover, budget.mutation, budget.crossover_every,
                               budget.check_every, budget.check_tokens, batch_size, seed + i)
                   for i, row in enumerate(progress(rows, desc="autodan prompts"))]
        return outcome("autodan", model, tokenizer, results, budget.record(), max_new_tokens, batch_size)
    return timed(run)
