import json

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


def test_manifest_and_stage_skip_rule(tiny_params):
    run = runs.Run(tiny_params)
    key = runs.stage_key({"n_eval": 4}, ["abc"])
    assert not run.is_current("01_probing", key)
    run.record_stage("01_probing", key, wall_s=1.5)
    assert run.is_current("01_probing", key)
    assert not run.is_current("01_probing", runs.stage_key({"n_eval": 5}, ["abc"]))
    assert not run.is_current("01_probing", runs.stage_key({"n_eval": 4}, ["abd"]))
    manifest = json.loads((run.dir / "manifest.json").read_text())
    assert manifest["params"]["name"] == "test" and manifest["seed"] == tiny_params.seed
    assert manifest["environment"]["packages"]["torch"].startswith("2.13")
    assert manifest["stages"]["01_probing"]["wall_s"] == 1.5


def test_failed_stage_is_not_current(tiny_params):
    run = runs.Run(tiny_params)
    run.record_stage("02", "k", wall_s=1.0, status="failed")
    assert not run.is_current("02", "k")


def test_hash_files_changes_with_content(tmp_path):
    (tmp_path / "a.txt").write_text("1")
    before = runs.hash_files([tmp_path])
    (tmp_path / "a.txt").write_text("2")
    assert runs.hash_files([tmp_path]) != before


def test_atomic_dir_keeps_the_old_folder_when_the_block_fails(tmp_path):
    target = tmp_path / "out"
    with runs.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with runs.atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("second")
            raise RuntimeError("crash")
    assert (target / "a.txt").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
