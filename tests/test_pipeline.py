"""The one-command pipeline: skip rule, resume, failure reporting, published-notebook cleaning, and
the whole pipeline on params/smoke.yaml through the same entry command as README and the Docker image."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from es2_lib import params, pipeline, runs

ROOT = Path(__file__).resolve().parents[1]


def _notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbformat.v4.new_code_cell('name: str = "default"  # run name\nn_eval: int = 24  # prompts')
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# stage"), p, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


@pytest.fixture
def fake_stages(tmp_path, monkeypatch):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    monkeypatch.setattr(pipeline, "NOTEBOOKS", nbdir)
    monkeypatch.setenv("ES2_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("ES2_FIGURES_DIR", str(tmp_path / "figures"))
    marker = tmp_path / "count.txt"
    body = f"import sys\nwith open({str(marker)!r}, 'a') as f: f.write('x')\nprint('step\\rstep 2\\rdone')"
    _notebook(nbdir / "01_a.ipynb", body)
    _notebook(nbdir / "02_b.ipynb", body)
    return nbdir, marker


def test_second_run_skips_and_param_change_reruns(fake_stages):
    nbdir, marker = fake_stages
    p = params.from_mapping({"name": "t", "model": "tiny"})
    assert pipeline.run_pipeline(p) == {"01_a": "ran", "02_b": "ran"}
    assert pipeline.run_pipeline(p) == {"01_a": "skipped", "02_b": "skipped"}
    assert marker.read_text() == "xx"
    # a key the notebooks declare reruns both (02 reads 01); a key they do not declare reruns nothing
    assert pipeline.run_pipeline(p.replace(n_eval=5)) == {"01_a": "ran", "02_b": "ran"}
    assert pipeline.run_pipeline(p.replace(n_eval=5, seed=9)) == {"01_a": "skipped", "02_b": "skipped"}
    manifest = runs.Run(p).manifest()
    assert manifest["stages"]["02_b"]["status"] == "done" and manifest["stages"]["02_b"]["wall_s"] > 0
    assert (runs.figures_root() / "t" / "timings.md").read_text().count("| 0") == 2


def test_failing_stage_is_named_kept_and_resumed(fake_stages):
    nbdir, marker = fake_stages
    _notebook(nbdir / "02_b.ipynb", "raise ValueError('boom')")
    p = params.from_mapping({"name": "t", "model": "tiny"})
    with pytest.raises(pipeline.StageFailed, match=r"(?s)stage 02_b failed.*ValueError: boom.*partly executed"):
        pipeline.run_pipeline(p)
    run = runs.Run(p)
    assert run.manifest()["stages"]["02_b"]["status"] == "failed"
    assert (run.dir / "notebooks" / "02_b.ipynb").exists()
    _notebook(nbdir / "02_b.ipynb", "print('fixed')")
    assert pipeline.run_pipeline(p) == {"01_a": "skipped", "02_b": "ran"}


def test_published_notebook_is_clean_and_does_not_change_the_key(fake_stages):
    nbdir, _ = fake_stages
    p = params.from_mapping({"name": "t", "model": "tiny"})
    pipeline.run_pipeline(p, publish=True)
    nb = nbformat.read(nbdir / "01_a.ipynb", as_version=4)
    assert "papermill" not in nb.metadata and all("papermill" not in c.metadata for c in nb.cells)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "done" in text and "\r" not in text and "step 2" not in text
    assert pipeline.run_pipeline(p) == {"01_a": "skipped", "02_b": "skipped"}


def test_unknown_notebook_parameter_is_an_error(fake_stages):
    nbdir, _ = fake_stages
    nb = nbformat.read(nbdir / "01_a.ipynb", as_version=4)
    nb.cells[1].source += "\nnot_a_key: int = 1  # oops"
    nbformat.write(nb, nbdir / "01_a.ipynb")
    with pytest.raises(pipeline.StageFailed, match="not_a_key"):
        pipeline.run_pipeline(params.from_mapping({"name": "t"}))


def test_bad_params_file_is_a_clear_cli_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_eval: many\n")
    out = subprocess.run([sys.executable, "-m", "es2_lib", "run", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1 and "key 'n_eval' expects int" in out.stderr


def test_every_notebook_declares_only_params_keys():
    p = params.Params()
    for notebook in pipeline.stages():
        pipeline.declared_params(notebook, p)  # raises on an unknown key


def test_smoke_pipeline_end_to_end(tmp_path):
    """Every notebook on params/smoke.yaml through the README/Docker entry command; then a rerun skips all."""
    env = {**os.environ, "ES2_RUNS_DIR": str(tmp_path / "runs"), "ES2_FIGURES_DIR": str(tmp_path / "figures"),
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "es2_lib", "run", str(ROOT / "params" / "smoke.yaml")]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = tmp_path / "runs" / "smoke"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    names = [nb.stem for nb in pipeline.stages()]
    assert all(manifest["stages"][s]["status"] == "done" for s in names)
    check_stage_results(run_dir, tmp_path / "figures" / "smoke")
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert second.returncode == 0 and second.stdout.count("up to date, skipped") == len(names)


def check_stage_results(run_dir: Path, figures_dir: Path) -> None:
    """Assert on what each stage wrote (not just that it ran)."""
    assert (figures_dir / "timings.md").exists()
