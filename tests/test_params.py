
import pytest
import yaml

from monosemantic.params import ParamsError, load_params
from tests.conftest import ROOT


def write(tmp_path, mutate):
    raw = yaml.safe_load((ROOT / "tests/params_tiny.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("name", ["params.yaml", "tests/params_tiny.yaml"])
def test_shipped_params_are_valid(name):
    params = load_params(ROOT / name)
    assert params.model.d_mlp > 0


def test_unknown_key_names_path_and_allowed_keys(tmp_path):
    path = write(tmp_path, lambda r: r["model"].update(stpes=10))
    with pytest.raises(ParamsError) as e:
        load_params(path)
    msg = str(e.value)
    assert "model.stpes: unknown key" in msg and "steps" in msg


def test_unknown_key_inside_a_source(tmp_path):
    path = write(tmp_path, lambda r: r["corpus"]["sources"][0].update(wieght=2))
    msg = str(pytest.raises(ParamsError, load_params, path).value)
    assert "corpus.sources.0.wieght: unknown key" in msg and "weight" in msg


def test_unknown_source_kind(tmp_path):
    path = write(tmp_path, lambda r: r["corpus"]["sources"].append({"kind": "web"}))
    msg = str(pytest.raises(ParamsError, load_params, path).value)
    assert "corpus.sources.3" in msg and "'web'" in msg and "builtin" in msg and "synthetic" in msg


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda r: r["tokenize"].update(ctx=1), "tokenize.ctx: got 1; Input should be greater than or equal to 2"),
        (lambda r: r["model"].update(lr="fast"), "model.lr: got 'fast'"),
        (lambda r: r["tokenize"].update(eval_fraction=1.5), "tokenize.eval_fraction: got 1.5"),
        (lambda r: r.pop("activations"), "activations: required key is missing"),
        (lambda r: r["model"].update(source="hf"), "model.hf.name_or_path"),
        (lambda r: r["model"].update(d_model=65), "divisible by n_heads"),
    ],
)
def test_bad_values_name_the_key(tmp_path, mutate, expected):
    msg = str(pytest.raises(ParamsError, load_params, write(tmp_path, mutate)).value)
    assert expected in msg


def test_missing_and_malformed_files(tmp_path):
    assert "not found" in str(pytest.raises(ParamsError, load_params, tmp_path / "nope.yaml").value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpus: [unclosed\n")
    assert "not valid YAML" in str(pytest.raises(ParamsError, load_params, bad).value)
