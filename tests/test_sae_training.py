import numpy as np
import pytest
import torch
import zarr

from monosemantic.activations.reader import ShuffledReader
from monosemantic.compute import Compute
from monosemantic.sae.export import load_sae, save_sae
from monosemantic.sae.standard import Standard
from monosemantic.sae.trainer import TrainConfig, train_sae

D_IN, N_TRUE = 48, 192


class SparseWorld:
    """Inputs that are sparse non-negative combinations (`active` of `n`) of known unit directions in `d`."""

    def __init__(self, seed=0, active=3, n=N_TRUE, d=D_IN):
        g = torch.Generator().manual_seed(seed)
        self.dictionary = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
        self.n, self.d, self.active = n, d, active

    def sample(self, n, g):
        idx = torch.rand(n, self.n, generator=g).argsort(1)[:, : self.active]
        coeffs = torch.zeros(n, self.n).scatter_(1, idx, torch.rand(n, self.active, generator=g) + 0.5)
        return coeffs @ self.dictionary

    def batches(self, batch):
        def from_position(position):
            step = position // batch
            while True:
                yield self.sample(batch, torch.Generator().manual_seed(10_000 + step))
                step += 1
        return from_position


def recovery(sae, world):
    """Mean over the true directions of the best cosine similarity with a decoder row."""
    cos = torch.nn.functional.normalize(sae.W_dec.detach(), dim=1) @ world.dictionary.T
    return cos.max(0).values.mean().item()


def cfg(**kw):
    return TrainConfig(**{"steps": 1500, "lr": 3e-3, "batch_size": 512,
                          "resample_steps": (200, 400, 600), "dead_window": 100, "resample_inputs": 8192,
                          "log_every": 100, "checkpoint_every": 500, **kw})


def test_recovers_a_known_sparse_dictionary():
    world = SparseWorld()
    torch.manual_seed(0)
    sae = Standard(D_IN, 2 * N_TRUE, l1_coefficient=1e-2)
    state = train_sae(sae, world.batches(512), world.sample, cfg())
    assert recovery(sae, world) >= 0.95, recovery(sae, world)
    assert (sae.W_dec.norm(dim=1) - 1).abs().max() < 1e-5
    assert state.history[-1]["l0"] < 3 * world.active


def _badly_initialised(seed=0):
    torch.manual_seed(seed)
    sae = Standard(D_IN, 2 * N_TRUE, l1_coefficient=1e-2)
    with torch.no_grad():
        sae.W_enc[:, : int(1.5 * N_TRUE)] *= -1  # most encoder columns point away from every input
        sae.b_enc[: int(1.5 * N_TRUE)] = -1.0
    return sae


def test_resampling_revives_dead_neurons_and_lowers_the_loss():
    world = SparseWorld(seed=1)
    with_rs, without = _badly_initialised(), _badly_initialised()
    a = train_sae(with_rs, world.batches(512), world.sample, cfg(steps=1000))
    b = train_sae(without, world.batches(512), world.sample, cfg(steps=1000, resample_steps=()))
    assert sum(n for _, n in a.resampled) > N_TRUE  # the dead neurons were found and resampled
    assert a.history[-1]["dead_features"] < b.history[-1]["dead_features"]
    g = torch.Generator().manual_seed(123)
    x = world.sample(8192, g)
    loss = lambda sae: sae(x, 1e-2).loss.item()
    assert loss(with_rs) < 0.9 * loss(without), (loss(with_rs), loss(without))
    assert recovery(with_rs, world) > recovery(without, world)


def test_a_resampling_step_with_no_dead_neuron_draws_and_scores_no_inputs():
    world = SparseWorld(seed=3)
    drawn = []

    def sample_inputs(n, g):
        drawn.append(n)
        return world.sample(n, g)

    torch.manual_seed(0)
    sae = Standard(D_IN, 96, l1_coefficient=1e-4)  # a weak penalty: every neuron keeps firing
    state = train_sae(sae, world.batches(256), sample_inputs,
                      cfg(steps=60, batch_size=256, resample_steps=(20, 40), dead_window=10, resample_inputs=1024))
    assert state.resampled == [(20, 0), (40, 0)]  # both events logged, with no neuron
    assert drawn == [1024]  # b_dec's initial sample only


class Killed(Exception):
    pass


