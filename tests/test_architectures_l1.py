"""Anthropic's April 2024 recipe (standard_2024) and JumpReLU: the loss and its gradients against the
formulas, training on known features, the SAELens export and the input scale across a resume."""

import copy
import json
import math

import pytest
import torch

from monosemantic.sae import ARCHITECTURES
from monosemantic.sae.export import load_sae, save_sae
from monosemantic.sae.jumprelu import JumpReLU
from monosemantic.sae.standard_2024 import Standard2024
from monosemantic.sae.trainer import TrainConfig, train_sae
from tests.test_sae_training import D_IN, N_TRUE, SparseWorld, recovery


def _randomised(sae: torch.nn.Module, scale: float, b_enc_mean: float = 0.0, seed: int = 0):
    """`sae` with non-zero biases and an input scale set from inputs of mean norm `scale`·√d_in."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(sae.d_sae, generator=g) * 0.3 + b_enc_mean)
        sae.b_dec.copy_(torch.randn(sae.d_in, generator=g) * 0.3)
        sample = torch.randn(256, sae.d_in, generator=g) * scale
    sae.initialize(sample)
    return sae


def _plain_2024(p, x, coefficient):
    """The April 2024 loss written out, through autograd (x' − b_dec into the encoder with the option)."""
    s = p.input_scale
    f = torch.relu((x * s - p.b_dec * p.pre_encoder_bias) @ p.W_enc + p.b_enc)
    x_hat = f @ p.W_dec + p.b_dec
    sse = (x_hat - x * s).pow(2).sum(-1).mean()
    l1 = (f * p.W_dec.norm(dim=1)).sum(-1).mean()
    return x_hat / s, f / s, sse + coefficient * l1, (x_hat / s - x).pow(2).mean(), l1


@pytest.mark.parametrize("pre_encoder_bias", [False, True], ids=["paper", "pre_encoder_bias"])
@pytest.mark.parametrize("b_enc_mean, x_needs_grad", [(0.0, False), (-2.5, False), (-1.0, True)],
                         ids=["dense", "sparse", "autograd"])
def test_standard_2024_loss_and_gradients_are_the_formulas(b_enc_mean, x_needs_grad, pre_encoder_bias):
    """The hand-written step's two paths, and autograd's (x needs a gradient, as on GPU or under
    autocast), against the April 2024 formula, with and without SAELens's pre-encoder bias."""
    torch.manual_seed(0)
    sae = _randomised(Standard2024(12, 96, l1_coefficient=0.7, decoder_init_norm=0.3,
                                   pre_encoder_bias=pre_encoder_bias), 4.0, b_enc_mean)
    x = torch.randn(64, 12) * 4.0
    plain = copy.deepcopy(sae)
    out = sae(x.clone().requires_grad_(x_needs_grad), 0.7)
    want = _plain_2024(plain, x, 0.7)
    fraction = (out.f > 0).float().mean().item()
    if not x_needs_grad:
        assert (fraction < sae.sparse_below) == (b_enc_mean < 0), fraction  # both of autoencode's paths
    for got, expected in zip(out[:5], want):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    out.loss.backward()
    want[2].backward()
    for (name, p), q in zip(sae.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(sae.encode(x), out.f.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(sae.encode(x)), out.x_hat.detach(), rtol=1e-5, atol=1e-5)


def test_standard_2024_initialisation_and_scale():
    torch.manual_seed(0)
    sae = Standard2024(16, 64, decoder_init_norm=0.1)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((64,), 0.1))
    assert torch.equal(sae.W_enc, sae.W_dec.T) and not sae.b_enc.any() and not sae.b_dec.any()
    x = torch.randn(1000, 16) * 7.0
    sae.initialize(x)
    assert not sae.b_dec.any()  # no geometric median: the paper starts b_dec at zero
    torch.testing.assert_close((x * sae.input_scale).norm(dim=1).mean(), torch.tensor(4.0))  # √16
    assert Standard2024.unit_norm_decoder is False and Standard2024.max_grad_norm == 1.0
    unscaled = Standard2024(16, 64, scale_inputs=False)
    unscaled.initialize(x)
    assert unscaled.input_scale.item() == 1.0  # SAELens's standard trainer: inputs as they come


@pytest.mark.parametrize("sparse_below", [1.0, 0.0], ids=["sparse", "dense"])
def test_jumprelu_forward_and_gradients_are_the_formulas(sparse_below):
    """The step by hand (sparse_below 1.0: products over f's nonzeros; 0.0: dense) against the formula
    through autograd; θ's gradient against the estimators' autograd path (an x that needs a gradient)."""
    torch.manual_seed(0)
    sae = _randomised(JumpReLU(12, 96, l0_coefficient=0.05, bandwidth=0.05), 3.0)
    with torch.no_grad():
        sae.log_threshold.copy_(torch.rand(96).mul(0.5).add(0.05).log())
    sae.sparse_below = sparse_below
    plain, estimators = copy.deepcopy(sae), copy.deepcopy(sae)
    x = torch.randn(64, 12) * 3.0
    out = sae(x, 0.05)
    s, theta = plain.input_scale, plain.log_threshold.exp().detach()
    z = x * s @ plain.W_enc + plain.b_enc
    f = z * (z > theta).float()  # autograd: ∂f/∂z = H(z − θ); the L0 term gives z nothing
    x_hat = f @ plain.W_dec + plain.b_dec
    l0 = (z > theta).float().sum(-1).mean()
    loss = (x_hat - x * s).pow(2).sum(-1).mean() + 0.05 * l0
    for got, expected in zip(out[:5], (x_hat / s, f / s, loss, (x_hat / s - x).pow(2).mean(), l0)):
        torch.testing.assert_close(got, expected)
    assert 0 < (out.f > 0).float().mean() < 1
    out.loss.backward()
    loss.backward()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(sae, name).grad, getattr(plain, name).grad, msg=name)
    estimators(x.clone().requires_grad_(), 0.05).loss.backward()
    assert sae.log_threshold.grad.abs().max() > 0
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"):
        torch.testing.assert_close(getattr(sae, name).grad, getattr(estimators, name).grad, msg=name)
    torch.testing.assert_close(sae.encode(x), out.f)
    torch.testing.assert_close(sae.decode(sae.encode(x)), out.x_hat)
    assert JumpReLU.adam_betas == (0.0, 0.999) and JumpReLU.unit_norm_decoder
    fresh = JumpReLU(8, 16, threshold_init=0.02)
    assert torch.equal(fresh.W_enc, fresh.W_dec.T) and torch.allclose(fresh.log_threshold.exp(), torch.tensor(0.02))


