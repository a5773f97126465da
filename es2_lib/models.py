"""Model loading and chat formatting for every model spec the pipeline accepts (docs/architecture.md, "Layers of
the library").

A spec is `embedded` (Qwen2.5-Coder-0.5B-Instruct from its verified cache, see model_cache.py), `tiny` (a 4-layer
random-weight Qwen2 with the embedded model's tokenizer, for tests and smoke runs), `random:<dir>` (random weights from a folder's
config.json and tokenizer files, e.g. a paper model's config for GPU timing), a local folder, or a hub id.
Remote code is never trusted.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from .model_cache import ModelLoadError, prepare_embedded, tiny_model_dir

__all__ = ["ModelLoadError", "model_folder", "load_model", "native_bf16", "resolve_device", "prepare_tokenizer", "chat_prompt", "decoder_layers",
           "num_layers", "decoder_and_head"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but torch sees no CUDA device")
    return torch.device(device)


def native_bf16() -> bool:
    """Whether this machine's CPU computes bfloat16 natively (x86 AVX512-BF16 or AMX flags in /proc/cpuinfo;
    False where that cannot be read). Without it a bfloat16 model on the CPU is emulated, and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
            + (", and the hub is off (HF_HUB_OFFLINE=1; params allow_hub: true lets a run download it)" if offline
               else " nor a reachable hub id")
            + f" ({err})"
        ) from err
    return model, tokenizer


def model_folder(spec: str) -> Path | None:
    """The local folder a model spec reads (a model folder, or `random:<dir>`), None for `embedded`, `tiny` and
    hub ids; a ModelLoadError when a spec that names a folder does not name a model folder."""
    if spec in ("embedded", "tiny"):
        return None
    folder = Path(spec.removeprefix("random:")).expanduser()
    named_as_path = spec.startswith("random:") or spec.startswith(("/", "./", "../", "~")) or folder.is_dir()
    if not named_as_path:
        return None  # a hub id (org/name)
    if not folder.is_dir():
        raise ModelLoadError(f"model spec {spec!r}: {folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"model spec {spec!r}: {folder} has no config.json, so it is not a model folder "
                             f"(expected config.json, tokenizer files{'' if spec.startswith('random:') else ' and weights'})")
    return folder


def load_model(
    spec: str = "embedded", dtype: str = "float32", device: str = "cpu", seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return (model in eval mode on `device`, tokenizer with left padding) for a model spec."""
    torch_dtype = DTYPES[dtype]
    if dtype == "bfloat16" and resolve_device(device).type == "cpu" and not native_bf16():
        warnings.warn("dtype bfloat16 on a CPU without native bfloat16 (AVX512-BF16 or AMX) is emulated and slower "
                      "than float32; use dtype: float32 here", stacklevel=2)
    hf_logging.disable_progress_bar()  # loading takes seconds; its bar would only clutter the notebooks
    if spec == "embedded":
        model, tokenizer = _pretrained(prepare_embedded(), torch_dtype)
    elif spec == "tiny" or spec.startswith("random:"):
        folder = tiny_model_dir() if spec == "tiny" else model_folder(spec)
        model = _random_model(folder, torch_dtype, seed)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    else:
        model, tokenizer = _pretrained(model_folder(spec) or spec, torch_dtype)
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
