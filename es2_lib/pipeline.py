"""The one-command pipeline: run every stage notebook of a params file with papermill (docs/architecture.md,
"Pipeline").

Stages run in the order of the registry `stages.STAGES` (the figures stage last) into the run folder, which a
lock holds for one pipeline at a time. A stage is skipped when its key — the hash of the params its notebook
declares, its cells' source, the library modules it imports (directly or through other modules), the contents of
data/ and of every user file its params name, and the recorded key and finishing time of each stage it reads —
equals the key recorded after its last successful run, and its outputs are all there. `--only` runs the asked
stages and, first, every stale stage they read. A failing or interrupted stage is named and marked in the
manifest, its partly executed notebook is kept, and rerunning resumes at the first stage that is not current.
Unless params allow the hub, every stage runs with the hub's offline switches set. `publish=True` also writes
the cleaned executed notebooks over notebooks/ for GitHub readers.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import nbformat
import papermill
import psutil

from . import data, models, runs, stages
from .published import clean_notebook, write_timings
from .params import Params

class StageFailed(RuntimeError):
    """A notebook raised; the message names the stage and where its partial notebook is."""


def source_hash(notebook: Path) -> str:
    """Hash of a notebook's cell sources, ignoring outputs and papermill's injected parameters."""
    nb = nbformat.read(notebook, as_version=4)
    cells = [c.source for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


def _imported_modules(tree: ast.AST, package: str) -> set[str]:
    """Dotted names of the es2_lib modules (and names that may be submodules) that `tree` imports; relative
    imports are resolved against `package`, the dotted package of the file the tree came from."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in names if n == "es2_lib" or n.startswith("es2_lib.")}


