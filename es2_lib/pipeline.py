"""The one-command pipeline: run every stage notebook of a params file with papermill (docs/architecture.md,
"Pipeline").

Stages run in the order of the registry `stages.STAGES` (the figures stage last) into the run folder. A stage is
skipped when its key — the hash of the params its notebook declares, its cells' source, the library modules it
imports (directly or through other modules), the data, and the keys of the stages it reads (`reads` and
`optional` of its registry entry) — equals the key recorded after its last successful run. A failing stage is
named, marked failed in the manifest, and its partly executed notebook is kept in the run folder; rerunning
resumes at the first stage that is not current. `publish=True` also writes the cleaned executed notebooks over
notebooks/ for GitHub readers.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import time
from pathlib import Path

import nbformat
import papermill

from . import runs, stages
from .params import Params

PAPERMILL_METADATA = ("papermill", "execution")


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


def relative_paths(text: str) -> str:
    """`text` with this checkout's and the home folder's absolute paths written relative ("./", "~/"), so
    published outputs (warnings, tracebacks) do not show where the notebook happened to run."""
    return text.replace(f"{runs.ROOT}/", "./").replace(f"{Path.home()}/", "~/")


def clean_notebook(path: Path) -> None:
    """Strip papermill timing metadata, collapse carriage-return progress updates to their last state and
    make absolute paths in outputs relative."""
    nb = nbformat.read(path, as_version=4)
    for key in PAPERMILL_METADATA:
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        for key in PAPERMILL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.execution_count = None
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                out.text = relative_paths("\n".join(line.rsplit("\r", 1)[-1] for line in out.text.split("\n")))
            elif out.output_type == "error":
                out.traceback = [relative_paths(line) for line in out.traceback]
            elif "text/plain" in out.get("data", {}):
                out.data["text/plain"] = relative_paths(out.data["text/plain"])
    nbformat.write(nb, path)


def run_pipeline(params: Params, only: list[str] | None = None, force: bool = False, publish: bool = False) -> dict:
    """Run (or skip) every stage of `params`; return {stage: "ran" | "skipped"}."""
    run = runs.Run(params)
    data_hash = runs.hash_files([runs.ROOT / "data"])
    keys: dict[str, str] = {}
    outcome: dict[str, str] = {}
    env = {"ES2_PROGRESS_INTERVAL": os.environ.get("ES2_PROGRESS_INTERVAL", "60"), "MPLBACKEND": "agg"}
    os.environ.update(env)
    unknown = [name for name in only or () if name not in stages.STAGES]
    if unknown:  # an error, not a silent no-op
        raise StageFailed(f"unknown stage(s) {', '.join(unknown)}; the stages are {', '.join(stages.STAGES)}")
    for i, stage in enumerate(stages.STAGES.values(), 1):
        name, notebook = stage.name, stage.notebook
        declared = declared_params(notebook, params)
        keys[name] = runs.stage_key(
            declared, [source_hash(notebook), runs.hash_files(library_files(notebook)), data_hash,
                       *(keys.get(s, "") for s in stage.reads + stage.optional)]
        )
        if only and name not in only:
            continue
        if not force and run.is_current(name, keys[name]):
            print(f"[{name}] up to date, skipped", flush=True)
            outcome[name] = "skipped"
            continue
        out = run.path("notebooks", notebook.name)
        print(f"[{name}] running (stage {i} of {len(stages.STAGES)})", flush=True)
        run.record_stage(name, keys[name], wall_s=0.0, status="running")
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(notebook), str(out), parameters=declared, cwd=str(notebook.parent),
                progress_bar=False, log_output=False, kernel_name="python3",
            )
        except papermill.PapermillExecutionError as err:
            run.record_stage(name, keys[name], time.perf_counter() - start, status="failed")
            raise StageFailed(
                f"stage {name} failed in cell {err.cell_index}: {err.ename}: {err.evalue}\n"
                f"its partly executed notebook is kept at {out}"
            ) from err
        wall = time.perf_counter() - start
        clean_notebook(out)
        if publish:
            notebook.write_bytes(out.read_bytes())
        run.record_stage(name, keys[name], wall)
        print(f"[{name}] done in {wall:.0f} s", flush=True)
        outcome[name] = "ran"
    write_timings(run, run.figures_dir / "timings.md")
    return outcome


def write_timings(run: runs.Run, path: Path) -> None:
    """A Markdown table of each stage's wall time on this machine, from the manifest, in running order."""
    manifest = run.manifest()
    env = manifest.get("environment", {})
    hardware = env.get("cuda") or f"CPU, {env.get('cpu_count')} cores ({env.get('machine')})"
    lines = [f"Wall time per stage of run `{run.params.name}` (model `{run.params.model}`, {hardware}, "
             f"torch {env.get('packages', {}).get('torch')}).", "", "| stage | wall time (s) |", "|---|---:|"]
    total = 0.0
    done = manifest["stages"]
    for stage in [s for s in stages.STAGES if s in done] + sorted(set(done) - set(stages.STAGES)):
        lines.append(f"| {stage} | {done[stage]['wall_s']:.0f} |")
        total += done[stage]["wall_s"]
    lines.append(f"| **total** | **{total:.0f}** |")
    path.parent.mkdir(parents=True, exist_ok=True)
    with runs.atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
