"""The one-command pipeline: skip rule, resume, failure reporting, published-notebook cleaning, and
the whole pipeline on params/smoke.yaml through the same entry command as README and the Docker image."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest

from es2_lib import __main__ as cli
from es2_lib import data, params, pipeline, plots, runs, stages
from es2_lib.results import read_attack_results

ROOT = Path(__file__).resolve().parents[1]


def _notebook(path: Path, body: str, declares: str = "n_eval: int = 24  # prompts") -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbformat.v4.new_code_cell(f'name: str = "default"  # run name\n{declares}')
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# stage"), p, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


@pytest.fixture
def fake_stages(tmp_path, monkeypatch):
    """A registry of two stages, 02_b reading 01_a, with their notebooks in a scratch folder."""
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    registry = {s.name: s for s in (stages.Stage("01_a"), stages.Stage("02_b", reads=("01_a",)))}
    monkeypatch.setattr(stages, "STAGES", registry)
    monkeypatch.setattr(stages.Stage, "notebook", property(lambda stage: nbdir / f"{stage.name}.ipynb"))
    monkeypatch.setenv("ES2_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("ES2_FIGURES_DIR", str(tmp_path / "figures"))
    marker = tmp_path / "count.txt"
    body = (f"import sys\nwith open({str(marker)!r}, 'a') as f: f.write('x')\nprint('step\\rstep 2\\rdone')\n"
            f"print({str(ROOT / 'es2_lib' / 'x.py')!r})")
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
    assert pipeline.run_pipeline(p.replace(n_eval=30)) == {"01_a": "ran", "02_b": "ran"}
    assert pipeline.run_pipeline(p.replace(n_eval=30, seed=9)) == {"01_a": "skipped", "02_b": "skipped"}
    manifest = runs.Run(p).manifest()
    assert manifest["stages"]["02_b"]["status"] == "done" and manifest["stages"]["02_b"]["wall_s"] > 0
    assert (runs.figures_root() / "t" / "timings.md").read_text().count("| 0") == 2


def test_a_stage_key_covers_the_stages_it_reads_and_no_others(fake_stages):
    """A change upstream reruns the stages whose registry entry reads it (also as optional), not the others."""
    nbdir, _ = fake_stages
    for name in ("01_a", "02_b", "03_c", "04_d"):
        _notebook(nbdir / f"{name}.ipynb", "print('ok')", declares="n_eval: int = 24" if name == "01_a" else "")
    stages.STAGES.update({"03_c": stages.Stage("03_c"), "04_d": stages.Stage("04_d", optional=("02_b",))})
    p = params.from_mapping({"name": "t", "model": "tiny"})
    assert set(pipeline.run_pipeline(p).values()) == {"ran"}
    assert pipeline.run_pipeline(p.replace(n_eval=30)) == {"01_a": "ran", "02_b": "ran", "03_c": "skipped",
                                                          "04_d": "ran"}
    with pytest.raises(pipeline.StageFailed, match="unknown stage.*03_x; the stages are 01_a, 02_b, 03_c, 04_d"):
        pipeline.run_pipeline(p, only=["03_x"])


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


def _ran(outcome: dict) -> list[str]:
    return [name for name, what in outcome.items() if what == "ran"]


def test_an_edited_user_prompt_file_reruns_its_stage_and_its_dependants(fake_stages, tmp_path):
    nbdir, _ = fake_stages
    _notebook(nbdir / "01_a.ipynb", "print('ok')", declares='harmful_prompts: str = "advbench"  # set')
    prompts = tmp_path / "mine.csv"
    prompts.write_text("prompt\nfirst\n")
    p = params.from_mapping({"name": "t", "model": "tiny", "harmful_prompts": str(prompts)})
    assert _ran(pipeline.run_pipeline(p)) == ["01_a", "02_b"]
    assert _ran(pipeline.run_pipeline(p)) == []
    prompts.write_text("prompt\nsecond\n")  # edited in place, same name and size
    assert _ran(pipeline.run_pipeline(p)) == ["01_a", "02_b"]
    prompts.unlink()
    with pytest.raises(data.DataError, match="mine.csv: prompt file not found"):
        pipeline.run_pipeline(p)


def test_a_local_model_folder_is_part_of_the_key(fake_stages, tmp_path):
    nbdir, _ = fake_stages
    _notebook(nbdir / "01_a.ipynb", "print('ok')", declares='model: str = "embedded"  # set')
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    p = params.from_mapping({"name": "t", "model": f"random:{folder}"})
    assert _ran(pipeline.run_pipeline(p)) == ["01_a", "02_b"]
    (folder / "config.json").write_text('{"hidden_size": 8}')
    assert _ran(pipeline.run_pipeline(p)) == ["01_a", "02_b"]


def test_a_deleted_output_reruns_its_stage(fake_stages):
    nbdir, _ = fake_stages
    stages.STAGES["01_a"] = stages.Stage("01_a", writes=("out.txt",))
    _notebook(nbdir / "01_a.ipynb", "from es2_lib import params, runs\n"
              "(runs.Run(params.from_mapping({'name': name})).dir / '01_a').mkdir(exist_ok=True)\n"
              "(runs.Run(params.from_mapping({'name': name})).dir / '01_a' / 'out.txt').write_text('x')")
    p = params.from_mapping({"name": "t", "model": "tiny"})
    pipeline.run_pipeline(p)
    (runs.Run(p).dir / "01_a" / "out.txt").unlink()
    assert _ran(pipeline.run_pipeline(p)) == ["01_a", "02_b"]


def test_only_reruns_the_stale_upstream_it_needs_first(fake_stages, capsys):
    """`--only 02_b` after n_eval changed: 01_a (stale) runs first, then 02_b; the manifest keeps each stage's
    own params. A stage left `running` (killed) is stale too."""
    p = params.from_mapping({"name": "t", "model": "tiny"})
    pipeline.run_pipeline(p)
    assert _ran(pipeline.run_pipeline(p.replace(n_eval=30), only=["02_b"])) == ["01_a", "02_b"]
    assert "[01_a] running (stage 1 of 2): its inputs changed, and 02_b needs it" in capsys.readouterr().out
    run = runs.Run(p)
    assert run.stage_params("01_a") == {"name": "t", "n_eval": 30}
    run.record_stage("01_a", run.manifest()["stages"]["01_a"]["key"], 0.0, status="running")  # as after kill -9
    assert _ran(pipeline.run_pipeline(p.replace(n_eval=30), only=["02_b"])) == ["01_a", "02_b"]  # 01_a's new run
    assert pipeline.run_pipeline(p.replace(n_eval=30), only=["02_b"]) == {"02_b": "skipped"}


def test_only_reruns_a_stale_optional_upstream_that_has_run(fake_stages):
    """The figures stage reads the others as optional: one that has run must be current before it draws."""
    nbdir, _ = fake_stages
    _notebook(nbdir / "03_fig.ipynb", "print('drawn')", declares="")
    stages.STAGES["03_fig"] = stages.Stage("03_fig", optional=("01_a", "02_b"))
    p = params.from_mapping({"name": "t", "model": "tiny"})
    pipeline.run_pipeline(p, only=["01_a"])
    assert _ran(pipeline.run_pipeline(p, only=["03_fig"])) == ["03_fig"]  # 02_b never ran: not needed
    assert _ran(pipeline.run_pipeline(p.replace(n_eval=31), only=["03_fig"])) == ["01_a", "03_fig"]


def test_a_second_pipeline_on_the_same_run_is_refused(fake_stages):
    p = params.from_mapping({"name": "t", "model": "tiny"})
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               f"f = open({str(runs.Run(p).dir / '.lock')!r}, 'a+')\n"
                               "fcntl.flock(f, fcntl.LOCK_EX); f.write('pid held by test'); f.flush()\n"
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(runs.RunLocked, match=r"run 't' .* is in use by another pipeline \(pid held by test\)"):
            pipeline.run_pipeline(p)
    finally:
        holder.kill()
        holder.wait()
    assert _ran(pipeline.run_pipeline(p)) == ["01_a", "02_b"]


def test_ctrl_c_names_the_stage_and_the_rerun_resumes_there(fake_stages, monkeypatch, capsys):
    p = params.from_mapping({"name": "t", "model": "tiny"})
    pipeline.run_pipeline(p, only=["01_a"])

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(papermill, "execute_notebook", interrupt)
        with pytest.raises(pipeline.StageInterrupted, match=r"interrupted in stage 02_b .* resume at 02_b"):
            pipeline.run_pipeline(p)
        patched.setattr(pipeline, "run_pipeline", interrupt)
        assert cli.main(["run", str(ROOT / "params" / "smoke.yaml")]) == 130
    assert "every finished stage is kept" in capsys.readouterr().err
    assert runs.Run(p).manifest()["stages"]["02_b"]["status"] == "interrupted"
    assert _ran(pipeline.run_pipeline(p)) == ["02_b"]


def test_a_real_ctrl_c_stops_the_kernel_cleanly(tmp_path):
    """SIGINT to the pipeline's process group, as a terminal sends it, while a stage's cell runs: the kernel's
    cell is interrupted, the pipeline exits 130 naming the stage, and no traceback reaches the terminal."""
    started = tmp_path / "started"
    _notebook(tmp_path / "01_slow.ipynb",
              f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\ntime.sleep(120)")
    script = (f"from es2_lib import __main__ as cli, stages\n"
              f"stages.STAGES = {{'01_slow': stages.Stage('01_slow')}}\n"
              f"folder = __import__('pathlib').Path({str(tmp_path)!r})\n"
              f"stages.Stage.notebook = property(lambda s: folder / f'{{s.name}}.ipynb')\n"
              f"raise SystemExit(cli.main(['run', {str(ROOT / 'params' / 'smoke.yaml')!r}]))")
    env = {**os.environ, "ES2_RUNS_DIR": str(tmp_path / "runs"), "ES2_FIGURES_DIR": str(tmp_path / "figures")}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        for _ in range(600):
            if started.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out + err
    assert "stopped: interrupted in stage 01_slow" in err and "resume at 01_slow" in err
    assert "Traceback" not in err
    assert json.loads((tmp_path / "runs" / "smoke" / "manifest.json").read_text())["stages"]["01_slow"]["status"] == \
        "interrupted"


def test_the_network_guard_refuses_and_records_a_request(tmp_path):
    """The guard of the end-to-end test can fail: a lookup of a hub host is refused and logged."""
    env = {**os.environ, "ES2_NET_LOG": str(tmp_path / "network.log"), "PYTHONPATH": str(ROOT / "tests" / "net_guard")}
    code = "import socket\ntry: socket.getaddrinfo('huggingface.co', 443)\nexcept OSError: print('refused')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "refused" and "getaddrinfo huggingface.co" in (tmp_path / "network.log").read_text()


def test_published_notebook_is_clean_and_does_not_change_the_key(fake_stages):
    nbdir, _ = fake_stages
    p = params.from_mapping({"name": "t", "model": "tiny"})
    pipeline.run_pipeline(p, publish=True)
    nb = nbformat.read(nbdir / "01_a.ipynb", as_version=4)
    assert "papermill" not in nb.metadata and all("papermill" not in c.metadata for c in nb.cells)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "done" in text and "\r" not in text and "step 2" not in text
    assert "./es2_lib/x.py" in text and str(ROOT) not in text
    assert pipeline.run_pipeline(p) == {"01_a": "skipped", "02_b": "skipped"}


def test_library_files_follow_imports():
    """A stage's key covers the library modules it runs, also through relative imports, and no others."""
    probing, prompt_attacks, figures = (
        {str(f.relative_to(ROOT)) for f in pipeline.library_files(ROOT / "notebooks" / nb)}
        for nb in ("01_probing.ipynb", "04_prompt_attacks.ipynb", "06_figures.ipynb"))
    assert {"es2_lib/__init__.py", "es2_lib/probes.py", "es2_lib/representations.py"} <= probing
    assert "es2_lib/attacks/gcg.py" not in probing and "es2_lib/pipeline.py" not in probing
    # 04 imports gcg, which imports ..generation and ..judges relatively
    assert {"es2_lib/attacks/__init__.py", "es2_lib/attacks/gcg.py", "es2_lib/generation.py",
            "es2_lib/judges.py"} <= prompt_attacks
    # 06 imports plots.figures and plots.tables, which import the package, results and stages
    assert {"es2_lib/plots/__init__.py", "es2_lib/plots/figures.py", "es2_lib/plots/tables.py", "es2_lib/results.py",
            "es2_lib/stages.py"} <= figures and "es2_lib/attacks/gcg.py" not in figures


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


