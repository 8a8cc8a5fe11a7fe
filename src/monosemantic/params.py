"""The one schema of params.yaml.

Every stage validates the whole file before it does any work, so a typo anywhere fails
fast, names the key path and says what is allowed, and leaves existing outputs alone.
"""

from __future__ import annotations

import ipaddress
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

import yaml
from pydantic import (BaseModel, ConfigDict, Field, StrictInt, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from monosemantic import storage
from monosemantic.errors import UserError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# [0, 2**63) is what numpy's and torch's generators both accept: another seed would fail only once a stage runs.
Seed = Annotated[int, Field(ge=0, lt=2**63)]


# ---------------------------------------------------------------- corpus
_GLOB_MAGIC = re.compile(r"[*?[]")
# The directories dvc.yaml's stages write (outs, metrics, plots); tests/test_params.py checks it against dvc.yaml.
PIPELINE_OUTPUTS = ("data", "models", "reports", "metrics", "plots")


class BuiltinSource(_Section):
    """Real text shipped with the Python interpreter: works offline, everywhere."""

    kind: Literal["builtin"]
    weight: float = Field(1.0, gt=0)
    parts: list[Literal["docs", "docstrings", "code"]] = Field(
        default=["docs", "docstrings", "code"], min_length=1
    )


class FilesSource(_Section):
    kind: Literal["files"]
    weight: float = Field(1.0, gt=0)
    paths: list[str] = Field(min_length=1, description="globs of .txt, .jsonl or .parquet files ('~' expands); "
                                                        "each must lie under corpus.files_root")
    text_field: str = "text"
    encoding_errors: Literal["error", "replace", "skip"] = "error"


class HFSource(_Section):
    kind: Literal["hf"]
    weight: float = Field(1.0, gt=0)
    path: str = Field(description="dataset name on the hub, or a builder such as 'parquet'")
    name: str | None = None
    data_files: list[str] | None = None
    split: str = "train"
    revision: str | None = None
    text_field: str = "text"


class SyntheticSource(_Section):
    """Seeded domains planted so that later stages can check the SAE finds them."""

    kind: Literal["synthetic"]
    weight: float = Field(1.0, gt=0)
    domains: list[Literal["base64", "hex", "dna"]] = Field(
        default=["base64", "hex", "dna"], min_length=1
    )


Source = Annotated[
    Union[BuiltinSource, FilesSource, HFSource, SyntheticSource], Field(discriminator="kind")
]


class CorpusParams(_Section):
    sources: list[Source] = Field(min_length=1)
    max_chars: int = Field(gt=0, description="total size cap, shared by sources in proportion to weight")
    seed: Seed = 0
    shard_docs: int = Field(5000, gt=0, description="documents per parquet shard")
    files_root: str = Field(
        "texts", min_length=1,
        description="the directory holding every `files` source's inputs: dvc.yaml makes it a dependency of the "
                    "corpus stage, so editing, adding or removing a file under it reruns corpus. Absolute, or "
                    "relative to the project root; DVC follows no symbolic link to a directory inside it")

    @field_validator("files_root")
    @classmethod
    def _trackable_root(cls, root: str, info: ValidationInfo) -> str:
        # DVC reads this path from params.yaml as written: it expands no '~' and no glob.
        if root.startswith("~"):
            raise ValueError(f"DVC does not expand '~': write the absolute path, {os.path.expanduser(root)!r}")
        if _GLOB_MAGIC.search(root) or not root.strip("/"):
            raise ValueError("must be one directory (no wildcards, not '/'): the parent of every files source")
        # A dependency DVC cannot collect: the root holds .dvcignore, and a dependency may not be an output.
        where = _in_project(root, (info.context or {}).get("project"))
        if where == ".":
            raise ValueError("is the project root, which holds .dvcignore and the pipeline's outputs, so every dvc "
                             "command would fail: use a directory of its own, such as texts")
        top = where.split(os.sep)[0] if where is not None else None
        if top in PIPELINE_OUTPUTS:
            raise ValueError(f"{'is' if where == top else 'lies in'} {top}/, where the pipeline writes its outputs, "
                             "and DVC refuses a path that is both a dependency and an output: use a directory of its "
                             f"own outside {', '.join(d + '/' for d in PIPELINE_OUTPUTS)}, such as texts")
        return root

    @model_validator(mode="after")
    def _files_under_root(self):
        """A files source outside files_root would be invisible to DVC: edited inputs, stale corpus."""
        root = os.path.realpath(self.files_root)
        bases = {(i, j, pattern): os.path.realpath(_glob_root(os.path.expanduser(pattern)) or ".")
                 for i, src in enumerate(self.sources) if isinstance(src, FilesSource)
                 for j, pattern in enumerate(src.paths)}
        outside = [f"corpus.sources.{i}.paths.{j} ({pattern!r})" for (i, j, pattern), base in bases.items()
                   if os.path.commonpath([root, base]) != root]
        if outside:
            verb = "lies" if len(outside) == 1 else "lie"
            raise ValueError(
                f"{', '.join(outside)} {verb} outside corpus.files_root {self.files_root!r}, the directory DVC "
                "watches so that an edited, added or removed file reruns the corpus stage; set corpus.files_root: "
                f"{os.path.commonpath(list(bases.values()))} (a directory holding every files source), or move "
                "the files under it")
        return self


def _in_project(root: str, project: str | None) -> str | None:
    """`root` relative to the project root, symbolic links resolved where the root is known; None if it
    lies outside, or is absolute and the root unknown."""
    if project is not None:
        root = os.path.relpath(os.path.realpath(os.path.join(project, root)), os.path.realpath(project))
    elif os.path.isabs(root):
        return None
    root = os.path.normpath(root)
    return None if root == os.pardir or root.startswith(os.pardir + os.sep) else root


def _glob_root(pattern: str) -> str:
    """The static part of a glob, before its first wildcard: the directory every match lies under."""
    parts = Path(pattern).parts
    static = next((k for k, part in enumerate(parts) if _GLOB_MAGIC.search(part)), len(parts))
    return str(Path(*parts[:static])) if static else ""


# ---------------------------------------------------------------- tokenizer / tokenize
class TokenizerParams(_Section):
    kind: Literal["train", "file"] = "train"
    vocab_size: int = Field(4096, ge=260, le=1_000_000)
    min_frequency: int = Field(2, ge=1)
    path: str | None = Field(None, description="an existing tokenizer.json, when kind is 'file'")
    separator: str = "<|endoftext|>"

    @model_validator(mode="after")
    def _path_for_file(self):
        if self.kind == "file" and not self.path:
            raise ValueError("kind 'file' needs tokenizer.path (a tokenizer.json)")
        return self


class TokenizeParams(_Section):
    ctx: int = Field(128, ge=2, le=65536)
    eval_fraction: float = Field(0.05, gt=0, lt=1)
    seed: Seed = 0


# ---------------------------------------------------------------- model
class HFModelParams(_Section):
    name_or_path: str
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class ModelParams(_Section):
    source: Literal["builtin", "hf"] = "builtin"
    hook: str = Field("mlp.act", description="dotted path of the module whose output is cached")
    d_model: int = Field(128, gt=0)
    n_heads: int = Field(4, gt=0)
    d_mlp: int = Field(512, gt=0)
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(32, ge=1, description="sequences per step")
    lr: float = Field(3e-3, gt=0, le=1)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    eval_tokens: int = Field(200_000, gt=0)
    log_every: int = Field(20, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    seed: Seed = 0
    hf: HFModelParams | None = None

    @model_validator(mode="after")
    def _shape(self):
        if self.source == "hf" and self.hf is None:
            raise ValueError("source 'hf' needs model.hf.name_or_path")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        return self


# ---------------------------------------------------------------- activations
class ExcludeParams(_Section):
    """Positions SAE training, evaluation and interpretation leave out (activations/exclude.py). In real
    models BOS, separators and attention sinks have outsized norms and would otherwise spend features."""

    special_tokens: Literal["auto"] | bool = Field(
        "auto", description="leave out the tokenizer's special tokens (BOS, EOS, separators); auto: for model.source hf")
    norm_factor: Literal["auto"] | float | None = Field(
        "auto", description="leave out positions whose activation norm exceeds this multiple of the median norm "
                            "(attention sinks); null: off; auto: 10 for model.source hf, off for the built-in model")
    median_tokens: int = Field(65_536, gt=0, description="the first this many cached tokens set the median norm")

    @field_validator("special_tokens", mode="before")
    @classmethod
    def _switch(cls, value):
        if value != "auto" and not isinstance(value, bool):
            raise ValueError("must be auto (on for a Hugging Face model), true or false")
        return value

    @field_validator("norm_factor", mode="before")
    @classmethod
    def _factor(cls, value):
        if value == "auto" or value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 1:
            raise ValueError("must be auto, null (off) or a number above 1: a position is left out when its "
                             "activation norm exceeds this multiple of the median norm (e.g. 10)")
        return float(value)


class ActivationsParams(_Section):
    store: str = Field("data/activations.zarr", description="where the store lives: data/activations.zarr (DVC "
                       "caches it) or an object-store URL, s3://bucket/prefix/activations.zarr (then "
                       "data/activations.zarr holds its manifest); credentials come from the environment")
    max_train_tokens: int = Field(gt=0)
    max_eval_tokens: int = Field(gt=0)
    batch_seqs: int = Field(64, gt=0, description="sequences per forward pass")
    chunk_seqs: int = Field(16, gt=0, description="sequences per Zarr chunk (aim for 1-4 MB)")
    shard_chunks: int = Field(16, gt=0, description="chunks per shard file")
    compressor: Literal["lz4", "zstd", "none"] = "lz4"
    clevel: int = Field(5, ge=0, le=9)
    dtype: Literal["float16", "bfloat16", "float32"] = Field(
        "float16", description="of the stored activations: float16 holds |a| <= 65504; bfloat16 has float32's "
                               "range in 2 bytes (3 significant digits; stored as its bits, uint16); float32, 4 bytes")
    exclude: ExcludeParams = ExcludeParams()

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        try:
            return storage.check(value)
        except storage.SecretInURL as e:  # the message must not repeat the value
            raise PydanticCustomError("secret_in_value", str(e)) from None


# ---------------------------------------------------------------- sparse autoencoders
class SAETrainParams(_Section):
    """Optimisation shared by every dictionary (a change retrains them all)."""

    lr: float = Field(1e-3, gt=0, le=1)
    batch_size: int = Field(4096, ge=1)
    steps: int = Field(ge=1)
    l1_warmup_steps: int = Field(0, ge=0, description="linear warm-up of each architecture's sparsity coefficient")
    lr_warmup_steps: int = Field(0, ge=0)
    lr_decay_steps: int = Field(0, ge=0, description="linear decay to zero over the last N steps")
    dead_window: int = Field(12_500, ge=1, description="steps without firing after which a latent is dead")
    window_chunks: int = Field(64, ge=1, description="activation chunks shuffled together by the reader")
    reader_lanes: int = Field(1, ge=1, le=4096, description="independent shuffled streams a global batch is "
                              "drawn from; data-parallel ranks each read only their own, so a multiple of "
                              "the number of processes divides the reading among them (1: every rank reads all)")
    log_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    seed: Seed = 0

    @model_validator(mode="after")
    def _lanes(self):
        if self.batch_size % self.reader_lanes:
            raise ValueError(f"batch_size={self.batch_size} must be a multiple of reader_lanes={self.reader_lanes} "
                             "(each lane gives an equal share of every batch)")
        return self


# One section per architecture (sae.<name>): its recipe's own hyper-parameters, so that changing one
# retrains only that architecture's dictionaries. `lr` overrides sae.train.lr for it.
class _Architecture(_Section):
    lr: float | None = Field(None, gt=0, le=1, description="this architecture's learning rate (null: sae.train.lr)")


class StandardParams(_Architecture):
    l1_coefficient: float = Field(gt=0, description="λ on Σ_features |f| (paper: 0.004 at its activation scale)")
    resample: bool = True
    resample_steps: list[int] = Field(default_factory=list, description="paper: 25k, 50k, 75k, 100k of 1M")
    resample_inputs: int = Field(819_200, ge=1, description="inputs whose loss weights the draw")


class Standard2024Params(_Architecture):
    l1_coefficient: float = Field(5.0, gt=0, description="λ on Σ_i f_i·‖W_dec,i‖, with inputs scaled to mean "
                                  "norm √d_in and the squared error summed over dimensions (Anthropic, April 2024)")
    decoder_init_norm: float = Field(0.1, gt=0, description="initial norm of every decoder row (paper: 0.05 to 1)")
    pre_encoder_bias: bool = Field(False, description="subtract b_dec before the encoder (the 2023 recipe's and "
                                   "SAELens's; the paper drops it)")
    scale_inputs: bool = Field(True, description="scale inputs to mean norm √d_in (the paper's; SAELens's "
                               "standard trainer does not)")


class TopKParams(_Architecture):
    k: int = Field(32, ge=1, description="latents kept per input")
    aux_k: int | None = Field(None, ge=1, description="dead latents in each input's AuxK reconstruction "
                              "(null: d_in / 2, Gao et al.'s)")
    aux_coefficient: float = Field(1 / 32, ge=0, description="α on the AuxK loss (Gao et al.: 1/32)")


class BatchTopKParams(TopKParams):
    threshold_beta: float = Field(0.999, ge=0, lt=1, description="the inference threshold θ: the running mean of "
                                  "each batch's smallest kept activation, an EMA with this factor after "
                                  "1/(1 - factor) batches")


class JumpReLUParams(_Architecture):
    l0_coefficient: float = Field(1e-3, gt=0, description="λ on ‖f‖₀, with inputs scaled to mean squared norm 1 "
                                  "and the squared error summed over dimensions (Rajamanoharan et al. 2024)")
    bandwidth: float = Field(1e-3, gt=0, description="ε, the straight-through estimators' kernel width (paper: 0.001)")
    threshold_init: float = Field(1e-3, gt=0, description="every latent's initial threshold θ (paper: 0.001). log θ "
                                  "moves by about the learning rate per step, so a run of a few thousand steps "
                                  "needs θ to start nearer its final size to become sparse")


class MatryoshkaParams(BatchTopKParams):
    prefixes: list[float] = Field(default_factory=lambda: [1 / 16, 1 / 8, 1 / 4, 1 / 2], min_length=1,
                                  description="nested dictionary prefixes that each reconstruct, as fractions of "
                                              "the dictionary size (the whole dictionary is always the last)")

    @field_validator("prefixes")
    @classmethod
    def _increasing(cls, prefixes: list[float]) -> list[float]:
        if any(not 0 < f < 1 for f in prefixes) or prefixes != sorted(set(prefixes)):
            raise ValueError(f"{prefixes} must be increasing fractions strictly between 0 and 1")
        return prefixes


MAX_DICT_SIZE = 1 << 24  # 16.8M features: 2^7 times the paper's largest; memory is checked separately

DictSize = Annotated[StrictInt, Field(ge=1, le=MAX_DICT_SIZE)]
Architecture = Literal["standard", "standard_2024", "topk", "batchtopk", "jumprelu", "matryoshka"]
_TRAINER_KEYS = {"lr", "resample", "resample_steps", "resample_inputs"}  # read by the trainer, not the module


class SAEParams(_Section):
    dict_sizes: list[DictSize] = Field(min_length=1, description="dictionary sizes, trained for every architecture")
    architectures: list[Architecture] = Field(["standard"], min_length=1, description="one train_sae@<arch>-<size> "
                                              "stage per architecture and size")
    train: SAETrainParams
    standard: StandardParams
    standard_2024: Standard2024Params = Standard2024Params()
    topk: TopKParams = TopKParams()
    batchtopk: BatchTopKParams = BatchTopKParams()
    jumprelu: JumpReLUParams = JumpReLUParams()
    matryoshka: MatryoshkaParams = MatryoshkaParams()

    @field_validator("dict_sizes", "architectures")
    @classmethod
    def _unique(cls, values: list) -> list:
        """Each (architecture, size) names one dictionary, its DVC stages and its output directories."""
        dupes = sorted({str(v) for v in values if values.count(v) > 1})
        if dupes:
            raise ValueError(f"{', '.join(dupes)} listed twice; each names DVC stages and output directories: "
                             "remove the duplicate")
        return values

    @model_validator(mode="after")
    def _fits(self):
        late = [s for s in self.standard.resample_steps if not 0 < s < self.train.steps]
        if late:
            raise ValueError(f"standard.resample_steps {late} must lie strictly between 0 and "
                             f"train.steps={self.train.steps}")
        smallest = min(self.dict_sizes)
        for arch in self.architectures:
            k = getattr(getattr(self, arch), "k", None)
            if k is not None and k >= smallest:
                raise ValueError(f"{arch}.k={k} must be below the smallest dictionary size {smallest}")
        return self

    def names(self) -> list[str]:
        """Every dictionary's name, ``<architecture>-<size>``: its stages are train_sae@<name> etc."""
        return [dictionary_name(a, s) for a in self.architectures for s in self.dict_sizes]

    def options(self, architecture: str) -> dict:
        """The architecture module's constructor arguments."""
        return getattr(self, architecture).model_dump(exclude=_TRAINER_KEYS)


def dictionary_name(architecture: str, size: int) -> str:
    return f"{architecture}-{size}"


# ---------------------------------------------------------------- evaluation and analyses
class EvaluateParams(_Section):
    max_tokens: int = Field(200_000, gt=0, description="held-out tokens evaluated (at most the cached eval split)")
    batch_seqs: int = Field(32, gt=0, description="contexts per forward pass")
    mean_ablation_samples: int = Field(65_536, gt=0, description="training activations averaged for mean ablation")
    ultralow_density: float = Field(1e-6, gt=0, lt=1, description="paper: 1e-6; raised to 1/n_eval_tokens if finer")
    dense_density: float = Field(0.1, gt=0, le=1)
    histogram_bins: int = Field(40, ge=2, le=1000)
    seed: Seed = 0


class CompareParams(_Section):
    family_cosine: float = Field(
        0.6, gt=0, lt=1, description="a larger dictionary's feature joins the family of its nearest smaller "
                                     "feature when their decoder cosine is at least this")
    top_families: int = Field(20, ge=0, description="largest split families listed in the report")


class UniversalityParams(_Section):
    """A second subject model that differs only in its seed, with its own SAE of one size."""

    dict_sizes: list[DictSize] = Field(
        default_factory=list, max_length=1, description="[] turns the analysis off; [1024] runs it at that size")
    seed: Seed = Field(1, description="the second model's seed (model.seed is the first's)")
    max_tokens: int = Field(50_000, gt=0, description="shared held-out tokens the activations are correlated on")


class Proxy(_Section):
    """A hypothesis detector: which tokens should a feature for this hypothesis fire on?"""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    regex: str | None = Field(None, description="a token is positive where a match overlaps it (in its context's text)")
    callable: str | None = Field(None, description="'module:function' taking a context's text, returning "
                                                   "(start, end) character spans")

    @model_validator(mode="after")
    def _one_detector(self):
        if (self.regex is None) == (self.callable is None):
            raise ValueError(f"proxy {self.name!r} needs exactly one of regex or callable")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as e:
                raise ValueError(f"proxy {self.name!r}: regex does not compile: {e}") from None
        elif not re.fullmatch(r"[\w.]+:[\w.]+", self.callable):
            raise ValueError(f"proxy {self.name!r}: callable must look like 'package.module:function'")
        return self


class OpenAIParams(_Section):
    """Any OpenAI-compatible chat endpoint: OpenAI itself, or a local vLLM, llama.cpp or Ollama server.

    The endpoint receives the key: plain HTTP to another machine would show it to the network,
    so that takes an explicit allow_insecure_http (loopback servers need none).
    """

    base_url: str = Field("https://api.openai.com/v1", pattern=r"^https?://[^/?#]+")
    model: str = "gpt-4o-mini"
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the key; "
                                                                  "null for a server that needs none")
    allow_insecure_http: bool = Field(False, description="send the key over plain http to a non-loopback host")
    max_concurrency: int = Field(4, ge=1, le=64)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0, le=20)
    backoff_s: float = Field(1.0, ge=0, description="first retry delay, doubled each time (429 Retry-After wins)")
    cache_dir: str = Field(".cache/llm", description="replies cached by prompt hash: a re-run costs nothing")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError("must be the name of an environment variable (letters, digits and _), e.g. "
                             "OPENAI_API_KEY; the key itself never goes in params.yaml")
        return name

    @model_validator(mode="after")
    def _key_not_in_clear(self):
        url = urlsplit(self.base_url)
        if url.scheme == "http" and self.api_key_env is not None and not self.allow_insecure_http \
                and not _is_loopback(url.hostname or ""):
            raise ValueError(
                f"interpret.openai.base_url {self.base_url!r} is plain http to another host, and the key in "
                f"${self.api_key_env} would travel unencrypted: use https, set api_key_env: null for a server that "
                "needs no key, or set interpret.openai.allow_insecure_http: true if this network is trusted")
        return self


