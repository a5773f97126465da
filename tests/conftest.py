"""Shared fixtures: offline mode, a tiny random-weight chat model, and a scratch run folder."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from es2_lib import models, params  # noqa: E402


@pytest.fixture
def tiny():
    """A fresh 4-layer random-weight Qwen2 (hidden 64) and the embedded model's tokenizer."""
    return models.load_model("tiny", dtype="float32", device="cpu", seed=0)


@pytest.fixture
def tiny_params(tmp_path, monkeypatch) -> params.Params:
    """Params for the tiny model with a run folder under tmp_path."""
    monkeypatch.setenv("ES2_RUNS_DIR", str(tmp_path / "runs"))
    return params.from_mapping(dict(name="test", model="tiny", n_probe_train=8, n_es2_train=8, n_eval=4, n_attack=4,
                                    n_prompt_attack=4, subspace_n_eval_dsr=4, batch_size=4, max_new_tokens=8,
                                    bootstrap_samples=200))


@pytest.fixture
def lively():
    """A fresh tiny model with large random decoder weights. At the default init its output merely echoes the
    last input token (tied embeddings), here "\\n" of the chat template, which every response strips; with
    these weights the next token depends on the whole prompt, so padding and ordering errors show (and
    candidate losses spread)."""
    model, tokenizer = models.load_model("tiny", dtype="float32", device="cpu", seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in models.decoder_layers(model).parameters():
            if weight.ndim == 2:
                weight.copy_(0.3 * torch.randn(weight.shape, generator=gen))
    return model, tokenizer


@pytest.fixture(scope="session")
def embedded():
    """The embedded default model (slow tier: builds its cache on first use)."""
    return models.load_model("embedded", dtype="float32", device="cpu")
