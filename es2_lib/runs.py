"""Run folders: one per params file, with a manifest, a lock, atomic writes and content hashes (docs/architecture.md,
"Pipeline").

`runs/<name>/` (moved by $ES2_RUNS_DIR; published figures go to `figures/<name>/`, moved by $ES2_FIGURES_DIR)
holds every stage's outputs and `manifest.json`: package versions, git SHA and hardware, and per stage its input
key, status, wall time and the params it ran with. Every file is written under a temporary name and renamed, so a
crash never leaves a half-written result; a lock keeps a second pipeline out of a run folder in use. The pipeline
compares a stage's key (`stage_key`: the hash of its params and inputs) with the recorded one to skip it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from .params import Params

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["torch", "transformers", "peft", "gguf", "datasets", "scikit-learn", "numpy", "papermill"]


def runs_root() -> Path:
    return Path(os.environ.get("ES2_RUNS_DIR", ROOT / "runs")).expanduser()


def figures_root() -> Path:
    """Where published figures and tables go: $ES2_FIGURES_DIR, else figures/ (committed)."""
    return Path(os.environ.get("ES2_FIGURES_DIR", ROOT / "figures")).expanduser()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result gets the mode any new file would get
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; it replaces `target` only when the block succeeds (the folder
    counterpart of atomic_path)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        old = target.parent / f".{target.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=_jsonable) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, default=_jsonable) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def read_result(path: Path) -> Any | None:
    """A result file another stage may have written: JSON Lines (`.jsonl`) or JSON; None when it is absent."""
    path = Path(path)
    if not path.is_file():
        return None
    return read_jsonl(path) if path.suffix == ".jsonl" else read_json(path)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def _hash_cache_path() -> Path:
    return runs_root() / ".file_hashes.json"


def file_digest(path: Path, cache: dict[str, list] | None = None) -> str:
    """sha256 of a file's bytes; with `cache` ({absolute path: [size, mtime_ns, sha256]}) a file whose size and
    mtime are unchanged is not read again."""
    stat = path.stat()
    key, seen = str(path.resolve()), (cache or {}).get(str(path.resolve()))
    if seen and seen[:2] == [stat.st_size, stat.st_mtime_ns]:
        return seen[2]
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if cache is not None:
        cache[key] = [stat.st_size, stat.st_mtime_ns, digest]
    return digest


def hash_files(paths: list[Path]) -> str:
    """sha256 over the names and contents of files (folders: every file below, sorted); a file's content hash
    is read again only when its size or mtime changed (cached in the runs folder's .file_hashes.json)."""
    cache_path = _hash_cache_path()
    try:
        cache = read_json(cache_path) if cache_path.is_file() else {}
    except json.JSONDecodeError:  # a damaged cache costs one full read, nothing else
        cache = {}
    before = dict(cache)
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            digest.update(str(f.relative_to(ROOT) if f.is_relative_to(ROOT) else f.name).encode())
            digest.update(file_digest(f, cache).encode())
    if cache != before:
        write_json(cache_path, cache)
    return digest.hexdigest()


def stage_key(params: dict[str, Any], inputs: list[str]) -> str:
    """The hash that decides whether a stage must run again: its params and its inputs' hashes."""
    blob = json.dumps({"params": params, "inputs": inputs}, sort_keys=True, default=_jsonable)
    return hashlib.sha256(blob.encode()).hexdigest()


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def environment() -> dict[str, Any]:
    """Versions, git SHA and hardware, for the manifest."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "packages": versions,
        "git_sha": git_sha(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


class RunLocked(RuntimeError):
    """Another process holds the run folder."""


class Run:
    """The run folder of one params file and its manifest."""

    def __init__(self, params: Params, root: Path | None = None):
        self.params = params
        self.dir = Path(root or runs_root()) / params.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.dir / "manifest.json"
        self.figures_dir = figures_root() / params.name

    def path(self, *parts: str) -> Path:
        """A path inside the run folder (parents created)."""
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def manifest(self) -> dict[str, Any]:
        return read_json(self.manifest_path) if self.manifest_path.exists() else {"stages": {}}

    def _update(self, **fields: Any) -> None:
        manifest = self.manifest()
        manifest.update(fields)
        write_json(self.manifest_path, manifest)

    def record_stage(self, stage: str, key: str, wall_s: float, status: str = "done",
                     params: dict[str, Any] | None = None, **extra: Any) -> None:
        """Record a stage's outcome: its key, status, wall time and the params it was run with (the keys its
        notebook declares), with the environment (the pipeline calls this; notebooks only see their params)."""
        stages = self.manifest()["stages"]
        stages[stage] = {"key": key, "status": status, "wall_s": round(wall_s, 2), "finished": time.time(),
                         "params": params if params is not None else stages.get(stage, {}).get("params", {}),
                         **extra}
        self._update(stages=stages, environment=environment())

    def stage_params(self, stage: str) -> dict[str, Any]:
        """The params stage `stage` last ran with ({} when it has not run through the pipeline)."""
        return self.manifest()["stages"].get(stage, {}).get("params", {})

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this run folder for one process: a second pipeline on the same run name is refused with a
        message naming the holder (an advisory lock on .lock, released when the process ends, even by a crash)."""
        with open(self.dir / ".lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise RunLocked(f"run {self.params.name!r} ({self.dir}) is in use by another pipeline "
                                f"({f.read().strip() or 'holder unknown'}); wait for it to finish, or give this "
                                f"run another name (-o name=...)") from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {platform.node()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def record(self, section: str, values: dict[str, Any]) -> None:
        """Store a stage's notable choices (e.g. the chosen layers) in the manifest."""
        self._update(**{section: values})
