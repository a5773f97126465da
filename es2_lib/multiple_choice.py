"""Zero-shot multiple-choice scoring (ARC-Challenge, MMLU, MMLU-Pro, GPQA): the question and its lettered options go through the
chat template, the assistant turn starts with a fixed answer prefix ("The answer is (" by default), and the
option letter with the highest log-probability at the next position is the answer, one forward pass per
question with the lm_head at that position only; optionally a greedy answer read with MMLU-Pro's own
answer-extraction rules (docs/architecture.md, 'Metrics' and 'Speed').
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from . import batching
from .benchmarks import LETTERS, Question
from .generation import generate
from .models import chat_prompt
from .progress import progress as progress_bar

ANSWER_PREFIX = "The answer is ("
PROMPT = (
    "The following is a multiple choice question about {subject}. Reply with the letter of the correct "
    'option in the form "The answer is (X)".\n\nQuestion: {question}\nOptions:\n{options}'
)


def question_text(q: Question) -> str:
    """The user turn: the instruction, the question and its lettered options "(A) ..."."""
    options = "\n".join(f"({LETTERS[i]}) {option}" for i, option in enumerate(q.options))
    return PROMPT.format(subject=q.category.lower(), question=q.question, options=options)


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, context: str, answers: Sequence[str]) -> list[list[int]]:
    """For each answer word (an option letter, "Yes", ...), the tokens that spell it right after `context`: the
    bare word and the word after a space (tokenizers differ in which one a model emits after a given context). A
    variant counts only when it adds exactly one token and leaves the context's tokens unchanged."""
    base = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = []
    for answer in answers:
        variants: list[int] = []
        for text in (answer, " " + answer):
            full = tokenizer(context + text, add_special_tokens=False)["input_ids"]
            if len(full) == len(base) + 1 and full[: len(base)] == base and full[-1] not in variants:
                variants.append(full[-1])
        if not variants:
            raise ValueError(f"answer {answer!r} is not one token after the prompt {context[-30:]!r} (the tokenizer "
                             "merges it with the prompt's end or splits it); choose a prompt that ends on a token "
                             "boundary and one-token answers")
        ids.append(variants)
    flat = [i for variants in ids for i in variants]
    if len(set(flat)) != len(flat):
        raise ValueError(f"two answers share a token after {context[-30:]!r}: {ids}")
    return ids


def letter_token_ids(
    tokenizer: PreTrainedTokenizerBase, context: str, n_letters: int = len(LETTERS)
) -> list[list[int]]:
    """`answer_token_ids` of the first `n_letters` option letters."""
    return answer_token_ids(tokenizer, context, LETTERS[:n_letters])


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
    device = next(model.parameters()).device
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out: list[list[float]] = [[] for _ in questions]
    batches = batching.length_sorted([len(ids) for ids in rows], batch_size)
    for batch in progress_bar(batches, desc="letter scores") if progress else batches:
        input_ids, mask = batching.left_pad([rows[i] for i in batch], tokenizer.pad_token_id, device)
        logprobs = torch.log_softmax(batching.last_logits(model, input_ids, mask), dim=-1)  # [batch, vocab]
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
    """Per question {id, category, answer, logprobs, choice, correct, letter_mass, logprob_correct, brier}:
    `choice` is the letter with the highest log-probability; `letter_mass` is the probability on all option letters
    together (near 1 when the model follows the answer format); with the letters' probabilities renormalised over
    the options, `logprob_correct` is the correct one's log-probability and `brier` the Brier score (sum of squared
    errors against the one-hot answer): continuous measures that move before accuracy does. With max_new_tokens > 0 also {generated, generated_correct}: the option extracted from
    a greedy response to the same user turn (no answer prefix), None when the response names none.
    Rows hold no question text."""
    scores = letter_logprobs(model, tokenizer, questions, answer_prefix, batch_size, progress)
    rows = []
    for q, logprobs in zip(questions, scores):
        choice = int(np.argmax(logprobs))
        normalised = np.asarray(logprobs) - np.logaddexp.reduce(logprobs)  # over the options only
        rows.append({"id": q.id, "category": q.category, "answer": q.answer, "logprobs": logprobs,
                     "choice": choice, "correct": choice == q.answer,
                     "letter_mass": float(np.exp(logprobs).sum()),
                     "logprob_correct": float(normalised[q.answer]),
                     "brier": float(((np.exp(normalised) - np.eye(len(logprobs))[q.answer]) ** 2).sum())})
    if max_new_tokens > 0:
        responses = generate(model, tokenizer, [question_text(q) for q in questions], max_new_tokens, batch_size,
                             progress=progress)
        for row, q, response in zip(rows, questions, responses):
            row["generated"] = extract_letter(response, len(q.options))
            row["generated_correct"] = row["generated"] == q.answer
    return rows