def kill_and_resume(tmp_path, compute=Compute()):
    """A run from a store, killed at step 230 (after the checkpoint at 200, before the resampling at
    250) and resumed in a new process, beside the same run uninterrupted: (clean, its state,
    resumed, its state)."""
    world = SparseWorld(seed=2)
    acts = zarr.create_array(tmp_path / "a.zarr", shape=(20_000, D_IN), chunks=(500, D_IN), dtype="float16")
    acts[:] = world.sample(20_000, torch.Generator().manual_seed(0)).half().numpy()

    def batches(position):
        return iter(ShuffledReader(acts, 0, 20_000, 256, seed=3, window_chunks=4, position=position))

    def sample_inputs(n, g):
        rows = torch.randint(0, 20_000, (n,), generator=g).sort().values.numpy()
        return torch.from_numpy(acts.get_orthogonal_selection((rows, slice(None))).astype(np.float32))

    c = cfg(steps=300, batch_size=256, resample_steps=(50, 150, 250), dead_window=30, checkpoint_every=100,
            log_every=10)

    def fresh(seed=0):  # λ strong enough that neurons die and get resampled
        torch.manual_seed(seed)
        return Standard(D_IN, 96, l1_coefficient=0.05).to(compute.device)

    def die(step, _):
        if step == 230:
            raise Killed

    clean = fresh()
    clean_state = train_sae(clean, batches, sample_inputs, c, compute=compute)
    with pytest.raises(Killed):
        train_sae(fresh(), batches, sample_inputs, c, tmp_path / "ck.pt", "fp", die, compute=compute)
    resumed = fresh(99)  # a new process: other random weights, until the checkpoint loads
    state = train_sae(resumed, batches, sample_inputs, c, tmp_path / "ck.pt", "fp", compute=compute)
    assert any(n for step, n in clean_state.resampled if step > 230)  # the resumed part resampled
    assert state.resampled == clean_state.resampled
    return clean, clean_state, resumed, state


def test_killed_training_resumes_to_identical_weights(tmp_path):
    clean, clean_state, resumed, state = kill_and_resume(tmp_path)
    for name, value in clean.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    timeless = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_second"} for r in rows]
    assert timeless(state.history) == timeless(clean_state.history)


def test_saelens_format_round_trip(tmp_path):
    torch.manual_seed(0)
    sae = Standard(D_IN, 64)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(0, 0.1)
    save_sae(sae, tmp_path / "d", {"hook_name": "mlp.act"})
    import json

    cfg_json = json.loads((tmp_path / "d/cfg.json").read_text())
    assert cfg_json["architecture"] == "standard" and cfg_json["apply_b_dec_to_input"] is True
    assert cfg_json["normalize_activations"] == "none" and cfg_json["metadata"]["sae_lens_version"] >= "6.0.0"
    from safetensors.torch import load_file

    w = load_file(tmp_path / "d/sae_weights.safetensors")
    assert w["W_enc"].shape == (D_IN, 64) and w["W_dec"].shape == (64, D_IN)
    x = torch.randn(10, D_IN)
    again = load_sae(tmp_path / "d")
    torch.testing.assert_close(again(x).x_hat, sae(x).x_hat)
    sae_lens = pytest.importorskip("sae_lens")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "d"))
    torch.testing.assert_close(theirs(x), sae(x).x_hat.detach(), rtol=1e-5, atol=1e-5)


def diverge(tmp_path, compute=Compute()):
    """A loss that becomes infinite at step 26 of 40, checkpoints every 10 steps."""
    from monosemantic.sae.trainer import TrainingDiverged

    world = SparseWorld(seed=4)

    def batches(position):
        step = position // 64
        while True:
            x = world.sample(64, torch.Generator().manual_seed(step))
            if step == 25:
                x[0, 0] = float("inf")  # what the store's checks would stop; here it reaches the loss
            yield x
            step += 1

    c = cfg(steps=40, batch_size=64, checkpoint_every=10)
    ckpt = tmp_path / "ck.pt"
    with pytest.raises(TrainingDiverged, match=r"at step 26 .*checkpoint .* is kept"):
        train_sae(Standard(D_IN, 32, 0.01).to(compute.device), batches, lambda n, g: world.sample(n, g), c, ckpt,
                  "fp", compute=compute)
    saved = torch.load(ckpt, weights_only=False)
    assert saved["state"].step == 20 and all(torch.isfinite(v).all() for v in saved["sae"].values())


def test_a_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path):
    diverge(tmp_path)


def test_a_deferred_finiteness_check_names_the_first_non_finite_step():
    """A GPU records each step's loss on the device and checks only where the host reads the state:
    the check must still name the first bad step and its loss, not the latest."""
    from monosemantic.sae.trainer import TrainingDiverged, _Finite

    finite = _Finite(torch.device("cpu"))
    for step, loss in enumerate([0.5, 0.4], start=1):
        finite.record(torch.tensor(loss), step)
    finite.check(32, None)  # all finite so far
    for step, loss in [(3, float("inf")), (4, float("nan")), (5, 0.3)]:
        finite.record(torch.tensor(loss), step)
    with pytest.raises(TrainingDiverged, match=r"became inf at step 3 \(d_sae=32\); no checkpoint was written"):
        finite.check(32, None)
