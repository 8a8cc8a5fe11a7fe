
import re
import typing

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


# ---------------------------------------------------------------- keys DVC reads by name
def dvc_yaml_names() -> tuple[set[str], set[str]]:
    """The params keys dvc.yaml names (`params:` lists, `${...}`; "sae.${item.arch}" as each architecture),
    and the top directory of every path its stages write."""
    from monosemantic.params import Architecture

    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    keys, outputs = set(), set()

    def strings(node):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from strings(k)
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node

    for stage in dvc["stages"].values():
        body = stage.get("do", stage)
        for key in body.get("params", []):
            keys.update(key.replace("${item.arch}", arch) for arch in typing.get_args(Architecture))
        for kind in ("outs", "metrics", "plots"):
            outputs.update(next(iter(out)) if isinstance(out, dict) else out for out in body.get(kind, []))
    for text in strings(dvc["stages"]):
        keys.update(name for name in re.findall(r"\$\{([^}]+)\}", text) if not name.startswith("item"))
    return keys, {out.split("/")[0] for out in outputs}


def test_dvc_tracked_keys_cover_every_key_dvc_yaml_names():
    """DVC fails mid-pipeline on a key it tracks that params.yaml omits: load_params must know them all."""
    from monosemantic.params import DVC_TRACKED_KEYS, Architecture, Params

    keys, _ = dvc_yaml_names()
    assert {"compute.precision", "corpus.files_root", "sae.jumprelu", "universality.dict_sizes"} <= keys  # parsed
    tracked = {key.format(arch=arch) for key in DVC_TRACKED_KEYS for arch in typing.get_args(Architecture)}
    sections = {key for key in keys if "." not in key}
    assert all(Params.model_fields[s].is_required() for s in sections)  # a section is never left to a default
    assert keys - sections <= tracked, keys - sections - tracked


def test_pipeline_outputs_cover_every_directory_dvc_yaml_writes():
    from monosemantic.params import PIPELINE_OUTPUTS

    _, outputs = dvc_yaml_names()
    assert outputs and outputs <= set(PIPELINE_OUTPUTS), outputs - set(PIPELINE_OUTPUTS)


@pytest.mark.parametrize("mutate, missing, defaults", [
    (lambda r: r["compute"].pop("precision"), "compute.precision: DVC tracks it", "default: compute.precision: fp32)"),
    (lambda r: r["corpus"].pop("files_root"), "corpus.files_root: DVC tracks it", "corpus.files_root: texts"),
    (lambda r: r["universality"].pop("dict_sizes"), "universality.dict_sizes:", "universality.dict_sizes: []"),
    (lambda r: r["sae"].pop("architectures"), "sae.architectures:", "sae.architectures: [standard]"),
    (lambda r: r["sae"].pop("topk"), "sae.topk:", "sae.topk: {lr: null, k: 32, aux_k: null, aux_coefficient: 0.03125}"),
    (lambda r: r["sae"]["architectures"].append("jumprelu"), "sae.jumprelu:",
     "sae.jumprelu: {lr: null, l0_coefficient: 0.001, bandwidth: 0.001, threshold_init: 0.001}"),
    (lambda r: (r["compute"].pop("precision"), r["sae"]["architectures"].append("jumprelu")),
     "is missing compute.precision, sae.jumprelu: DVC tracks these by name (dvc.yaml), so write them out",
     "defaults: compute.precision: fp32; sae.jumprelu: {"),
])
def test_a_key_dvc_tracks_must_be_written_out_though_the_schema_has_a_default(tmp_path, mutate, missing, defaults):
    """Was: loaded with the default, then `dvc repro` failed "Parameters 'compute.precision' are missing"
    after earlier stages had run, or "Could not find 'corpus.files_root'" with no fix named."""
    msg = str(pytest.raises(ParamsError, load_params, write(tmp_path, mutate)).value)
    assert msg.startswith(f"{tmp_path / 'params.yaml'} is missing ") and missing in msg and defaults in msg, msg


