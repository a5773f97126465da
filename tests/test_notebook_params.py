"""Each stage notebook's `parameters` cell declares only schema keys, with the schema's defaults (the default run)."""

import ast
from pathlib import Path

import papermill
import pytest

from es2_lib import params

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
DEFAULTS = params.Params()


def disagreements(notebook: Path) -> list[str]:
    """One line per declared parameter that is not a schema key or whose default differs from the schema's."""
    problems = []
    for key, declared in papermill.inspect_notebook(str(notebook)).items():
        if key not in params.Params.model_fields:
            problems.append(f"{key}: not a schema key")
            continue
        try:
            value = ast.literal_eval(declared["default"])
            coerced = getattr(params.from_mapping({key: value}), key)  # ints become floats, as for a file
        except (ValueError, SyntaxError) as err:  # not a literal, or a value the schema rejects
            problems.append(f"{key} = {declared['default']}: {err}")
            continue
        if coerced != getattr(DEFAULTS, key) or type(coerced) is not type(getattr(DEFAULTS, key)):
            problems.append(f"{key} = {declared['default']}, schema default {getattr(DEFAULTS, key)!r}")
    return problems


def test_there_are_stage_notebooks():
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda nb: nb.stem)
def test_parameters_are_schema_keys_with_schema_defaults(notebook):
    problems = disagreements(notebook)
    assert not problems, f"{notebook.name}: " + "; ".join(problems)
