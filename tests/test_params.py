import re
from pathlib import Path

import pydantic
import pytest
import yaml

from es2_lib import __main__ as cli
from es2_lib import params
from es2_lib.params import Params, ParamsError

PARAMS_DIR = Path(__file__).resolve().parents[1] / "params"
FILES = sorted(PARAMS_DIR.glob("*.yaml"))
PAPER = ["llama2-7b", "llama3-8b", "mistral-7b", "qwen2.5-7b"]


def write(folder: Path, name: str, text: str) -> Path:
    (folder / name).write_text(text)
    return folder / name


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_params_file_is_valid(path):
    assert params.load(path).name == path.stem


def test_default_file_is_the_schema_defaults():
    assert params.load(PARAMS_DIR / "default.yaml") == Params()


@pytest.mark.parametrize("name", PAPER)
def test_paper_files_are_gpu_yaml_with_a_model(name):
    path = PARAMS_DIR / f"{name}.yaml"
    assert len(path.read_text().splitlines()) <= 15
    p, gpu = params.load(path).to_dict(), params.load(PARAMS_DIR / "gpu.yaml").to_dict()
    assert {k for k in p if p[k] != gpu[k]} == {"name", "model"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_files_state_only_differences(path):
    """Every key a file states (but its name) changes what its base, or else the schema, would give."""
    stated = yaml.safe_load(path.read_text())
    base = params.load(path.parent / stated.pop("base")) if "base" in stated else Params()
    same = [k for k, v in params.from_mapping(stated).to_dict().items() if k in stated and getattr(base, k) == v]
    assert set(same) <= {"name"}


def test_defaults_and_overrides(tmp_path):
    p = params.load(write(tmp_path, "x.yaml", "name: x\nn_eval: 10\nn_attack: 5\n"), seed=3)
    assert (p.name, p.n_eval, p.seed, p.model) == ("x", 10, 3, "embedded")


def test_unknown_key_names_file_and_key_and_suggests(tmp_path):
    with pytest.raises(ParamsError, match=r"bad\.yaml: unknown key 'n_evl' \(did you mean 'n_eval'\?\)"):
        params.load(write(tmp_path, "bad.yaml", "name: x\nn_evl: 5\n"))
    with pytest.raises(ParamsError, match=r"unknown key 'zzz';"):
        params.from_mapping({"zzz": 1})


@pytest.mark.parametrize("key,value,expected", [
    ("n_eval", "ten", "int >= 1, got str 'ten'"), ("n_eval", 2.5, "int >= 1, got float 2.5"),
    ("n_eval", True, "int >= 1, got bool True"), ("confidence", "high", r"float in \(0, 1\), got str"),
    ("confidence", True, "float"), ("dtype", "fp8", "one of 'float32'"), ("model", 3, "str, got int 3"),
    ("capability_generate", 1, "bool, got int 1"), ("lora_targets", "q_proj", "list of strings"),
    ("gcg_screen_dtype", "int8", "one of 'bfloat16', 'float16' or None, got str 'int8'"),
    ("srr_sources", ["web"], "non-empty list of values from 'harmful_train'"),
])
def test_wrong_type_names_key_and_expected_type(tmp_path, key, value, expected):
    with pytest.raises(ParamsError, match=rf"bad\.yaml: key '{key}' expects {expected}"):
        params.load(write(tmp_path, "bad.yaml", yaml.safe_dump({key: value})))


def test_ints_become_floats():
    p = params.from_mapping({"incoherent_ppl": 50, "repe_coeffs": [-1, 2]})
    assert (p.incoherent_ppl, p.repe_coeffs) == (50.0, [-1.0, 2.0])
    assert type(p.incoherent_ppl) is float and all(type(c) is float for c in p.repe_coeffs)


@pytest.mark.parametrize("values,message", [
    ({"n_eval": 0}, "key 'n_eval' expects int >= 1, got 0"),
    ({"confidence": 1.5}, r"key 'confidence' expects float in \(0, 1\), got 1.5"),
    ({"gcg_screen_margin": 0.0}, "key 'gcg_screen_margin' expects float > 0, got 0.0"),
    ({"probe_threshold": 0.4}, r"key 'probe_threshold' expects float in \[0.5, 1\], got 0.4"),
    ({"srr_layer": -2}, "key 'srr_layer' expects int >= -1, got -2"),
    ({"repe_depth": [0.5]}, r"key 'repe_depth' expects list of 2 floats in \[0, 1\], got \[0.5\]"),
    ({"repe_depth": [0.8, 0.2]}, r"key 'repe_depth' expects \[from, to\] with 0 <= from <= to <= 1, got list"),
    ({"repe_coeffs": []}, "key 'repe_coeffs' expects non-empty list of floats, got"),
    ({"subspace_eval_fractions": [0.0]}, r"key 'subspace_eval_fractions' expects list of floats in \(0, 1\]"),
    ({"breaking_soft_radii": [0.5, 0.2]}, "key 'breaking_soft_radii' expects positive radii, strictly increasing"),
])
def test_out_of_range_values_are_errors(values, message):
    with pytest.raises(ParamsError, match=rf"^<params>: {message}"):
        params.from_mapping(values)


def test_null_screen_dtype_is_valid():
    assert params.from_mapping({"gcg_screen_dtype": None}).gcg_screen_dtype is None


@pytest.mark.parametrize("values,overrides,message", [
    ({}, {"n_eval": 4}, "override -o n_eval=4: n_attack (12) must not exceed n_eval (4)"),
    ({"n_attack": 10, "n_prompt_attack": 20}, {"n_eval": 10},
     "{file}, override -o n_eval=10: n_prompt_attack (20) must not exceed n_eval (10)"),
    ({"subspace_eval_fractions": [0.5, 0.3]}, {}, "{file}: subspace_eval_fractions [0.5, 0.3] must be a subset of "
     "subspace_projection_fractions [0.01, 0.25, 0.5, 0.75, 0.99]; [0.3] are not"),
    ({"srr_heads": 3}, {}, "{file}: srr_heads (3) must divide srr_hidden (64)"),
    ({"es2_layer_rule": "emergence_terminal", "n_emergence_layers": 0}, {"n_terminal_layers": 0},
     "{file}, override -o n_terminal_layers=0: n_emergence_layers + n_terminal_layers must choose at least one"),
    ({"arms": ["es2", "stl", "es2"]}, {}, "{file}: arms lists ['es2'] more than once"),
    ({"arms": ["es2", "rr"]}, {}, "{file}: attacked_arms lists ['stl'], which arms ['es2', 'rr'] does not train"),
    ({"attacked_arms": ["es2", "es2"]}, {}, "{file}: attacked_arms lists ['es2'] more than once"),
    ({"es2_layer_counts": [1, 3], "es2_layer_rule": "emergence_terminal"}, {},
     "{file}: es2_layer_counts [1, 3] needs es2_layer_rule 'matched'"),
])
def test_cross_field_rules_name_where_their_keys_were_set(tmp_path, values, overrides, message):
    path = write(tmp_path, "x.yaml", yaml.safe_dump({"name": "x", **values}))
    with pytest.raises(ParamsError) as err:
        params.load(path, **overrides)
    assert str(err.value).startswith(message.format(file=path))


def test_errors_are_one_line_per_key_without_pydantic_text(tmp_path):
    with pytest.raises(ParamsError) as err:
        params.load(write(tmp_path, "bad.yaml", "n_eval: 0\ndtype: fp8\nbatch_size: x\n"), n_evl=1)
    lines = str(err.value).splitlines()
    starts = ("override -o n_evl=1: unknown key", f"{tmp_path}/bad.yaml: key ")
    assert len(lines) == 4 and all(line.startswith(starts) for line in lines)
    assert not any(word in str(err.value) for word in ("validation error", "pydantic", "Input should", "type="))


def test_params_are_frozen():
    with pytest.raises(pydantic.ValidationError):
        Params().n_eval = 3
    assert Params().replace(n_eval=30).n_eval == 30
    with pytest.raises(ParamsError, match="^overrides: key 'n_eval'"):
        Params().replace(n_eval=0)


def test_missing_empty_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="nope.yaml: params file not found"):
        params.load(tmp_path / "nope.yaml")
    with pytest.raises(ParamsError, match="expected a mapping"):
        params.load(write(tmp_path, "list.yaml", "- a\n- b\n"))
    for text in ("", "# only a comment\n\n"):
        with pytest.raises(ParamsError, match=r"empty\.yaml: params file is empty"):
            params.load(write(tmp_path, "empty.yaml", text))
    with pytest.raises(ParamsError, match=r"bad\.yaml: not valid YAML \(.* at line 2"):
        params.load(write(tmp_path, "bad.yaml", "name: x\nn_eval: [1\n"))