def test_a_key_dvc_tracks_is_listed_beside_the_other_problems(tmp_path):
    def both(r):
        r["compute"].pop("precision")
        r["model"]["lr"] = "fast"

    msg = str(pytest.raises(ParamsError, load_params, write(tmp_path, both)).value)
    assert "invalid (2 problem(s))" in msg and "model.lr: got 'fast'" in msg
    assert ("compute.precision: required key is missing: dvc.yaml tracks it by name, so write it out "
            "(default: fp32)") in msg


def test_an_unlisted_architecture_may_be_left_to_its_defaults(tmp_path):
    def standard_only(r):
        r["sae"]["architectures"] = ["standard"]
        del r["sae"]["topk"]

    assert load_params(write(tmp_path, standard_only)).sae.topk.k == 32


# ---------------------------------------------------------------- seeds
SEEDS = ["corpus", "tokenize", "model", "sae.train", "evaluate", "universality", "interpret"]


def set_seed(raw: dict, section: str, seed) -> None:
    node = raw
    for part in section.split("."):
        node = node[part]
    node["seed"] = seed


@pytest.mark.parametrize("section", SEEDS)
@pytest.mark.parametrize("seed, expected", [
    (-1, "Input should be greater than or equal to 0"),   # was: numpy "expected non-negative integer"
    (2**64, "Input should be less than 9223372036854775808"),  # was: torch "Overflow when unpacking long long"
    (2**63, "Input should be less than 9223372036854775808"),
])
def test_every_seed_is_one_numpy_and_torch_accept(tmp_path, section, seed, expected):
    msg = str(pytest.raises(ParamsError, load_params, write(tmp_path, lambda r: set_seed(r, section, seed))).value)
    assert f"{section}.seed: got {seed}; {expected}" in msg, msg


@pytest.mark.parametrize("section", SEEDS)
def test_the_largest_seed_is_accepted(tmp_path, section):
    params = load_params(write(tmp_path, lambda r: set_seed(r, section, 2**63 - 1)))
    node = params
    for part in section.split("."):
        node = getattr(node, part)
    assert node.seed == 2**63 - 1


# ---------------------------------------------------------------- the directory DVC watches
@pytest.mark.parametrize("root, expected", [
    (".", "is the project root, which holds .dvcignore"),           # was: ".dvcignore file should not be in ..."
    ("./", "is the project root"),
    ("texts/..", "is the project root"),
    ("data", "is data/, where the pipeline writes its outputs"),   # was: "Same item(s) are defined as both ..."
    ("data/texts", "lies in data/"),
    ("models/texts", "lies in models/"),
    ("reports", "is reports/"),
    ("metrics/x", "lies in metrics/"),
    ("plots", "is plots/"),
    ("texts/../data/x", "lies in data/"),
])
def test_files_root_may_not_be_the_project_root_or_hold_or_lie_in_outputs(tmp_path, root, expected):
    msg = str(pytest.raises(ParamsError, load_params, write(tmp_path, lambda r: r["corpus"].update(files_root=root)))
              .value)
    assert f"corpus.files_root: got {root!r}; {expected}" in msg and "such as texts" in msg, msg


def test_an_absolute_files_root_is_checked_against_the_project_root(tmp_path):
    """The project root is params.yaml's directory: here tmp_path."""
    def root(path):
        return write(tmp_path, lambda r: r["corpus"].update(files_root=str(path)))

    assert "is the project root" in str(pytest.raises(ParamsError, load_params, root(tmp_path)).value)
    assert "lies in data/" in str(pytest.raises(ParamsError, load_params, root(tmp_path / "data/texts")).value)
    assert load_params(root(tmp_path / "texts")).corpus.files_root == str(tmp_path / "texts")


def test_a_files_root_that_links_into_the_outputs_is_refused(tmp_path):
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "texts").symlink_to(tmp_path / "data/raw")
    msg = str(pytest.raises(ParamsError, load_params, write(tmp_path, lambda r: r["corpus"].update(files_root="texts")))
              .value)
    assert "corpus.files_root: got 'texts'; lies in data/" in msg, msg


