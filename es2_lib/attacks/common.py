"""What every attack returns: an `Outcome` per attack setting (its responses, the perturbation it used and its
budget), and the timer that fills its wall time (docs/architecture.md, "Attacks")."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Outcome:
    """One attack setting on one model: its responses to the attacked prompts, the perturbation it used
    (`perturbation["l2"]` is the L2 norm an embedding attack added, the figures' x axis) and its budget."""

    attack: str  # "none", "repe", "scav", "soft_prompt", "gcg" or "autodan"
    setting: str  # e.g. "coeff=-1" for a RepE sweep point; "" when the attack has one setting
    responses: list[str]
    perturbation: dict[str, Any]
    budget: dict[str, Any]
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # per-prompt details (e.g. soft-prompt steps used)


def timed(run: Callable[[], Outcome]) -> Outcome:
    """`run()`, with its wall time in seconds (2 decimals) recorded in the outcome."""
    start = time.perf_counter()
    outcome = run()
    outcome.wall_s = round(time.perf_counter() - start, 2)
    return outcome
