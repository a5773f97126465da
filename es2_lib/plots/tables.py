"""The tables of the figures stage (06): Table 1, the paper's DSR per model × attack (the paper's DSR is the
keyword "autodan" judge; harm-free = refused + incoherent beside it), Table 2, capability of base and ES2, their
captions, and what of the run is there (docs/architecture.md, "Results" and "Metrics").

Table 1 reads exactly what the attack stages write: `results.AttackEntry` records from `read_attack_results`
(02's no-attack entries, 03's embedding attacks, 04's prompt attacks). Each table comes as (numbers for CSV,
formatted cells for Markdown), "0.67 [0.46, 0.88]" for a rate with its interval; `plots.write_table` writes both.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import pandas as pd

from . import ATTACK_LABELS, NOT_RUN, attack_label, fmt_number, fmt_rate, model_label, rate_columns
from .. import runs, stages
from ..results import AttackEntry, read_attack_results

DSR_COLUMN = 'DSR (paper: keyword "autodan")'
CAPABILITY_MEASURES = ["ARC-Challenge accuracy", "MMLU accuracy", "log-probability of the correct option",
                       "XSTest over-refusal", "harmless KL(base ‖ ES2)"]


class Reported(NamedTuple):
    """The entry Table 1 reports for one (model, attack), and the stage whose results file it came from."""

    stage: str
    entry: AttackEntry


def stage_status(run: runs.Run, stage_names: Iterable[str]) -> pd.DataFrame:
    """One row per stage: whether the files its registry entry `writes` are in the run folder, and its manifest
    status and wall time (empty when the notebooks were run by hand)."""
    done = run.manifest().get("stages", {})
    rows = []
    for name in stage_names:
        missing = [f for f in stages.stage(name).writes if not (run.dir / name / f).exists()]
        found = "found" if not missing else NOT_RUN if len(missing) == len(stages.stage(name).writes) else (
            f"partial, lacks {', '.join(missing)}")
        info = done.get(name, {})
        rows.append({"stage": name, "results": found, "manifest status": info.get("status", "–"),
                     "wall time (s)": fmt_number(info.get("wall_s"), 0)})
    return pd.DataFrame(rows)


def read_sources(paths: Mapping[str, Path]) -> dict[str, list[AttackEntry] | None]:
    """The attack entries of each Table 1 source ({stage: its results file}), None for a file not written."""
    return {stage: read_attack_results(path)[0] if Path(path).is_file() else None for stage, path in paths.items()}


def reported_entries(sources: Mapping[str, Sequence[AttackEntry] | None]) -> list[Reported]:
    """The entry Table 1 reports for each (model, attack): sources ({stage: entries, None if not run}) in order of
    precedence, the first source of a (model, attack) wins (no attack from 02, the attacks from 03 and 04). A
    source holds one reported entry per (model, attack): its stage chose the setting of a swept attack."""
    reported: dict[tuple[str, str], Reported] = {}
    for stage, entries in sources.items():
        seen: set[tuple[str, str]] = set()
        for e in entries or ():
            if (e.model, e.attack) in seen:
                raise ValueError(f"{stage}: two entries for attack {e.attack!r} on model {e.model!r}; Table 1 "
                                 "reports one (the stage chooses the reported setting of a sweep)")
            seen.add((e.model, e.attack))
            reported.setdefault((e.model, e.attack), Reported(stage, e))
    return list(reported.values())


def perturbation_l2(perturbation: Any) -> float:
    """The L2 size of a perturbation record ({"l2": ...} or a bare number); NaN when it has none."""
    value = perturbation.get("l2") if isinstance(perturbation, Mapping) else perturbation
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def setting_cell(entry: AttackEntry | None) -> str:
    """The reported setting of a swept attack, flagged when every setting of its sweep was mostly incoherent."""
    if entry is None or not entry.setting:
        return "–"
    flag = entry.all_incoherent and len(entry.sweep) > 1
    return entry.setting + (" (every setting mostly incoherent)" if flag else "")


def shared_confidence(run: runs.Run, reported: Sequence[Reported]) -> float | None:
    """The confidence level the stages behind `reported` ran with (from the manifest), None when they differ
    or were run by hand."""
    levels = {run.stage_params(r.stage).get("confidence") for r in reported}
    return levels.pop() if len(levels) == 1 else None


def dsr_note(reported: Sequence[Reported], not_run: Sequence[str], confidence: float | None = None) -> str:
    """The caption of Table 1: what each column is, the number of prompts, and which of its sources (stages)
    have not run."""
    sizes = sorted({r.entry.summary.n for r in reported})
    level = f"{confidence:.0%} " if confidence else ""
    text = (f"**Table 1.** Defence success rate per model × attack on {' / '.join(map(str, sizes)) or 'the'} harmful "
            f"eval prompts. **{DSR_COLUMN}** is the paper's DSR: the share of responses containing one of the 39 "
            f"refusal phrases of AutoDAN's keyword judge, with its exact {level}(Clopper–Pearson) interval. **harm-free** = refused + "
            "incoherent (a degenerate or high-perplexity response holds no refusal phrase but nothing harmful either); "
            "DSR (JailbreakBench keywords) is a robustness check with JailbreakBench's 12 phrases; refused / "
            "incoherent / compliant add up to one. Perturbation: the L2 norm an embedding attack added (0 for no "
            "attack; – for prompt attacks). Setting: the reported point of a swept attack (chosen by its stage). n: "
            "prompts judged in that row.")
    if not_run:
        have = {r.entry.attack for r in reported}
        absent = [attack_label(a) for a in ATTACK_LABELS if a not in have]
        text += (f" **Not run:** {'; '.join(not_run)}" +
                 (f" — the rows of {', '.join(absent)} say \"{NOT_RUN}\"." if absent else "."))
    return text


def dsr_table(reported: Iterable[Reported], models: Sequence[str] = ("base", "es2"),
              digits: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 1, DSR per attack × model: (numbers for CSV, formatted cells for Markdown).

    `reported` holds one entry per (model, attack) (`reported_entries`). Every attack of ATTACK_LABELS gets a row
    per model; one without an entry is marked "not run" (no number is made up). The paper's DSR is the keyword
    "autodan" judge; harm-free = refused + incoherent stands beside it, then the JailbreakBench-judge DSR and the
    three shares."""
    found: dict[tuple[str, str], Reported] = {}
    for r in reported:
        if (r.entry.model, r.entry.attack) in found:
            raise ValueError(f"two entries for attack {r.entry.attack!r} on model {r.entry.model!r}; Table 1 "
                             "reports one")
        found[(r.entry.model, r.entry.attack)] = r
    attacks = list(ATTACK_LABELS) + [a for a in dict.fromkeys(a for _, a in found) if a not in ATTACK_LABELS]
    numbers, shown = [], []
    for attack in attacks:
        for model in models:
            stage, entry = found.get((model, attack), ("", None))
            numbers.append(_dsr_numbers(attack, model, stage, entry))
            shown.append({"attack": attack_label(attack), "model": model_label(model), "setting": setting_cell(entry),
                          **_dsr_cells(entry, digits)})
    numbers = pd.DataFrame(numbers)
    numbers["n"] = numbers["n"].astype("Int64")
    return numbers, pd.DataFrame(shown)


