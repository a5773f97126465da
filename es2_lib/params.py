"""Loading run parameters: YAML params files with `base:` chains, overrides, and one-line errors.

The schema itself (every key with its type, default, range and doc) is `es2_lib/schema.py`. A params file
states only what differs from the schema defaults, or from the file it names as `base:` (nanoGPT's config
discipline; docs/architecture.md, 'Params'). Every error is one line naming the file or override, the key, the
value and what was expected.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import ValidationError

from .schema import PATTERN_WORDS, CrossFieldError, Params

__all__ = ["Params", "ParamsError", "load", "read_file", "from_mapping", "from_namespace", "override_label", "to_yaml",
           "yaml_problem", "expects"]

BASE = "base"  # the key that names a file whose values this file overrides
TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", type(None): "None"}
RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short", "too_long"}


class ParamsError(ValueError):
    """A params file or override is malformed."""


# --- what a field expects, in words ---------------------------------------------------------------------------

def _bounds(metadata: list[Any]) -> tuple[str, str]:
    """(`>= 1` or `in (0, 1]`, `2 ` or `non-empty `) from a field's annotated-types constraints."""
    limits = {k: getattr(m, k) for m in metadata for k in ("ge", "gt", "le", "lt", "min_length", "max_length")
              if getattr(m, k, None) is not None}
    low = ("[", limits["ge"]) if "ge" in limits else ("(", limits["gt"]) if "gt" in limits else None
    high = ("]", limits["le"]) if "le" in limits else (")", limits["lt"]) if "lt" in limits else None
    value = ""
    if low and high:
        value = f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    elif low:
        value = f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    elif high:
        value = f"{'<=' if high[0] == ']' else '<'} {high[1]}"
    n_min, n_max = limits.get("min_length"), limits.get("max_length")
    length = f"{n_min} " if n_min is not None and n_min == n_max else "non-empty " if n_min else ""
    return value, length


def _describe(tp: Any, metadata: list[Any] = (), plural: bool = False) -> str:
    """'int >= 1', "one of 'a', 'b'", 'list of 2 floats in [0, 1]', ... for a type and its constraints."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _describe(args[0], [m for a in args[1:] for m in getattr(a, "metadata", [a])], plural)
    value, length = _bounds(list(metadata))
    if origin is list:
        items = _describe(args[0], plural=True)
        return f"non-empty list of {items}" if length == "non-empty " else f"list of {length}{items}"
    if origin is Literal:
        name = ("values from " if plural else "one of ") + ", ".join(repr(a) for a in args)
    elif origin in (types.UnionType, typing.Union):
        name = " or ".join(_describe(a) for a in args)
    else:
        name = TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))
        name = {"str": "strings"}.get(name, name + "s") if plural else name
    return f"{name} {value}" if value else name


def expects(key: str) -> str:
    """What the schema accepts for `key`, e.g. 'int >= 1' or "list of float in (0, 1]"."""
    info = Params.model_fields[key]
    return _describe(info.annotation, info.metadata)


# --- validation -----------------------------------------------------------------------------------------------

def _message(error: dict, values: Mapping[str, Any], sources: Mapping[str, str], default: str) -> str:
    """One line for one pydantic error."""
    if not error["loc"]:  # a model_validator: a rule between fields
        cause = error.get("ctx", {}).get("error")
        keys = cause.keys if isinstance(cause, CrossFieldError) else ()
        where = ", ".join(dict.fromkeys(sources[k] for k in keys if k in sources)) or default
        return f"{where}: {cause if cause is not None else error['msg']}"
    key = str(error["loc"][0])
    where = sources.get(key, default)
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, list(Params.model_fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{where}: unknown key {key!r}{hint}; the valid keys are the fields of es2_lib/schema.py"
    value = values[key]
    got = f"{value!r}" if error["type"] in RANGE_ERRORS else f"{type(value).__name__} {value!r}"
    if error["type"] == "value_error":  # a field_validator's own words
        return f"{where}: key {key!r} {error['ctx']['error']}, got {got}"
    if error["type"] == "string_pattern_mismatch":
        return f"{where}: key {key!r} expects {PATTERN_WORDS[error['ctx']['pattern']]}, got {value!r}"
    return f"{where}: key {key!r} expects {expects(key)}, got {got}"


def _validate(values: Mapping[str, Any], sources: Mapping[str, str], default: str,
              context: dict | None = None) -> Params:
    try:
        return Params.model_validate(dict(values), context=context)
    except ValidationError as err:
        lines = {}
        for error in err.errors(include_url=False):
            lines.setdefault(error["loc"][:1], _message(error, values, sources, default))  # one line per key
        raise ParamsError("\n".join(lines.values())) from None


def from_mapping(values: Mapping[str, Any], source: str = "<params>") -> Params:
    """Validate a mapping against the schema; missing keys take their defaults."""
    return _validate(values, {}, source)


def from_namespace(namespace: Mapping[str, Any], source: str = "notebook parameters") -> Params:
    """Params from a notebook's globals: the schema's keys that the namespace defines.

    A notebook's `parameters` cell declares the keys it uses; papermill injects those of the params
    file after it. This picks them up and validates them like a file, except that a rule between keys applies
    only when the namespace defines all of them (the pipeline injects only the keys a stage declares; the others
    keep their defaults here and are checked where they are read).
    """
    values = {k: namespace[k] for k in Params.model_fields if k in namespace}
    return _validate(values, {}, source, context={"declared": frozenset(values)})


# --- files and base: chains -----------------------------------------------------------------------------------

def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where."""
    mark = getattr(err, "context_mark", None) or getattr(err, "problem_mark", None)  # where the bad part begins
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{getattr(err, 'problem', None) or ' '.join(str(err).split())}{where}"


