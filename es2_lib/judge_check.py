"""How well each keyword refusal judge agrees with reference labels: precision, recall and accuracy against the human
labels of XSTest v2 completions (data/circuit_breakers), for each judge as published (a phrase anywhere) and as its
prefix variant (a phrase within the first N characters, N chosen on a dev half of the labels and reported on the
other); and against labelled responses of our own models (data/labelled_responses: one annotator, see its
SOURCE.md), where the judges meet the wording our fine-tunes refuse in."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Mapping, Sequence

from . import judges, stats
from .local_tables import DataError, load_table

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
LABELS_FILE = DATA_DIR / "circuit_breakers" / "xstest_v2_completions_gpt4_gpteval.csv"
REFERENCE_FILE = DATA_DIR / "labelled_responses" / "default_run_responses.jsonl"
REFERENCE_LABELS = {"refusal": (True, True), "compliance": (False, False), "non-answer": (False, True),
                    "unclear": None}  # label -> (refused, harm-free); None: left out
_REFERENCE_KEYS = ("stage", "model", "set", "attack", "setting", "prompt", "response", "label", "incoherent_judged")
_LABELS = {"1_full_compliance": False, "2_full_refusal": True, "3_partial_refusal": None}  # None: left out


def load_labelled(path: Path = LABELS_FILE) -> list[dict]:
    """Rows {id, type, prompt, completion, refused}: `refused` is the human final label (full refusal or full
    compliance; partial refusals, which no binary judge can match, are left out)."""
    columns = {name: name for name in ("id", "type", "prompt", "completion", "final_label")}
    rows = []
    for i, row in enumerate(load_table(path, "csv", columns), start=1):
        if row["final_label"] not in _LABELS:
            raise DataError(f"{path}: row {i}: final_label {row['final_label']!r}, expected one of {', '.join(_LABELS)}")
        if _LABELS[row["final_label"]] is not None:
            rows.append({key: row[key] for key in ("id", "type", "prompt", "completion")}
                        | {"refused": _LABELS[row["final_label"]]})
    return rows


def dev_test_split(rows: Sequence[dict], dev_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded split into a dev part (for choosing N) and a test part (for reporting)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    cut = round(dev_fraction * len(rows))
    return [rows[i] for i in sorted(order[:cut])], [rows[i] for i in sorted(order[cut:])]


def check_verdicts(rows: Sequence[dict], refused: Sequence[bool], confidence: float = 0.95) -> dict:
    """`stats.agreement` of any judge's verdicts on the rows' completions (e.g. an LLM judge's,
    `llm_judge.refusals`) with their human labels."""
    return stats.agreement(refused, [r["refused"] for r in rows], confidence)


def check(rows: Sequence[dict], judge: str, within: int | None = None, confidence: float = 0.95) -> dict:
    """`check_verdicts` of a keyword judge (its prefix variant with `within`)."""
    return check_verdicts(rows, judges.refusals([r["completion"] for r in rows], judge, within), confidence)


def choose_within(dev: Sequence[dict], judge: str, grid: Sequence[int]) -> int:
    """The N of `grid` at which the judge's prefix variant is most accurate on `dev` (ties: the smallest N)."""
    return max(grid, key=lambda n: (check(dev, judge, n)["accuracy"]["value"], -n))


def judge_table(rows: Sequence[dict], grid: Sequence[int], dev_fraction: float = 0.5, seed: int = 0,
                confidence: float = 0.95, others: Mapping[str, Callable[[list[dict]], list[bool]]] | None = None
                ) -> list[dict]:
    """Per judge of `judges.JUDGES`, as published and as its prefix variant (N chosen on the dev part), and per
    judge of `others` ({name: the verdicts of that judge on labelled rows}, e.g. an LLM judge's): its agreement with
    people on the test part; the row with the highest test accuracy is marked `best`."""
    dev, test = dev_test_split(rows, dev_fraction, seed)
    table = []
    for judge in judges.JUDGES:
        n = choose_within(dev, judge, grid)
        table += [{"judge": judge, "within": None, **check(test, judge, None, confidence)},
                  {"judge": judge, "within": n, **check(test, judge, n, confidence)}]
    table += [{"judge": name, "within": None, **check_verdicts(test, verdicts(test), confidence)}
              for name, verdicts in (others or {}).items()]
    best = max(range(len(table)), key=lambda i: table[i]["accuracy"]["value"])
    return [row | {"best": i == best, "n_dev": len(dev)} for i, row in enumerate(table)]


def load_reference(path: Path = REFERENCE_FILE) -> list[dict]:
    """Labelled responses of our own models, rows {model, set, attack, setting, prompt, completion, label, refused,
    harm_free, incoherent_judged}: `refused` for a refusal, `harm_free` for a refusal or a non-answer (incoherent,
    looping or off-task text), `incoherent_judged` the run's own incoherence verdict; "unclear" rows are left out."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number}: not valid JSON ({err.msg})") from err
        missing = [key for key in _REFERENCE_KEYS if key not in row]
        if missing:
            raise DataError(f"{path}: line {number}: missing key(s) {', '.join(missing)}")
        if row["label"] not in REFERENCE_LABELS:
            expected = ", ".join(REFERENCE_LABELS)
            raise DataError(f"{path}: line {number}: label {row['label']!r}, expected one of {expected}")
        if REFERENCE_LABELS[row["label"]] is not None:
            refused, harm_free = REFERENCE_LABELS[row["label"]]
            rows.append({key: row[key] for key in _REFERENCE_KEYS if key != "response"}
                        | {"completion": row["response"], "refused": refused, "harm_free": harm_free})
    return rows


def reference_table(rows: Sequence[dict], within: Mapping[str, int], confidence: float = 0.95) -> list[dict]:
    """Per group of labelled responses (model × no attack / attacked, then all rows) and per keyword judge, as
    published and as its prefix variant (`within`: judge -> N, chosen on the XSTest dev part, never on these labels):
    the reference and the judged refusal rate and their agreement; then the harm-free verdict (the paper's judge's
    refusal or the run's incoherence flag) against the labels' refusal-or-non-answer."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], "no attack" if row["attack"] == "none" else "attacked"), []).append(row)
    groups[("all", "all")] = list(rows)
    table = []
    for (model, condition), members in groups.items():
        completions = [r["completion"] for r in members]
        group = {"model": model, "condition": condition}
        for judge in judges.JUDGES:
            for n in (None, within[judge]):
                verdicts = judges.refusals(completions, judge, n)
                table.append(group | {"measure": "refusal", "judge": judge, "within": n,
                                      "reference_rate": stats.exact_rate([r["refused"] for r in members], confidence),
                                      "judged_rate": stats.exact_rate(verdicts, confidence),
                                      **check_verdicts(members, verdicts, confidence)})
        judged = [v or r["incoherent_judged"] for v, r in zip(judges.refusals(completions, "autodan"), members)]
        actual = [r["harm_free"] for r in members]
        table.append(group | {"measure": "harm-free", "judge": "autodan", "within": None,
                              "reference_rate": stats.exact_rate(actual, confidence),
                              "judged_rate": stats.exact_rate(judged, confidence),
                              **stats.agreement(judged, actual, confidence)})
    return table
