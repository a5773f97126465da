"""The budget of each attack: the knobs it reads, as one small frozen record per attack that the notebooks build
from the params (the paper's budgets are in the GPU params files; docs/architecture.md, "Attacks"). A prompt
attack's `record()` is the budget its results.json entry records."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RepEBudget:
    """The RepE sweep: the steered layers (`band`) and the coefficients tried."""

    layers: tuple[int, ...]  # decoder layers steered (empty: the band `depth`)
    depth: tuple[float, float]  # band [from, to] as fractions of depth
    coeffs: tuple[float, ...]  # coefficients of the sweep, in units of the base model's mean state norm


@dataclass(frozen=True)
class SCAVBudget:
    """SCAV's thresholds and the fit of its probes (as in stage 01)."""

    p0: float  # a state with P(harmful) above P0 is moved until P(harmful) is P0
    p1: float  # only at layers whose held-out probe accuracy > P1
    probe_C: float  # inverse L2 strength of the probes
    probe_folds: int  # cross-validation folds of the held-out accuracy compared with P1


@dataclass(frozen=True)
class SoftPromptBudget:
    """The soft-prompt optimisation: control embeddings, maximum steps and the signed-gradient step."""

    tokens: int  # control embeddings after the instruction
    steps: int  # maximum signed-gradient steps (a prompt stops once its target is reproduced)
    step_size: float  # alpha of the update c <- c - alpha sign(grad)


@dataclass(frozen=True)
class GCGBudget:
    """GCG's search budget per prompt (the paper's: 500 steps, top-k 256, 512 swaps) and its screening."""

    steps: int  # maximum steps per prompt
    topk: int  # candidate tokens per suffix position
    search_width: int  # single-token swaps scored per step
    suffix_tokens: int  # suffix length in tokens
    batch_size: int  # candidate suffixes per forward pass
    check_every: int  # steps between success checks
    check_tokens: int  # new tokens of a success check's greedy response
    screen_dtype: str | None  # dtype of a copy that ranks the swaps (None: exact scoring only)
    screen_margin: float  # swaps screened within this of the best get an exact score

    def record(self, screened: bool) -> dict:
        """The budget as results.json records it (the screening keys only when a screening copy ran)."""
        record = {"steps": self.steps, "topk": self.topk, "search_width": self.search_width,
                  "suffix_tokens": self.suffix_tokens, "check_every": self.check_every,
                  "check_tokens": self.check_tokens}
        return record | {"screen_dtype": self.screen_dtype, "screen_margin": self.screen_margin} if screened else record


@dataclass(frozen=True)
class AutoDANBudget:
    """AutoDAN-HGA's search budget per prompt (the paper's: population 256, 100 generations)."""

    steps: int  # maximum generations per prompt
    population: int  # templates per generation
    elite_frac: float  # share of elites (at least one)
    crossover: float  # crossover / word-replacement probability
    mutation: float  # mutation probability per child
    crossover_every: int  # sentence-level crossover every this many generations, word-level otherwise
    check_every: int  # generations between success checks
    check_tokens: int  # new tokens of a success check's greedy response

    def record(self) -> dict:
        """The budget as results.json records it."""
        return {"steps": self.steps, "population": self.population, "elite_frac": self.elite_frac,
                "crossover": self.crossover, "mutation": self.mutation, "crossover_every": self.crossover_every,
                "mutation_kind": "synonym table (LLM-free)", "check_every": self.check_every,
                "check_tokens": self.check_tokens}