def _module_file(name: str) -> Path | None:
    """The source file of a dotted es2_lib module name, or None when the name is not a module."""
    path = runs.ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def library_files(notebook: Path) -> list[Path]:
    """The es2_lib source files a notebook's code runs: the modules it imports and, transitively, theirs
    (with each package's __init__), so editing one attack does not rerun the stages that never import it."""
    code = "\n".join(c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code")
    pending = _imported_modules(ast.parse(code), "")
    files: set[Path] = set()
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        seen.add(name)
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            path = _module_file(".".join(parts[:depth]))
            if path is None or path in files:
                continue
            files.add(path)
            package = ".".join(parts[:depth]) if path.name == "__init__.py" else ".".join(parts[:depth - 1])
            pending |= _imported_modules(ast.parse(path.read_text()), package) - seen
    return sorted(files)


def declared_params(notebook: Path, params: Params) -> dict:
    """The params keys the notebook's `parameters` cell declares, with this run's values."""
    declared = papermill.inspect_notebook(str(notebook))
    values = params.to_dict()
    unknown = sorted(set(declared) - set(values))
    if unknown:
        raise StageFailed(f"{notebook.name}: parameters {unknown} are not keys of es2_lib/schema.py")
    return {k: values[k] for k in declared}


OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # unless allow_hub


class StageInterrupted(StageFailed):
    """Ctrl-C during a stage; the message names it and what the next run resumes."""


def input_files(declared: dict) -> list[Path]:
    """The files a stage reads besides the library: data/ and the user files its params name (prompt sets,
    refusal examples, a local model folder). A missing one is a clear error (DataError / ModelLoadError)."""
    files = [runs.ROOT / "data"]
    for key in ("harmful_prompts", "harmless_prompts"):
        if key in declared and (path := data.prompt_file(declared[key])) is not None:
            files.append(path)
    if "es2_refusal_data" in declared:
        path = data.refusal_file(declared["es2_refusal_data"])
        if not path.is_file():
            raise data.DataError(f"params es2_refusal_data={declared['es2_refusal_data']!r}: {path} not found")
        files.append(path)
    if "model" in declared and (folder := models.model_folder(declared["model"])) is not None:
        files.append(folder)
    return files


def stage_key(run: runs.Run, name: str, declared: dict) -> str:
    """A stage's key: the hash of the params it declares, its notebook's cells, the library files it imports, the
    contents of every file it reads (`input_files`) and, for each stage it reads, that stage's recorded key and
    finishing time in this run folder (so a rerun upstream makes its readers stale, even with an equal key)."""
    stage, done = stages.stage(name), run.manifest()["stages"]
    upstream = [f"{done.get(s, {}).get('key', '')}@{done.get(s, {}).get('finished', '')}"
                for s in stage.reads + stage.optional]
    return runs.stage_key(declared, [source_hash(stage.notebook), runs.hash_files(library_files(stage.notebook)),
                                     runs.hash_files(input_files(declared)), *upstream])


def stale_reason(run: runs.Run, name: str, key: str) -> str | None:
    """Why stage `name` is not current in `run` (never ran, failed, interrupted, inputs changed, outputs
    missing), or None when it is."""
    done = run.manifest()["stages"].get(name)
    if done is None:
        return "it has not run"
    if done.get("status") != "done":
        return f"its last run is {done.get('status')}"
    if done.get("key") != key:
        return "its inputs changed"
    missing = [f for f in stages.stage(name).writes if not (run.dir / name / f).exists()]
    return f"its outputs {', '.join(missing)} are missing" if missing else None


def candidates(run: runs.Run, only: list[str] | None) -> list[str]:
    """The stages a call considers, in running order: all of them, or those in `only` with every stage they read
    (transitively), also one they read as optional when it has run before in this folder."""
    if only is None:
        return list(stages.STAGES)
    chosen: set[str] = set()

    def need(name: str) -> None:
        stage = stages.stage(name)
        ran = [u for u in stage.optional if u in run.manifest()["stages"]
               or any((run.dir / u / f).exists() for f in stages.stage(u).writes)]
        for up in (*stage.reads, *ran):
            need(up)
        chosen.add(name)

    for name in only:
        need(name)
    return [n for n in stages.STAGES if n in chosen]


def run_pipeline(params: Params, only: list[str] | None = None, force: bool = False, publish: bool = False) -> dict:
    """Run the stages of `params` that are not current (with `only`: those stages and the stale stages they need
    first; `force` reruns the asked ones) under the run folder's lock; return {stage: "ran" | "skipped"}."""
    unknown = [name for name in only or () if name not in stages.STAGES]
    if unknown:  # an error, not a silent no-op
        raise StageFailed(f"unknown stage(s) {', '.join(unknown)}; the stages are {', '.join(stages.STAGES)}")
    run = runs.Run(params)
    os.environ.update({"ES2_PROGRESS_INTERVAL": os.environ.get("ES2_PROGRESS_INTERVAL", "60"), "MPLBACKEND": "agg"})
    if not params.allow_hub:  # the stages' kernels inherit these: no request reaches the hub
        os.environ.update(OFFLINE)
    asked = set(only or stages.STAGES)
    outcome: dict[str, str] = {}
    with run.lock():
        for name in candidates(run, only):
            declared = declared_params(stages.stage(name).notebook, params)
            key = stage_key(run, name, declared)
            why = "forced" if force and name in asked else stale_reason(run, name, key)
            if why is None:
                if name in asked:
                    print(f"[{name}] up to date, skipped", flush=True)
                    outcome[name] = "skipped"
                continue
            needed = "" if name in asked else f", and {', '.join(only or ())} needs it"
            print(f"[{name}] running (stage {list(stages.STAGES).index(name) + 1} of {len(stages.STAGES)}): "
                  f"{why}{needed}", flush=True)
            wall = _execute(run, name, key, declared, publish)
            print(f"[{name}] done in {wall:.0f} s", flush=True)
            outcome[name] = "ran"
        write_timings(run, run.figures_dir / "timings.md")
    return outcome


def _execute(run: runs.Run, name: str, key: str, declared: dict, publish: bool) -> float:
    """Run one stage's notebook into the run folder, record its outcome, return its wall time."""
    notebook, out = stages.stage(name).notebook, run.path("notebooks", f"{name}.ipynb")
    run.record_stage(name, key, wall_s=0.0, status="running", params=declared)
    start = time.perf_counter()
    try:
        with _ctrl_c_reaches_the_kernel():
            papermill.execute_notebook(str(notebook), str(out), parameters=declared, cwd=str(notebook.parent),
                                       progress_bar=False, log_output=False, kernel_name="python3")
    except KeyboardInterrupt:
        _interrupted(run, name, key, declared, time.perf_counter() - start, out)
    except papermill.PapermillExecutionError as err:
        if err.ename == "KeyboardInterrupt":  # Ctrl-C reached the kernel first
            _interrupted(run, name, key, declared, time.perf_counter() - start, out)
        run.record_stage(name, key, time.perf_counter() - start, status="failed", params=declared)
        raise StageFailed(f"stage {name} failed in cell {err.cell_index}: {err.ename}: {err.evalue}\n"
                          f"its partly executed notebook is kept at {out}") from err
    wall = time.perf_counter() - start
    clean_notebook(out)
    if publish:
        notebook.write_bytes(out.read_bytes())
    run.record_stage(name, key, wall, params=declared)
    return wall


@contextlib.contextmanager
def _ctrl_c_reaches_the_kernel() -> Iterator[None]:
    """While a stage runs, Ctrl-C interrupts its kernel (which runs in a session of its own): the cell stops
    with KeyboardInterrupt and papermill shuts the kernel down cleanly. A second Ctrl-C stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def forward(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, previous)
        for child in psutil.Process().children():
            child.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupted(run: runs.Run, name: str, key: str, declared: dict, wall: float, out: Path) -> None:
    run.record_stage(name, key, wall, status="interrupted", params=declared)
    raise StageInterrupted(f"interrupted in stage {name} after {wall:.0f} s (its partial notebook: {out}); the "
                           f"stages before it are kept: rerun the same command to resume at {name}"
                           + (" (ES2 training resumes from its last checkpoint)" if name == "02_es2_training" else ""))
