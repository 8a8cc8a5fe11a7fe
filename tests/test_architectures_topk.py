"""TopK (Gao et al. 2024), BatchTopK (Bussmann et al. 2024) and Matryoshka (Bussmann et al. 2025):
the sparse training step against the plain formula, AuxK's reach, training on known features, the
SAELens export and BatchTopK's resume."""

import copy
import functools
import json
import os

import pytest
import torch

from monosemantic.params import BatchTopKParams, MatryoshkaParams, TopKParams
from monosemantic.sae import ARCHITECTURES, build
from monosemantic.sae.batchtopk import batch_top_k, spread_batch_top_k
from monosemantic.sae.export import load_sae, save_sae
from monosemantic.sae.trainer import TrainConfig, train_sae
from tests.test_sae_training import Killed, SparseWorld, recovery

ARCHS = ["topk", "batchtopk", "matryoshka"]
PARAMS = {"topk": TopKParams, "batchtopk": BatchTopKParams, "matryoshka": MatryoshkaParams}


def reference(sae, x, coefficient, dead):
    """The architecture's loss written out densely, through autograd: (f, x̂, loss, mse, AuxK)."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    if sae.architecture == "topk":
        kth = pre.topk(sae.k, dim=1).values[:, -1:]  # each input's k-th largest
    else:
        kth = pre.flatten().topk(sae.k * len(x)).values[-1]  # the batch's (k·B)-th largest
    f = torch.relu(pre) * (pre >= kth)
    x_hat = f @ sae.W_dec + sae.b_dec
    widths = [round(p * sae.d_sae) for p in getattr(sae, "prefixes", [])] + [sae.d_sae]
    mses = torch.stack([((f[:, :m] @ sae.W_dec[:m] + sae.b_dec) - x).pow(2).mean() for m in widths])
    dead_pre = pre.masked_fill(~dead, -torch.inf)
    kth_dead = dead_pre.topk(min(sae.aux_k, int(dead.sum())), dim=1).values[:, -1:]
    e, e_hat = (x - x_hat).detach(), (torch.relu(dead_pre) * (dead_pre >= kth_dead)) @ sae.W_dec
    aux = (e - e_hat).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
    return f, x_hat, mses.mean() / sae.input_variance + coefficient * aux, mses[-1], aux


def _random(arch, d_in=16, d_sae=96, k=4, seed=0, **options):
    torch.manual_seed(seed)
    extra = {"prefixes": [1 / 8, 1 / 4, 1 / 2]} if arch == "matryoshka" else {}
    sae = build(arch, d_in, d_sae, {"k": k, "aux_k": 5, **extra, **options})
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_()
        sae.input_variance.fill_(0.7)
    return sae


@pytest.mark.parametrize("sparse_below", [1.0, 0.0], ids=["sparse", "dense"])
@pytest.mark.parametrize("arch", ARCHS)
def test_the_training_step_is_the_papers_formula(arch, sparse_below):
    sae = _random(arch)
    sae.sparse_below = sparse_below  # 1.0: _Autoencode's products over f's nonzeros; 0.0: its dense ones
    x = torch.randn(40, 16)
    dead = torch.arange(96) % 3 == 0
    out = sae(x, 0.3, dead)
    out.loss.backward()
    plain = copy.deepcopy(sae)
    for p in plain.parameters():
        p.grad = None
    f, x_hat, loss, mse, aux = reference(plain, x, 0.3, dead)
    loss.backward()
    for ours, theirs in [(out.f, f), (out.x_hat, x_hat), (out.loss, loss), (out.mse, mse), (out.penalty, aux)]:
        torch.testing.assert_close(ours, theirs)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(sae, name).grad, getattr(plain, name).grad, msg=name)
    assert (out.f > 0).sum(1).float().mean() == 4  # k per input (TopK) or on average (BatchTopK)


def test_batch_top_k_keeps_the_batchs_largest_also_when_one_input_takes_most():
    torch.manual_seed(0)
    pre = torch.randn(64, 200)
    for scale in (1.0, 100.0):  # 100: the first input holds more than its 4k candidates of the batch's k·B
        pre[0] *= scale
        f = batch_top_k(pre, 3)
        kept = pre.flatten().topk(3 * 64).values
        torch.testing.assert_close(f.flatten().sort().values[-3 * 64:], kept.relu().sort().values)
        assert (f > 0).sum() == (kept > 0).sum() and torch.equal(f[f > 0], pre[f > 0])
    assert (f[0] > 0).sum() > 4 * 3


@pytest.mark.parametrize("quantile", [0.0, 0.5, 0.9, 0.95, 0.999])
def test_batch_top_k_floor_changes_nothing_but_the_search(quantile):
    """A floor below the batch's k·B-th largest entry narrows the search; one above it (too few
    candidates) or far below it (too many) falls back: every floor keeps the same entries."""
    torch.manual_seed(1)
    pre = torch.randn(128, 300)
    floor = float(pre.flatten().quantile(quantile))
    plain, floored = batch_top_k(pre, 4), batch_top_k(pre, 4, floor=floor)
    assert torch.equal(plain, floored) and (plain > 0).sum() == 4 * 128


def test_matryoshka_input_that_needs_a_gradient_takes_autograd_with_the_same_weight_gradients():
    sae = _random("matryoshka")
    plain = copy.deepcopy(sae)
    x, dead = torch.randn(40, 16), torch.arange(96) % 3 == 0
    sae(x, 0.3, dead).loss.backward()  # by hand
    x_grad = x.clone().requires_grad_()
    plain(x_grad, 0.3, dead).loss.backward()  # autograd: x gets its gradient too, every prefix's part
    x_ref = x.clone().requires_grad_()
    reference(copy.deepcopy(sae), x_ref, 0.3, dead)[2].backward()
    torch.testing.assert_close(x_grad.grad, x_ref.grad)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(sae, name).grad, getattr(plain, name).grad, msg=name)


def test_matryoshka_prefixes_that_round_to_the_whole_leave_its_loss_alone():
    sae = _random("matryoshka", d_sae=8, prefixes=[0.99])  # round(0.99 * 8) = 8: no inner prefix
    x = torch.randn(40, 16)
    out = sae(x)
    assert sae.widths == [8]
    torch.testing.assert_close(out.loss, out.mse / sae.input_variance)


@pytest.mark.parametrize("arch", ARCHS)
def test_auxk_trains_dead_latents_only(arch):
    sae = _random(arch)
    x = torch.randn(64, 16)
    assert sae(x, 1.0, None).penalty == 0 and sae(x, 1.0, torch.zeros(96, dtype=torch.bool)).penalty == 0
    dead = torch.rand(96, generator=torch.Generator().manual_seed(1)) < 0.3
    sae(x, 1.0, dead).penalty.backward()
    alive = ~dead
    assert sae.W_enc.grad[:, alive].abs().max() == 0 and sae.b_enc.grad[alive].abs().max() == 0
    assert sae.W_dec.grad[alive].abs().max() == 0
    assert (sae.W_dec.grad[dead].abs().sum(1) > 0).sum() >= 5 and sae.b_enc.grad[dead].abs().max() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_options_are_the_params_fields(arch):
    sae = _random(arch)
    assert set(sae.options()) == set(PARAMS[arch].model_fields) - {"lr"}
    assert type(sae)(16, 96, **sae.options()).options() == sae.options()
    assert build(arch, 16, 96, PARAMS[arch]().model_dump(exclude={"lr"})).options() == \
        PARAMS[arch]().model_dump(exclude={"lr"})


def _cfg(**kw):
    return TrainConfig(**{"steps": 300, "lr": 1e-2, "batch_size": 256, "dead_window": 50, "resample_inputs": 4096,
                          "log_every": 50, "checkpoint_every": 10**6, **kw})


@functools.cache
def _trained(arch):
    world = SparseWorld(n=64, d=24)  # small, for speed
    torch.manual_seed(0)
    sae = build(arch, world.d, 2 * world.n, {"k": world.active})
    state = train_sae(sae, world.batches(256), world.sample, _cfg())
    return sae, world, state


@pytest.mark.parametrize("arch", ARCHS)
def test_training_recovers_known_features_at_k_active(arch):
    sae, world, state = _trained(arch)
    x = world.sample(4096, torch.Generator().manual_seed(9))
    with torch.no_grad():
        f = sae.encode(x)
        fvu = (sae.decode(f) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert fvu < 0.3, fvu  # Matryoshka's inner prefixes cost it some fidelity (~0.2 here; TopK ~0.1)
    assert recovery(sae, world) > 0.85, recovery(sae, world)
    assert (sae.W_dec.norm(dim=1) - 1).abs().max() < 1e-5
    k = world.active
    assert all(abs(row["l0"] - k) < 1e-6 for row in state.history)  # k per input, or k·B per batch
    assert state.history[-1]["dead_features"] > 0 and state.history[-1]["penalty"] > 0  # AuxK at work
    l0 = (f > 0).sum(1).float()
    if arch == "topk":
        assert l0.eq(k).all()
    else:  # inference: JumpReLU at the threshold estimated in training keeps the batch's sparsity
        assert int(sae.threshold_batches) == 300 and sae.threshold > 0
        assert abs(l0.mean() - k) < 0.25 * k, l0.mean()


@pytest.mark.parametrize("arch", ARCHS)
def test_export_loads_back_and_in_saelens(arch, tmp_path):
    sae, world, _ = _trained(arch)
    save_sae(sae, tmp_path / "d", {"hook_name": "mlp.act"})
    cfg = json.loads((tmp_path / "d/cfg.json").read_text())
    x = world.sample(512, torch.Generator().manual_seed(11))
    ours = load_sae(tmp_path / "d")
    assert type(ours) is ARCHITECTURES[arch] and ours.options() == sae.options()
    torch.testing.assert_close(ours.encode(x), sae.encode(x))
    if arch != "topk":
        assert ours.threshold == sae.threshold
    sae_lens = pytest.importorskip("sae_lens")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "d"))
    if arch == "topk":
        assert cfg["architecture"] == "topk" and cfg["k"] == sae.k
    else:  # BatchTopK and Matryoshka are JumpReLU dictionaries at inference, as SAELens exports them
        assert cfg["architecture"] == "jumprelu"
        assert torch.equal(theirs.threshold.detach(), sae.threshold.expand(sae.d_sae))
    f = sae.encode(x)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), f, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs.decode(f), sae.decode(f), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs(x), sae.decode(f), rtol=1e-5, atol=1e-5)


def test_killed_batchtopk_training_resumes_to_identical_weights_and_threshold(tmp_path):
    world = SparseWorld(seed=6, n=64, d=24)
    c = _cfg(steps=120, batch_size=128, dead_window=20, checkpoint_every=40, log_every=10)
    fresh = lambda seed: (torch.manual_seed(seed), build("batchtopk", world.d, 96, {"k": 3}))[1]
    clean = fresh(0)
    clean_state = train_sae(clean, world.batches(128), world.sample, c)

    def die(step, _):
        if step == 100:  # after the checkpoint at 80
            raise Killed

    with pytest.raises(Killed):
        train_sae(fresh(0), world.batches(128), world.sample, c, tmp_path / "ck.pt", "fp", die)
    resumed = fresh(99)  # a new process: other random weights, until the checkpoint loads
    state = train_sae(resumed, world.batches(128), world.sample, c, tmp_path / "ck.pt", "fp")
    for name, value in clean.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert int(resumed.threshold_batches) == 120 and resumed.threshold > 0
    assert any(row["penalty"] > 0 for row in clean_state.history[8:])  # AuxK ran in the resumed part
    timeless = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_second"} for r in rows]
    assert timeless(state.history) == timeless(clean_state.history)


# ---------------------------------------------------------------- data parallelism: the global batch
def _on_ranks(fn, *args) -> None:
    """fn(rank, compute, *args) on two gloo ranks on 127.0.0.1, each in its own process."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, fn, *args), nprocs=2, join=True)