def test_a_missing_section_is_named_once(tmp_path):
    msg = str(pytest.raises(ParamsError, load_params, write(tmp_path, lambda r: r.pop("compute"))).value)
    assert "compute: required key is missing" in msg and "compute.precision" not in msg, msg


@pytest.mark.parametrize("root", ["texts", "texts/pile", "database", "my_data/x", "../shared/texts", "/srv/texts"])
def test_files_root_of_its_own_is_accepted_whether_or_not_it_exists(tmp_path, root):
    assert load_params(write(tmp_path, lambda r: r["corpus"].update(files_root=root))).corpus.files_root == root


# ---------------------------------------------------------------- resources, when only reading
def test_the_memory_check_can_be_skipped_to_read_a_workspace(tmp_path, machine):
    """`monosemantic audit` on a machine smaller than the training one: was "asks for more memory"."""
    from monosemantic.audit import _read_params

    def huge(r):
        r["sae"]["dict_sizes"] = [128, 1_000_000]
        r["sae"]["train"]["batch_size"] = 8192

    path = write(tmp_path, huge)
    assert "more memory than this machine has" in str(pytest.raises(ParamsError, load_params, path).value)
    assert load_params(path, check_resources=False).sae.dict_sizes == [128, 1_000_000]
    assert _read_params(path)["sae"]["dict_sizes"] == [128, 1_000_000]


# ---------------------------------------------------------------- across sections
@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r["activations"].update(max_train_tokens=16),
     ("activations.max_train_tokens=16 is less than one context of tokenize.ctx=32 tokens, so its stage would read "
      "nothing: raise it to at least 32, or lower tokenize.ctx")),
    (lambda r: r["activations"].update(max_eval_tokens=31), "activations.max_eval_tokens=31 is less than one context"),
    (lambda r: r["evaluate"].update(max_tokens=8), "evaluate.max_tokens=8 is less than one context"),
    (lambda r: r["interpret"].update(max_tokens=8), "interpret.max_tokens=8 is less than one context"),
    (lambda r: r["universality"].update(dict_sizes=[128], max_tokens=8), "universality.max_tokens=8 is less than"),
    (lambda r: r["tokenize"].update(ctx=10_000),
     ("activations.max_eval_tokens=8000, evaluate.max_tokens=8000 are less than one context of tokenize.ctx=10000 "
      "tokens, so their stages would read nothing: raise them to at least 10000")),
    (lambda r: r["activations"].update(max_train_tokens=500),  # 15 contexts of 32: 480 activations
     ("sae.train.batch_size=512 is more than the 480 training activations activations.max_train_tokens=500 caches "
      "(whole contexts of tokenize.ctx=32), so train_sae could not fill one batch: raise activations.max_train_tokens "
      "to at least 512, or lower sae.train.batch_size")),
    (lambda r: r["sae"]["train"].update(batch_size=40_001, reader_lanes=1), "sae.train.batch_size=40001 is more than"),
])
def test_budgets_too_small_for_a_context_or_a_batch_fail_before_work(tmp_path, mutate, expected):
    """Was: cache_activations, evaluate, interpret, universality or train_sae failed after the stages before it ran."""
    msg = str(pytest.raises(ParamsError, load_params, write(tmp_path, mutate)).value)
    assert expected in msg, msg


def test_budgets_of_whole_contexts_and_batches_are_enough(tmp_path):
    def exact(r):
        r["activations"].update(max_train_tokens=512, max_eval_tokens=32)
        r["evaluate"]["max_tokens"] = r["interpret"]["max_tokens"] = 32
        r["universality"]["max_tokens"] = 8  # unused while universality.dict_sizes is []

    params = load_params(write(tmp_path, exact))
    assert params.sae.train.batch_size == params.activations.max_train_tokens == 512
