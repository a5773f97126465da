"""Paired comparisons between models on the same prompts, from the judged responses an attack stage wrote: for each
attack and each model beside the reference (base), the exact rate of each under both keyword judges, their
difference, the exact McNemar test, and Holm's correction across every test of the table (stats)."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from . import judges, stats


def reported_flags(responses: Iterable[Mapping], settings: Mapping[tuple[str, str], str]) -> dict:
    """{(model, attack): {prompt: response row}} of the rows at each (model, attack)'s reported setting."""
    out: dict[tuple[str, str], dict[str, Mapping]] = {}
    for r in responses:
        key = (r["model"], r["attack"])
        if key in settings and r["setting"] == settings[key]:
            out.setdefault(key, {})[r["prompt"]] = r
    return out


def compare(a: Sequence[bool], b: Sequence[bool], confidence: float = 0.95) -> dict:
    """Two flag lists on the same items (a: the reference): {"n", "reference_rate", "rate" (exact intervals),
    "difference" (b's share minus a's), "mcnemar" (exact test)}."""
    return {"n": len(a), "reference_rate": stats.exact_rate(a, confidence), "rate": stats.exact_rate(b, confidence),
            "difference": (sum(b) - sum(a)) / len(a), "mcnemar": stats.mcnemar_exact(a, b)}


def paired_table(responses: Iterable[Mapping], settings: Mapping[tuple[str, str], str], reference: str = "base",
                 confidence: float = 0.95, alpha: float = 0.05) -> list[dict]:
    """Per attack, model other than `reference` and judge: both rates on the prompts the two share (exact
    intervals), the difference, McNemar's exact test and its Holm-adjusted p-value across the whole table."""
    flags = reported_flags(responses, settings)
    rows = []
    for (model, attack), by_prompt in flags.items():
        base = flags.get((reference, attack))
        if model == reference or base is None:
            continue
        shared = [p for p in base if p in by_prompt]
        if not shared:
            continue
        for judge, field in judges.FLAG_FIELDS.items():
            a, b = [bool(base[p][field]) for p in shared], [bool(by_prompt[p][field]) for p in shared]
            rows.append({"attack": attack, "model": model, "reference": reference, "judge": judge,
                         **compare(a, b, confidence)})
    for row, corrected in zip(rows, stats.holm([r["mcnemar"]["p"] for r in rows], alpha)):
        row["holm"] = corrected
    return rows