def _rank(rank: int, port: int, fn, *args) -> None:
    from monosemantic.compute import Compute

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        fn(rank, Compute(rank=rank, world_size=2), *args)
    finally:
        torch.distributed.destroy_process_group()


def _select(rank, compute, pre, k, out):
    f, smallest = spread_batch_top_k(pre[compute.part(len(pre))], k * len(pre), compute)
    torch.save((f, smallest), f"{out}.{rank}")


@pytest.mark.parametrize("shift", [0.0, -3.0])  # -3: fewer than k·B entries are positive
def test_the_ranks_keep_the_global_batch_top_k(tmp_path, shift):
    """Rows split 31/32 over two ranks: together they keep exactly the one-process selection, and each
    knows its smallest kept activation (BatchTopK's per-batch θ)."""
    pre = torch.randn(63, 40, generator=torch.Generator().manual_seed(1)) + shift
    _on_ranks(_select, pre, 3, str(tmp_path / "f"))
    (f0, s0), (f1, s1) = (torch.load(tmp_path / f"f.{r}") for r in (0, 1))
    one = batch_top_k(pre, 3)
    assert torch.equal(torch.cat([f0, f1]), one) and (one > 0).sum() == min(189, (pre > 0).sum())
    assert s0 == s1 == one[one > 0].min()


