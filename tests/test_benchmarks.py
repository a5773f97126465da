"""Benchmark readers and subsets (es2_lib/benchmarks.py): MMLU-Pro, GPQA (seeded shuffle, secrecy), subsets."""

from __future__ import annotations

import builtins
import gzip
import io
import json
import os
import subprocess

import pytest

from es2_lib import benchmarks
from es2_lib.benchmarks import BenchmarkError, Question
from es2_lib.runs import ROOT


def _write_jsonl_gz(path, records):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def test_mmlu_pro_reader_and_clear_errors(tmp_path):
    good = {"question_id": 7, "question": "Q?", "options": ["a", "b", "c"], "answer": "C", "category": "math"}
    _write_jsonl_gz(tmp_path / "ok.jsonl.gz", [good])
    (q,) = benchmarks.load_mmlu_pro(tmp_path / "ok.jsonl.gz")
    assert (q.id, q.category, q.options, q.answer) == ("7", "math", ("a", "b", "c"), 2)
    missing = {k: v for k, v in good.items() if k != "answer"}
    _write_jsonl_gz(tmp_path / "bad.jsonl.gz", [good, {**missing, "question_id": 8}])
    with pytest.raises(BenchmarkError, match=r"line 2 \(question_id 8\): missing field 'answer'"):
        benchmarks.load_mmlu_pro(tmp_path / "bad.jsonl.gz")
    with pytest.raises(BenchmarkError, match=r"answer 'D' is not one of the letters ABC"):
        benchmarks.mmlu_pro_question({**good, "answer": "D"})
    with pytest.raises(BenchmarkError, match="missing field 'options'"):
        benchmarks.mmlu_pro_question({**good, "options": []})
    with pytest.raises(BenchmarkError, match="not found"):
        benchmarks.load_mmlu_pro(tmp_path / "absent.jsonl.gz")


def test_arc_and_mmlu_readers_and_clear_errors(tmp_path):
    arc = {"id": "Q1", "question": "Which?", "options": [{"label": "A", "text": "x"}, {"label": "B", "text": "y"},
                                                          {"label": "C", "text": "z"}], "answer": "B"}
    (tmp_path / "arc.jsonl").write_text(json.dumps(arc) + "\n\n" + json.dumps({**arc, "id": "Q2", "answer": "E"}) + "\n")
    with pytest.raises(BenchmarkError, match=r"arc\.jsonl: line 3 \(id Q2\): answer 'E' is not one of the option labels"):
        benchmarks.load_arc_challenge(tmp_path / "arc.jsonl")
    q = benchmarks.arc_question(arc)
    assert (q.id, q.category, q.options, q.answer) == ("Q1", "science", ("x", "y", "z"), 1)
    questions = benchmarks.load_arc_challenge()
    assert len(questions) == 1172 and {len(q.options) for q in questions} == {3, 4, 5}
    (tmp_path / "mmlu").mkdir()
    (tmp_path / "mmlu" / "high_school_physics_test.csv").write_text(
        'question,choice0,choice1,choice2,choice3,answer\n"What, then?",a,b,c,d,3\n')
    (q,) = benchmarks.load_mmlu(tmp_path / "mmlu")
    assert (q.category, q.question, q.options, q.answer) == ("high school physics", "What, then?", ("a", "b", "c", "d"), 3)
    (tmp_path / "mmlu" / "law_test.csv").write_text("q,a,b,c,d,answer\nx,a,b,c,d,0\n")
    with pytest.raises(BenchmarkError, match=r"law_test\.csv: expected the header question,choice0"):
        benchmarks.load_mmlu(tmp_path / "mmlu")
    mmlu = benchmarks.load_mmlu()
    assert len(mmlu) == 14042 and len({q.category for q in mmlu}) == 57
    assert len(benchmarks.stratified_subset(mmlu, 2, 0)) == 114


GPQA_RECORD = {"Record ID": "r1", "Question": "Q?", "Correct Answer": "right", "Incorrect Answer 1": "w1",
               "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3", "High-level domain": "Physics"}


def test_gpqa_record_shuffle_is_seeded_and_keeps_the_answer():
    positions = set()
    for rid in range(20):
        q = benchmarks.gpqa_question({**GPQA_RECORD, "Record ID": f"r{rid}"}, seed=0)
        assert q.options[q.answer] == "right" and sorted(q.options) == ["right", "w1", "w2", "w3"]
        assert q == benchmarks.gpqa_question({**GPQA_RECORD, "Record ID": f"r{rid}"}, seed=0)
        positions.add(q.answer)
    assert positions == {0, 1, 2, 3}
    with pytest.raises(BenchmarkError, match=r"Record ID r1\): missing field 'Correct Answer'"):
        benchmarks.gpqa_question({**GPQA_RECORD, "Correct Answer": ""}, seed=0)
    assert "Q?" not in repr(benchmarks.gpqa_question(GPQA_RECORD, seed=0))


def _commit_candidates() -> list[str]:
    """Every file git would show or commit: tracked plus untracked-and-not-ignored."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True)
    return [name for name in out.stdout.decode().split("\0") if name and (ROOT / name).is_file()]


def test_gpqa_reader_writes_nothing_and_no_repo_file_holds_a_question(monkeypatch):
    writes = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            writes.append(file)
        return real_open(file, mode, *args, **kwargs)

    def spy_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            writes.append(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(io, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    questions = benchmarks.load_gpqa()
    monkeypatch.undo()
    assert len(questions) == 198 and writes == []
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    needles = [" ".join(q.question.split()[:8]) for q in questions[::20]]  # 10 questions, first 8 words each
    leaks = [name for name in _commit_candidates()
             if any(n in (ROOT / name).read_bytes().decode("utf-8", "ignore") for n in needles)]
    assert leaks == [], f"GPQA question text in files git could commit: {leaks}"


def test_subsets_are_seeded_stratified_and_ordered():
    qs = [Question(str(i), "ab"[i % 2], "q", ("x", "y"), 0) for i in range(20)]
    picked = benchmarks.stratified_subset(qs, 3, seed=0)
    assert [q.category for q in picked].count("a") == 3 and [q.category for q in picked].count("b") == 3
    assert picked == benchmarks.stratified_subset(qs, 3, seed=0) != benchmarks.stratified_subset(qs, 3, seed=1)
    assert [int(q.id) for q in picked] == sorted(int(q.id) for q in picked)
    assert benchmarks.stratified_subset(qs, 0, seed=0) == qs == benchmarks.subset(qs, 50, seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        benchmarks.subset(qs, -1, seed=0)