@pytest.mark.parametrize("sparse_below", [1.0, 0.0], ids=["sparse", "dense"])
def test_jumprelu_threshold_gradient_is_the_papers_straight_through_estimate(sparse_below):
    """θ's pseudo-derivatives (paper, eqs. 11-12) on a hand-made batch where z = x:
    ∂L/∂θ_i = Σ_b ∂L/∂f_bi · (−θ_i/ε) K((z_bi − θ_i)/ε) + (λ/B) Σ_b (−1/ε) K((z_bi − θ_i)/ε)."""
    eps, lam, theta = 0.1, 0.1, (0.5, 1.0)
    sae = JumpReLU(2, 2, l0_coefficient=lam, bandwidth=eps)
    sae.sparse_below = sparse_below
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.W_dec.copy_(torch.eye(2))
        sae.log_threshold.copy_(torch.tensor(theta).log())
    # Feature 0 (θ=0.5): 0.52 fires and 0.47 does not, both within ε/2; 2.0 is outside the window.
    # Feature 1 (θ=1.0): 0.96 (silent) and 1.04 (fires) within the window; 0.3 outside.
    x = torch.tensor([[0.52, 0.3], [0.47, 0.96], [2.0, 1.04]])
    sae(x, lam).loss.backward()
    # f = [[0.52, 0], [0, 0], [2.0, 1.04]], so x̂ − x = [[0, −0.3], [−0.47, −0.96], [0, 0]] and
    # ∂L/∂f = (2/B)(x̂ − x); within the window, only the silent entries have a non-zero error.
    d_theta0 = (2 / 3) * -0.47 * (-0.5 / eps) + 2 * lam / 3 * (-1 / eps)
    d_theta1 = (2 / 3) * -0.96 * (-1.0 / eps) + 2 * lam / 3 * (-1 / eps)
    expected = torch.tensor([0.5 * d_theta0, 1.0 * d_theta1])  # through θ = exp(log θ)
    torch.testing.assert_close(sae.log_threshold.grad, expected)