def _train(rank, compute, arch, out):
    data = SparseWorld(seed=3)
    batches = data.batches(63)

    def share(position):
        for rows in batches(position):
            yield rows[compute.part(len(rows))]

    torch.manual_seed(0)
    sae = build(arch, data.d, 256, {"k": 2, "aux_k": 5})  # 126 of 256 latents fire per batch: some die
    state = train_sae(sae, share, data.sample, TrainConfig(steps=12, lr=1e-2, batch_size=63, l1_warmup_steps=4,
                                                           dead_window=2, log_every=1), compute=compute)
    if compute.is_main:
        torch.save({**sae.state_dict(), **{key: torch.tensor([row[key] for row in state.history])
                                           for key in ("loss", "penalty")}}, out)


@pytest.mark.parametrize("arch, weights", [("topk", 1e-5), ("batchtopk", 1e-2), ("matryoshka", 1e-2)])
def test_two_ranks_train_as_one_process_does(tmp_path, arch, weights):
    """AuxK (dead latents from step 2) is normalised by the whole batch's residual variance, not each share's,
    and BatchTopK keeps the whole batch's k·B. Its selection differs from one process's only where rounding
    (a 31- or 32-row product against a 63-row one) flips an entry at the cut: measured 2e-3 on a weight, θ
    within 1e-6, the loss within 1e-5; each share's own k·B_rank moved weights by 0.11, θ by 2e-3 and the loss
    by 1e-2."""
    from monosemantic.compute import Compute

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the same reduction order, but for the ranks' shares
    try:
        _train(0, Compute(), arch, tmp_path / "one.pt")
    finally:
        torch.set_num_threads(threads)
    _on_ranks(_train, arch, str(tmp_path / "two.pt"))
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (one["penalty"] > 0).sum() >= 8  # AuxK was at work
    for name in one:
        tolerance = {"W_enc": weights, "W_dec": weights, "b_enc": weights, "b_dec": weights, "loss": 1e-4,
                     "penalty": 1e-4}.get(name, 1e-5)
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=tolerance, msg=name)
