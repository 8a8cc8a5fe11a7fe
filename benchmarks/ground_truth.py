"""Known ground truth, side by side with the reference implementation (issue 14).

Synthetic activations with known features from `sae_lens.synthetic`: `--features` true feature
directions (unit vectors in `--d-in` dims, SAELens's orthogonalising initializer), each firing
independently with a Zipfian probability (SAELens's `zipfian_firing_probabilities`, magnitude 1);
or, with `--world hierarchical`, SynthSAEBench-16k's recipe at this size (parents gating mutually
exclusive children, correlations, varied magnitudes: `make_data`), the world whose F1 ordering
SAELens publishes.
Every dictionary architecture registered in `monosemantic.sae.ARCHITECTURES` is trained by our
trainer (`train_sae`) and, where SAELens 6.x trains the same architecture, by SAELens's own
`SAETrainer`, on the same rows in the same order (generated once from `--seed`) for the same
number of samples. Each is scored on one held-out set (seed + 1):

  mcc     mean |cosine| of decoder rows and true features under the Hungarian matching
          (sae_lens.synthetic.mean_correlation_coefficient)
  f1      mean over latents of the F1 of "latent fires" as a detector of its best-matching true
          feature firing (sae_lens.synthetic ClassificationMetricsCalculator)
  l0      mean active latents per input at inference (BatchTopK/Matryoshka: their JumpReLU threshold)
  fvu     1 − explained variance, variance about the mean (sae_lens ExplainedVarianceCalculator)
  dead    latents that fire on no held-out input
  tok/s   training samples ÷ wall seconds of the training call (ours: `train_sae`, incl. its
          b_dec initialisation; SAELens: `SAETrainer.fit`); data already in memory for both;
          torch at `--threads` (1) for both. On a shared machine the sweep's timings drift with the
          load; `--speed-repeats N` adds an interleaved check (ours and SAELens alternately, N times
          each, `--speed-samples` rows) whose medians then give the speed ratio

Matched L0. Fixed-k architectures (topk, batchtopk, matryoshka) train at k = the target L0 on both
sides. Penalty architectures (standard, standard_2024, jumprelu) sweep their coefficient: a short
search per target L0 (bracket by geometric steps, then log-log interpolation between the two
bracketing runs, until they lie within a factor 1.25 or one run within 2% of the target) and their
metrics are interpolated linearly in log L0 between the closest run above and below the target
("interp"); if the sweep cannot bracket the target the nearest run is used and marked "nearest".
The main target is round(the data's true L0) (`--l0`); a second target, `--f1-l0` (25), gives F1
at L0 ≈ 25 beside SynthSAEBench's published ordering.

Seeds. Near the true L0 one run's MCC moves by about 0.01 with the seed, as much as the gaps
measured between the trainers. `--seeds N` repeats everything (new data and new models) on N
seeds; the tables give the means, and the MCC gap (ours − SAELens) per seed, its mean and its
standard error. The target is judged on the mean gap.

Shared hyper-parameters (identical on both sides): samples, batch size, learning rate (the
project's params.yaml value for the architecture unless `--lr`), linear lr warm-up, linear lr
decay to 0, linear warm-up of the sparsity coefficient (at step t SAELens applies t/W of it, ours
(t+1)/W: one step ahead), the dead-latent window (AuxK), k, AuxK
coefficient, BatchTopK threshold EMA rate, JumpReLU bandwidth and initial threshold, Matryoshka
prefix widths. The schedule is params.yaml's, scaled to this run's step count. What each
recipe does differently (printed as `differences=`) is its own: e.g. SAELens's `standard` is the
April-2024 L1 recipe (decoder-norm-weighted L1, free decoder norms initialised at 0.1, W_enc =
W_decᵀ, b_dec = 0) with gradient clipping at norm 1, squared error summed over dimensions; ours is
the 2023 recipe (unit-norm decoder, untied Kaiming init, b_dec at the geometric median,
resampling, squared error averaged over elements). Coefficients are not comparable across the two
(different loss scales): that is why L0 is matched, not the coefficient.

Usage (at the default 3M samples a training takes 15-40 s (ours) or 40-100 s (SAELens) on one core
of the 2-core machine; every architecture on 3 seeds took about 80 minutes as two processes;
`--cache` keeps finished runs, so a killed or split benchmark resumes, and several `--arch` groups
can run side by side, each on its own cache file, and be reported together after from the files
concatenated):
    PYTHONPATH=src:. python benchmarks/ground_truth.py --seeds 3 --cache runs.jsonl     # every architecture
    PYTHONPATH=src:. python benchmarks/ground_truth.py --arch standard topk --samples 300000
    PYTHONPATH=src:. python benchmarks/ground_truth.py --arch jumprelu --option jumprelu.threshold_init=0.1
    PYTHONPATH=src:. python benchmarks/ground_truth.py --world hierarchical --features 2048 --d-sae 512 --f1-l0 3
Prints one `run ...` line per training, name=value lines per architecture, then the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]

# What each of our recipes does differently from SAELens's counterpart (beyond the shared settings).
DIFFERENCES = {
    "standard": "ours: 2023 recipe: unit-norm decoder (parallel gradient removed), plain L1, untied Kaiming init, "
                "b_dec at the geometric median, neuron resampling (params.yaml's steps, scaled), MSE mean over "
                "elements, no grad clipping | SAELens standard: L1 weighted by decoder norms, free decoder norms "
                "from 0.1, W_enc = W_dec^T, b_dec = 0, MSE summed over dims, grad clipping at 1",
    "standard_2024": "ours (the paper's, by default): inputs scaled to mean norm sqrt(d_in), no pre-encoder bias "
                     "(--option standard_2024.scale_inputs=false and pre_encoder_bias=true: SAELens's) | SAELens "
                     "standard: unscaled inputs, b_dec subtracted before the encoder; both decoder-norm-weighted "
                     "L1, b_dec = 0, decoder rows from 0.1, W_enc = W_dec^T, grad clipping at 1",
    "topk": "ours: unit-norm decoder, b_dec at the geometric median, MSE / Var(x) and AuxK normalised by the "
            "residual's variance (Gao et al.'s code), AuxK coefficient warmed up with the shared schedule | "
            "SAELens topk: decoder rows from 0.1 with top-k on pre-activations x decoder norms, b_dec = 0, plain "
            "summed squared errors, grad clipping at 1",
    "batchtopk": "as topk; threshold: ours a running mean then EMA of each batch's smallest kept activation, "
                 "SAELens an EMA from 0 (same rate)",
    "jumprelu": "ours: log-threshold, Adam beta1 = 0, inputs scaled to E|x|^2 = 1, unit-norm decoder, no "
                "pre-encoder bias | SAELens jumprelu: threshold trained directly, Adam beta1 = 0.9, raw inputs, free "
                "decoder norms from 0.1, b_dec subtracted before the encoder, grad clipping at 1 (epsilon and the "
                "initial threshold converted to its units)",
    "matryoshka": "as batchtopk; loss: ours the mean of the prefixes' MSEs, SAELens their sum",
}
# Our architecture -> the SAELens training architecture of the same recipe family.
SAELENS = {"standard": "standard", "standard_2024": "standard", "topk": "topk", "batchtopk": "batchtopk",
           "jumprelu": "jumprelu", "matryoshka": "matryoshka_batchtopk"}
# SynthSAEBench (SAELens docs): F1 at L0 = 25 on its 16k-feature world.
PUBLISHED_F1_AT_25 = {"standard": 0.556, "batchtopk": 0.732, "jumprelu": 0.732, "matryoshka": 0.879}
# The params field that sets sparsity: fixed k, or a penalty coefficient that is swept.
KNOBS = ("k", "l1_coefficient", "l0_coefficient")
# Where each penalty sweep starts (calibrated on this generator; the search moves from there).
START = {("ours", "standard"): 3e-3, ("ours", "standard_2024"): 5.0, ("ours", "jumprelu"): 1e-3,
         ("saelens", "standard"): 1.0, ("saelens", "jumprelu"): 0.01}
METRICS = ("l0", "mcc", "f1", "precision", "recall", "fvu", "dead")


# ---------------------------------------------------------------- data
@dataclass
class Data:
    features: torch.Tensor  # [n_features, d_in] the true directions
    train: torch.Tensor  # [n_train, d_in] hidden activations, in training order
    eval_x: torch.Tensor  # [n_eval, d_in]
    eval_fired: torch.Tensor  # [n_eval, n_features] bool: which true features fired
    true_l0: float  # expected active true features per input (sum of firing probabilities)
    seconds: float = 0.0
    spec: dict = field(default_factory=dict)  # make_data's arguments: part of every cached run's key

    @property
    def d_in(self) -> int:
        return self.features.shape[1]


# Each world's Zipfian firing probabilities (exponent, max, min) unless --zipf-exponent etc. say otherwise.
ZIPF = {"independent": (1.0, 0.3, 0.01), "hierarchical": (0.5, 0.4, 5e-4)}


def make_data(n_features: int = 512, d_in: int = 128, n_train: int = 3_000_000, n_eval: int = 100_000,
              seed: int = 0, exponent: float | None = None, max_prob: float | None = None,
              min_prob: float | None = None, chunk: int = 16_384, input_norm: float | None = None,
              world: str = "independent") -> Data:
    """SAELens's generators, which draw from torch's global RNG, seeded here: `seed` for training
    rows, `seed + 1` for the held-out set.

    independent: FeatureDictionary(seed) and an ActivationGenerator with Zipfian firing
    probabilities, every feature independent, magnitude 1.
    hierarchical: SynthSAEBench-16k's recipe (SAELens docs, "SynthSAEBench") at this size: Zipfian
    firing (0.5, 0.4, 5e-4), a forest of n_features/128 roots with 4 children each to depth 3
    whose children are mutually exclusive and fire only with their parent, low-rank correlations
    (rank 25, scale 0.1), 100 orthogonalisation steps, mean magnitudes from 5 (frequent) to 4
    (rare) with folded-normal spreads (0.5, 0.5), and the generator's bias of norm 1. Its true L0
    is measured on the held-out set (the hierarchy gates the probabilities).

    `input_norm`: every row multiplied by one constant so that the training rows' mean norm is this
    (default: the generator's own scale)."""
    from sae_lens.synthetic import ActivationGenerator, FeatureDictionary, zipfian_firing_probabilities

    defaults = ZIPF[world]
    exponent, max_prob, min_prob = (d if v is None else v for v, d in zip((exponent, max_prob, min_prob), defaults))
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    if world == "hierarchical":
        with _quiet():
            model = _hierarchical(n_features, d_in, seed, exponent, max_prob, min_prob)
        fd, probs = model.feature_dict, None
        sample = model.activation_generator.sample
    else:
        with _quiet():
            fd = FeatureDictionary(n_features, d_in, seed=seed)  # its initializer optimises: not under no_grad
        fd.requires_grad_(False)
        probs = zipfian_firing_probabilities(n_features, exponent=exponent, max_prob=max_prob, min_prob=min_prob)
        sample = ActivationGenerator(n_features, probs).sample
    train = torch.empty(n_train, d_in)
    with torch.no_grad():
        for i in range(0, n_train, chunk):
            n = min(chunk, n_train - i)
            train[i:i + n] = fd(sample(n))
        torch.manual_seed(seed + 1)
        eval_x, fired = torch.empty(n_eval, d_in), torch.empty(n_eval, n_features, dtype=torch.bool)
        for i in range(0, n_eval, chunk):
            n = min(chunk, n_eval - i)
            acts = sample(n)
            eval_x[i:i + n], fired[i:i + n] = fd(acts), acts > 0
    true_l0 = float(probs.sum()) if probs is not None else fired.sum(1).float().mean().item()
    spec = {"n_features": n_features, "d_in": d_in, "n_train": n_train, "n_eval": n_eval, "seed": seed,
            "exponent": exponent, "max_prob": max_prob, "min_prob": min_prob}
    if world != "independent":
        spec["world"] = world  # the independent world's keys stay as they were: cached runs still match
    if input_norm is not None:
        scale = input_norm / train.norm(dim=1).mean().item()
        train *= scale
        eval_x *= scale
        spec["input_norm"] = input_norm
    return Data(fd.feature_vectors.detach().clone(), train, eval_x, fired, true_l0, time.perf_counter() - t0, spec)


def _hierarchical(n_features: int, d_in: int, seed: int, exponent: float, max_prob: float, min_prob: float):
    from sae_lens.synthetic import (FoldedNormalMagnitudeConfig, HierarchyConfig, LinearMagnitudeConfig, SyntheticModel,
                                    ZipfianFiringProbabilityConfig)
    from sae_lens.synthetic.synthetic_model import (LowRankCorrelationConfig, OrthogonalizationConfig,
                                                    SyntheticModelConfig)

    if n_features < 128:
        raise ValueError(f"the hierarchical world needs at least 128 features (one root per 128); got {n_features}")
    cfg = SyntheticModelConfig(
        num_features=n_features, hidden_dim=d_in,
        firing_probability=ZipfianFiringProbabilityConfig(exponent=exponent, max_prob=max_prob, min_prob=min_prob),
        hierarchy=HierarchyConfig(total_root_nodes=n_features // 128, branching_factor=4, max_depth=3,
                                  mutually_exclusive_portion=1.0),
        correlation=LowRankCorrelationConfig(rank=25, correlation_scale=0.1),
        orthogonalization=OrthogonalizationConfig(num_steps=100, lr=3e-4),
        mean_firing_magnitudes=LinearMagnitudeConfig(start=5.0, end=4.0),
        std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=0.5, std=0.5), seed=seed)
    model = SyntheticModel(cfg)
    model.requires_grad_(False)
    return model