def _is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: a server on this machine (a local vLLM, llama.cpp, Ollama)."""
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class InterpretParams(_Section):
    max_tokens: int = Field(500_000, gt=0, description="training tokens scanned (at most the cached train split)")
    batch_tokens: int = Field(8192, gt=0)
    features: int = Field(200, ge=0, description="features sampled at random for explanation; 0 = every one")
    neurons: bool = Field(True, description="explain every MLP neuron too, for the features-vs-neurons comparison")
    min_contexts: int = Field(5, ge=1, description="a unit needs this many activating contexts on each side "
                                                   "(explain / held out) to be explained")
    heldout_fraction: float = Field(0.5, gt=0, lt=1, description="documents whose examples are kept for scoring")
    split_block_contexts: int = Field(8, ge=1, description="documents starting within one block of this many "
                                                           "contexts go to the same side; the context where the "
                                                           "side changes is used on neither")
    window_before: int = Field(20, ge=0)
    window_after: int = Field(8, ge=0)
    top_examples: int = Field(10, ge=1)
    intervals: int = Field(10, ge=1, description="equal-width activation intervals, as in the paper")
    interval_examples: int = Field(2, ge=0, description="examples per interval")
    random_examples: int = Field(10, ge=0, description="random contexts per side, as in the paper")
    top_tokens: int = Field(3, ge=0, description="the unit's top tokens, each shown in other contexts")
    token_contexts: int = Field(2, ge=0, description="other contexts per top token")
    histogram_bins: int = Field(30, ge=2, le=1000)
    logit_tokens: int = Field(10, ge=1, description="boosted and suppressed tokens listed")
    backend: Literal["baseline", "openai"] = "baseline"
    openai: OpenAIParams = OpenAIParams()
    proxies: list[Proxy] = Field(default_factory=list)
    allow_callables: bool = Field(False, description="let `callable` proxies import and run their code on corpus "
                                                     "text; off, only regex proxies are accepted")
    bootstrap: int = Field(2000, ge=100)
    seed: Seed = Field(0, description="seeds the sample, the examples and the scoring order")

    @model_validator(mode="after")
    def _checks(self):
        names = [p.name for p in self.proxies]
        if len(set(names)) != len(names):
            raise ValueError(f"proxy names {names} must be unique")
        code = [f"interpret.proxies.{i}.callable ({p.callable!r})" for i, p in enumerate(self.proxies) if p.callable]
        if code and not self.allow_callables:
            raise ValueError(
                f"{', '.join(code)} would import and run that code on corpus text: set "
                "interpret.allow_callables: true if you trust it as you trust this project's code, or use a regex")
        return self


# ---------------------------------------------------------------- where torch computes
class ComputeParams(_Section):
    """Device, precision and processes for every torch stage. Results do not depend on the device or
    the number of processes beyond floating-point order, so only `precision` is a DVC dependency
    (what spans the batch spans the ranks: BatchTopK's selection, AuxK's normaliser)."""

    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
                        description="auto (CUDA when present, else CPU) | cpu | cuda | cuda:N | mps; "
                                    "cuda under torchrun: one GPU per local rank")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast around forward passes; weights and optimiser state stay fp32")
    threads: int | None = Field(None, ge=1, le=1024, description="torch CPU threads per process; null: "
                                                                  "the cores shared among a node's ranks")
    nnodes: int = Field(1, ge=1, le=4096, description="machines; > 1 needs a shared workspace")
    nproc_per_node: int = Field(1, ge=1, le=1024, description="processes per machine (GPUs per node)")
    rdzv_endpoint: str = Field("127.0.0.1:29500", pattern=r"^[\w.\-]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$",
                               description="host:port of the first node, where every node's torchrun meets")
    timeout_s: float = Field(600, gt=0, description="a collective waiting longer than this (a rank died "
                                                    "elsewhere) ends the stage with an error")


# Keys inside a section that dvc.yaml names (`params:` lists, `${...}`): DVC reads them from params.yaml as
# written, not with the schema's defaults, so each must be written out too. "sae.{arch}" is each of
# sae.architectures (train_sae's "sae.${item.arch}"). tests/test_params.py checks this against dvc.yaml.
DVC_TRACKED_KEYS = ("compute.precision", "corpus.files_root", "sae.dict_sizes", "sae.architectures", "sae.train",
                    "sae.standard", "sae.{arch}", "universality.dict_sizes")


class Params(_Section):
    # Every section is required: DVC tracks them by name, so each must be written out.
    compute: ComputeParams
    corpus: CorpusParams
    tokenizer: TokenizerParams
    tokenize: TokenizeParams
    model: ModelParams
    activations: ActivationsParams
    sae: SAEParams
    evaluate: EvaluateParams
    compare: CompareParams
    universality: UniversalityParams
    interpret: InterpretParams

    @model_validator(mode="after")
    def _lanes_per_process(self):
        world, lanes = self.compute.nnodes * self.compute.nproc_per_node, self.sae.train.reader_lanes
        if lanes > 1 and lanes % world:
            raise ValueError(f"sae.train.reader_lanes={lanes} cannot be shared by {world} processes "
                             f"(compute.nnodes x compute.nproc_per_node): use a multiple of {world}, or 1")
        return self

    @model_validator(mode="after")
    def _universality_size(self):
        missing = [s for s in self.universality.dict_sizes if s not in self.sae.dict_sizes]
        if missing:
            raise ValueError(f"universality.dict_sizes {missing} must be among sae.dict_sizes {self.sae.dict_sizes}")
        if self.universality.dict_sizes and "standard" not in self.sae.architectures:
            raise ValueError("universality compares standard dictionaries: add 'standard' to sae.architectures")
        if self.universality.dict_sizes and self.model.source != "builtin":
            raise ValueError("universality trains a second built-in model: it needs model.source 'builtin'")
        if self.universality.dict_sizes and self.universality.seed == self.model.seed:
            raise ValueError(f"universality.seed={self.universality.seed} equals model.seed: the second model "
                             "would be the first; choose another seed")
        return self

    @model_validator(mode="after")
    def _token_budgets(self):
        """Every stage reads whole contexts of tokenize.ctx: a budget below one reads nothing, and fails that stage."""
        ctx = self.tokenize.ctx
        budgets = {"activations.max_train_tokens": self.activations.max_train_tokens,
                   "activations.max_eval_tokens": self.activations.max_eval_tokens,
                   "evaluate.max_tokens": self.evaluate.max_tokens, "interpret.max_tokens": self.interpret.max_tokens}
        if self.universality.dict_sizes:  # its stage exists only then
            budgets["universality.max_tokens"] = self.universality.max_tokens
        short = [f"{key}={n}" for key, n in budgets.items() if n < ctx]
        if short:
            one = len(short) == 1
            raise ValueError(f"{', '.join(short)} {'is' if one else 'are'} less than one context of tokenize.ctx={ctx} "
                             f"tokens, so {'its stage' if one else 'their stages'} would read nothing: raise "
                             f"{'it' if one else 'them'} to at least {ctx}, or lower tokenize.ctx")
        batch, cached = self.sae.train.batch_size, self.activations.max_train_tokens // ctx * ctx
        if batch > cached:
            raise ValueError(f"sae.train.batch_size={batch} is more than the {cached} training activations "
                             f"activations.max_train_tokens={self.activations.max_train_tokens} caches (whole contexts "
                             f"of tokenize.ctx={ctx}), so train_sae could not fill one batch: raise "
                             f"activations.max_train_tokens to at least {-(-batch // ctx) * ctx}, or lower "
                             "sae.train.batch_size")
        return self


class ParamsError(UserError):
    pass


def load_params(path: str | Path = "params.yaml", *, check_resources: bool = True) -> Params:
    """The validated params. check_resources=False skips the memory check: for reading a workspace
    (monosemantic audit) on a machine other than the one that runs it."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found: run from the project root, or copy params.yaml there")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path} is not valid YAML: {e}") from None
    unwritten = _unwritten(raw)
    try:
        params = Params.model_validate(raw, context={"project": str(path.parent)})
    except ValidationError as e:
        problems = [_describe(err) for err in e.errors()] + [
            f"{key}: required key is missing: dvc.yaml tracks it by name, so write it out (default: "
            f"{_flow(_schema_default(key))})" for key in unwritten if key.split(".")[0] in raw]  # else pydantic's
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise ParamsError(f"{path} is invalid ({len(problems)} problem(s)):\n{lines}") from None
    if unwritten:  # DVC reads these from the file itself: left to the schema's default, it fails mid-pipeline
        one = len(unwritten) == 1
        defaults = "; ".join(f"{key}: {_flow(_schema_default(key))}" for key in unwritten)
        raise ParamsError(f"{path} is missing {', '.join(unwritten)}: DVC tracks {'it' if one else 'these'} by "
                          f"name (dvc.yaml), so write {'it' if one else 'them'} out (default{'' if one else 's'}: "
                          f"{defaults})")
    # The activation width is known; an hf model's, once loaded.
    if check_resources and params.model.source == "builtin":
        from monosemantic.resources import check_memory

        try:
            check_memory(params, max(params.model.d_mlp, params.model.d_model))
        except ParamsError as e:
            raise ParamsError(f"{path} asks for more memory than this machine has: {e}") from None
    return params