def test_registry_holds_every_notebook_and_the_figures_stage_runs_last():
    names = list(stages.STAGES)
    assert sorted(names) == sorted(nb.stem for nb in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert names[-1] == "06_figures" and names[:-1] == sorted(names[:-1]) and "08_srr" in names
    for i, stage in enumerate(stages.STAGES.values()):  # a stage reads only stages that run before it
        assert set(stage.reads + stage.optional) <= set(names[:i]), stage.name
    assert set(stages.STAGES["06_figures"].optional) == set(names[:-1])  # the figures stage reads them all


def test_every_notebook_declares_only_params_keys():
    p = params.Params()
    for stage in stages.STAGES.values():
        pipeline.declared_params(stage.notebook, p)  # raises on an unknown key


def test_smoke_pipeline_end_to_end(tmp_path):
    """Every notebook on params/smoke.yaml through the README/Docker entry command, with no offline switch set by
    the caller and every request off the machine refused and logged (tests/net_guard); then a rerun skips all."""
    env = {k: v for k, v in os.environ.items() if k not in pipeline.OFFLINE} | {
        "ES2_RUNS_DIR": str(tmp_path / "runs"), "ES2_FIGURES_DIR": str(tmp_path / "figures"),
        "ES2_NET_LOG": str(tmp_path / "network.log"),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "net_guard"),
                                       *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "es2_lib", "run", str(ROOT / "params" / "smoke.yaml")]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert not (tmp_path / "network.log").exists(), (tmp_path / "network.log").read_text()
    run_dir = tmp_path / "runs" / "smoke"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    names = list(stages.STAGES)
    assert all(manifest["stages"][s]["status"] == "done" for s in names)
    check_stage_results(run_dir, tmp_path / "figures" / "smoke")
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert second.returncode == 0 and second.stdout.count("up to date, skipped") == len(names)