# ---------------------------------------------------------------- evaluation
@dataclass
class Run:
    impl: str  # "ours" | "saelens"
    arch: str  # our architecture name (SAELens's counterpart for impl="saelens")
    knob: str
    value: float
    seconds: float
    samples: int
    metrics: dict = field(default_factory=dict)

    @property
    def l0(self) -> float:
        return self.metrics["l0"]

    @property
    def tokens_per_s(self) -> float:
        return self.samples / self.seconds


@torch.no_grad()
def evaluate(encode: Callable, decode: Callable, W_dec: torch.Tensor, data: Data, chunk: int = 8192) -> dict:
    """The held-out metrics with SAELens's own calculators, the same for every dictionary."""
    from sae_lens.evals import ExplainedVarianceCalculator
    from sae_lens.synthetic import (ClassificationMetricsCalculator, DeadLatentsCalculator, L0Calculator,
                                    mean_correlation_coefficient)

    W_dec = W_dec.detach().float()
    l0, dead = L0Calculator(), DeadLatentsCalculator(W_dec.shape[0])
    ev, cls = ExplainedVarianceCalculator(), ClassificationMetricsCalculator(W_dec, data.features)
    for i in range(0, len(data.eval_x), chunk):
        x = data.eval_x[i:i + chunk]
        f = encode(x)
        x_hat = decode(f)
        l0.add_batch(f)
        dead.add_batch(f)
        ev.add_batch(x_hat, x)
        cls.add_batch(f, data.eval_fired[i:i + chunk])
    c = cls.compute()
    return {"l0": l0.compute(), "mcc": mean_correlation_coefficient(W_dec, data.features), "f1": c.f1_score,
            "precision": c.precision, "recall": c.recall, "fvu": 1.0 - ev.compute(), "dead": dead.compute()}


