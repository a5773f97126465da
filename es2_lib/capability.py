"""General capability and harmless drift of a fine-tuned model next to its base (DESIGN.md §5, "Capability").

The paper claims that ES2 keeps "comparable general capabilities" on MMLU-Pro and GPQA. We score both
benchmarks zero-shot: the question and its lettered options go through the chat template, the assistant
turn starts with a fixed answer prefix ("The answer is (" by default), and the option letter with the
highest log-probability at the next position is the answer — one forward pass per question, with the
lm_head applied at that position only (DESIGN.md §7). Optionally the model also answers by greedy
generation, read with MMLU-Pro's own answer-extraction rules. Besides accuracy, ES2 must not teach the
model to refuse harmless requests (over-refusal on XSTest, keyword judge) nor move its next-token
distribution on harmless text (KL(base ‖ ES2) and perplexity of harmless responses).

GPQA's authors ask that its questions never appear in plain text online, so the GPQA reader decrypts the
password-protected zip in memory and writes nothing; `Question` hides the text from its repr.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import math
import random
import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import ContextManager, Sequence, TypeVar

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from . import judges
from .data import DATA_DIR
from .es2 import base_model, kl_divergence
from .generation import generate
from .models import chat_prompt, decoder_and_head
from .progress import progress as progress_bar
from .representations import position_ids

MMLU_PRO_FILE = DATA_DIR / "mmlu_pro" / "test.jsonl.gz"
GPQA_FILE = DATA_DIR / "gpqa" / "gpqa_diamond.zip"
GPQA_MEMBER = "gpqa_diamond.csv"
GPQA_PASSWORD = b"deserted-untie-orchid"  # published by the GPQA authors; it only keeps crawlers out
LETTERS = "ABCDEFGHIJ"
ANSWER_PREFIX = "The answer is ("
PROMPT = (
    "The following is a multiple choice question about {subject}. Reply with the letter of the correct "
    'option in the form "The answer is (X)".\n\nQuestion: {question}\nOptions:\n{options}'
)
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


# --- benchmark readers ------------------------------------------------------------------------------

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


def load_mmlu_pro(path: Path = MMLU_PRO_FILE) -> list[Question]:
    """All MMLU-Pro questions of a JSON Lines file (gzipped when it ends in .gz), in file order."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"{path}: MMLU-Pro file not found (see data/mmlu_pro/SOURCE.md)")
    opener = gzip.open if path.suffix == ".gz" else open
    questions = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise BenchmarkError(f"{path}: line {number}: not valid JSON ({err.msg})") from err
                questions.append(mmlu_pro_question(record, f"{path}: line {number}"))
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


# --- scoring ----------------------------------------------------------------------------------------

def question_text(q: Question) -> str:
    """The user turn: the instruction, the question and its lettered options "(A) ..."."""
    options = "\n".join(f"({LETTERS[i]}) {option}" for i, option in enumerate(q.options))
    return PROMPT.format(subject=q.category.lower(), question=q.question, options=options)


def letter_token_ids(
    tokenizer: PreTrainedTokenizerBase, context: str, n_letters: int = len(LETTERS)
) -> list[list[int]]:
    """For each option letter, the tokens that spell it right after `context`: the bare letter and the letter
    after a space (tokenizers differ in which one a model emits after a given context). A variant counts
    only when it adds exactly one token and leaves the context's tokens unchanged."""
    base = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = []
    for letter in LETTERS[:n_letters]:
        variants: list[int] = []
        for text in (letter, " " + letter):
            full = tokenizer(context + text, add_special_tokens=False)["input_ids"]
            if len(full) == len(base) + 1 and full[: len(base)] == base and full[-1] not in variants:
                variants.append(full[-1])
        if not variants:
            raise ValueError(f"the tokenizer merges option letter {letter!r} with the end of the prompt "
                             f"{context[-30:]!r}; choose an answer prefix that ends on a token boundary")
        ids.append(variants)
    flat = [i for variants in ids for i in variants]
    if len(set(flat)) != len(flat):
        raise ValueError(f"two option letters share a token after {context[-30:]!r}: {ids}")
    return ids


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (memory errors show at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def letter_logprobs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[Question],
    answer_prefix: str = ANSWER_PREFIX,
    batch_size: int = 8,
    progress: bool = False,
) -> list[list[float]]:
    """log P(option letter) at the position after the chat prompt and `answer_prefix`, per question and option.

    A letter's probability sums its spellings (see `letter_token_ids`). One left-padded forward pass per
    batch; the decoder runs without the lm_head, which is applied to the last position only."""
    if not questions:
        return []
    texts = [chat_prompt(tokenizer, question_text(q)) + answer_prefix for q in questions]
    letter_ids = letter_token_ids(tokenizer, texts[0])
    decoder, lm_head = decoder_and_head(model)
    device = next(model.parameters()).device
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    out: list[list[float]] = [[] for _ in questions]
    batches = _batches(lengths, batch_size)
    for batch in progress_bar(batches, desc="letter scores") if progress else batches:
        enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        hidden = decoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         position_ids=position_ids(enc["attention_mask"]), use_cache=False).last_hidden_state
        logprobs = torch.log_softmax(lm_head(hidden[:, -1]).float(), dim=-1)  # [batch, vocab]
        for row, i in enumerate(batch):
            n = len(questions[i].options)
            out[i] = [torch.logsumexp(logprobs[row, letter_ids[k]], dim=0).item() for k in range(n)]
    return out


