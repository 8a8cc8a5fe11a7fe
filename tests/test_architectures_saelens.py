"""Every architecture on the tiny pipeline's real activations: a short training run through the
shared trainer (how well each learns is tests/test_architectures_*.py's and the ground-truth
test's), then SAELens loads the export and gives our features and reconstructions."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import zarr

from monosemantic.activations.reader import batches, random_rows
from monosemantic.params import load_params
from monosemantic.sae import ARCHITECTURES, build
from monosemantic.sae.export import load_sae, save_sae
from monosemantic.sae.trainer import TrainConfig, train_sae

pytestmark = pytest.mark.e2e
SAE_LENS = {"standard": "standard", "standard_2024": "standard", "topk": "topk", "batchtopk": "jumprelu",
            "jumprelu": "jumprelu", "matryoshka": "jumprelu"}


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_saelens_reproduces_each_architecture_on_real_activations(repo, tmp_path, architecture):
    sae_lens = pytest.importorskip("sae_lens")
    params = load_params(repo / "params.yaml")
    store = zarr.open_group(repo / "data/activations.zarr", mode="r")
    acts, (start, stop), e0 = store["acts"], store.attrs["splits"]["train"], store.attrs["splits"]["eval"][0]
    cfg = TrainConfig.from_params(params.sae, architecture)
    cfg = dataclasses.replace(cfg, steps=40, checkpoint_every=1000, log_every=10)
    torch.manual_seed(0)
    sae = build(architecture, acts.shape[1], 128, params.sae.options(architecture))
    state = train_sae(sae, lambda pos: batches(acts, start, stop, cfg.batch_size, 0, 8, pos),
                      lambda n, g: random_rows(acts, start, stop, n, g), cfg)
    assert state.step == 40 and all(torch.isfinite(v).all() for v in sae.state_dict().values())

    save_sae(sae, tmp_path / "d", {"hook_name": "mlp.act"})
    assert json.loads((tmp_path / "d/cfg.json").read_text())["architecture"] == SAE_LENS[architecture]
    x = torch.from_numpy(np.asarray(acts[e0 : e0 + 2048]).astype(np.float32))
    ours, again = sae.eval(), load_sae(tmp_path / "d")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "d"))
    with torch.no_grad():
        f = ours.encode(x)
        assert (f > 0).any() and f.shape == (2048, 128)
        torch.testing.assert_close(again.encode(x), f, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs.encode(x), f, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(theirs.decode(theirs.encode(x)), ours.decode(f), rtol=1e-4, atol=1e-4)