def random_baseline(data: Data, d_sae: int, seed: int = 0) -> float:
    """MCC of a dictionary of random unit directions: what matching alone gives."""
    from sae_lens.synthetic import mean_correlation_coefficient

    g = torch.Generator().manual_seed(seed + 7919)  # not FeatureDictionary's own seed: it starts from randn too
    return mean_correlation_coefficient(torch.randn(d_sae, data.d_in, generator=g), data.features)


# ---------------------------------------------------------------- the shared recipe
@dataclass(frozen=True)
class Shared:
    """Hyper-parameters both implementations take, identical on both sides (but SAELens's learning
    rate under --saelens-lr)."""

    steps: int
    batch_size: int
    lr: float
    lr_warmup_steps: int
    lr_decay_steps: int
    coefficient_warmup_steps: int  # linear warm-up of the sparsity coefficient (L1 / L0 penalty)
    dead_window: int  # steps without firing after which a latent is dead (AuxK, resampling)


def project_sae_params(path: Path = ROOT / "params.yaml"):
    """params.yaml's `sae` section (monosemantic.params.SAEParams)."""
    from monosemantic.params import load_params

    return load_params(path).sae


def with_options(sae_params, specs: list[str]):
    """`sae_params` with each "arch.key=value" (YAML-typed) applied, validated by the params schema."""
    import yaml

    for spec in specs:
        key, sep, value = spec.partition("=")
        arch, dot, field_name = key.partition(".")
        if not (sep and dot) or not hasattr(sae_params, arch):
            raise SystemExit(f"--option {spec!r}: expected ARCH.KEY=VALUE with ARCH a section of params.yaml's sae")
        section = getattr(sae_params, arch)
        updated = type(section).model_validate({**section.model_dump(), field_name: yaml.safe_load(value)})
        sae_params = sae_params.model_copy(update={arch: updated})
    return sae_params


def shared_recipe(sae_params, arch: str, n_train: int, batch_size: int, lr: float | None) -> Shared:
    """params.yaml's schedule scaled to this run's steps (the fractions of sae.train.steps)."""
    t = sae_params.train
    steps = n_train // batch_size
    frac = lambda n: round(n / t.steps * steps)  # noqa: E731
    return Shared(steps=steps, batch_size=batch_size, lr=lr or getattr(sae_params, arch).lr or t.lr,
                  lr_warmup_steps=frac(t.lr_warmup_steps), lr_decay_steps=frac(t.lr_decay_steps),
                  coefficient_warmup_steps=frac(t.l1_warmup_steps), dead_window=max(1, frac(t.dead_window)))


def for_saelens(shared: Shared, lr: float | None) -> Shared:
    """SAELens's copy of the shared recipe: --saelens-lr, when given, replaces the learning rate."""
    return replace(shared, lr=lr or shared.lr)


def knob_of(sae_params, arch: str) -> str:
    fields = type(getattr(sae_params, arch)).model_fields
    knob = next((k for k in KNOBS if k in fields), None)
    if knob is None:
        raise SystemExit(f"sae.{arch} has none of {KNOBS}: teach benchmarks/ground_truth.py its sparsity knob")
    return knob


def arch_options(sae_params, arch: str, knob: str, value: float) -> dict:
    """Our module's constructor options: params.yaml's sae.<arch>, the knob set to `value`."""
    options = sae_params.options(arch)
    options[knob] = int(round(value)) if knob == "k" else value
    return options


# ---------------------------------------------------------------- a cache of finished runs
CACHE: Path | None = None  # --cache: a JSON-lines file of finished runs, so an interrupted benchmark resumes