def extract_letter(response: str, n_options: int) -> int | None:
    """The option index a free-text answer names, by MMLU-Pro's rules (evaluate_from_local.py): "answer is
    (X)", else "Answer: X", else the last stand-alone letter; None when there is none."""
    letters = f"[{LETTERS[0]}-{LETTERS[n_options - 1]}]"
    for pattern, flags in ((rf"answer is \(?({letters})\)?", 0), (rf".*[aA]nswer:\s*({letters})", 0),
                           (rf"\b({letters})\b(?!.*\b{letters}\b)", re.DOTALL)):
        match = re.search(pattern, response, flags)
        if match:
            return LETTERS.index(match.group(1))
    return None


def answer_questions(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[Question],
    answer_prefix: str = ANSWER_PREFIX,
    batch_size: int = 8,
    max_new_tokens: int = 0,
    progress: bool = False,
) -> list[dict]:
    """Per question {id, category, answer, logprobs, choice, correct, letter_mass}: `choice` is the letter with
    the highest log-probability; `letter_mass` is the probability on all option letters together (near 1
    when the model follows the answer format). With max_new_tokens > 0 also {generated, generated_correct}: the option extracted from
    a greedy response to the same user turn (no answer prefix), None when the response names none.
    Rows hold no question text."""
    scores = letter_logprobs(model, tokenizer, questions, answer_prefix, batch_size, progress)
    rows = []
    for q, logprobs in zip(questions, scores):
        choice = int(np.argmax(logprobs))
        rows.append({"id": q.id, "category": q.category, "answer": q.answer, "logprobs": logprobs,
                     "choice": choice, "correct": choice == q.answer,
                     "letter_mass": float(np.exp(logprobs).sum())})
    if max_new_tokens > 0:
        responses = generate(model, tokenizer, [question_text(q) for q in questions], max_new_tokens, batch_size,
                             progress=progress)
        for row, q, response in zip(rows, questions, responses):
            row["generated"] = extract_letter(response, len(q.options))
            row["generated_correct"] = row["generated"] == q.answer
    return rows


# --- harmless drift ---------------------------------------------------------------------------------

def base_view(tuned: nn.Module, base: nn.Module | None = None) -> ContextManager[nn.Module]:
    """The base model: `base` when given (full fine-tuning leaves no base inside the tuned model, so the caller
    keeps a second copy), else `tuned` with its LoRA adapter disabled (es2.base_model; no second copy)."""
    return contextlib.nullcontext(base) if base is not None else base_model(tuned)


