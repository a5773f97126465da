"""What a run leaves for readers besides its results: executed notebooks cleaned for publishing (no papermill
metadata, progress bars at their last state, no absolute paths) and the table of wall time per stage
(docs/architecture.md, "Pipeline").
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from . import runs, stages

PAPERMILL_METADATA = ("papermill", "execution")


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