def cached(key: dict, train: Callable[[], Run]) -> Run:
    """The run stored under `key` (everything that determines it: data, recipe, options, seed), else
    `train()`, stored. Timings are those of the run that was stored."""
    if CACHE is None:
        return train()
    k = json.dumps(key, sort_keys=True, default=str)
    if CACHE.exists():
        for line in CACHE.read_text().splitlines():
            row = json.loads(line)
            if row["key"] == k:
                return Run(**row["run"])
    run = train()
    with CACHE.open("a") as fh:
        fh.write(json.dumps({"key": k, "run": asdict(run)}) + "\n")
    return run


# ---------------------------------------------------------------- our trainer
PROGRESS = False  # --progress: show the trainers' progress bars


@contextlib.contextmanager
def _quiet():
    """Both trainers and SAELens's feature orthogonaliser draw tqdm bars (ours passes `disable=`
    itself, so TQDM_DISABLE cannot reach it)."""
    import tqdm as tqdm_module
    import sae_lens.synthetic.feature_dictionary as orthogonaliser
    import sae_lens.training.sae_trainer as theirs
    import monosemantic.sae.trainer as ours

    if PROGRESS:
        yield
        return
    saved = ours.tqdm, theirs.tqdm, orthogonaliser.tqdm

    def silent(*args, **kwargs):
        kwargs["disable"] = True
        return tqdm_module.tqdm(*args, **kwargs)

    ours.tqdm = theirs.tqdm = orthogonaliser.tqdm = silent
    try:
        yield
    finally:
        ours.tqdm, theirs.tqdm, orthogonaliser.tqdm = saved


def _batches(data: torch.Tensor, batch_size: int):
    def batches(position: int):
        pos = position % len(data)
        while True:
            if pos + batch_size > len(data):
                pos = 0
            yield data[pos:pos + batch_size]
            pos += batch_size
    return batches


def train_ours(arch: str, knob: str, value: float, data: Data, d_sae: int, shared: Shared, sae_params,
               seed: int = 0) -> Run:
    from monosemantic.sae import build
    from monosemantic.sae.trainer import TrainConfig, train_sae

    options = arch_options(sae_params, arch, knob, value)
    a, t = getattr(sae_params, arch), sae_params.train
    resample_steps = ()
    if getattr(a, "resample", False):  # the paper's schedule, as params.yaml places it, scaled
        resample_steps = tuple(sorted({max(1, round(s / t.steps * shared.steps)) for s in a.resample_steps}))
    cfg = TrainConfig(
        steps=shared.steps, lr=shared.lr, batch_size=shared.batch_size,
        l1_warmup_steps=shared.coefficient_warmup_steps, lr_warmup_steps=shared.lr_warmup_steps,
        lr_decay_steps=shared.lr_decay_steps, resample_steps=resample_steps, dead_window=shared.dead_window,
        resample_inputs=min(getattr(a, "resample_inputs", 65_536), len(data.train)),
        log_every=max(1, shared.steps), checkpoint_every=10 ** 9, seed=seed)

    def train() -> Run:
        torch.manual_seed(seed)
        sae = build(arch, data.d_in, d_sae, options)

        def sample_inputs(n: int, gen: torch.Generator) -> torch.Tensor:
            return data.train[torch.randint(len(data.train), (n,), generator=gen)]

        with _quiet():  # which imports SAELens: outside the timing
            t0 = time.perf_counter()
            train_sae(sae, _batches(data.train, shared.batch_size), sample_inputs, cfg)
            seconds = time.perf_counter() - t0
        sae.eval()
        metrics = evaluate(sae.encode, sae.decode, sae.W_dec, data)
        return Run("ours", arch, knob, value, seconds, shared.steps * shared.batch_size, metrics)

    key = {"impl": "ours", "arch": arch, "options": options, "train": vars(cfg), "d_sae": d_sae,
           "data": data.spec, "seed": seed}
    return cached(key, train)


# ---------------------------------------------------------------- SAELens's trainer
def saelens_config(name: str, arch: str, knob: str, value: float, data: Data, d_sae: int, shared: Shared,
                   sae_params) -> dict:
    """SAELens's training config for `name`, with the hyper-parameters it shares with ours set to ours."""
    a = getattr(sae_params, arch)
    kw: dict = {"d_in": data.d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
                "decoder_init_norm": getattr(a, "decoder_init_norm", 0.1)}  # 0.1: SAELens's default
    if name == "standard":
        kw.update(l1_coefficient=value, l1_warm_up_steps=shared.coefficient_warmup_steps)
    elif name == "jumprelu":
        # Ours states ε and θ's start in units where E‖x‖² = 1 (the paper's); SAELens trains on x itself
        # (normalize_activations="none"): the same ε and θ in x's units.
        unit = data.train[:32_768].pow(2).sum(1).mean().sqrt().item()
        kw.update(l0_coefficient=value, l0_warm_up_steps=shared.coefficient_warmup_steps,
                  jumprelu_bandwidth=getattr(a, "bandwidth", 0.05 / unit) * unit,
                  jumprelu_init_threshold=getattr(a, "threshold_init", 0.01 / unit) * unit)
    else:  # topk family
        kw.update(k=int(round(value)) if name == "topk" else float(round(value)),
                  aux_loss_coefficient=getattr(a, "aux_coefficient", 1.0))
        if name in ("batchtopk", "matryoshka_batchtopk") and hasattr(a, "threshold_beta"):
            kw["topk_threshold_lr"] = 1.0 - a.threshold_beta
        if name == "matryoshka_batchtopk":
            kw["matryoshka_widths"] = sorted({max(1, int(f * d_sae)) for f in a.prefixes} | {d_sae})
    return kw


def train_saelens(arch: str, knob: str, value: float, data: Data, d_sae: int, shared: Shared, sae_params,
                  seed: int = 0) -> Run:
    name = SAELENS[arch]
    kwargs = saelens_config(name, arch, knob, value, data, d_sae, shared, sae_params)
    key = {"impl": "saelens", "name": name, "config": kwargs, "shared": vars(shared), "data": data.spec,
           "seed": seed}
    return cached(key, lambda: _train_saelens(name, knob, value, kwargs, data, shared, seed))


