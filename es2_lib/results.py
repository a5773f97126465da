"""Typed result records: one entry shape for every attack stage (02's no-attack responses, 03's embedding attacks,
04's prompt attacks), one interval shape, and the reader/writer the figures stage shares with the producers
(docs/architecture.md, "Results").

A results file is `{"entries": [AttackEntry, ...], **meta}` in JSON. An entry is one (model, attack, setting)
judged like every other: its Summary holds the paper's DSR (keyword judge "autodan"), the JailbreakBench-list DSR
and the harm-free rate as Intervals, and the refused / incoherent / compliant shares.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import runs


@dataclass(frozen=True)
class Interval:
    """A rate or mean with its interval, over n items."""

    value: float
    low: float
    high: float
    n: int

    @classmethod
    def from_dict(cls, d: dict) -> Interval:
        return cls(value=d["value"], low=d["low"], high=d["high"], n=d["n"])


@dataclass(frozen=True)
class Summary:
    """How one set of responses to harmful prompts was judged (the three shares add up to one)."""

    dsr: Interval  # the paper's DSR: refused by AutoDAN's keyword list
    dsr_jbb: Interval  # refused by JailbreakBench's list (robustness check)
    harm_free: Interval  # refused or incoherent
    refused: float
    incoherent: float
    compliant: float
    median_perplexity: float | None
    n: int

    @classmethod
    def from_dict(cls, d: dict) -> Summary:
        rates = {k: Interval.from_dict(d[k]) for k in ("dsr", "dsr_jbb", "harm_free")}
        return cls(**rates, refused=d["refused"], incoherent=d["incoherent"], compliant=d["compliant"],
                   median_perplexity=d["median_perplexity"], n=d["n"])


@dataclass(frozen=True)
class SweepPoint:
    """One setting of an attack's sweep (e.g. a RepE coefficient), kept beside the reported entry."""

    setting: str
    summary: Summary
    perturbation: dict[str, Any]
    wall_s: float

    @classmethod
    def from_dict(cls, d: dict) -> SweepPoint:
        return cls(setting=d["setting"], summary=Summary.from_dict(d["summary"]), perturbation=d["perturbation"],
                   wall_s=d["wall_s"])


@dataclass(frozen=True)
class AttackEntry:
    """One attack setting on one model. `perturbation["l2"]` is the size of the move (the figures' x axis);
    `all_incoherent` and `sweep` are set on the reported entry of a swept attack."""

    model: str  # "base", "es2", ...
    attack: str  # "none", "repe", "scav", "soft_prompt", "gcg", "autodan", "ablation"
    setting: str  # e.g. "coeff=-0.1"; "" when the attack has one setting
    summary: Summary
    perturbation: dict[str, Any]
    budget: dict[str, Any]
    wall_s: float = 0.0
    all_incoherent: bool = False
    sweep: tuple[SweepPoint, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AttackEntry:
        return cls(model=d["model"], attack=d["attack"], setting=d["setting"], summary=Summary.from_dict(d["summary"]),
                   perturbation=d["perturbation"], budget=d["budget"], wall_s=d.get("wall_s", 0.0),
                   all_incoherent=d.get("all_incoherent", False),
                   sweep=tuple(SweepPoint.from_dict(s) for s in d.get("sweep", ())))


def write_attack_results(path: Path, entries: list[AttackEntry], **meta: Any) -> None:
    """Write `{"entries": [...], **meta}` atomically."""
    runs.write_json(path, {"entries": [e.to_dict() for e in entries], **meta})


def read_attack_results(path: Path) -> tuple[list[AttackEntry], dict[str, Any]]:
    """The entries and the other keys of a file written by `write_attack_results`."""
    data = runs.read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ValueError(f"{path}: expected an attack results file {{'entries': [...], ...}}")
    return [AttackEntry.from_dict(e) for e in data["entries"]], {k: v for k, v in data.items() if k != "entries"}
