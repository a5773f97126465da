"""Typed run parameters: one flat schema with defaults, loaded from a YAML file plus overrides.

Every knob of the pipeline (model, data sizes, layers, budgets, and each reconstructed choice of
DESIGN.md §1) is a field here. The schema is flat because papermill injects a params file's top-level
keys as notebook variables (`papermill -f params/default.yaml`). An unknown key or a value of the wrong
type is an error that names the file, the key and the expected type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml


class ParamsError(ValueError):
    """A params file or override is malformed."""


@dataclasses.dataclass(frozen=True)
class Params:
    # --- run and model -------------------------------------------------------------------------
    name: str = "default"  # run name: results in runs/<name>/, figures in figures/<name>/
    model: str = "embedded"  # "embedded", "tiny", "random:<dir with config.json>", a local folder, or a hub id
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights and compute dtype
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto" (cuda when available)
    seed: int = 0  # one seed for python, numpy and torch
    batch_size: int = 8  # prompts per forward pass or generation batch
    max_new_tokens: int = 48  # greedy response length used for judging
    # --- data splits (DESIGN.md §3) -----------------------------------------------------------------
    harmful_prompts: str = "advbench"  # a bundled set name or a CSV/JSONL file with a `prompt` column
    harmless_prompts: str = "alpaca"  # a bundled set name or a CSV/JSONL file with a `prompt` column
    n_probe_train: int = 64  # prompts per class in the probe-train split
    n_es2_train: int = 64  # prompts per class in the ES2-train split
    n_eval: int = 24  # prompts per class in the eval split
    # --- judge and metrics (DESIGN.md §5) -----------------------------------------------------------
    bootstrap_samples: int = 1000  # resamples for bootstrap confidence intervals
    confidence: float = 0.95  # confidence level of reported intervals
    incoherent_ppl: float = 100.0  # a response whose perplexity under the base model exceeds this is incoherent
    # --- probing and ES2 (issue 3) ---------------------------------------------------------------------
    probe_threshold: float = 0.9  # held-out probe accuracy from which a layer separates the classes (SCAV's P1)
    probe_folds: int = 5  # cross-validation folds on probe_train for the held-out probe accuracy
    probe_C: float = 1.0  # inverse L2 strength of the logistic-regression probes (fitted on standardised states)
    n_emergence_layers: int = 1  # ES2 layers from the first layers whose probe accuracy >= probe_threshold
    n_terminal_layers: int = 1  # ES2 layers from the last decoder layers (L, L-1, ...)
    es2_distance: Literal["centroid", "pairwise", "bounded"] = "centroid"  # centroid/pairwise: Euclidean / base mean norm; bounded: centroids of unit-normalised states
    es2_margin: float = 0.0  # hinge: a layer's distance stops being rewarded above this (0 = no hinge)
    es2_lambda_kl: float = 1.0  # weight of KL(base || ES2) of the next token on harmless prompts
    kl_threshold: float = 0.1  # stop training when the harmless KL (nats) of a step's batch exceeds this
    es2_retain: Literal["none", "kl", "refusal_ce"] = "kl"  # keep refusals: next-token KL to the base on harmful prompts, or CE on refusals
    es2_retain_weight: float = 1.0  # weight of the retain term
    es2_refusal_data: str = "safety_tuned_llamas/safety_only_data_Instructions.json"  # refusal_ce: {instruction, output} pairs (below data/), those judged refusals
    es2_refusal_tokens: int = 32  # refusal_ce: response tokens scored per refusal example
    es2_adapter: Literal["lora", "full"] = "lora"  # LoRA through peft, or full fine-tuning
    lora_r: int = 8  # LoRA rank
    lora_alpha: float = 16.0  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.0  # dropout on the LoRA input
    lora_targets: list[str] = dataclasses.field(default_factory=lambda: ["q_proj", "v_proj", "o_proj"])  # module names that get LoRA
    es2_steps: int = 30  # maximum optimiser steps
    es2_lr: float = 2e-4  # AdamW learning rate (constant)
    es2_weight_decay: float = 0.0  # AdamW weight decay
    es2_batch_size: int = 8  # prompts per class per step
    es2_checkpoint_every: int = 10  # steps between resumable checkpoints (0 = none)

    # --- capability (issue 6) --------------------------------------------------------------------------
    mmlu_pro_per_category: int = 5  # MMLU-Pro questions per category (14 categories), seeded; 0 = all 12,032
    gpqa_n: int = 40  # GPQA diamond questions, seeded subset; 0 = all 198
    capability_answer_prefix: str = "The answer is ("  # assistant text before the scored option letter ("" = none)
    capability_generate: bool = False  # also answer by greedy generation, read with MMLU-Pro's answer extraction
    capability_max_new_tokens: int = 32  # response length for generated answers and for XSTest responses
    capability_batch_size: int = 8  # questions or prompts per forward pass / generation batch in stage 05
    capability_margin: float = 0.02  # the paper's "comparable capability": ES2 at most this far below base
    xstest_n_safe: int = 50  # XSTest safe prompts for over-refusal, seeded subset; 0 = all 250
    xstest_n_unsafe: int = 25  # XSTest unsafe prompts for refusal, seeded subset; 0 = all 200
    @classmethod
    def field_types(cls) -> dict[str, Any]:
        """Resolved type hint of every field."""
        return typing.get_type_hints(cls)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> Params:
        """A copy with some fields changed, validated like a file."""
        return from_mapping({**self.to_dict(), **overrides}, source="overrides")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "None" if tp is type(None) else tp.__name__


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin is list:
        return isinstance(value, list) and all(_matches(v, typing.get_args(tp)[0]) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _coerce(value: Any, tp: Any) -> Any:
    """Ints given for float fields become floats; lists stay lists."""
    if tp is float and isinstance(value, int):
        return float(value)
    if typing.get_origin(tp) is list and typing.get_args(tp)[0] is float:
        return [float(v) for v in value]
    return value


def from_mapping(values: Mapping[str, Any], source: str = "<params>") -> Params:
    """Validate a mapping against the schema; missing keys take their defaults."""
    hints = Params.field_types()
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ParamsError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys are listed in es2_lib/params.py"
        )
    checked = {}
    for key, value in values.items():
        if not _matches(value, hints[key]):
            raise ParamsError(
                f"{source}: key {key!r} expects {_type_name(hints[key])}, "
                f"got {type(value).__name__} {value!r}"
            )
        checked[key] = _coerce(value, hints[key])
    params = Params(**checked)
    _check_ranges(params, source)
    return params


def _check_ranges(p: Params, source: str) -> None:
    positive = ["batch_size", "max_new_tokens", "n_probe_train", "n_es2_train", "n_eval", "bootstrap_samples"]
    for key in positive:
        if getattr(p, key) <= 0:
            raise ParamsError(f"{source}: key {key!r} expects a positive int, got {getattr(p, key)!r}")
    for key in ["probe_folds", "lora_r", "es2_steps", "es2_batch_size", "es2_refusal_tokens"]:
        if getattr(p, key) <= 0:
            raise ParamsError(f"{source}: key {key!r} expects a positive int, got {getattr(p, key)!r}")
    for key in ["n_emergence_layers", "n_terminal_layers", "es2_checkpoint_every"]:
        if getattr(p, key) < 0:
            raise ParamsError(f"{source}: key {key!r} expects a non-negative int, got {getattr(p, key)!r}")
    if p.n_emergence_layers + p.n_terminal_layers == 0:
        raise ParamsError(f"{source}: n_emergence_layers + n_terminal_layers must choose at least one ES2 layer")
    for key in ["es2_margin", "es2_lambda_kl", "es2_retain_weight", "es2_weight_decay", "probe_C", "es2_lr",
                "kl_threshold", "lora_alpha"]:
        if getattr(p, key) < 0:
            raise ParamsError(f"{source}: key {key!r} expects a non-negative number, got {getattr(p, key)!r}")
    if not 0.5 <= p.probe_threshold <= 1.0:
        raise ParamsError(f"{source}: key 'probe_threshold' expects a float in [0.5, 1], got {p.probe_threshold!r}")
    if not 0.0 <= p.lora_dropout < 1.0:
        raise ParamsError(f"{source}: key 'lora_dropout' expects a float in [0, 1), got {p.lora_dropout!r}")
    for key in ["mmlu_pro_per_category", "gpqa_n", "xstest_n_safe", "xstest_n_unsafe"]:  # capability (issue 6)
        if getattr(p, key) < 0:
            raise ParamsError(f"{source}: key {key!r} expects a non-negative int (0 = all), got {getattr(p, key)!r}")
    for key in ["capability_max_new_tokens", "capability_batch_size"]:
        if getattr(p, key) <= 0:
            raise ParamsError(f"{source}: key {key!r} expects a positive int, got {getattr(p, key)!r}")
    if not 0.0 <= p.capability_margin < 1.0:
        raise ParamsError(f"{source}: key 'capability_margin' expects a float in [0, 1), got {p.capability_margin!r}")
    if not 0.0 < p.confidence < 1.0:
        raise ParamsError(f"{source}: key 'confidence' expects a float in (0, 1), got {p.confidence!r}")


def load(path: str | Path, **overrides: Any) -> Params:
    """Load a YAML params file and apply keyword overrides on top."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(values, dict):
        raise ParamsError(f"{path}: expected a mapping of key: value, got {type(values).__name__}")
    return from_mapping({**values, **overrides}, source=str(path))


def from_namespace(namespace: Mapping[str, Any], source: str = "notebook parameters") -> Params:
    """Params from a notebook's globals: the schema's keys that the namespace defines.

    A notebook's `parameters` cell declares the keys it uses; papermill injects those of the params
    file after it. This picks them up and validates them like a file.
    """
    hints = Params.field_types()
    return from_mapping({k: namespace[k] for k in hints if k in namespace}, source=source)
