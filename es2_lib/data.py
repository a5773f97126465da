"""Prompt sets, the fixed probe-train / ES2-train / eval splits and the bundled training pairs (docs/architecture.md,
'Layers of the library').

`load_prompts` reads a bundled set from `data/` (AdvBench, Alpaca, MaliciousInstruct, XSTest) or a user's CSV
or JSON Lines file with a `prompt` column (read by local_tables.py). `make_splits` draws seeded,
disjoint splits of harmful and harmless prompts without near-duplicates (`near`); stage 01 writes them (`write_splits`) and every later stage
reads them (`read_splits`), so all stages use the same ones. `load_refusals` and `load_pairs` read the
(instruction, response) pairs that ES2's refusal retain term (paper Section 3) and the safety-subspace
fine-tunes train on. Any malformed input raises `DataError` naming the file, the row and what was expected.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from . import judges
from .local_tables import USER_SUFFIXES, DataError, checked_rows, load_table
from .runs import read_json, write_json

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
SPLITS = ("probe_train", "es2_train", "dev", "eval")  # the splits of each class, in make_splits' order of keys
WORD = re.compile(r"\w+")

@dataclass(frozen=True)
class _Bundled:
    file: str  # path below DATA_DIR
    columns: dict[str, str]  # column in the file -> key in the returned rows ("prompt" required)
    keep: tuple[str, str] | None = None  # (column, value): keep only the rows with this value
    builder: str = ""  # datasets builder; "" = chosen by the file's suffix; "instructions": a JSON object's list


BUNDLED = {
    "advbench": _Bundled("advbench/harmful_behaviors.csv", {"goal": "prompt", "target": "target"}),
    "alpaca": _Bundled("alpaca/alpaca_instructions.json", {"instruction": "prompt"}),
    "malicious_instruct": _Bundled("malicious_instruct/malicious_instruct.txt", {"text": "prompt"}, builder="text"),
    "xstest_safe": _Bundled("xstest/xstest_prompts.csv", {"prompt": "prompt", "type": "type"}, ("label", "safe")),
    "xstest_unsafe": _Bundled("xstest/xstest_prompts.csv", {"prompt": "prompt", "type": "type"}, ("label", "unsafe")),
    # Safety-Tuned LLaMAs' evaluation sets (Bianchi et al. 2024): {"instructions": [...], "inputs": [...]}
    "i_malicious_instructions": _Bundled("safety_tuned_llamas/I-MaliciousInstructions.json", {"prompt": "prompt"},
                                         builder="instructions"),
    "q_harm": _Bundled("safety_tuned_llamas/Q-Harm.json", {"prompt": "prompt"}, builder="instructions"),
    # harmless requests about physical safety (Levy et al. 2022, in Bianchi et al.'s set): refusing them is over-refusal
    "i_physical_safety_safe": _Bundled("safety_tuned_llamas/I-PhysicalSafetySafe.json", {"prompt": "prompt"},
                                       builder="instructions"),
}


def load_prompts(source: str) -> list[dict]:
    """Rows {"prompt", optional "target", ...} of a bundled set (see BUNDLED) or of a CSV/JSONL/JSON file.

    A user file needs a `prompt` column (a non-empty string in every row) and may have a `target` column
    (a string; empty cells are left out). A relative path is looked up from the working directory, then
    from the repository root. Row numbers in errors count data rows from 1 (a CSV header is not a row).
    """
    if source in BUNDLED:
        spec = BUNDLED[source]
        path = DATA_DIR / spec.file
        builder = spec.builder or USER_SUFFIXES[path.suffix]
        table = _instructions(path) if builder == "instructions" else load_table(
            path, builder, spec.columns, extra=spec.keep[:1] if spec.keep else ())
        if spec.keep:
            column, value = spec.keep
            table = [row for row in table if row[column] == value]
        return checked_rows(table, spec.columns, path)
    path = _user_path(source)
    columns = {"prompt": "prompt", "target": "target"}
    return checked_rows(load_table(path, USER_SUFFIXES[path.suffix.lower()], columns), columns, path)


def set_name(source: str) -> str:
    """A prompt set's name in tables: its bundled name, or a user file's stem."""
    return source if source in BUNDLED else Path(source).stem


def _instructions(path: Path) -> list[dict]:
    """Rows {"prompt"} of a Safety-Tuned LLaMAs evaluation file: the strings of its "instructions" list."""
    records = json.loads(path.read_text(encoding="utf-8"))
    if not (isinstance(records, dict) and isinstance(records.get("instructions"), list)):
        raise DataError(f"{path}: expected a JSON object with an 'instructions' list")
    return [{"prompt": text} for text in records["instructions"]]


def prompt_file(source: str) -> Path | None:
    """The user file a prompt source reads (None for a bundled set, whose file is below data/); a DataError when
    it does not exist."""
    return None if source in BUNDLED else _user_path(source)


def refusal_file(path: str) -> Path:
    """The refusal examples file of `es2_refusal_data` (a relative path is below data/)."""
    return Path(path) if Path(path).is_absolute() else DATA_DIR / path


def _user_path(source: str) -> Path:
    path = Path(source).expanduser()
    if path.suffix.lower() not in USER_SUFFIXES and "/" not in source and not path.exists():
        raise DataError(
            f"unknown prompt set {source!r}: expected a bundled name ({', '.join(BUNDLED)}) "
            f"or a path to a .csv, .jsonl or .json file with a 'prompt' column"
        )
    if not path.is_absolute() and not path.exists():
        path = DATA_DIR.parent / path
    if not path.is_file():
        raise DataError(f"{source}: prompt file not found (looked in {Path.cwd()} and {DATA_DIR.parent})")
    if path.suffix.lower() not in USER_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected .csv, .jsonl or .json")
    return path


def _key(prompt: str) -> str:
    """Prompts equal up to whitespace count as duplicates."""
    return " ".join(prompt.split())


def _distinct(rows: list[dict]) -> list[dict]:
    seen: set[str] = set()
    kept = []
    for row in rows:
        if _key(row["prompt"]) not in seen:
            seen.add(_key(row["prompt"]))
            kept.append(row)
    return kept


def content_words(prompt: str) -> frozenset[str]:
    """The lower-cased words of `prompt` without English stop words (scikit-learn's list): what near-duplicates
    share."""
    return frozenset(WORD.findall(prompt.lower())) - ENGLISH_STOP_WORDS


def near(words: frozenset[str], others: list[frozenset[str]], jaccard: float) -> bool:
    """Whether `words` is a near-duplicate of any of `others`: content-word Jaccard similarity >= `jaccard`."""
    return any(len(words & o) >= jaccard * len(words | o) for o in others if words | o)


def drop_near(rows: list[dict], drawn: list[dict], jaccard: float) -> list[dict]:
    """`rows` without those that are near-duplicates (`near`) of a prompt in `drawn` (e.g. an out-of-distribution
    eval set against every split prompt, so no eval prompt is a paraphrase of a training one)."""
    reference = [content_words(r["prompt"]) for r in drawn]
    return [r for r in rows if not near(content_words(r["prompt"]), reference, jaccard)]


def make_splits(harmful_prompts: str, harmless_prompts: str, n_probe_train: int, n_es2_train: int, n_dev: int,
                n_eval: int, seed: int, jaccard: float) -> tuple[dict[str, dict[str, list[dict]]], dict[str, int]]:
    """Seeded, disjoint splits {"harmful"|"harmless": {"probe_train"|"es2_train"|"dev"|"eval": rows}}, and per
    class how many prompts were skipped as near-duplicates on the way.

    Rule: each class's prompts (`harmful_prompts`, `harmless_prompts`: sources of `load_prompts`) are deduplicated
    (up to whitespace, first occurrence kept, file order) and shuffled once by `random.Random(f"{seed}/{class}")`;
    walking that order, a prompt is drawn unless it is a near-duplicate of one drawn before it (content-word
    Jaccard >= `jaccard`, `near`), so no two prompts of a class in any splits are near-duplicates. The splits are
    consecutive slices of the drawn order, in the order eval (n_eval), dev (n_dev), es2_train (n_es2_train),
    probe_train (n_probe_train). So eval depends only on the seed, the source, `jaccard` and n_eval; changing
    n_probe_train never changes the other splits, and enlarging a split keeps its earlier prompts. The same
    arguments give the same splits in every process.
    """
    need = n_eval + n_dev + n_es2_train + n_probe_train
    splits: dict[str, dict[str, list[dict]]] = {}
    skipped: dict[str, int] = {}
    for cls, source in (("harmful", harmful_prompts), ("harmless", harmless_prompts)):
        rows = _distinct(load_prompts(source))
        random.Random(f"{seed}/{cls}").shuffle(rows)
        drawn: list[dict] = []
        words: list[frozenset[str]] = []
        walked = 0
        for row in rows:
            if len(drawn) == need:
                break
            walked += 1
            w = content_words(row["prompt"])
            if not near(w, words, jaccard):
                drawn.append(row)
                words.append(w)
        if len(drawn) < need:
            raise DataError(
                f"{cls} prompt set {source!r} has {len(drawn)} distinct prompts that are not near-duplicates of "
                f"each other (near_duplicate_jaccard {jaccard}) but the splits need {need} (n_eval {n_eval} + "
                f"n_dev {n_dev} + n_es2_train {n_es2_train} + n_probe_train {n_probe_train}); lower these params, "
                f"raise near_duplicate_jaccard or use a larger set")
        skipped[cls] = walked - need
        cuts = [0, n_eval, n_eval + n_dev, n_eval + n_dev + n_es2_train, need]
        splits[cls] = {"probe_train": drawn[cuts[3]:cuts[4]], "es2_train": drawn[cuts[2]:cuts[3]],
                       "dev": drawn[cuts[1]:cuts[2]], "eval": drawn[:cuts[1]]}
    both = {_key(r["prompt"]) for s in splits["harmful"].values() for r in s} & {
        _key(r["prompt"]) for s in splits["harmless"].values() for r in s}
    if both:
        raise DataError(f"{len(both)} prompt(s) drawn as both harmful ({harmful_prompts!r}) and harmless "
                        f"({harmless_prompts!r}), e.g. {sorted(both)[0]!r}; the two sets must not overlap")
    return splits, skipped


def write_splits(path: Path, splits: dict[str, dict[str, list[dict]]]) -> Path:
    """Write the splits to `path` (stage 01's splits.json, atomically) and return the path."""
    write_json(path, splits)
    return path


def read_splits(path: Path) -> dict[str, dict[str, list[dict]]]:
    """The splits stage 01 wrote to `path`; a DataError names the file when it is not a splits file."""
    splits = read_json(path)
    if not (isinstance(splits, dict) and set(splits) == {"harmful", "harmless"}
            and all(isinstance(splits[c], dict) and set(splits[c]) == set(SPLITS) for c in splits)):
        raise DataError(f"{path}: not a splits file of stage 01 (expected {{harmful|harmless: {{{'|'.join(SPLITS)}: "
                        f"rows}}}}); rerun stage 01_probing")
    return splits


def first(rows: list[dict], n: int, key: str, what: str) -> list[dict]:
    """The first `n` of `rows`, or a DataError naming params key `key` when `what` (e.g. "the harmful eval
    split") has fewer."""
    if n > len(rows):
        raise DataError(f"params {key}={n} but {what} has {len(rows)} prompts; lower {key} or raise n_eval "
                        f"(stage 01 draws the splits)")
    return rows[:n]


def with_targets(rows: list[dict], what: str, remedy: str) -> list[dict]:
    """`rows`, checked to each have a non-empty "target" (AdvBench rows have one), else a DataError naming `what`
    (e.g. "the harmful probe_train split"), how many lack one, the first of them and `remedy`."""
    missing = [row["prompt"] for row in rows if not row.get("target")]
    if missing:
        raise DataError(f"{what}: {len(missing)} of {len(rows)} prompts have no target (the first: "
                        f"{missing[0][:60]!r}); {remedy}")
    return rows


# --- instruction -> response pairs for fine-tuning (safety subspaces; ES2's refusal retain term) -----------------

PAIRS = {  # name -> (file below DATA_DIR, which response of hidden_context's [safe, unsafe] list; None = Alpaca format)
    "alpaca": ("alpaca/alpaca_5000.json", None),
    "code_alpaca": ("code_alpaca/code_alpaca_2k.json", None),
    "hidden_context_unsafe": ("hidden_context/jailbroken_responses.jsonl", 1),
    "hidden_context_safe": ("hidden_context/jailbroken_responses.jsonl", 0),
}


def load_pairs(name: str) -> list[dict]:
    """Rows {"prompt", "response"} of a bundled fine-tuning set (see PAIRS), in file order, without rows whose
    prompt or response is empty.

    Alpaca and Code Alpaca: the instruction and its input (if any), separated by a blank line, and the output.
    hidden_context: the jailbreak prompt without its "Human:" / "Assistant:" frame (our chat template replaces
    it) and its unsafe (GPT-4, jailbroken) or safe (Claude v1.3) response."""
    if name not in PAIRS:
        raise DataError(f"unknown fine-tuning set {name!r}; expected one of {', '.join(PAIRS)}")
    file, which = PAIRS[name]
    path = DATA_DIR / file
    if which is None:
        table = load_table(path, "json", {"instruction": "prompt", "input": "input", "output": "response"})
        pairs = [{"prompt": "\n\n".join(filter(None, [r["instruction"].strip(), (r.get("input") or "").strip()])),
                  "response": r["output"]} for r in table]
    else:
        table = load_table(path, "json", {"prompt": "prompt", "responses": "responses"})
        pairs = [{"prompt": _strip_frame(r["prompt"]), "response": r["responses"][which]} for r in table]
    return [pair for pair in pairs if pair["prompt"] and (pair["response"] or "").strip()]  # 2 Code Alpaca outputs are empty


def load_refusals(path: str, limit: int | None = None, refusals_only: bool = True) -> list[tuple[str, str]]:
    """(instruction, response) pairs of a JSON list of {instruction, input, output} (relative paths are below
    data/) whose response the paper's keyword judge counts as a refusal (every pair with `refusals_only` off)."""
    rows = json.loads(refusal_file(path).read_text(encoding="utf-8"))
    pairs = [("\n\n".join(filter(None, [r["instruction"], r.get("input", "")])), r["output"]) for r in rows]
    return [pair for pair in pairs if not refusals_only or judges.is_refusal(pair[1])][:limit]


def _strip_frame(prompt: str) -> str:
    """'Human: <text>\\n\\nAssistant:' -> '<text>' (Anthropic's HH format; other text is returned stripped)."""
    text = prompt.strip()
    text = text.removeprefix("Human:").strip()
    return text.removesuffix("Assistant:").strip()
