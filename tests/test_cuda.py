"""On a CUDA device, the library does what it does on the CPU: every architecture's loss and
gradients (autograd there, the hand-written sparse step here), training with resampling and its
resume, a diverging run's stop, bf16 autocast, the activation cache, the subject model and the
evaluation.

Skipped where torch sees no CUDA device (CI has none); run them on a GPU machine with
`python -m pytest tests/test_cuda.py`.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from monosemantic import params as schema
from monosemantic.activations import Layout, cache_activations, open_store
from monosemantic.compute import Compute
from monosemantic.evaluation import evaluate_sae
from monosemantic.model import Transformer
from monosemantic.model.hooks import capture
from monosemantic.model.train import train_model
from monosemantic.sae import ARCHITECTURES, build
from monosemantic.sae.export import load_sae, save_sae
from monosemantic.sae.standard import Standard
from monosemantic.sae.trainer import adam, train_sae, train_step
from tests.test_model import CFG, _corpus, _params
from tests.test_sae_training import D_IN, N_TRUE, SparseWorld, cfg, diverge, kill_and_resume, recovery

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = Compute(torch.device("cuda")) if torch.cuda.is_available() else None
DEFAULTS = {"standard": schema.StandardParams(l1_coefficient=0.01), "standard_2024": schema.Standard2024Params(),
            "topk": schema.TopKParams(k=4, aux_k=8), "batchtopk": schema.BatchTopKParams(k=4, aux_k=8),
            "jumprelu": schema.JumpReLUParams(threshold_init=0.05), "matryoshka": schema.MatryoshkaParams(k=4, aux_k=8)}


def _options(arch: str) -> dict:
    return DEFAULTS[arch].model_dump(exclude={"lr", "resample", "resample_steps", "resample_inputs"})


def _started(arch: str, world: SparseWorld, d_sae: int = 2 * N_TRUE) -> Standard:
    """A dictionary after its data-dependent init and 30 CPU steps: past the all-firing start."""
    torch.manual_seed(0)
    sae = build(arch, D_IN, d_sae, _options(arch))
    g = torch.Generator().manual_seed(1)
    sae.initialize(world.sample(4096, g))
    opt = adam(sae, 3e-3)
    for _ in range(30):
        train_step(sae, opt, world.sample(512, g), sae.coefficient)
    sae.zero_grad(set_to_none=True)
    return sae


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double().cpu()).norm() / a.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_loss_and_gradients_on_cuda_match_the_cpu_step(arch):
    world = SparseWorld()
    cpu = _started(arch, world)
    gpu = copy.deepcopy(cpu).to("cuda")
    x = world.sample(512, torch.Generator().manual_seed(2))
    dead = torch.arange(cpu.d_sae) % 5 == 0  # some latents count as dead, for the AuxK losses
    outs = {}
    for name, sae, dev in (("cpu", cpu, "cpu"), ("cuda", gpu, "cuda")):
        out = sae(x.to(dev), sae.coefficient, dead.to(dev))
        out.loss.backward()
        outs[name] = out
    assert _relative(outs["cpu"].loss, outs["cuda"].loss) < 1e-5
    assert _relative(outs["cpu"].f, outs["cuda"].f) < 1e-5
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        if p.grad is None:
            assert q.grad is None or not q.grad.any(), name
            continue
        # JumpReLU's threshold gradient counts the entries inside the kernel's window: an entry at
        # its edge may fall either side of it on the two devices, so its bound is looser
        bound = 2e-2 if name == "log_threshold" else 1e-4
        assert _relative(p.grad, q.grad) < bound, (name, _relative(p.grad, q.grad))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_trains_on_cuda_as_on_the_cpu(arch):
    world = SparseWorld(seed=3)
    c = cfg(steps=600, resample_steps=(200, 400), dead_window=100, resample_inputs=4096, lr=3e-3)
    results = {}
    for name, compute in (("cpu", Compute()), ("cuda", CUDA)):
        torch.manual_seed(0)
        sae = build(arch, D_IN, 2 * N_TRUE, _options(arch)).to(compute.device)
        state = train_sae(sae, world.batches(512), world.sample, c, compute=compute)
        results[name] = (recovery(sae.cpu(), world), state.history[-1])
    (rec_cpu, last_cpu), (rec_gpu, last_gpu) = results["cpu"], results["cuda"]
    assert rec_gpu >= rec_cpu - 0.03, (rec_cpu, rec_gpu)
    assert last_gpu["mse"] <= 1.3 * last_cpu["mse"] + 1e-4, (last_cpu, last_gpu)
    assert abs(last_gpu["l0"] - last_cpu["l0"]) <= 0.3 * last_cpu["l0"] + 1, (last_cpu, last_gpu)


def test_training_on_cuda_resamples_and_resumes_to_the_same_weights(tmp_path):
    clean, _, resumed, _ = kill_and_resume(tmp_path, CUDA)
    assert resumed.W_dec.device.type == "cuda"
    for name, value in clean.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)

    save_sae(resumed, tmp_path / "sae")  # a dictionary trained on the GPU loads anywhere
    loaded = load_sae(tmp_path / "sae")
    assert loaded.W_dec.device.type == "cpu"
    torch.testing.assert_close(loaded.W_dec, resumed.W_dec.cpu())


def test_a_non_finite_loss_on_cuda_names_its_step_and_keeps_the_finite_checkpoint(tmp_path):
    diverge(tmp_path, CUDA)  # steps queue on the GPU; the loss is checked before the checkpoint at step 30


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_bf16_autocast_training_on_cuda_finds_what_fp32_finds(arch):
    world = SparseWorld()
    found = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        sae = build(arch, D_IN, 2 * N_TRUE, _options(arch)).to("cuda")
        train_sae(sae, world.batches(512), world.sample, cfg(), compute=Compute(torch.device("cuda"), precision))
        assert sae.W_enc.dtype == torch.float32  # weights and Adam's state stay fp32
        found[precision] = recovery(sae.cpu(), world)
    assert found["bf16"] >= found["fp32"] - 0.03, found


def test_the_activation_cache_on_cuda_stores_what_the_cpu_stores(tmp_path):
    torch.manual_seed(0)
    model = Transformer(CFG).eval()
    rows = _corpus(n=40)
    layout = Layout(ctx=16, chunk_seqs=4, shard_chunks=2)
    stores = {}
    for name, compute in (("cpu", Compute()), ("cuda", CUDA), ("bf16", Compute(torch.device("cuda"), "bf16"))):
        m = copy.deepcopy(model).to(compute.device)

        def acts(tokens, m=m, compute=compute):
            with torch.no_grad(), compute.autocast():
                return capture(m, "mlp.act", compute.to_device(tokens)).float()

        cache_activations(acts, rows, np.arange(len(rows)), tmp_path / name, CFG.d_mlp, layout, batch_seqs=8,
                          attrs={"splits": {}}, fingerprint="fp", compute=compute)
        stores[name] = torch.from_numpy(open_store(tmp_path / name).acts[:].astype(np.float32))
    assert stores["cpu"].abs().max() > 0
    torch.testing.assert_close(stores["cuda"], stores["cpu"], rtol=2e-3, atol=2e-3)  # float16's rounding
    assert _relative(stores["cpu"], stores["bf16"]) < 3e-2


def test_the_subject_model_trains_on_cuda_as_on_the_cpu(tmp_path):
    rows, p = _corpus(), _params()
    metrics = {}
    for name, compute in (("cpu", Compute()), ("cuda", CUDA), ("bf16", Compute(torch.device("cuda"), "bf16"))):
        torch.manual_seed(1)
        model = Transformer(CFG).to(compute.device)
        metrics[name] = train_model(model, rows, p, tmp_path / f"{name}.pt", "fp", compute=compute)["train_loss"]
    assert abs(metrics["cuda"] - metrics["cpu"]) < 1e-3 * metrics["cpu"], metrics
    assert abs(metrics["bf16"] - metrics["cpu"]) < 5e-2 * metrics["cpu"], metrics


def test_the_evaluation_on_cuda_matches_the_cpu():
    torch.manual_seed(0)
    model, contexts = Transformer(CFG).eval(), _corpus(n=24)
    sae = Standard(CFG.d_mlp, 4 * CFG.d_mlp, l1_coefficient=0.01)
    mean = torch.rand(CFG.d_mlp)
    cpu, _ = evaluate_sae(model, "mlp.act", sae, contexts, mean, batch_seqs=4)
    gpu, _ = evaluate_sae(copy.deepcopy(model).to("cuda"), "mlp.act", copy.deepcopy(sae).to("cuda"), contexts, mean,
                          batch_seqs=4, compute=CUDA)
    assert cpu.keys() == gpu.keys()
    for key, value in cpu.items():
        if isinstance(value, float) and np.isfinite(value):
            assert gpu[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