def _unwritten(raw: Any) -> list[str]:
    """The DVC_TRACKED_KEYS params.yaml leaves to a schema default: DVC would fail on each mid-pipeline."""
    if not isinstance(raw, dict):
        return []
    sae = raw.get("sae") if isinstance(raw.get("sae"), dict) else {}
    archs = sae.get("architectures", SAEParams.model_fields["architectures"].default)
    archs = [a for a in archs if a in typing.get_args(Architecture)] if isinstance(archs, list) else []
    keys = dict.fromkeys(key.format(arch=a) for key in DVC_TRACKED_KEYS for a in (archs if "{arch}" in key else [""]))
    missing = []
    for key in keys:
        *sections, last = key.split(".")
        node = raw
        for section in sections:  # an absent or empty section misses the key too; another type is pydantic's
            node = node.get(section) if isinstance(node, dict) else node
            node = {} if node is None else node
        if isinstance(node, dict) and last not in node and not _schema_field(key).is_required():
            missing.append(key)  # a required key's absence pydantic reports
    return missing


def _schema_field(key: str):
    *sections, last = key.split(".")
    model = Params
    for section in sections:
        model = _model_under(model, section)
    return model.model_fields[last]


def _schema_default(key: str) -> Any:
    value = _schema_field(key).get_default(call_default_factory=True)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _flow(value: Any) -> str:
    """`value` as one line of YAML, to paste into params.yaml."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 16).removesuffix("...\n").strip()


_SOURCE_KINDS = {
    typing.get_args(cls.model_fields["kind"].annotation)[0]: cls
    for cls in (BuiltinSource, FilesSource, HFSource, SyntheticSource)
}


def _describe(err: dict[str, Any]) -> str:
    """One readable line: key path, the bad value, what is allowed."""
    model, parent, keys = Params, None, []
    for part in err["loc"]:
        if isinstance(part, int):
            keys.append(part)
            continue
        # A discriminated union puts the tag in the location: not a key the user wrote.
        if model is not None and part not in model.model_fields and part in _SOURCE_KINDS:
            model = _SOURCE_KINDS[part]
            continue
        keys.append(part)
        parent, model = model, _model_under(model, part)
    path = ".".join(str(k) for k in keys)
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(parent.model_fields) if parent is not None else "?"
        return f"{path}: unknown key (a typo?); allowed keys here: {allowed}"
    if err["type"] == "missing":
        return f"{path}: required key is missing"
    if err["type"] == "secret_in_value":
        return f"{path}: {err['msg']}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error" and isinstance(err.get("input"), dict):  # a check across a section's keys
        return msg if path and msg.startswith(path) else f"{path or 'params'}: {msg}"
    return f"{path}: got {err.get('input')!r}; {msg}"


def _model_under(model, key: str):
    """The pydantic model, if any, that holds the value under `key`."""
    field = model.model_fields.get(key) if model is not None else None
    return _find_model(field.annotation) if field is not None else None


def _find_model(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := _find_model(arg)) is not None:
            return found
    return None