def test_base_chain_resolves_recursively(tmp_path):
    write(tmp_path, "root.yaml", "name: root\nn_eval: 40\nseed: 1\n")
    (tmp_path / "sub").mkdir()
    write(tmp_path, "sub/mid.yaml", "base: ../root.yaml\nname: mid\nseed: 2\nbatch_size: 3\n")
    p = params.load(write(tmp_path, "sub/top.yaml", "base: mid.yaml\nname: top\nbatch_size: 5\n"), seed=7)
    assert (p.name, p.n_eval, p.seed, p.batch_size) == ("top", 40, 7, 5)


def test_errors_name_the_file_of_the_chain_that_set_the_key(tmp_path):
    write(tmp_path, "b.yaml", "n_eval: 0\n")
    with pytest.raises(ParamsError, match=rf"^{tmp_path}/b\.yaml: key 'n_eval' expects int >= 1, got 0$"):
        params.load(write(tmp_path, "a.yaml", "base: b.yaml\nname: a\n"))


def test_broken_base_chains_are_errors_naming_the_chain(tmp_path):
    a = write(tmp_path, "a.yaml", "base: b.yaml\nname: a\n")
    with pytest.raises(ParamsError, match=rf"^{a} -> {tmp_path}/b\.yaml: params file not found$"):
        params.load(a)
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    cycle = rf"^{a} -> {tmp_path}/b\.yaml -> {tmp_path}/a\.yaml: base files form a cycle$"
    with pytest.raises(ParamsError, match=cycle):
        params.load(a)
    write(tmp_path, "b.yaml", "- 1\n")
    with pytest.raises(ParamsError, match=r"a\.yaml -> .*b\.yaml: expected a mapping of key: value, got list"):
        params.load(a)
    with pytest.raises(ParamsError, match=r"self\.yaml -> .*self\.yaml: base files form a cycle"):
        params.load(write(tmp_path, "self.yaml", "base: self.yaml\n"))
    with pytest.raises(ParamsError, match=r"num\.yaml: key 'base' expects a params file name \(str\), got int 3"):
        params.load(write(tmp_path, "num.yaml", "base: 3\n"))