def _dsr_numbers(attack: str, model: str, stage: str, entry: AttackEntry | None) -> dict[str, Any]:
    """One CSV row of Table 1 (NaN where the attack has not run)."""
    s = entry.summary if entry else None
    return {"attack": attack, "model": model, "status": "ok" if entry else NOT_RUN,
            **{k: v for rate in ("dsr", "harm_free", "dsr_jbb")
               for k, v in rate_columns(rate, getattr(s, rate) if s else None).items()},
            **{k: getattr(s, k) if s else math.nan for k in ("refused", "incoherent", "compliant")},
            "perturbation_l2": perturbation_l2(entry.perturbation) if entry else math.nan,
            "n": s.n if s else None, "stage": stage, "setting": entry.setting if entry else "",
            "budget": json.dumps(entry.budget or {}, sort_keys=True) if entry else ""}


def _dsr_cells(entry: AttackEntry | None, digits: int) -> dict[str, str]:
    """The formatted cells of one Table 1 row after attack, model and setting."""
    if entry is None:
        return {DSR_COLUMN: NOT_RUN, "harm-free (refused + incoherent)": NOT_RUN,
                **dict.fromkeys(["DSR (JailbreakBench keywords)", "refused", "incoherent", "compliant",
                                 "perturbation (L2)", "n"], "–")}
    s = entry.summary
    return {DSR_COLUMN: fmt_rate(s.dsr, digits), "harm-free (refused + incoherent)": fmt_rate(s.harm_free, digits),
            "DSR (JailbreakBench keywords)": fmt_rate(s.dsr_jbb, digits),
            **{k: fmt_number(getattr(s, k), digits) for k in ("refused", "incoherent", "compliant")},
            "perturbation (L2)": fmt_number(perturbation_l2(entry.perturbation), 3), "n": str(s.n)}


