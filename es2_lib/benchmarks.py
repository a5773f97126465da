"""The multiple-choice benchmarks of the capability check, read into `Question`s, and the seeded subsets the stage
scores (docs/architecture.md, 'Metrics'): ARC-Challenge (Clark et al. 2018) and MMLU (Hendrycks et al. 2021), on
which a 0.5B model is above chance, and MMLU-Pro (Wang et al. 2024) and GPQA diamond (Rein et al. 2023), the
paper's, at chance for it.

GPQA's authors ask that its questions never appear in plain text online, so the GPQA reader decrypts the
password-protected zip in memory and writes nothing; `Question` hides the text from its repr.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, TypeVar

from .data import DATA_DIR

ARC_FILE = DATA_DIR / "arc_challenge" / "arc_challenge_test.jsonl"
MMLU_DIR = DATA_DIR / "mmlu" / "test"
MMLU_PRO_FILE = DATA_DIR / "mmlu_pro" / "test.jsonl.gz"
GPQA_FILE = DATA_DIR / "gpqa" / "gpqa_diamond.zip"
GPQA_MEMBER = "gpqa_diamond.csv"
GPQA_PASSWORD = b"deserted-untie-orchid"  # published by the GPQA authors; it only keeps crawlers out
LETTERS = "ABCDEFGHIJ"  # option letters; MMLU-Pro has up to ten options
T = TypeVar("T")


class BenchmarkError(ValueError):
    """A benchmark file or record is missing or malformed."""


@dataclass(frozen=True)
class Question:
    """One multiple-choice question; `answer` indexes `options`. The repr leaves the text out (GPQA)."""

    id: str
    category: str
    question: str = field(repr=False)
    options: tuple[str, ...] = field(repr=False)
    answer: int


def _field(record: dict, key: str, where: str, expected: str) -> object:
    value = record.get(key)
    if value is None or value == "" or value == []:
        raise BenchmarkError(f"{where}: missing field {key!r} (expected {expected}); "
                             f"found fields: {', '.join(sorted(map(str, record))) or 'none'}")
    return value


def mmlu_pro_question(record: dict, where: str = "MMLU-Pro record") -> Question:
    """A `Question` from one MMLU-Pro record {question_id, question, options, answer (letter), category}."""
    qid = record.get("question_id", "?")
    where = f"{where} (question_id {qid})"
    question = _field(record, "question", where, "the question text")
    options = _field(record, "options", where, "a list of 2 to 10 option strings")
    letter = _field(record, "answer", where, "the correct option's letter")
    category = _field(record, "category", where, "the subject category")
    _field(record, "question_id", where, "an id")
    if not (isinstance(options, list) and 2 <= len(options) <= len(LETTERS)
            and all(isinstance(o, str) for o in options)):
        raise BenchmarkError(f"{where}: field 'options' must be a list of 2 to {len(LETTERS)} strings, got {options!r}")
    if not (isinstance(letter, str) and letter in LETTERS[: len(options)]):
        raise BenchmarkError(f"{where}: answer {letter!r} is not one of the letters {LETTERS[: len(options)]} "
                             f"of its {len(options)} options")
    return Question(str(qid), str(category), str(question), tuple(options), LETTERS.index(letter))


def _json_lines(path: Path, what: str) -> list[tuple[int, dict]]:
    """(line number, record) of each non-empty line of a JSON Lines file (gzipped when it ends in .gz)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"{path}: {what} file not found (see data/{path.parent.name}/SOURCE.md)")
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    records.append((number, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise BenchmarkError(f"{path}: line {number}: not valid JSON ({err.msg})") from err
    return records


def load_mmlu_pro(path: Path = MMLU_PRO_FILE) -> list[Question]:
    """All MMLU-Pro questions of a JSON Lines file (gzipped when it ends in .gz), in file order."""
    return [mmlu_pro_question(record, f"{path}: line {n}") for n, record in _json_lines(path, "MMLU-Pro")]


def arc_question(record: dict, where: str = "ARC-Challenge record") -> Question:
    """A `Question` from one ARC-Challenge record {id, question, options: [{label, text}], answer (a label)};
    category "science" (ARC is grade-school science)."""
    where = f"{where} (id {record.get('id', '?')})"
    qid = _field(record, "id", where, "an id")
    question = _field(record, "question", where, "the question text")
    options = _field(record, "options", where, "a list of {label, text} options")
    answer = _field(record, "answer", where, "the correct option's label")
    if not (isinstance(options, list) and 2 <= len(options) <= len(LETTERS)
            and all(isinstance(o, dict) and isinstance(o.get("text"), str) for o in options)):
        raise BenchmarkError(f"{where}: field 'options' must be 2 to {len(LETTERS)} {{label, text}} objects")
    labels = [o.get("label") for o in options]
    if answer not in labels:
        raise BenchmarkError(f"{where}: answer {answer!r} is not one of the option labels {labels}")
    return Question(str(qid), "science", str(question), tuple(o["text"] for o in options), labels.index(answer))


def load_arc_challenge(path: Path = ARC_FILE) -> list[Question]:
    """All ARC-Challenge test questions, in file order."""
    return [arc_question(record, f"{path}: line {n}") for n, record in _json_lines(path, "ARC-Challenge")]


def load_mmlu(folder: Path = MMLU_DIR) -> list[Question]:
    """All MMLU test questions of `folder`'s <subject>_test.csv files (header question, choice0-3, answer = the
    0-3 index), subject by subject in name order; the category is the subject ("high school physics")."""
    folder = Path(folder)
    files = sorted(folder.glob("*_test.csv"))
    if not files:
        raise BenchmarkError(f"{folder}: no MMLU <subject>_test.csv files (see data/mmlu/SOURCE.md)")
    columns = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
    questions = []
    for file in files:
        subject = file.name[: -len("_test.csv")].replace("_", " ")
        with open(file, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames != columns:
                raise BenchmarkError(f"{file}: expected the header {','.join(columns)}, got {reader.fieldnames}")
            for n, row in enumerate(reader, 1):
                if row["answer"] not in ("0", "1", "2", "3") or not row["question"]:
                    raise BenchmarkError(f"{file}: row {n}: expected a question and an answer index 0-3, got "
                                         f"{row['answer']!r}")
                questions.append(Question(f"{file.stem}/{n}", subject, row["question"],
                                          tuple(row[f"choice{i}"] for i in range(4)), int(row["answer"])))
    return questions


def gpqa_question(record: dict, seed: int, where: str = "GPQA record") -> Question:
    """A `Question` from one GPQA row; the four options are shuffled by a seeded RNG of the record id, so
    a question's option order does not depend on which other questions are loaded."""
    rid = record.get("Record ID", "?")
    where = f"{where} (Record ID {rid})"
    _field(record, "Record ID", where, "an id")
    question = _field(record, "Question", where, "the question text")
    correct = _field(record, "Correct Answer", where, "the correct answer's text")
    wrong = [_field(record, f"Incorrect Answer {i}", where, "a wrong answer's text") for i in (1, 2, 3)]
    domain = _field(record, "High-level domain", where, "Physics, Chemistry or Biology")
    options = [str(o).strip() for o in [correct, *wrong]]
    order = list(range(4))
    random.Random(f"{seed}/{rid}").shuffle(order)
    return Question(str(rid), str(domain), str(question).strip(), tuple(options[i] for i in order), order.index(0))


def load_gpqa(path: Path = GPQA_FILE, seed: int = 0) -> list[Question]:
    """GPQA diamond, decrypted and parsed in memory only (nothing is written anywhere), options shuffled."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"{path}: GPQA zip not found (see data/gpqa/SOURCE.md)")
    with zipfile.ZipFile(path) as archive:
        try:
            text = archive.read(GPQA_MEMBER, pwd=GPQA_PASSWORD).decode("utf-8")
        except KeyError as err:
            raise BenchmarkError(f"{path}: no member {GPQA_MEMBER!r} (found {archive.namelist()})") from err
    rows = csv.DictReader(io.StringIO(text))
    return [gpqa_question(row, seed, f"{path}: row {n}") for n, row in enumerate(rows, 1)]


def subset(items: Sequence[T], n: int, seed: int | str) -> list[T]:
    """A seeded random `n` of `items` in their original order (n = 0 or n >= len: all of them)."""
    if n < 0:
        raise ValueError(f"subset size must be >= 0 (0 = all), got {n}")
    if n == 0 or n >= len(items):
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), n))
    return [item for i, item in enumerate(items) if i in keep]


def stratified_subset(questions: Sequence[Question], per_category: int, seed: int) -> list[Question]:
    """Up to `per_category` questions of each category (0 = all), drawn by a seeded RNG per category, in
    file order; the draw in one category does not depend on the others."""
    by_category: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        by_category[q.category].append(i)
    keep = {i for cat, index in by_category.items() for i in subset(index, per_category, f"{seed}/{cat}")}
    return [q for i, q in enumerate(questions) if i in keep]
