"""The shared style and cell formatting of every table and figure: model and share colours, attack labels, number
and interval cells ("0.67 [0.46, 0.88]"), Markdown tables, and the atomic writers of PNG, CSV and Markdown files
(docs/architecture.md, "Figures and tables").

Each figure module of this package (figures, tables, attacks, capability, subspaces, srr) imports these names
from here; this file imports none of them, so any one can be used alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from matplotlib.figure import Figure  # figures without pyplot: no global state, no backend needed to save PNG

from ..runs import atomic_path

MODEL_LABELS = {"base": "base", "es2": "ES2", "es2_retain": "ES2 + retain", "stl": "STL", "rr": "RR"}
MODEL_COLORS = {"base": "tab:gray", "es2": "tab:blue", "es2_retain": "tab:cyan", "stl": "tab:olive", "rr": "tab:pink"}
SHARE_COLORS = {"refused": "tab:green", "incoherent": "tab:orange", "compliant": "tab:red"}
NOT_RUN = "not run"
ATTACK_LABELS = {"none": "no attack", "repe": "RepE", "soft_prompt": "Soft Prompt", "scav": "SCAV",
                 "autodan": "AutoDAN", "gcg": "GCG", "ablation": "Direction ablation"}  # Table 1's rows, the paper's
# order, then the refusal-direction ablation (Arditi et al. 2024, stage 09), which the paper does not run
DPI = 100


def attack_label(attack: str) -> str:
    """The display name of an attack ("repe" -> "RepE"); an unknown attack keeps its name."""
    return ATTACK_LABELS.get(attack, attack)


def model_label(model: str) -> str:
    """The display name of a model ("es2" -> "ES2"); an unknown model keeps its name."""
    return MODEL_LABELS.get(model, model)


def fmt_number(value: float | None, digits: int = 2) -> str:
    """A number with `digits` decimals; None or NaN becomes an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _field(rate: Any, key: str) -> Any:
    """`key` of a rate given as a mapping or as a record with attributes (results.Interval)."""
    return rate.get(key) if isinstance(rate, Mapping) else getattr(rate, key, None)


def fmt_rate(rate: Any, digits: int = 2) -> str:
    """A rate with its interval, "0.67 [0.46, 0.88]", from a {"value", "low", "high"} mapping or a
    results.Interval; a rate without interval is just the value; None -> "–"."""
    if rate is None:
        return "–"
    low, high = _field(rate, "low"), _field(rate, "high")
    if low is None or high is None:
        return fmt_number(_field(rate, "value"), digits)
    return f"{_field(rate, 'value'):.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def rate_columns(prefix: str, rate: Any) -> dict[str, float]:
    """CSV columns `prefix`, `prefix_low`, `prefix_high` of a rate (mapping or results.Interval); NaN if None."""
    def value(key: str) -> float:
        return math.nan if rate is None or _field(rate, key) is None else _field(rate, key)

    return {prefix: value("value"), f"{prefix}_low": value("low"), f"{prefix}_high": value("high")}


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table of `df` (columns only, no index): numeric columns right-aligned, "|" escaped."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    align = ["---:" if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) else "---"
             for c in df.columns]
    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(numbers: pd.DataFrame, shown: pd.DataFrame, stem: Path, note: str = "") -> tuple[Path, Path]:
    """Write `numbers` as `<stem>.csv` and `shown` (formatted cells) as `<stem>.md` under `note`, atomically."""
    stem = Path(stem)
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    with atomic_path(csv) as tmp:
        numbers.to_csv(tmp, index=False)
    with atomic_path(md) as tmp:
        tmp.write_text((note.strip() + "\n\n" if note.strip() else "") + markdown_table(shown))
    return csv, md


def save(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    """Save `fig` as PNG (tight bounding box), atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path
