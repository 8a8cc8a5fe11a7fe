import pytest
import torch
import torch.nn.functional as F

from monosemantic.sae.model import geometric_median
from monosemantic.sae.standard import Standard
from monosemantic.sae.resample import ENCODER_SCALE, per_input_loss, resample


def test_forward_is_the_papers_formula():
    torch.manual_seed(0)
    sae = Standard(6, 10)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(5, 6)
    out = sae(x, 0.3)
    f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    x_hat = f @ sae.W_dec + sae.b_dec
    mse = ((x_hat - x) ** 2).mean()
    l1 = f.abs().sum(dim=1).mean()
    torch.testing.assert_close(out.f, f)
    torch.testing.assert_close(out.x_hat, x_hat)
    torch.testing.assert_close(out.loss, mse + 0.3 * l1)
    assert sae.W_enc.shape == (6, 10) and sae.W_dec.shape == (10, 6)


def test_decoder_gradient_projection_removes_the_parallel_part():
    torch.manual_seed(0)
    sae = Standard(8, 16)
    sae(torch.randn(32, 8), 0.1).loss.backward()
    before = sae.W_dec.grad.clone()
    sae.remove_parallel_gradient()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert parallel.abs().max() < 1e-6
    assert not torch.allclose(before, sae.W_dec.grad)


def test_decoder_rows_stay_unit_norm_through_training():
    torch.manual_seed(0)
    sae = Standard(16, 64)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(200):
        x = torch.relu(torch.randn(64, 16))
        opt.zero_grad()
        sae(x, 0.05).loss.backward()
        sae.remove_parallel_gradient()
        opt.step()
        sae.normalize_decoder()
        assert (sae.W_dec.norm(dim=1) - 1).abs().max() < 1e-5


def test_geometric_median_minimises_summed_distance_and_resists_outliers():
    torch.manual_seed(0)
    pts = torch.randn(200, 3)
    pts[:10] += 100.0  # outliers drag the mean, barely the median
    med = geometric_median(pts)
    cost = lambda c: (pts - c).norm(dim=1).sum()
    assert cost(med) <= cost(pts.mean(0))
    for delta in torch.eye(3) * 1e-2:
        assert cost(med) <= cost(med + delta) + 1e-4 and cost(med) <= cost(med - delta) + 1e-4
    assert med.norm() < 1.0 < pts.mean(0).norm()


def _trained_state(d_in=5, d_sae=7):
    torch.manual_seed(0)
    sae = Standard(d_in, d_sae)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae(torch.randn(20, d_in), 0.1).loss.backward()
    opt.step()
    return sae, opt


def test_resampling_sets_decoder_encoder_bias_and_resets_adam_for_dead_only():
    sae, opt = _trained_state()
    dead = torch.tensor([False, True, False, False, True, False, False])
    inputs = torch.randn(50, 5)
    losses = torch.zeros(50)
    losses[17] = 3.0  # every draw must pick input 17
    alive_norm = sae.W_enc[:, ~dead].norm(dim=0).mean()
    before = {p: (opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone(), p.detach().clone())
              for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec)}
    drawn = resample(sae, opt, dead, inputs, losses)
    assert drawn.tolist() == [17, 17] and ENCODER_SCALE == 0.2  # the paper's value
    unit = inputs[17] / inputs[17].norm()
    for i in (1, 4):
        torch.testing.assert_close(sae.W_dec[i], unit)
        torch.testing.assert_close(sae.W_enc[:, i], unit * ENCODER_SCALE * alive_norm)
        torch.testing.assert_close(sae.W_enc[:, i].norm(), ENCODER_SCALE * alive_norm)
        assert sae.b_enc[i] == 0
    alive = (~dead).nonzero().squeeze(1)
    for p, (m, v, value) in before.items():
        st = opt.state[p]
        if p is sae.b_dec:
            assert torch.equal(st["exp_avg"], m) and torch.equal(p, value)
            continue
        sel = (lambda t: t[:, alive]) if p is sae.W_enc else (lambda t: t[alive])
        dsel = (lambda t: t[:, dead]) if p is sae.W_enc else (lambda t: t[dead])
        assert torch.equal(sel(st["exp_avg"]), sel(m)) and torch.equal(sel(st["exp_avg_sq"]), sel(v))
        assert torch.equal(sel(p.detach()), sel(value))
        assert (dsel(st["exp_avg"]) == 0).all() and (dsel(st["exp_avg_sq"]) == 0).all()
        assert (dsel(m) != 0).any()  # there was something to reset


def test_resampling_draws_in_proportion_to_squared_loss():
    sae, opt = _trained_state(4, 3000)
    dead = torch.ones(3000, dtype=torch.bool)
    dead[0] = False
    losses = torch.tensor([1.0, 2.0, 3.0, 0.0])
    drawn = resample(sae, opt, dead, torch.randn(4, 4), losses, torch.Generator().manual_seed(0))
    freq = torch.bincount(drawn, minlength=4).double() / len(drawn)
    expected = torch.tensor([1, 4, 9, 0], dtype=torch.double) / 14
    assert (freq - expected).abs().max() < 0.03 and freq[3] == 0


