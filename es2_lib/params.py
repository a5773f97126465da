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
