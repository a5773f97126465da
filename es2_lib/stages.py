"""The stage registry: every numbered notebook, the stages it reads and the files it writes, and the one-call
preamble every notebook opens with (docs/architecture.md, "Pipeline").

The pipeline (`pipeline.py`) takes its order and its stage keys from here, the figures stage finds its inputs
here, and a notebook names another stage's file only through `upstream`, so the stage graph is written down once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from . import params, runs


@dataclass(frozen=True)
class Stage:
    """One notebook: the stages whose outputs it needs (`reads`), those it uses when present (`optional`), and
    the files it writes into its folder `runs/<name>/<stage>/` (`writes`, relative to that folder)."""

    name: str
    reads: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()

    @property
    def notebook(self) -> Path:
        return runs.ROOT / "notebooks" / f"{self.name}.ipynb"


_ALL = (
    Stage("01_probing", writes=("splits.json", "layers.json", "per_layer.csv", "probes.safetensors")),
    Stage("02_es2_training", reads=("01_probing",),
          writes=("adapter", "arms", "arms.json", "responses.jsonl", "eval.json", "metrics.json", "log.jsonl",
                  "no_attack.json")),
    Stage("03_embedding_attacks", reads=("01_probing", "02_es2_training"),
          writes=("results.json", "results.csv", "responses.jsonl", "fitted_base.safetensors",
                  "fitted_es2.safetensors")),
    Stage("04_prompt_attacks", reads=("01_probing", "02_es2_training"),
          writes=("results.json", "results.csv", "responses.jsonl", "attack_prompts.jsonl", "success_curves.png")),
    Stage("05_capability", reads=("01_probing", "02_es2_training"),
          writes=("results.json", "results.csv", "predictions.jsonl", "responses.jsonl", "reference.jsonl")),
    Stage("07_safety_subspaces", reads=("01_probing", "02_es2_training"),
          writes=("results.json", "responses.jsonl", "weight_mso.csv", "weight_mso_per_matrix.csv", "projection.csv",
                  "activation_mso.csv", "benign_ft.csv")),
    Stage("08_srr", reads=("01_probing", "02_es2_training"), optional=("04_prompt_attacks",),
          writes=("results.json", "results.csv", "candidates.jsonl")),
    Stage("09_breaking_budgets", reads=("01_probing", "02_es2_training"),
          writes=("results.json", "budgets.csv", "responses.jsonl", "breaking_curves.png", "ablation.json",
                  "ablation_responses.jsonl")),
    # the figures stage runs last: it reads every other stage's results, those of 07 and 08 too
    Stage("06_figures", optional=("01_probing", "02_es2_training", "03_embedding_attacks", "04_prompt_attacks",
                                  "05_capability", "07_safety_subspaces", "08_srr", "09_breaking_budgets")),
)
STAGES: dict[str, Stage] = {stage.name: stage for stage in _ALL}  # in running order


def stage(name: str) -> Stage:
    """The registered stage `name`, or a ValueError listing the stages."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; the stages are {', '.join(STAGES)}")
    return STAGES[name]


def upstream(run: runs.Run, name: str, file: str) -> Path:
    """The path of `file`, an output that stage `name` declares in its `writes`, in this run's folder."""
    if file not in stage(name).writes:
        raise ValueError(f"stage {name} does not write {file!r}; it writes {', '.join(stage(name).writes)}")
    return run.dir / name / file


def missing_inputs(run: runs.Run, name: str) -> list[str]:
    """The outputs of the stages `name` reads that are not in the run folder (as "stage/file")."""
    return [f"{up}/{file}" for up in stage(name).reads for file in stage(up).writes
            if not (run.dir / up / file).exists()]


def begin(name: str, namespace: Mapping[str, Any]) -> tuple[params.Params, runs.Run, Path]:
    """The preamble of stage `name`'s notebook: its params from the notebook's globals (validated like a file),
    the run, a check that every input it reads exists, one seed for python, numpy and torch; returns
    (params, run, the stage's own output folder)."""
    p = params.from_namespace(namespace, source=f"notebook {name} parameters")
    run = runs.Run(p)
    missing = missing_inputs(run, name)
    if missing:
        first = missing[0].split("/")[0]
        raise FileNotFoundError(f"run {p.name!r} lacks {', '.join(missing)} (in {run.dir}): run stage {first} "
                                f"first, e.g. `python -m es2_lib run <params file> --only {first}`")
    random.seed(p.seed)
    np.random.seed(p.seed)
    torch.manual_seed(p.seed)
    out = run.dir / name
    out.mkdir(parents=True, exist_ok=True)
    return p, run, out
