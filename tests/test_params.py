
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
        (lambda r: r["activations"].update(dtype="bf16"), "activations.dtype: got 'bf16'; Input should be 'float16', "
                                                          "'bfloat16' or 'float32'"),
        (lambda r: r["activations"].update(exclude={"special_tokens": "yes please"}),
         "activations.exclude.special_tokens: got 'yes please'; must be auto (on for a Hugging Face model), true"),
        (lambda r: r["activations"].update(exclude={"norm_factor": 0.5}),
         "activations.exclude.norm_factor: got 0.5; must be auto, null (off) or a number above 1"),
        (lambda r: r["activations"].update(exclude={"norm_factor": "10x"}), "activations.exclude.norm_factor: got '10x'"),
        (lambda r: r["activations"].update(exclude={"median_tokens": 0}), "activations.exclude.median_tokens: got 0"),
        (lambda r: r["activations"].update(exclude={"norm": 10}), "activations.exclude.norm: unknown key"),
        (lambda r: r["interpret"].update(seed=-1), "interpret.seed: got -1; Input should be greater than or equal to 0"),
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


# ---------------------------------------------------------------- dictionary sizes
@pytest.mark.parametrize("sizes, expected", [
    ([128, 0], "sae.dict_sizes.1: got 0; Input should be greater than or equal to 1"),  # was: a 0-feature SAE
    ([128, -256], "sae.dict_sizes.1: got -256"),  # was: stages printed only a usage line
    ([128, True], "sae.dict_sizes.1: got True"),
    ([128, 1 << 30], "sae.dict_sizes.1: got 1073741824; Input should be less than or equal to 16777216"),
    ([128, 256, 128], "sae.dict_sizes: got [128, 256, 128]; 128 listed twice"),  # was: outputs overwritten
])
def test_dict_sizes_are_positive_unique_integers(tmp_path, sizes, expected):
    msg = str(pytest.raises(ParamsError, load_params, write(tmp_path, lambda r: r["sae"].update(dict_sizes=sizes)))
              .value)
    assert expected in msg


@pytest.mark.parametrize("mutate, expected", [
    (lambda sae: sae.update(architectures=["standard", "gated"]), "sae.architectures.1: got 'gated'"),
    (lambda sae: sae.update(architectures=["topk", "topk"]), "sae.architectures: got ['topk', 'topk']; topk listed twice"),
    (lambda sae: sae.update(architectures=[]), "sae.architectures: got []"),
    (lambda sae: sae["topk"].update(k=128), "topk.k=128 must be below the smallest dictionary size 128"),
    (lambda sae: sae.update(matryoshka={"prefixes": [0.5, 0.25]}), "sae.matryoshka.prefixes: got [0.5, 0.25]"),
    (lambda sae: sae["standard"].update(resample_steps=[500]), "standard.resample_steps [500] must lie strictly"),
])
def test_architectures_and_their_options_are_checked(tmp_path, mutate, expected):
    msg = str(pytest.raises(ParamsError, load_params, write(tmp_path, lambda r: mutate(r["sae"]))).value)
    assert expected in msg, msg


def test_every_dictionary_is_named_by_architecture_and_size():
    sae = load_params(ROOT / "tests/params_tiny.yaml").sae
    assert sae.names() == ["standard-128", "standard-256", "topk-128", "topk-256"]
    assert sae.options("standard") == {"l1_coefficient": 0.004} and sae.options("topk")["k"] == 8


def test_universality_dict_sizes_are_positive(tmp_path):
    path = write(tmp_path, lambda r: r["universality"].update(dict_sizes=[-1]))
    assert "universality.dict_sizes.0: got -1" in str(pytest.raises(ParamsError, load_params, path).value)


# ---------------------------------------------------------------- memory
GIB = 1 << 30


@pytest.fixture
def machine(monkeypatch):
    """A machine of 23 GiB, whatever this one has."""
    from monosemantic import resources

    monkeypatch.setattr(resources, "machine_memory", lambda: 23 * GIB)


@pytest.mark.parametrize("name", ["params.yaml", "tests/params_tiny.yaml"])
def test_shipped_params_fit_a_small_machine(name):
    from monosemantic.resources import check_memory, estimates

    params = load_params(ROOT / name)
    assert max(e.bytes for e in estimates(params, params.model.d_mlp)) < 4 * GIB
    check_memory(params, params.model.d_mlp, available=8 * GIB)


def test_a_dictionary_too_large_for_memory_fails_before_work_naming_the_keys(tmp_path, machine):
    def huge(r):
        r["sae"]["dict_sizes"] = [128, 1_000_000]
        r["sae"]["train"]["batch_size"] = 8192

    msg = str(pytest.raises(ParamsError, load_params, write(tmp_path, huge)).value)
    assert "sae.dict_sizes.1=1000000 with sae.train.batch_size=8192 (d=128)" in msg
    assert "this machine has 23 GiB" in msg and "lower sae.train.batch_size or sae.dict_sizes.1" in msg
    needs = float(msg.split("needs ~")[1].split(" GiB")[0])
    # f, its gradient and the masked gradient alone are 3 x 8192 x 1e6 x 4 bytes; 4 x 2 x 128 x 1e6 x 4 for Adam
    assert needs >= (3 * 8192 * 1_000_000 * 4 + 16 * 128 * 1_000_000 * 2) / GIB


def test_an_activation_shard_too_large_for_memory_names_the_chunk_keys(tmp_path, machine):
    path = write(tmp_path, lambda r: r["activations"].update(chunk_seqs=4096, shard_chunks=4096))
    msg = str(pytest.raises(ParamsError, load_params, path).value)
    assert "activations.chunk_seqs=4096 x shard_chunks=4096 x tokenize.ctx=32" in msg and "cache_activations" in msg
    assert "lower activations.shard_chunks or activations.chunk_seqs" in msg