def check_stage_results(run_dir: Path, figures_dir: Path) -> None:
    """Assert on what each stage wrote (not just that it ran)."""
    smoke = params.load(ROOT / "params" / "smoke.yaml")
    read = lambda *parts: json.loads(run_dir.joinpath(*parts).read_text())  # noqa: E731
    layers = read("01_probing", "layers.json")
    assert layers["es2_layers"] and all(0 <= layer <= 4 for layer in layers["es2_layers"])
    assert len(layers["accuracy"]) == 5  # layers 0..4 of the tiny model
    assert (run_dir / "02_es2_training" / "adapter" / "adapter_config.json").exists()
    no_attack, _ = read_attack_results(run_dir / "02_es2_training" / "no_attack.json")
    assert {(e.model, e.attack): e.summary.n for e in no_attack} == {("base", "none"): smoke.n_eval,
                                                                     ("es2", "none"): smoke.n_eval}
    assert len(runs.read_jsonl(run_dir / "02_es2_training" / "log.jsonl")) >= 1
    embedding, _ = read_attack_results(run_dir / "03_embedding_attacks" / "results.json")
    for model in ("base", *smoke.attacked_arms):  # every attacked arm of 02 beside base
        assert {"repe", "soft_prompt", "scav"} <= {e.attack for e in embedding if e.model == model}
    assert all(0 <= e.summary.dsr.value <= 1 for e in embedding)
    assert all(len(e.sweep) == len(smoke.repe_coeffs) for e in embedding if e.attack == "repe")  # kept beside it
    prompt, _ = read_attack_results(run_dir / "04_prompt_attacks" / "results.json")
    assert {(e.model, e.attack) for e in prompt} >= {(m, a) for m in ("base", *smoke.attacked_arms)
                                                     for a in ("gcg", "autodan")}
    capability = read("05_capability", "results.json")
    assert {"mmlu_pro", "gpqa", "xstest", "harmless"} <= set(capability["base"]) and "difference" in capability
    assert list(capability["arms"]) == smoke.attacked_arms
    assert set(capability["base"]["reference"]) == set(smoke.reference_sets)  # NLL of reference responses per set
    assert {"i_physical_safety_safe_over_refusal", "alpaca_reference_nll"} <= set(capability["verdict"]["measures"])
    subspaces = read("07_safety_subspaces", "results.json")
    assert subspaces["weight_mso"] and subspaces["sample_sizes"]["dsr_prompts"] > 0
    assert {(r["arm"], r["attack"]) for r in subspaces["survival"]} == {  # each arm before vs after a benign FT
        ("base + harmful FT (check)", "no attack"),
        *((plots.model_label(m), a) for m in smoke.attacked_arms for a in ("no attack", "SCAV"))}
    assert set(subspaces["benign"]) == {"base", *smoke.attacked_arms, *(f"{m}+benign" for m in smoke.attacked_arms)}
    srr = read("08_srr", "results.json")
    assert list(srr["models"]) == ["base", *smoke.attacked_arms]  # SRR on top of each arm
    assert "paired" in srr and all("p_holm" in r for r in srr["paired"])  # SRR against each baseline, Holm
    assert srr["settings"]["prompts"]["base"]["malicious_instruct"]["used"] == smoke.srr_n_per_source  # a bundled OOD set
    breaking = read("09_breaking_budgets", "results.json")  # every attack's breaking budgets per model, paired
    assert {(r["attack"], r["arm"]) for r in breaking["paired"]} == {
        (a, plots.model_label(m)) for a in ("RepE (band)", "RepE (ES2 layers)", "SCAV", "Soft prompt (L2 ball)")
        for m in smoke.attacked_arms}  # the smoke profile sets breaking_soft_radii
    assert all(r["n"] == min(smoke.breaking_n, smoke.n_eval) for r in breaking["paired"])
    for by_attack in breaking["found"].values():
        assert all(k is None or 0 <= k < len(smoke.breaking_repe_coeffs) for k in by_attack["repe"]["found"])
        assert all(k is None or 0 <= k < len(smoke.breaking_soft_radii) for k in by_attack["soft_prompt"]["found"])
    ablated, _ = read_attack_results(run_dir / "09_breaking_budgets" / "ablation.json")
    assert {e.model for e in ablated} == {"base", *smoke.attacked_arms} and {e.attack for e in ablated} == {"ablation"}
    for table in ("table_1_dsr", "table_2_capability"):
        assert (figures_dir / f"{table}.csv").exists() and (figures_dir / f"{table}.md").read_text().strip()
    table_1 = pd.read_csv(figures_dir / "table_1_dsr.csv")  # 06 found every attack in what 02-04 wrote
    assert len(table_1) == 7 * (1 + len(smoke.attacked_arms)) and set(table_1["status"]) == {"ok"}  # attack × model
    assert set(table_1["model"]) == {"base", *smoke.attacked_arms}
    paired_rows = pd.read_csv(figures_dir / "table_1b_paired.csv")  # each arm vs base per attack and judge
    assert len(paired_rows) == 7 * len(smoke.attacked_arms) * 2 and paired_rows["holm_p"].between(0, 1).all()
    assert len(pd.read_csv(figures_dir / "table_4_judges.csv")) == 4
    assert set(pd.read_csv(figures_dir / "table_4b_judges_own.csv")["measure"]) == {"refusal", "harm-free"}
    assert len(list(figures_dir.glob("*.png"))) >= 5 and (figures_dir / "timings.md").exists()