def test_per_input_loss_is_each_inputs_loss():
    sae, _ = _trained_state()
    x = torch.randn(9, 5)
    losses = per_input_loss(sae, x, 0.2, batch=4)
    for i in range(9):
        torch.testing.assert_close(losses[i], sae(x[i : i + 1], 0.2).loss.detach())


def test_no_dead_neurons_is_a_no_op():
    sae, opt = _trained_state()
    w = sae.W_dec.detach().clone()
    assert len(resample(sae, opt, torch.zeros(7, dtype=torch.bool), torch.randn(3, 5), torch.ones(3))) == 0
    assert torch.equal(w, sae.W_dec)


def test_bf16_autocast_step_trains_and_keeps_fp32_weights():
    from monosemantic.compute import Compute
    from monosemantic.sae.trainer import train_step

    torch.manual_seed(0)
    sae = Standard(16, 64)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    x = torch.relu(torch.randn(256, 16))
    bf16 = Compute(precision="bf16")
    first = train_step(sae, opt, x, 0.01, bf16).loss.item()
    for _ in range(50):
        last = train_step(sae, opt, x, 0.01, bf16).loss.item()
    assert last < first and sae.W_enc.dtype == torch.float32
    assert (sae.W_dec.norm(dim=1) - 1).abs().max() < 1e-5


def _plain_autograd(sae, x, l1_coefficient):
    """The paper's formula through torch autograd, nothing else: the reference for forward()."""
    params = [p.detach().clone().requires_grad_() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)]
    W_enc, b_enc, W_dec, b_dec = params
    f = torch.relu((x - b_dec) @ W_enc + b_enc)
    x_hat = f @ W_dec + b_dec
    loss = ((x_hat - x) ** 2).mean() + l1_coefficient * f.sum(-1).mean()
    loss.backward()
    return loss.detach(), f.detach(), x_hat.detach(), [p.grad for p in params]


@pytest.mark.parametrize(
    "bias, sparse_below, expect_sparse",
    [(-2.0, 0.1, True),  # ~1% fire: the trained-dictionary regime
     (-1e3, 0.1, True),  # no feature fires
     (1e3, 0.1, False),  # every feature fires: dense
     (0.0, 0.1, False),  # half fire: dense
     (0.0, 2.0, True),  # half fire, forced onto the nonzeros
     (1e3, 2.0, True),  # every feature fires, forced onto the nonzeros
     (-2.0, 0.0, False)],  # ~1% fire, forced dense
)
def test_forward_values_and_gradients_equal_plain_autograd(bias, sparse_below, expect_sparse, monkeypatch):
    import monosemantic.sae.model as model

    torch.manual_seed(0)
    sae = Standard(24, 200)
    with torch.no_grad():
        sae.b_enc.normal_(bias, 0.3)
        sae.b_dec.normal_()
    sae.sparse_below = sparse_below
    x = torch.randn(96, 24)
    loss, f, x_hat, grads = _plain_autograd(sae, x, 0.3)

    bags, embedding_bag = [], F.embedding_bag
    monkeypatch.setattr(model.F, "embedding_bag", lambda *a, **k: bags.append(1) or embedding_bag(*a, **k))
    out = sae(x, 0.3)
    out.loss.backward()
    assert bool(bags) == expect_sparse  # the branch was chosen by f's density
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1.0, b.abs().max().item()))
    for ours, reference in [(out.f, f), (out.x_hat, x_hat), (out.loss, loss), (out.mse + 0.3 * out.penalty, loss),
                            *zip((sae.W_enc.grad, sae.b_enc.grad, sae.W_dec.grad, sae.b_dec.grad), grads)]:
        close(ours, reference)


def test_sparse_and_dense_training_steps_agree():
    from monosemantic.sae.trainer import adam, train_step

    torch.manual_seed(0)
    x = torch.relu(torch.randn(128, 16))
    sparse, dense = Standard(16, 64), Standard(16, 64)
    dense.load_state_dict(sparse.state_dict())
    sparse.sparse_below, dense.sparse_below = 2.0, 0.0
    opts = adam(sparse, 1e-2), adam(dense, 1e-2)
    for _ in range(20):
        a, b = train_step(sparse, opts[0], x, 0.05), train_step(dense, opts[1], x, 0.05)
        torch.testing.assert_close(a.loss, b.loss)
    for name, value in sparse.state_dict().items():
        torch.testing.assert_close(value, dense.state_dict()[name], rtol=1e-4, atol=1e-5)


def test_an_input_that_needs_a_gradient_gets_it():
    torch.manual_seed(0)
    sae = Standard(8, 32)
    x = torch.randn(16, 8)
    ours, reference = x.clone().requires_grad_(), x.clone().requires_grad_()
    sae(ours, 0.1).loss.backward()
    f = sae.encode(reference)
    (((sae.decode(f) - reference) ** 2).mean() + 0.1 * f.sum(-1).mean()).backward()
    torch.testing.assert_close(ours.grad, reference.grad)
