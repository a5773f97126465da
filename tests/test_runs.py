import json
import os
import stat

import pytest
import torch

from es2_lib import runs


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    runs.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with runs.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_json_jsonl_and_tensors_round_trip(tmp_path):
    runs.write_jsonl(tmp_path / "r.jsonl", [{"x": 1}, {"x": torch.tensor(2.0)}])
    assert runs.read_jsonl(tmp_path / "r.jsonl") == [{"x": 1}, {"x": 2.0}]
    runs.write_tensors(tmp_path / "t.safetensors", {"w": torch.arange(3.0)})
    assert torch.equal(runs.read_tensors(tmp_path / "t.safetensors")["w"], torch.arange(3.0))
    runs.write_json(tmp_path / "r.json", {"x": [1, 2]})
    assert runs.read_result(tmp_path / "r.json") == {"x": [1, 2]}
    assert runs.read_result(tmp_path / "r.jsonl") == [{"x": 1}, {"x": 2.0}]
    assert runs.read_result(tmp_path / "absent.json") is None  # a stage that has not run


def test_manifest_records_each_stage_with_its_own_params(tiny_params):
    run = runs.Run(tiny_params)
    run.record_stage("01_probing", "k1", wall_s=1.5, params={"n_eval": 4})
    run.record_stage("02_es2_training", "k2", wall_s=2.0, status="failed", params={"n_eval": 5})
    run.record_stage("02_es2_training", "k2", wall_s=3.0)  # a record without params keeps the stage's last ones
    manifest = json.loads((run.dir / "manifest.json").read_text())
    assert "params" not in manifest and manifest["environment"]["packages"]["torch"].startswith("2.13")
    assert manifest["stages"]["01_probing"] | {"finished": 0} == {"key": "k1", "status": "done", "wall_s": 1.5,
                                                                  "finished": 0, "params": {"n_eval": 4}}
    assert run.stage_params("02_es2_training") == {"n_eval": 5} and run.stage_params("03_x") == {}


def test_results_are_written_with_the_normal_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        runs.write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644


def test_a_second_holder_of_a_run_folder_is_refused(tiny_params):
    run = runs.Run(tiny_params)
    with run.lock():
        with pytest.raises(runs.RunLocked, match=rf"run 'test' .* is in use by another pipeline \(pid {os.getpid()}"):
            with runs.Run(tiny_params).lock():
                pass
    with run.lock():  # released
        pass


def test_hash_files_changes_with_content_and_caches_by_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("ES2_RUNS_DIR", str(tmp_path / "runs"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("1")
    before = runs.hash_files([tmp_path / "d"])
    cache = runs.read_json(tmp_path / "runs" / ".file_hashes.json")
    assert list(cache) == [str((tmp_path / "d" / "a.txt").resolve())]
    assert runs.hash_files([tmp_path / "d"]) == before
    mtime = (tmp_path / "d" / "a.txt").stat().st_mtime_ns
    (tmp_path / "d" / "a.txt").write_text("2")  # same size, a later mtime (set: file systems tick in ms): read again
    os.utime(tmp_path / "d" / "a.txt", ns=(mtime + 10**7, mtime + 10**7))
    assert runs.hash_files([tmp_path / "d"]) != before


def test_atomic_dir_keeps_the_old_folder_when_the_block_fails(tmp_path):
    target = tmp_path / "out"
    with runs.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with runs.atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("second")
            raise RuntimeError("crash")
    assert (target / "a.txt").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