def test_from_namespace_picks_schema_keys_only():
    p = params.from_namespace({"name": "nb", "n_eval": 30, "In": [], "_": None, "P": 1})
    assert (p.name, p.n_eval) == ("nb", 30)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_resolve_prints_every_key_as_yaml(path, capsys):
    assert cli.main(["resolve", str(path), "-o", "seed=5"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert list(resolved) == list(Params.model_fields)
    assert params.from_mapping(resolved) == params.load(path, seed=5)


@pytest.mark.parametrize("override,message", [
    ("n_eval=[1", r"override -o n_eval=\[1: value is not valid YAML \(expected ',' or '\]'"),
    ("n_eval", "override -o n_eval: expected key=value"),
    ("n_eval=0", "override -o n_eval=0: key 'n_eval' expects int >= 1, got 0"),
    ("name=../escape", "override -o name=../escape: key 'name' expects a folder name of letters"),
])
def test_resolve_override_errors_are_one_line(override, message, capsys):
    assert cli.main(["resolve", str(PARAMS_DIR / "smoke.yaml"), "-o", override]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ") and re.search(message, err)


def test_a_notebook_is_held_to_the_rules_between_keys_it_declares():
    assert params.from_namespace({"n_eval": 6, "seed": 1}).n_eval == 6  # n_attack is another stage's key
    with pytest.raises(params.ParamsError, match=r"n_attack \(12\) must not exceed n_eval \(6\)"):
        params.from_namespace({"n_eval": 6, "n_attack": 12})
    with pytest.raises(params.ParamsError, match="must not exceed n_eval"):
        params.from_mapping({"n_eval": 6})  # a file or override is held to every rule


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "", ".", "..", "a/b", "-x", "a b"])
def test_run_names_that_are_not_one_folder_name_are_errors(tmp_path, name):
    with pytest.raises(ParamsError, match=r"override -o name=.*: key 'name' expects a folder name of letters"):
        params.load(write(tmp_path, "a.yaml", "name: a\n"), name=name)


def test_bad_device_is_an_error_before_any_stage_runs(tmp_path):
    with pytest.raises(ParamsError, match=r"a\.yaml: key 'device' expects 'cpu', 'cuda', 'cuda:N'.*got 'gpu0'"):
        params.load(write(tmp_path, "a.yaml", "name: a\ndevice: gpu0\n"))
    assert params.load(write(tmp_path, "b.yaml", "name: b\ndevice: cuda:1\n")).device == "cuda:1"


def test_a_file_must_name_its_own_run(tmp_path):
    """A file without `name` would write into runs/default/ (the schema default) or into its base's run."""
    with pytest.raises(ParamsError, match=r"own\.yaml: sets no 'name'; every run needs its own folder"):
        params.load(write(tmp_path, "own.yaml", "n_eval: 30\n"))
    write(tmp_path, "base.yaml", "name: base\n")
    with pytest.raises(ParamsError, match=r"sets no 'name' of its own \(it would inherit 'base' from .*base\.yaml\)"):
        params.load(write(tmp_path, "child.yaml", "base: base.yaml\nn_eval: 30\n"))
    assert params.load(tmp_path / "child.yaml", name="child").name == "child"