def test_check_memory_takes_the_real_width_for_hf_models(tmp_path, machine):
    """An hf model's width is known only once loaded: load_params skips the check, stages call it with d."""
    from monosemantic.resources import check_memory

    def hf(r):
        r["model"].update(source="hf", hf={"name_or_path": "gpt2"}, hook="transformer.h.0.mlp.act")
        r["sae"]["dict_sizes"] = [128, 200_000]

    params = load_params(write(tmp_path, hf))
    check_memory(params, 16)  # a narrow model fits
    msg = str(pytest.raises(ParamsError, check_memory, params, 4096).value)  # Adam on 2 x 4096 x 200000 weights
    assert "sae.dict_sizes.1=200000" in msg and "(d=4096)" in msg and "Adam" in msg


def test_machine_memory_is_a_positive_byte_count():
    from monosemantic.resources import machine_memory

    assert 256 * 1024**2 < machine_memory() < 1 << 50


# ---------------------------------------------------------------- params that run code or send the key
def proxy(r, **kw):
    r["interpret"]["proxies"] = [{"name": "x", "callable": "os:system"}]
    r["interpret"].update(kw)


def test_callable_proxies_need_an_explicit_opt_in(tmp_path):
    msg = str(pytest.raises(ParamsError, load_params, write(tmp_path, proxy)).value)
    assert "interpret.proxies.0.callable ('os:system') would import and run that code" in msg
    assert "interpret.allow_callables: true" in msg
    params = load_params(write(tmp_path, lambda r: proxy(r, allow_callables=True)))
    assert params.interpret.allow_callables and params.interpret.proxies[0].callable == "os:system"


@pytest.mark.parametrize("url, key_env, allow, ok", [
    ("http://example.com/v1", "OPENAI_API_KEY", False, False),    # the key in clear to another host
    ("http://10.0.0.7:8000/v1", "OPENAI_API_KEY", False, False),
    ("http://127.0.0.1.example.com/v1", "K", False, False),       # not loopback, whatever it looks like
    ("http://example.com/v1", "OPENAI_API_KEY", True, True),      # opted in
    ("http://example.com/v1", None, False, True),                 # no key to leak
    ("https://example.com/v1", "OPENAI_API_KEY", False, True),
    ("http://127.0.0.1:8000/v1", "K", False, True),               # a local vLLM / llama.cpp / Ollama
    ("http://127.3.2.1:8000/v1", "K", False, True),
    ("http://localhost:11434/v1", "K", False, True),
    ("http://[::1]:8000/v1", "K", False, True),
])
def test_plain_http_with_a_key_to_another_host_needs_an_opt_in(tmp_path, url, key_env, allow, ok):
    def endpoint(r):
        r["interpret"]["openai"] = {"base_url": url, "api_key_env": key_env, "allow_insecure_http": allow}

    path = write(tmp_path, endpoint)
    if ok:
        assert load_params(path).interpret.openai.base_url == url
    else:
        msg = str(pytest.raises(ParamsError, load_params, path).value)
        assert f"interpret.openai.base_url {url!r} is plain http" in msg and "allow_insecure_http: true" in msg


@pytest.mark.parametrize("name", ["OPENAI KEY", "$HOME", "KEY=x", ""])
def test_api_key_env_is_an_environment_variable_name(tmp_path, name):
    path = write(tmp_path, lambda r: r["interpret"].update(openai={"api_key_env": name}))
    msg = str(pytest.raises(ParamsError, load_params, path).value)
    assert "interpret.openai.api_key_env" in msg and "name of an environment variable" in msg


def test_exclusion_params_resolve_auto_by_model_source(tmp_path):
    from monosemantic.activations.exclude import HF_NORM_FACTOR, exclusion

    p = load_params(write(tmp_path, lambda r: None)).activations
    assert (p.dtype, p.exclude.special_tokens, p.exclude.norm_factor) == ("float16", "auto", "auto")
    builtin = exclusion(p.exclude.special_tokens, p.exclude.norm_factor, p.exclude.median_tokens, "builtin", [0])
    assert not builtin.active  # the paper's setting, and the tiny pipeline's results, unchanged
    hf = exclusion(p.exclude.special_tokens, p.exclude.norm_factor, p.exclude.median_tokens, "hf", [5, 0])
    assert hf.special_ids == (0, 5) and hf.norm_factor == HF_NORM_FACTOR
    p = load_params(write(tmp_path, lambda r: r["activations"].update(
        exclude={"special_tokens": False, "norm_factor": 4}))).activations.exclude
    chosen = exclusion(p.special_tokens, p.norm_factor, p.median_tokens, "hf", [0])
    assert chosen.special_ids == () and chosen.norm_factor == 4.0


def test_estimates_count_the_stored_and_the_read_item_size(tmp_path):
    """A float32 store doubles the cache's shards; a bfloat16 one stores 2 bytes but is read as float32."""
    from monosemantic.resources import activation_cache, sae_training

    def sizes(dtype):
        params = load_params(write(tmp_path, lambda r: r["activations"].update(dtype=dtype)))
        shards = activation_cache(params, 4096).parts[0]
        window = next(p for p in sae_training(params, 4096, 0).parts if "shuffle window" in p.what)
        return shards.bytes, window.bytes

    (s16, w16), (sbf, wbf), (s32, w32) = sizes("float16"), sizes("bfloat16"), sizes("float32")
    assert sbf == s16 and s32 > 1.9 * s16  # the acts dominate the shards (4096 wide)
    assert wbf == w32 == 2 * w16