def _tail_logprobs(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Next-token log-probs [batch, k, vocab] at the last k positions of a left-padded batch (head there only)."""
    decoder, lm_head = decoder_and_head(model)
    hidden = decoder(input_ids=input_ids, attention_mask=mask, position_ids=position_ids(mask),
                     use_cache=False).last_hidden_state  # [batch, width, hidden]
    return torch.log_softmax(lm_head(hidden[:, -k:]).float(), dim=-1)


@torch.inference_mode()
def harmless_drift(
    tuned: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 8,
    base: nn.Module | None = None,
    progress: bool = False,
) -> list[dict]:
    """Per (prompt, response): KL(p_base ‖ p_tuned) of the next-token distributions from the last prompt token
    through the response's last token, as {kl (mean over those positions), kl_first (at the last prompt
    token)}, and the response's summed NLL under each model {nll_base, nll_tuned, tokens}.

    The base is `base_view(tuned, base)`. Tokenization matches evaluate.response_perplexity (chat prompt +
    response tokens, no EOS)."""
    device = next(tuned.parameters()).device
    pad = tokenizer.pad_token_id
    prompt_ids = [tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    resp_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
    out: list[dict] = [{} for _ in prompts]
    batches = _batches([len(p) + len(r) for p, r in zip(prompt_ids, resp_ids)], batch_size)
    for batch in progress_bar(batches, desc="harmless drift") if progress else batches:
        seqs = [prompt_ids[i] + resp_ids[i] for i in batch]
        width, k = max(map(len, seqs)), 1 + max(len(resp_ids[i]) for i in batch)  # k scored positions
        input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
        with base_view(tuned, base) as reference:
            base_lp = _tail_logprobs(reference, input_ids, mask, k)  # [batch, k, vocab]
        tuned_lp = _tail_logprobs(tuned, input_ids, mask, k)
        kl = kl_divergence(base_lp, tuned_lp)  # [batch, k]
        targets = input_ids[:, width - k + 1 :].unsqueeze(-1)  # [batch, k-1, 1]: the token each position predicts
        nll_base = -base_lp[:, :-1].gather(-1, targets).squeeze(-1)  # [batch, k-1]
        nll_tuned = -tuned_lp[:, :-1].gather(-1, targets).squeeze(-1)
        for row, i in enumerate(batch):
            r = len(resp_ids[i])  # this row's response fills the last r of the k-1 predicted positions
            out[i] = {"kl": kl[row, k - 1 - r :].mean().item(), "kl_first": kl[row, k - 1 - r].item(),
                      "nll_base": nll_base[row, k - 1 - r :].sum().item(),
                      "nll_tuned": nll_tuned[row, k - 1 - r :].sum().item(), "tokens": r}
    return out


# --- statistics -------------------------------------------------------------------------------------

def mean_ci(values: Sequence[float], samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean with a percentile-bootstrap interval: {value, low, high, n}."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    means = x[np.random.default_rng(seed).integers(0, x.size, size=(samples, x.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {"value": float(x.mean()), "low": float(low), "high": float(high), "n": int(x.size)}


def paired_difference(
    base: Sequence[bool], tuned: Sequence[bool], samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """tuned − base share of True on the same items, with a paired percentile-bootstrap interval.

    Resampling the n items counts how many pairs go False→True (+1), stay (0), or go True→False (−1): a
    multinomial draw, so the bootstrap is one vectorised call, identical in law to index resampling."""
    if len(base) != len(tuned) or not base:
        raise ValueError(f"paired_difference needs two equally long, non-empty lists, got {len(base)} and {len(tuned)}")
    d = np.asarray(tuned, dtype=int) - np.asarray(base, dtype=int)  # [n] in {-1, 0, 1}
    n = d.size
    shares = [np.mean(d == -1), np.mean(d == 0), np.mean(d == 1)]
    counts = np.random.default_rng(seed).multinomial(n, shares, size=samples)  # [samples, 3]
    diffs = (counts[:, 2] - counts[:, 0]) / n
    tail = (1 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return {"value": float(d.mean()), "low": float(low), "high": float(high), "n": int(n),
            "gained": int((d == 1).sum()), "lost": int((d == -1).sum())}


def accuracy(rows: Sequence[dict], key: str = "correct", samples: int = 1000, confidence: float = 0.95,
             seed: int = 0) -> dict:
    """{"overall": rate_ci, "per_category": {category: rate_ci}} of the flag `key` of `answer_questions` rows."""
    ci = dict(samples=samples, confidence=confidence, seed=seed)
    by_category: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        by_category[row["category"]].append(bool(row[key]))
    return {"overall": judges.rate_ci([bool(r[key]) for r in rows], **ci),
            "per_category": {c: judges.rate_ci(flags, **ci) for c, flags in sorted(by_category.items())}}


def refusal_rates(responses: Sequence[str], samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Refused share of `responses` under each keyword judge ("autodan" is the paper's), with intervals."""
    return {judge: judges.rate_ci(judges.refusals(responses, judge), samples, confidence, seed)
            for judge in judges.JUDGES}


