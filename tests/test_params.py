from pathlib import Path

import pytest
import yaml

from es2_lib import params
from es2_lib.params import ParamsError

PARAMS_DIR = Path(__file__).resolve().parents[1] / "params"


@pytest.mark.parametrize("path", sorted(PARAMS_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_params_file_is_valid(path):
    assert params.load(path).name == path.stem


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("name: x\nn_eval: 5\n")
    p = params.load(f, seed=3)
    assert (p.name, p.n_eval, p.seed, p.model) == ("x", 5, 3, "embedded")


def test_unknown_key_names_file_and_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nn_evl: 5\n")
    with pytest.raises(ParamsError, match=r"bad\.yaml.*'n_evl'"):
        params.load(f)


@pytest.mark.parametrize("key,value,expected", [
    ("n_eval", "ten", "int"), ("n_eval", 2.5, "int"), ("n_eval", True, "int"),
    ("confidence", "high", "float"), ("dtype", "fp8", "one of 'float32'"), ("model", 3, "str"),
    ("gcg_screen_dtype", "int8", "one of 'bfloat16', 'float16' or None"),
])
def test_wrong_type_names_key_and_expected_type(tmp_path, key, value, expected):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({key: value}))
    with pytest.raises(ParamsError, match=rf"bad\.yaml: key '{key}' expects {expected}"):
        params.load(f)


def test_int_is_accepted_for_float():
    assert params.from_mapping({"incoherent_ppl": 50}).incoherent_ppl == 50.0


def test_out_of_range_values_are_errors():
    with pytest.raises(ParamsError, match="'n_eval' expects a positive int"):
        params.from_mapping({"n_eval": 0})
    with pytest.raises(ParamsError, match="'confidence'"):
        params.from_mapping({"confidence": 1.5})
    with pytest.raises(ParamsError, match="'gcg_screen_margin' expects a positive float"):
        params.from_mapping({"gcg_screen_margin": 0.0})
    assert params.from_mapping({"gcg_screen_dtype": None}).gcg_screen_dtype is None


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        params.load(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        params.load(tmp_path / "list.yaml")


def test_from_namespace_picks_schema_keys_only():
    p = params.from_namespace({"name": "nb", "n_eval": 3, "In": [], "_": None, "P": 1})
    assert (p.name, p.n_eval) == ("nb", 3)
