"""Reading a local CSV, JSON or JSON Lines table through `datasets` (no network, no progress bars, a throwaway
cache), with errors that name the file, the row (and a JSON Lines file's line) and what was expected
(docs/architecture.md, 'Layers of the library'). `data.py` builds the prompt sets and training pairs on it.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any, Iterator

import datasets

USER_SUFFIXES = {".csv": "csv", ".jsonl": "json", ".json": "json"}  # user file suffix -> datasets builder


class DataError(ValueError):
    """A prompt set is missing or malformed, or too small for the requested splits."""


@contextlib.contextmanager
def _local_and_quiet() -> Iterator[None]:
    """Read a local file with `datasets` without its per-file progress bars (they would clutter published
    notebooks) and without the download-count request it sends for every load unless the hub is offline."""
    was_disabled, counts = datasets.utils.are_progress_bars_disabled(), datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    datasets.disable_progress_bars()
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        yield
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = counts
        if not was_disabled:
            datasets.enable_progress_bars()


def load_table(path: Path, builder: str, columns: dict[str, str], extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The records of a local file (its `columns` and `extra` columns) via `datasets`, with a throwaway cache."""
    options = {"keep_default_na": False} if builder == "csv" else {}  # keep "NA"/"None" prompts as text
    try:
        with _local_and_quiet(), tempfile.TemporaryDirectory(prefix="es2-datasets-") as cache:
            table = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache, **options)
            _require_prompt_column(path, table.column_names, columns)
            wanted = [c for c in table.column_names if c in columns or c in extra]
            return table.select_columns(wanted).to_list()
    except DataError:
        raise
    except Exception as err:  # datasets wraps pandas/pyarrow parse errors in several exception types
        if builder == "json":
            _explain_json(path, columns)
        cause = err.__cause__ or err
        raise DataError(f"{path}: could not be read as {builder.upper()} ({cause})") from err


def _require_prompt_column(path: Path, found: list[str], columns: dict[str, str]) -> None:
    prompt_column = next(c for c, key in columns.items() if key == "prompt")
    if prompt_column not in found:
        raise DataError(
            f"{path}: no {prompt_column!r} column (found: {', '.join(found) or 'none'}); "
            f"expected a {prompt_column!r} column with one prompt per row"
        )


def _explain_json(path: Path, columns: dict[str, str]) -> None:
    """Find why `datasets` failed on a JSON(L) file: the first bad line, or a bad value in some row."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from err
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {err.lineno}: not valid JSON ({err.msg})") from err
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: line {number}: not valid JSON ({err.msg}); "
                                f"expected one JSON object per line") from err
    for row, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise DataError(f"{path}: {_where(path, row)}: expected a JSON object, got {type(record).__name__}")
    found = sorted({key for record in records for key in record})
    _require_prompt_column(path, found, columns)
    checked_rows([{c: r.get(c) for c in columns} for r in records], columns, path)


def checked_rows(table: list[dict[str, Any]], columns: dict[str, str], path: Path) -> list[dict]:
    """Rename columns to row keys and check every value: prompts non-empty strings, others strings."""
    rows = []
    for number, record in enumerate(table, 1):
        row = {}
        for column, key in columns.items():
            value = record.get(column)
            if key == "prompt" and not (isinstance(value, str) and value.strip()):
                raise DataError(f"{path}: {_where(path, number)}: expected a non-empty string in column "
                                f"{column!r}, got {value!r}")
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                raise DataError(f"{path}: {_where(path, number)}: expected a string in column {column!r}, "
                                f"got {type(value).__name__} {value!r}")
            row[key] = value
        rows.append(row)
    return rows


def _where(path: Path, row: int) -> str:
    """'row N' (1-based data row), with the line number for JSON Lines files, whose blank lines are skipped."""
    if path.suffix.lower() == ".jsonl":
        lines = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
        if row <= len(lines):
            return f"row {row} (line {lines[row - 1]})"
    return f"row {row}"