def saelens_trainer_config(shared: Shared):
    """SAELens's `SAETrainerConfig` as sae_lens.synthetic.train_toy_sae sets it, with our schedule and
    dead window."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    return SAETrainerConfig(
        total_training_samples=shared.steps * shared.batch_size, train_batch_size_samples=shared.batch_size,
        lr=shared.lr, lr_end=shared.lr, lr_scheduler_name="constant", lr_warm_up_steps=shared.lr_warmup_steps,
        lr_decay_steps=shared.lr_decay_steps, adam_beta1=0.9, adam_beta2=0.999, device="cpu",
        dead_feature_window=shared.dead_window, feature_sampling_window=2000, n_checkpoints=0,
        checkpoint_path=None, save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2 ** 31 - 1))


def _train_saelens(name: str, knob: str, value: float, kwargs: dict, data: Data, shared: Shared, seed: int) -> Run:
    from sae_lens import SAE
    from sae_lens.registry import get_sae_training_class
    from sae_lens.training.sae_trainer import SAETrainer

    sae_cls, cfg_cls = get_sae_training_class(name)
    torch.manual_seed(seed)
    sae = sae_cls(cfg_cls(**kwargs))
    trainer = SAETrainer(cfg=saelens_trainer_config(shared), sae=sae,
                         data_provider=_batches(data.train, shared.batch_size)(0))
    with _quiet():
        t0 = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():  # the inference SAE, as SAELens saves it
        warnings.simplefilter("ignore")
        sae.save_inference_model(d)
        inference = SAE.load_from_disk(d)
    inference.eval()
    metrics = evaluate(inference.encode, inference.decode, inference.W_dec, data)
    return Run("saelens", name, knob, value, seconds, shared.steps * shared.batch_size, metrics)


# ---------------------------------------------------------------- matching L0
def sweep(train: Callable[[float], Run], start: float, targets: list[float], runs_per_target: int = 5,
          tolerance: float = 0.02, bracket: float = 1.25, log: Callable[[Run], None] = lambda r: None) -> list[Run]:
    """Runs of a penalty coefficient (a larger one gives a smaller L0) that bracket every target L0:
    from `start`, geometric steps (slope from the runs so far, at most x8) until a run lies on each
    side, then log-log interpolation between the bracketing pair until one lies within `tolerance`
    (relative) of the target or the pair's L0s are within a factor `bracket`; at most
    `runs_per_target` new runs per target. Both are tight because near the true L0 MCC is steep in
    L0 (on the default data 0.942 at L0 6.84 and 0.965 at 7.72, one run apart): a run 10% off
    the target differs from the matched value by about the gap between the trainers."""
    runs: list[Run] = []

    def go(c: float) -> None:
        if any(math.isclose(c, r.value, rel_tol=1e-3) for r in runs):
            return
        runs.append(train(c))
        log(runs[-1])

    for target in targets:
        for _ in range(runs_per_target):
            if _stalled(runs):
                return runs
            above = [r for r in runs if r.l0 >= target]  # coefficient too small
            below = [r for r in runs if r.l0 < target]
            if any(abs(math.log(max(r.l0, 1e-9) / target)) <= tolerance for r in runs):
                break
            if not runs:
                c = start
            elif above and below:
                a, b = min(above, key=lambda r: r.l0), max(below, key=lambda r: r.l0)
                if b.l0 > 0 and a.l0 / b.l0 <= bracket:
                    break
                # log-log interpolation inside a narrow bracket; bisection (geometric) of a wide one, where
                # L0 may fall off a cliff (every latent dying) and interpolation would crawl along it
                s = _slope(a, b) if b.l0 >= target / 3 and a.l0 <= 3 * target else None
                c = a.value * (a.l0 / target) ** (1 / s) if s else math.sqrt(a.value * b.value)
                lo, hi = sorted((a.value, b.value))
                c = min(max(c, lo * (hi / lo) ** 0.1), hi / (hi / lo) ** 0.1)  # not next to a run already made
            else:
                near = min(runs, key=lambda r: abs(math.log(max(r.l0, 1e-9) / target)))
                others = sorted(runs, key=lambda r: abs(math.log(r.value / near.value)))[1:]
                s = _slope(near, others[0]) if others else None
                s = min(max(s, 0.3), 3.0) if s else 1.0
                step = (max(near.l0, 1e-3) / target) ** (1 / s) * (1.15 if near.l0 > target else 1 / 1.15)
                c = near.value * min(max(step, 1 / 8), 8.0)
            go(c)
    return runs


def _stalled(runs: list[Run]) -> bool:
    """L0 hardly answers the coefficient: three or more runs span a factor 8 of it and their L0s lie
    within a factor 1.5 (e.g. a learned threshold that the run is too short to move); more runs would
    not bracket the target."""
    if len(runs) < 3:
        return False
    values, l0s = [r.value for r in runs], [r.l0 for r in runs]
    return max(values) / min(values) >= 8 and min(l0s) > 0 and max(l0s) / min(l0s) <= 1.5


def _slope(a: Run, b: Run) -> float | None:
    """−d log L0 / d log coefficient between two runs (positive while L0 falls as the coefficient rises)."""
    if a.l0 <= 0 or b.l0 <= 0 or math.isclose(a.value, b.value):
        return None
    s = -math.log(a.l0 / b.l0) / math.log(a.value / b.value)
    return s if s > 0 else None


def at_l0(runs: list[Run], target: float) -> tuple[dict, str]:
    """The metrics at L0 = target: linear in log L0 between the closest runs above and below
    ("interp"), both within a factor 3 of the target; else the run nearest in log L0 ("nearest")."""
    live = [r for r in runs if r.l0 > 0]
    above = [r for r in live if r.l0 >= target]
    below = [r for r in live if r.l0 < target]
    a = min(above, key=lambda r: r.l0) if above else None
    b = max(below, key=lambda r: r.l0) if below else None
    if a is not None and b is not None and a.l0 <= 3 * target and b.l0 >= target / 3:
        if math.isclose(a.l0, target):
            return dict(a.metrics), "exact"
        w = math.log(target / b.l0) / math.log(a.l0 / b.l0)
        out = {m: b.metrics[m] + w * (a.metrics[m] - b.metrics[m]) for m in METRICS}
        out["l0"] = target  # log L0 is what is interpolated
        return out, "interp"
    near = min(live or runs, key=lambda r: abs(math.log(max(r.l0, 1e-9) / target)))
    return dict(near.metrics), "nearest"


def matched(runs: list[Run], target: float, fixed_k: bool) -> tuple[dict, str]:
    if fixed_k:
        mine = [r for r in runs if math.isclose(r.value, round(target))]
        return (dict(mine[0].metrics), "k") if mine else ({}, "missing")
    return at_l0(runs, target)


# ---------------------------------------------------------------- main
def run_architecture(arch: str, impl: str, data: Data, d_sae: int, shared: Shared, sae_params,
                     targets: list[float], seed: int, log: Callable[[Run], None], runs_per_target: int = 5
                     ) -> list[Run]:
    knob = knob_of(sae_params, arch)
    train_fn = train_ours if impl == "ours" else train_saelens
    train = lambda v: train_fn(arch, knob, v, data, d_sae, shared, sae_params, seed)  # noqa: E731
    if knob == "k":
        runs = []
        for k in sorted({int(round(t)) for t in targets}):
            runs.append(train(float(k)))
            log(runs[-1])
        return runs
    start = START.get((impl, SAELENS[arch] if impl == "saelens" else arch), getattr(getattr(sae_params, arch), knob))
    return sweep(train, start, targets, runs_per_target, log=log)


def speed_check(results, archs, data: Data, d_sae: int, sae_params, target: float, args, log) -> dict:
    """Training speed with the noise of a shared machine averaged out: for each architecture, ours and
    SAELens's trainer alternately, `--speed-repeats` times each, on the first `--speed-samples` rows at
    the knob value nearest the matched L0 (never cached). Returns {arch: (ours tok/s, SAELens tok/s)},
    the medians."""

    out = {}
    small = Data(data.features, data.train[:args.speed_samples], data.eval_x[:1], data.eval_fired[:1],
                 data.true_l0, spec={**data.spec, "n_train": args.speed_samples})
    for arch in archs:
        if ("saelens", arch) not in results:
            continue
        shared = shared_recipe(sae_params, arch, args.speed_samples, args.batch_size, args.lr)
        knob = knob_of(sae_params, arch)
        rates: dict[str, list[float]] = {"ours": [], "saelens": []}
        for _ in range(args.speed_repeats):
            for impl, fn in (("ours", train_ours), ("saelens", train_saelens)):
                near = min(results[(impl, arch)], key=lambda r: abs(math.log(max(r.l0, 1e-9) / target)))
                global CACHE
                saved, CACHE = CACHE, None
                recipe = for_saelens(shared, args.saelens_lr) if impl == "saelens" else shared
                try:
                    run = fn(arch, knob, near.value, small, d_sae, recipe, sae_params, args.seed)
                finally:
                    CACHE = saved
                rates[impl].append(run.tokens_per_s)
                print(f"speed impl={impl} arch={arch} {knob}={near.value:.4g} samples={run.samples} "
                      f"seconds={run.seconds:.1f} tokens_per_s={run.tokens_per_s:.0f}", flush=True)
        out[arch] = (statistics.median(rates["ours"]), statistics.median(rates["saelens"]))
    return out


def fmt(v, spec=".3f"):
    if v is None:
        width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
        return "—".rjust(int(width)) if width else "—"
    return format(v, spec)


def main(argv=None) -> int:
    from monosemantic.sae import ARCHITECTURES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=None, help=f"architectures (default: all registered: "
                    f"{', '.join(ARCHITECTURES)})")
    ap.add_argument("--samples", type=int, default=3_000_000, help="training samples per run (both trainers)")
    ap.add_argument("--features", type=int, default=512, help="true features")
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--d-sae", type=int, default=None, help="dictionary size (default: --features)")
    ap.add_argument("--eval-samples", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=1024, help="SAELens's synthetic default")
    ap.add_argument("--lr", type=float, default=None, help="both trainers (default: params.yaml's per architecture)")
    ap.add_argument("--saelens-lr", type=float, default=None, help="SAELens's trainer only (default: the same as "
                    "ours): a recipe tuned for unit-norm decoder rows may not suit free ones that start at 0.1")
    ap.add_argument("--l0", type=float, default=None, help="matched L0 (default: round(true L0))")
    ap.add_argument("--f1-l0", type=float, default=25.0, help="second target: F1 at this L0 (SynthSAEBench: 25)")
    ap.add_argument("--input-norm", type=float, default=None, help="rescale the rows to this mean norm (default: "
                    "the generator's, 2.6 at 128 dims); e.g. 11.31 = sqrt(128), where standard_2024 leaves them as "
                    "they are: a trainer without its input scaling then sees the same inputs")
    ap.add_argument("--world", choices=sorted(ZIPF), default="independent",
                    help="independent features, or SynthSAEBench-16k's hierarchical, correlated recipe at this size")
    ap.add_argument("--zipf-exponent", type=float, default=None, help="default: the world's (independent 1.0, "
                    "hierarchical 0.5)")
    ap.add_argument("--max-prob", type=float, default=None, help="default: the world's (0.3, 0.4)")
    ap.add_argument("--min-prob", type=float, default=None, help="default: the world's (0.01, 5e-4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=1, help="repeat everything on this many seeds (data and models: "
                    "--seed, --seed+1, ...) and report the means, with the MCC gap's standard error over seeds: "
                    "near the true L0 one run's MCC moves by about 0.01 with the seed")
    ap.add_argument("--no-saelens", action="store_true", help="ours only")
    ap.add_argument("--option", action="append", default=[], metavar="ARCH.KEY=VALUE",
                    help="override params.yaml's sae.<arch>.<key> (both trainers see it where shared), e.g. "
                         "jumprelu.threshold_init=0.1; repeatable")
    ap.add_argument("--start", action="append", default=[], metavar="IMPL.ARCH=VALUE",
                    help="where a penalty sweep starts, e.g. saelens.standard=2 (default: START in this file)")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both trainers (1: on a shared "
                    "2-core machine two threads ran a step 16x slower than one)")
    ap.add_argument("--progress", action="store_true", help="show the trainers' progress bars")
    ap.add_argument("--speed-repeats", type=int, default=0, help="also time ours and SAELens alternately this "
                    "many times each per architecture (the speed ratio then comes from these medians)")
    ap.add_argument("--speed-samples", type=int, default=200_000, help="samples per timed run of the speed check")
    ap.add_argument("--runs-per-target", type=int, default=5, help="most new runs a penalty sweep spends on "
                    "each target L0: more bracket it tighter where L0 falls off a cliff")
    ap.add_argument("--cache", type=Path, default=None, help="JSON-lines file of finished runs: reused when "
                    "everything that determines a run matches (an interrupted or extended benchmark resumes)")
    args = ap.parse_args(argv)
    global PROGRESS, CACHE
    PROGRESS, CACHE = args.progress, args.cache
    torch.set_num_threads(args.threads)
    archs = args.arch or list(ARCHITECTURES)
    if args.seeds < 1:
        ap.error(f"--seeds {args.seeds}: give at least 1")
    if args.input_norm is not None and not args.input_norm > 0:
        ap.error(f"--input-norm {args.input_norm}: a mean norm must be positive (e.g. 11.31 = sqrt(128))")
    unknown = [a for a in archs if a not in ARCHITECTURES]
    if unknown:
        ap.error(f"not registered: {', '.join(unknown)} (registered: {', '.join(ARCHITECTURES)})")
    sae_params = with_options(project_sae_params(args.params), args.option)
    for spec in args.start:
        key, _, value = spec.partition("=")
        impl, _, arch = key.partition(".")
        START[(impl, arch)] = float(value)
    if args.world == "hierarchical" and args.features < 128:
        ap.error(f"--world hierarchical --features {args.features}: give at least 128 (one root per 128 features)")
    d_sae = args.d_sae or args.features
    for flag, v in (("--l0", args.l0), ("--f1-l0", args.f1_l0)):
        if v is not None and round(v) >= d_sae:
            ap.error(f"{flag} {v:g}: a target L0 (TopK-style runs train at k = round(it)) must be below "
                     f"the dictionary size {d_sae} (--d-sae)")

    def log(r: Run) -> None:
        m = r.metrics
        print(f"run impl={r.impl} arch={r.arch} {r.knob}={r.value:.4g} l0={m['l0']:.2f} mcc={m['mcc']:.4f} "
              f"f1={m['f1']:.4f} precision={m['precision']:.4f} recall={m['recall']:.4f} fvu={m['fvu']:.4f} "
              f"dead={m['dead']} seconds={r.seconds:.1f} "
              f"tokens_per_s={r.tokens_per_s:.0f}", flush=True)

    per_seed: list[dict[tuple[str, str], list[Run]]] = []
    for seed in range(args.seed, args.seed + args.seeds):
        data = make_data(args.features, args.d_in, args.samples, args.eval_samples, seed, args.zipf_exponent,
                         args.max_prob, args.min_prob, input_norm=args.input_norm, world=args.world)
        target = args.l0 or float(round(data.true_l0))
        targets = sorted({target, args.f1_l0})
        print(f"world={args.world} features={args.features} d_in={args.d_in} d_sae={d_sae} samples={args.samples} "
              f"eval_samples={args.eval_samples} seed={seed} input_norm={args.input_norm or 'generator'}")
        print(f"true_l0={data.true_l0:.3f} matched_l0={target:g} f1_l0={args.f1_l0:g} data_seconds={data.seconds:.1f}")
        print(f"random_dictionary_mcc={random_baseline(data, d_sae, seed):.3f}")
        print(f"torch_threads={torch.get_num_threads()} cpu_count={os.cpu_count()}")
        print(f"registered={','.join(ARCHITECTURES)} benchmarked={','.join(archs)}")
        per_seed.append(run_seed(archs, data, d_sae, sae_params, targets, seed, args, log))

    speed = {}
    if args.speed_repeats:
        speed = speed_check(per_seed[-1], archs, data, d_sae, sae_params, target, args, log)
    report(per_seed, archs, sae_params, target, args.f1_l0, speed)
    return 0


def run_seed(archs, data: Data, d_sae: int, sae_params, targets: list[float], seed: int, args,
             log: Callable[[Run], None]) -> dict[tuple[str, str], list[Run]]:
    """Every architecture on one seed's data, ours and (unless --no-saelens) SAELens's."""
    results: dict[tuple[str, str], list[Run]] = {}
    saelens_runs: dict[str, list[Run]] = {}
    for arch in archs:
        shared = shared_recipe(sae_params, arch, args.samples, args.batch_size, args.lr)
        print(f"shared arch={arch} " + " ".join(f"{k}={v}" for k, v in vars(shared).items()), flush=True)
        if arch in DIFFERENCES:
            print(f"differences arch={arch} {DIFFERENCES[arch]}", flush=True)
        print(f"options arch={arch} " + " ".join(f"{k}={v}" for k, v in sae_params.options(arch).items()), flush=True)
        results[("ours", arch)] = run_architecture(arch, "ours", data, d_sae, shared, sae_params, targets,
                                                   seed, log, args.runs_per_target)
        name = SAELENS.get(arch)
        if args.no_saelens or name is None:
            continue
        theirs = for_saelens(shared, args.saelens_lr)
        if theirs != shared:
            print(f"shared impl=saelens arch={arch} lr={theirs.lr}", flush=True)
        key = f"{name}:{theirs}"  # standard and standard_2024 share SAELens's standard sweep
        if key not in saelens_runs:
            saelens_runs[key] = run_architecture(arch, "saelens", data, d_sae, theirs, sae_params, targets,
                                                 seed, log, args.runs_per_target)
        results[("saelens", arch)] = saelens_runs[key]
    return results


def matched_over_seeds(per_seed: list[list[Run]], target: float, fixed: bool) -> tuple[dict, str]:
    """`matched` on each seed's runs, averaged over the seeds that have a match; when some have none
    (a fixed k that was not trained), `how` says on how many of them the mean stands, e.g. "k 2/3"."""
    found = [matched(runs, target, fixed) for runs in per_seed]
    ms = [m for m, _ in found if m]
    mean = {k: statistics.fmean(m[k] for m in ms) for k in METRICS if ms and all(k in m for m in ms)}
    how = ",".join(sorted({how for m, how in found if m})) or "missing"
    return mean, how if len(ms) in (0, len(found)) else f"{how} {len(ms)}/{len(found)}"


def report(per_seed: list[dict], archs, sae_params, target, f1_target, speed: dict | None = None) -> None:
    """The matched metrics per architecture, averaged over the seeds; the MCC gap per seed and its
    mean with its standard error (the target is judged on the mean)."""
    speed = speed or {}
    rows = []
    n = len(per_seed)
    print()
    for arch in archs:
        fixed = knob_of(sae_params, arch) == "k"
        line = {"arch": arch}
        p = f"{arch}"
        for impl in ("ours", "saelens"):
            if (impl, arch) not in per_seed[0]:
                continue
            runs = [res[(impl, arch)] for res in per_seed]
            every = [r for rs in runs for r in rs]
            m, how = matched_over_seeds(runs, target, fixed)
            rate = sum(r.samples for r in every) / sum(r.seconds for r in every)
            line[impl] = (m, how, rate)
            line["best_" + impl] = max(r.metrics["mcc"] for r in every)
            print(f"{p}.{impl}.mcc={fmt(m.get('mcc'), '.4f')} {p}.{impl}.f1={fmt(m.get('f1'), '.4f')} "
                  f"{p}.{impl}.l0={fmt(m.get('l0'), '.2f')} {p}.{impl}.fvu={fmt(m.get('fvu'), '.4f')} "
                  f"{p}.{impl}.dead={fmt(m.get('dead'), '.1f')} {p}.{impl}.tokens_per_s={rate:.0f} {p}.{impl}.at={how}")
        if "saelens" in line:
            ratio = line["ours"][2] / line["saelens"][2]
            if arch in speed:  # the interleaved check, when it ran, is the better estimate
                ratio = speed[arch][0] / speed[arch][1]
                print(f"{p}.interleaved.ours.tokens_per_s={speed[arch][0]:.0f} "
                      f"{p}.interleaved.saelens.tokens_per_s={speed[arch][1]:.0f}")
            line["ratio"] = ratio
            gaps = []
            for res in per_seed:
                m_o, _ = matched(res[("ours", arch)], target, fixed)
                m_s, _ = matched(res[("saelens", arch)], target, fixed)
                if m_o and m_s:
                    gaps.append(m_o["mcc"] - m_s["mcc"])
            if gaps:
                gap = statistics.fmean(gaps)
                se = statistics.stdev(gaps) / math.sqrt(len(gaps)) if len(gaps) > 1 else float("nan")
                line["gap"] = (gap, se)
                print(f"{p}.mcc_minus_saelens={gap:+.4f} {p}.mcc_minus_saelens.se={se:.4f} "
                      f"{p}.mcc_minus_saelens.per_seed={','.join(f'{g:+.4f}' for g in gaps)} "
                      f"{p}.mcc_target_met={gap >= 0} {p}.speed_ratio={ratio:.2f} {p}.speed_target_met={ratio >= 2}")
            print(f"{p}.best_mcc.ours={line['best_ours']:.4f} {p}.best_mcc.saelens={line['best_saelens']:.4f}")
        rows.append(line)

    print(f"\nAt matched L0 = {target:g} (fixed k: k = {round(target)}; penalties: interpolated in log L0 between "
          f"runs that bracket it, or a run within 2%), mean over {n} seed{'s' * (n > 1)}. tok/s: mean over the "
          "sweeps' runs; speed×: ours ÷ SAELens, from the interleaved check when it ran (--speed-repeats), else "
          "the sweeps'; ΔMCC: ours − SAELens, mean over seeds ± its standard error")
    head = f"{'architecture':<24} {'impl':<8} {'at':<8} {'MCC':>7} {'F1':>7} {'L0':>6} {'FVU':>7} {'dead':>6} " \
           f"{'tok/s':>9} {'speed×':>7} {'ΔMCC':>16} {'bestMCC':>8}"
    print(head)
    print("-" * len(head))
    for line in rows:
        for impl in ("ours", "saelens"):
            if impl not in line:
                continue
            m, how, rate = line[impl]
            ratio = f"{line['ratio']:.2f}" if impl == "ours" and "ratio" in line else ""
            gap = ""
            if impl == "ours" and "gap" in line:
                g, se = line["gap"]
                gap = f"{g:+.4f}" + (f" ± {se:.4f}" if se == se else "")
            name = line["arch"] if impl == "ours" else f"  ({SAELENS[line['arch']]})"
            print(f"{name:<24} {impl:<8} {how:<8} {fmt(m.get('mcc'), '7.4f')} {fmt(m.get('f1'), '7.4f')} "
                  f"{fmt(m.get('l0'), '6.2f')} {fmt(m.get('fvu'), '7.4f')} {fmt(m.get('dead'), '6.1f')} "
                  f"{rate:9.0f} {ratio:>7} {gap:>16} {line['best_' + impl]:8.4f}")

    print(f"\nF1 at L0 ≈ {f1_target:g} beside SynthSAEBench's published F1 at L0 = 25 (SAELens docs; its "
          "16k-feature world, not this data)")
    print(f"{'architecture':<14} {'ours F1':>8} {'ours L0':>8} {'SAELens F1':>11} {'published':>10}")
    f1s = {}
    for arch in archs:
        fixed = knob_of(sae_params, arch) == "k"
        m_o, _ = matched_over_seeds([res[("ours", arch)] for res in per_seed], f1_target, fixed)
        m_s = {}
        if ("saelens", arch) in per_seed[0]:
            m_s, _ = matched_over_seeds([res[("saelens", arch)] for res in per_seed], f1_target, fixed)
        f1s[arch] = m_o.get("f1")
        pub = PUBLISHED_F1_AT_25.get(arch)
        print(f"{arch:<14} {fmt(m_o.get('f1'), '8.4f')} {fmt(m_o.get('l0'), '8.2f')} {fmt(m_s.get('f1'), '11.4f')} "
              f"{fmt(pub, '10.3f')}")
        print(f"{arch}.f1_at_{f1_target:g}.ours={fmt(m_o.get('f1'), '.4f')} "
              f"{arch}.f1_at_{f1_target:g}.saelens={fmt(m_s.get('f1'), '.4f')}")
    published = [a for a in sorted(PUBLISHED_F1_AT_25, key=PUBLISHED_F1_AT_25.get) if f1s.get(a) is not None]
    ours_order = sorted(published, key=lambda a: f1s[a])
    print(f"published_order_low_to_high={','.join(published)}")
    print(f"our_order_low_to_high={','.join(ours_order)}")
    levels = len({PUBLISHED_F1_AT_25[a] for a in published})
    print(f"published_ordering_reappears={_same_order(published, f1s) if levels > 1 else 'n/a'}")


def _same_order(published: list[str], f1s: dict) -> bool:
    """Whether our F1s rise along the published order (ties in the published values — BatchTopK
    and JumpReLU, both 0.732 — may come in either order)."""
    groups: dict[float, list[str]] = {}
    for a in published:
        groups.setdefault(PUBLISHED_F1_AT_25[a], []).append(a)
    levels = [groups[v] for v in sorted(groups)]
    return all(max(f1s[a] for a in lo) < min(f1s[b] for b in hi) for lo, hi in zip(levels, levels[1:]))


if __name__ == "__main__":
    sys.exit(main())