def _train(sae, world, steps, lr, **kw):
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=256, l1_warmup_steps=steps // 10, lr_decay_steps=steps // 5,
                      dead_window=100, resample_inputs=4096, log_every=steps // 10, checkpoint_every=10_000, **kw)
    return train_sae(sae, world.batches(256), world.sample, cfg)


@pytest.mark.parametrize("make, steps, lr", [
    (lambda: Standard2024(D_IN, 2 * N_TRUE, l1_coefficient=3.0), 200, 1e-2),
    # log θ moves by about lr per step: a short run starts θ nearer the scale of z than the paper's 0.001.
    (lambda: JumpReLU(D_IN, 2 * N_TRUE, l0_coefficient=0.05, threshold_init=0.1), 300, 1.5e-2),
], ids=["standard_2024", "jumprelu"])
def test_training_recovers_known_features(make, steps, lr):
    world = SparseWorld(seed=5)
    torch.manual_seed(0)
    sae = make()
    state = _train(sae, world, steps, lr)
    first, last = state.history[0], state.history[-1]
    assert last["loss"] < 0.8 * first["loss"] and last["mse"] < 0.6 * first["mse"], (first, last)
    assert recovery(sae, world) >= 0.9, recovery(sae, world)
    assert last["l0"] < 6 * world.active, last


@pytest.mark.parametrize("arch, options", [("standard_2024", {}), ("standard_2024", {"pre_encoder_bias": True}),
                                           ("jumprelu", {})], ids=["standard_2024", "pre_encoder_bias", "jumprelu"])