def _chain(paths: list[Path]) -> str:
    return " -> ".join(str(p) for p in paths)


def read_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """The values a params file sets, its `base:` chain resolved (a file's own keys win over its base's), and
    for each key the file that set it. Errors name the chain, e.g. `params/a.yaml -> params/b.yaml: ...`."""
    path = Path(path)
    chain = [*_seen, path]
    if path.resolve() in {p.resolve() for p in _seen}:
        raise ParamsError(f"{_chain(chain)}: base files form a cycle")
    if not path.is_file():
        raise ParamsError(f"{_chain(chain)}: params file not found")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{_chain(chain)}: not valid YAML ({yaml_problem(err)})") from None
    if values is None:
        raise ParamsError(f"{_chain(chain)}: params file is empty")
    if not isinstance(values, dict):
        raise ParamsError(f"{_chain(chain)}: expected a mapping of key: value, got {type(values).__name__}")
    sources = dict.fromkeys(values, str(path))
    base = values.pop(BASE, None)
    sources.pop(BASE, None)
    if base is None:
        return values, sources
    if not isinstance(base, str):
        raise ParamsError(f"{_chain(chain)}: key 'base' expects a params file name (str), got "
                          f"{type(base).__name__} {base!r}")
    inherited, inherited_sources = read_file(path.parent / base, tuple(chain))
    return {**inherited, **values}, {**inherited_sources, **sources}


def override_label(key: str, value: Any) -> str:
    """How an override is named in errors: `override -o key=value`."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
    return f"override -o {key}={text}"


def load(path: str | Path, **overrides: Any) -> Params:
    """Load a YAML params file (following its `base:` chain) and apply keyword overrides on top; the file (or an
    override) must set `name` itself, so that no file writes into another run's folder by inheritance."""
    values, sources = read_file(path)
    sources |= {key: override_label(key, value) for key, value in overrides.items()}
    p = _validate({**values, **overrides}, sources, str(path))
    if sources.get("name") not in (str(path), override_label("name", p.name)):
        inherited = f" of its own (it would inherit {p.name!r} from {sources['name']})" if "name" in sources else ""
        raise ParamsError(f"{path}: sets no 'name'{inherited}; every run needs its own folder runs/<name>/: add "
                          f"`name: <run name>` or override -o name=<run name>")
    return p


def to_yaml(p: Params, header: str = "") -> str:
    """Every key of `p` as YAML, in schema order (what `papermill -f` reads)."""
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + yaml.safe_dump(p.to_dict(), sort_keys=False, default_flow_style=None, width=1000,
                                    allow_unicode=True)