def capability_note(results: Mapping[str, Any] | None) -> str:
    """The caption of Table 2: the scoring, the subset sizes and the verdict per benchmark (05_capability)."""
    if results is None:
        return "**Table 2.** Capability: **not run** (05_capability has written no results.json)."
    settings = results.get("settings", {})
    questions = ", ".join(f"{bench} {n}" for bench, n in settings.get("questions", {}).items())
    xstest = settings.get("xstest", {})
    verdict = results.get("verdict", {})
    verdicts = "; ".join(f"{name}: {claim['verdict']}" for name, claim in verdict.get("measures", {}).items())
    return (f"**Table 2.** Capability of the base and the ES2 model. Multiple choice scored zero-shot by the "
            f"log-likelihood of the option letter after {settings.get('answer_prefix', '?')!r} ({questions or '?'} "
            f"questions; chance is printed with each accuracy); beside accuracy the mean log-probability of the "
            f"correct option and the Brier score, both over the option letters' renormalised probabilities (they move "
            f"before accuracy does); XSTest over-refusal = share of {xstest.get('safe', '?')} safe prompts refused "
            f"(keyword judge {settings.get('judge', '?')!r})"
            + "".join(f", {name} over-refusal on {n} harmless look-alikes"
                      for name, n in settings.get("over_refusal_sets", {}).items())
            + "".join(f"; NLL per token of {n} {name} reference responses (their first "
                      f"{settings.get('reference_max_tokens', '?')} tokens)" for name, n in settings.get("reference", {}).items())
            + f"; harmless KL(base ‖ ES2) in nats per token over the "
            f"responses to {settings.get('harmless_prompts', '?')} held-out harmless prompts. ES2 − base is a paired "
            f"bootstrap interval (accuracy: exact McNemar p in results.json). \"Comparable capability\" (ES2 at most "
            f"{settings.get('margin', '?')} below base on each benchmark and at most "
            f"{settings.get('over_refusal_margin', '?')} more over-refusal on each set"
            + (f", reference NLL at most {settings['reference_nll_margin']} nats per token higher"
               if settings.get("reference") else "") + f"): **{verdict.get('verdict', '?')}** "
            f"({verdicts or '?'}).")


def capability_table(rows: Sequence[Mapping[str, Any]] | None, digits: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2, capability of base and ES2: (numbers for CSV, formatted cells for Markdown).

    `rows` are {measure, base, es2, difference} with each cell an interval dict, a bare {"value"} or None
    (plots.capability.headline); None when the capability stage has not run: the measures of CAPABILITY_MEASURES
    are then listed as "not run"."""
    if rows is None:
        numbers = pd.DataFrame({"measure": CAPABILITY_MEASURES, "status": NOT_RUN})
        shown = pd.DataFrame({"measure": CAPABILITY_MEASURES, "base": NOT_RUN, "ES2": NOT_RUN, "ES2 − base": "–"})
        return numbers, shown
    numbers = pd.DataFrame([{"measure": r["measure"], "status": "ok",
                             **{k: v for col in ("base", "es2", "difference") for k, v in rate_columns(col, r[col]).items()}}
                            for r in rows])
    shown = pd.DataFrame([{"measure": r["measure"], "base": fmt_rate(r["base"], digits), "ES2": fmt_rate(r["es2"], digits),
                           "ES2 − base": fmt_rate(r["difference"], digits)} for r in rows])
    return numbers, shown


def _rate_header(key: str, n: int) -> str:
    """'dsr_malicious_instruct' -> 'no-attack DSR, malicious_instruct (n = 100)'; over-refusal likewise; a key
    ending in '_jbb' (the JailbreakBench keyword judge) gets ', JBB judge'."""
    kind, name = ("no-attack DSR", key[4:]) if key.startswith("dsr_") else ("over-refusal", key[len("over_refusal_"):])
    name, jbb = (name[:-4], True) if name.endswith("_jbb") else (name, False)
    return f"{kind}, {name}{', JBB judge' * jbb} (n = {n})"


def arms_frame(table: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> pd.DataFrame:
    """Stage 02's arms table, one formatted row per training in `names` (keys of `table`, `separation.arm_row`
    rows): its layers, each DSR and over-refusal rate with its exact interval and n, harmless refusal and
    coherence, the held-out harmless KL and the steps kept."""
    rates = [key for key, value in table[names[0]].items() if key.startswith(("dsr_", "over_refusal_"))]
    rows = []
    for name in names:
        row = table[name]
        rows.append({"model": model_label(name), "layers": ", ".join(map(str, row.get("layers", []))) or "–",
                     **{_rate_header(key, row[key]["n"]): fmt_rate(row[key]) for key in rates},
                     "harmless refused (Alpaca eval)": fmt_rate(row["harmless_refused"]),
                     "harmless responses incoherent": fmt_rate(row["harmless_incoherent"]),
                     "harmless response ppl (median, base)": fmt_number(row["harmless_base_ppl_median"]),
                     "harmful responses incoherent": fmt_rate(row["harmful_incoherent"]),
                     "held-out harmless KL": fmt_number(row.get("heldout_kl"), 4),
                     "steps kept": "–" if "steps" not in row else f"{row['steps']}" + " (KL stop)" * bool(row["stopped"])})
    return pd.DataFrame(rows)


def spread_frame(spread: Mapping[str, Mapping[str, Mapping[str, float]]]) -> pd.DataFrame:
    """`separation.seed_spread` as a table: per arm and measure, mean ± sd and [min, max] over n seeds."""
    return pd.DataFrame([{"arm": model_label(arm), "measure": measure, "n seeds": s["n"],
                          "mean ± sd": f"{s['mean']:.3f} ± {s['sd']:.3f}", "min – max": f"{s['min']:.3f} – {s['max']:.3f}"}
                         for arm, by_measure in spread.items() for measure, s in by_measure.items()])