def drift_summary(rows: Sequence[dict], samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean KL(base ‖ tuned) per prompt and at the first response token (with intervals), and the corpus
    perplexity of the responses under each model (exp of the token-weighted mean NLL; None without tokens)."""
    tokens = sum(r["tokens"] for r in rows)
    ppl = {m: math.exp(sum(r[f"nll_{m}"] for r in rows) / tokens) if tokens else None for m in ("base", "tuned")}
    return {"kl": mean_ci([r["kl"] for r in rows], samples, confidence, seed),
            "kl_first": mean_ci([r["kl_first"] for r in rows], samples, confidence, seed),
            "ppl_base": ppl["base"], "ppl_tuned": ppl["tuned"], "tokens": tokens}


def claim_verdict(difference: dict, margin: float) -> dict:
    """Is the tuned model within `margin` of the base (difference = tuned − base >= −margin)?

    `holds` reads the point estimate; `verdict` reads the interval: "supported" when it lies wholly above
    −margin, "refuted" when wholly below, else "undecided" (the subset is too small to tell)."""
    low, high = difference["low"], difference["high"]
    verdict = "supported" if low >= -margin else "refuted" if high < -margin else "undecided"
    return {"margin": margin, "holds": difference["value"] >= -margin, "verdict": verdict,
            "ci_width": high - low}


def summarize(
    choices: dict[str, dict[str, list[dict]]],
    xstest: dict[str, dict[str, list[str]]],
    drift: list[dict],
    margin: float = 0.02,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """The capability results of both models and their paired differences.

    choices[model][benchmark]: `answer_questions` rows (model "base" and "es2", same questions);
    xstest[model]["safe" | "unsafe"]: responses to the same XSTest prompts; drift: `harmless_drift` rows.
    Returns {"base"|"es2": {benchmark: {"letter"[, "generate"]: accuracy, "letter_mass": mean}, "xstest": {"over_refusal",
    "unsafe_refusal": {judge: rate}}, "harmless": {...}}, "difference": {...: paired es2 − base},
    "claim": {benchmark: claim_verdict of the letter-scored difference}}."""
    ci = dict(samples=samples, confidence=confidence, seed=seed)
    results: dict = {"base": {}, "es2": {}, "difference": {}, "claim": {}}
    for bench in choices["base"]:
        base_rows, es2_rows = choices["base"][bench], choices["es2"][bench]
        if [r["id"] for r in base_rows] != [r["id"] for r in es2_rows]:
            raise ValueError(f"{bench}: base and es2 were scored on different questions")
        modes = {"letter": "correct", **({"generate": "generated_correct"} if "generated" in base_rows[0] else {})}
        for model, rows in (("base", base_rows), ("es2", es2_rows)):
            results[model][bench] = {mode: accuracy(rows, key, **ci) for mode, key in modes.items()}
            results[model][bench]["letter_mass"] = mean_ci([r["letter_mass"] for r in rows], **ci)
        results["difference"][bench] = {
            mode: paired_difference([r[key] for r in base_rows], [r[key] for r in es2_rows], **ci)
            for mode, key in modes.items()}
        results["claim"][bench] = claim_verdict(results["difference"][bench]["letter"], margin)
    flags = {m: {part: judges.refusals(xstest[m][part]) for part in ("safe", "unsafe")} for m in ("base", "es2")}
    for model in ("base", "es2"):
        results[model]["xstest"] = {"over_refusal": refusal_rates(xstest[model]["safe"], **ci),
                                    "unsafe_refusal": refusal_rates(xstest[model]["unsafe"], **ci)}
    results["difference"]["xstest"] = {
        metric: paired_difference(flags["base"][part], flags["es2"][part], **ci)
        for metric, part in (("over_refusal", "safe"), ("unsafe_refusal", "unsafe"))}
    summary = drift_summary(drift, **ci)
    results["base"]["harmless"] = {"ppl": summary["ppl_base"]}
    results["es2"]["harmless"] = {"ppl": summary["ppl_tuned"], "kl": summary["kl"], "kl_first": summary["kl_first"]}
    return results


def table_rows(results: dict) -> list[dict]:
    """`summarize`'s numbers as flat rows {model, benchmark, metric, group, value, low, high, n}; group is a
    category, a judge, or "all"."""
    rows = []

    def walk(node: object, path: list[str]) -> None:
        if isinstance(node, dict) and "value" in node:
            rows.append({**dict(zip(("model", "benchmark", "metric"), path[:3])),
                         "group": "/".join(path[3:]) or "all",
                         **{k: node.get(k) for k in ("value", "low", "high", "n")}})
        elif isinstance(node, dict):
            for key, child in node.items():
                walk(child, path + ([] if key in ("overall", "per_category") else [key]))
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            walk({"value": node}, path)

    for model in ("base", "es2", "difference"):
        walk(results[model], [model])
    return rows


BENCHMARK_LABELS = {"mmlu_pro": "MMLU-Pro", "gpqa": "GPQA diamond"}


def headline(results: dict) -> list[dict]:
    """The rows of the notebook's table, {measure, short (a plot label), base, es2, difference}, each cell an
    interval dict (or a bare {"value"}; None where it does not apply). XSTest rates use the paper's keyword
    judge ("autodan")."""
    modes = {"letter": ("letter log-likelihood", "letter"), "generate": ("generated answer", "generated")}
    rows = []
    for bench, label in BENCHMARK_LABELS.items():
        for mode in [m for m in modes if m in results["base"].get(bench, {})]:
            rows.append({"measure": f"{label} accuracy ({modes[mode][0]})", "short": f"{label} ({modes[mode][1]})",
                         "base": results["base"][bench][mode]["overall"], "es2": results["es2"][bench][mode]["overall"],
                         "difference": results["difference"][bench][mode]})
        if "letter_mass" in results["base"].get(bench, {}):
            rows.append({"measure": f"{label} probability on the option letters", "short": f"{label} letter mass",
                         "base": results["base"][bench]["letter_mass"], "es2": results["es2"][bench]["letter_mass"],
                         "difference": None})
    for metric, label, short in (("over_refusal", "XSTest over-refusal (safe prompts refused)", "XSTest over-refusal"),
                                 ("unsafe_refusal", "XSTest unsafe prompts refused", "XSTest unsafe refused")):
        rows.append({"measure": label, "short": short, "base": results["base"]["xstest"][metric]["autodan"],
                     "es2": results["es2"]["xstest"][metric]["autodan"],
                     "difference": results["difference"]["xstest"][metric]})
    ppl_base, ppl_es2 = results["base"]["harmless"]["ppl"], results["es2"]["harmless"]["ppl"]
    rows.append({"measure": "harmless KL(base ‖ ES2), nats per token", "short": "harmless KL", "base": None,
                 "es2": results["es2"]["harmless"]["kl"], "difference": None})
    rows.append({"measure": "harmless perplexity of base responses", "short": "harmless perplexity",
                 "base": {"value": ppl_base}, "es2": {"value": ppl_es2},
                 "difference": {"value": ppl_es2 - ppl_base} if ppl_base is not None else None})
    return rows


def verdict_sentence(bench: str, difference: dict, verdict: dict) -> str:
    """One Markdown sentence on whether ES2 stays within the margin on `bench` and whether the subset can tell."""
    pts = {k: 100 * difference[k] for k in ("value", "low", "high")}
    margin, width = 100 * verdict["margin"], 100 * verdict["ci_width"]
    text = (f"**{BENCHMARK_LABELS.get(bench, bench)}**: ES2 − base = {pts['value']:+.1f} points "
            f"[{pts['low']:+.1f}, {pts['high']:+.1f}] (paired bootstrap, {difference['n']} questions, "
            f"{difference['gained']} gained, {difference['lost']} lost). The claim (ES2 at most {margin:g} points "
            f"below base) {'holds' if verdict['holds'] else 'fails'} on the point estimate; ")
    if verdict["verdict"] == "supported":
        return text + f"the whole interval lies above −{margin:g}, so the subset suffices to support it."
    if verdict["verdict"] == "refuted":
        return text + f"the whole interval lies below −{margin:g}, so the subset suffices to refute it."
    return text + (f"the interval (width {width:.1f} points) straddles −{margin:g}, so this subset is too small "
                   f"to tell.")