def test_saelens_export_reproduces_our_features_and_reconstructions(tmp_path, arch, options):
    sae_lens = pytest.importorskip("sae_lens")
    torch.manual_seed(0)
    sae = _randomised(ARCHITECTURES[arch](10, 40, **options), 6.0, -0.3)
    if arch == "jumprelu":
        with torch.no_grad():
            sae.log_threshold.copy_(torch.rand(40).add(0.2).log())
    save_sae(sae, tmp_path / "d", {"hook_name": "mlp.act"})
    cfg = json.loads((tmp_path / "d/cfg.json").read_text())
    assert cfg["architecture"] == ("standard" if arch == "standard_2024" else "jumprelu")
    assert cfg["apply_b_dec_to_input"] is bool(options) and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["monosemantic"]["architecture"] == arch
    assert math.isclose(cfg["input_scale"], sae.input_scale.item())

    x = torch.randn(200, 10) * 6.0  # unscaled inputs
    f, x_hat = sae.encode(x), sae.decode(sae.encode(x))
    assert 0 < (f > 0).float().mean() < 0.9
    ours = load_sae(tmp_path / "d")
    assert type(ours) is type(sae) and ours.options() == sae.options()
    for name, value in sae.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, msg=name)
    torch.testing.assert_close(ours.encode(x), f)
    torch.testing.assert_close(ours(x, 0.1).loss, sae(x, 0.1).loss)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "d"))
    torch.testing.assert_close(theirs.encode(x), f.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(theirs.decode(f), x_hat.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(theirs(x), x_hat.detach(), rtol=1e-5, atol=1e-5)



def test_with_saelens_choices_ours_takes_saelens_trainers_steps():
    """standard_2024 with `pre_encoder_bias` and no input scale is SAELens's `standard` recipe: from
    the same weights on the same batches, our trainer and SAELens's `SAETrainer` (configured as
    benchmarks/ground_truth.py runs it) end at the same weights, through the lr warm-up and decay and
    the gradient clipping. So an MCC gap between the two on known features is the seeds', not the
    trainers'. The λ warm-up is off here: SAELens applies λ·t/W at step t, ours λ·(t+1)/W, one step
    ahead."""
    pytest.importorskip("sae_lens")
    from sae_lens.registry import get_sae_training_class
    from sae_lens.training.sae_trainer import SAETrainer

    from benchmarks.ground_truth import Shared, saelens_trainer_config

    lam = 0.5
    shared = Shared(steps=60, batch_size=128, lr=0.01, lr_warmup_steps=6, lr_decay_steps=12,
                    coefficient_warmup_steps=0, dead_window=60)
    rows = SparseWorld(seed=3).sample(shared.steps * shared.batch_size, torch.Generator().manual_seed(0)) * 4.0
    batches = lambda position: iter(rows[position:].split(shared.batch_size))  # noqa: E731
    torch.manual_seed(0)
    sae_cls, cfg_cls = get_sae_training_class("standard")
    theirs = sae_cls(cfg_cls(d_in=D_IN, d_sae=64, dtype="float32", device="cpu", decoder_init_norm=0.1,
                             l1_coefficient=lam))
    ours = Standard2024(D_IN, 64, l1_coefficient=lam, pre_encoder_bias=True, scale_inputs=False)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(ours, name).copy_(getattr(theirs, name))
    start = copy.deepcopy(ours.state_dict())
    SAETrainer(cfg=saelens_trainer_config(shared), sae=theirs, data_provider=batches(0)).fit()
    train_sae(ours, batches, lambda n, g: rows[:n], TrainConfig(
        steps=shared.steps, lr=shared.lr, batch_size=shared.batch_size, lr_warmup_steps=shared.lr_warmup_steps,
        lr_decay_steps=shared.lr_decay_steps, l1_warmup_steps=shared.coefficient_warmup_steps,
        dead_window=shared.dead_window, log_every=shared.steps, checkpoint_every=10 ** 9))
    for name, before in start.items():
        if name == "input_scale":
            continue
        after = getattr(ours, name).detach()
        assert (after - before).norm() > 0.1 * before.norm().clamp_min(0.1), name  # both moved a long way
        torch.testing.assert_close(after, getattr(theirs, name).detach(), rtol=1e-4, atol=1e-5, msg=name)


class Killed(Exception):
    pass


@pytest.mark.parametrize("make", [lambda: Standard2024(D_IN, 64, l1_coefficient=2.0),
                                  lambda: JumpReLU(D_IN, 64, l0_coefficient=0.03, threshold_init=0.1)],
                         ids=["standard_2024", "jumprelu"])
def test_the_input_scale_survives_a_resume(tmp_path, make):
    world = SparseWorld(seed=6)
    cfg = TrainConfig(steps=60, lr=3e-3, batch_size=128, l1_warmup_steps=10, lr_decay_steps=10,
                      resample_inputs=2048, log_every=10, checkpoint_every=20)
    torch.manual_seed(0)
    clean = make()
    train_sae(clean, world.batches(128), world.sample, cfg)
    assert clean.input_scale.item() != 1.0

    def die(step, _):
        if step == 50:  # after the checkpoint at 40
            raise Killed

    torch.manual_seed(0)
    with pytest.raises(Killed):
        train_sae(make(), world.batches(128), world.sample, cfg, tmp_path / "ck.pt", "fp", die)
    torch.manual_seed(99)  # a new process: other random weights and input_scale = 1 until the checkpoint loads
    resumed = make()
    train_sae(resumed, world.batches(128), world.sample, cfg, tmp_path / "ck.pt", "fp")
    for name, value in clean.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
