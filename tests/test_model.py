import numpy as np
import pytest
import torch

from monosemantic.errors import UserError
from monosemantic.model import Transformer, TransformerConfig, load_model, save_model
from monosemantic.model.hooks import capture, get_module
from monosemantic.model.train import evaluate_loss, train_model, unigram_entropy
from monosemantic.params import ModelParams

CFG = TransformerConfig(vocab_size=97, ctx=16, d_model=32, n_heads=4, d_mlp=64)


def test_capture_is_the_post_relu_mlp_output():
    torch.manual_seed(0)
    model = Transformer(CFG).eval()
    tokens = torch.randint(0, 97, (3, 16))
    acts = capture(model, "mlp.act", tokens)
    x = model.embed(tokens) + model.pos(torch.arange(16))
    x = x + model.attn(model.ln_attn(x))
    manual = torch.relu(model.mlp.w_in(model.ln_mlp(x)))
    assert acts.shape == (3, 16, 64) and (acts >= 0).all()
    torch.testing.assert_close(acts, manual)


def test_attention_is_causal():
    torch.manual_seed(0)
    model = Transformer(CFG).eval()
    a = torch.randint(0, 97, (1, 16))
    b = a.clone()
    b[0, 10:] = (b[0, 10:] + 1) % 97
    assert torch.allclose(capture(model, "mlp.act", a)[0, :10], capture(model, "mlp.act", b)[0, :10])


def test_unknown_hook_suggests_close_names():
    with pytest.raises(UserError, match="did you mean mlp.act"):
        get_module(Transformer(CFG), "mlp.actt")


def test_save_load_round_trip(tmp_path):
    model = Transformer(CFG)
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m")
    tokens = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(tokens), again(tokens))


def tiny_gpt2(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(tmp_path / "gpt2")
    return model


def test_hf_model_is_hooked_by_module_path(tmp_path):
    model = tiny_gpt2(tmp_path)
    loaded = load_model(tmp_path / "gpt2")  # config.json without our marker: a transformers model
    tokens = torch.randint(0, 97, (2, 16))
    acts = capture(loaded, "transformer.h.1.mlp.act", tokens)
    assert acts.shape == (2, 16, 4 * 32)
    seen = []
    handle = model.transformer.h[1].mlp.act.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(tokens)
    handle.remove()
    torch.testing.assert_close(acts, seen[0])
    with pytest.raises(UserError, match="transformer.h.1.mlp.act"):
        get_module(loaded, "transformer.h.1.mlp.ac")


def test_hf_missing_model_is_a_clear_error(tmp_path):
    pytest.importorskip("transformers")
    from monosemantic.model.hf import load_hf_model

    with pytest.raises(UserError, match="could not load a causal LM"):
        load_hf_model(tmp_path / "nothing-here")


def _params(**kw):
    return ModelParams(**{"d_model": 32, "n_heads": 4, "d_mlp": 64, "steps": 24, "batch_size": 8,
                          "lr": 3e-3, "warmup_steps": 4, "checkpoint_every": 10, "log_every": 4, **kw})


def _corpus(n=200, ctx=16, seed=0):
    # A learnable sequence: each token is the previous one plus one, modulo the vocabulary.
    start = np.random.default_rng(seed).integers(0, 97, (n, 1))
    return ((start + np.arange(ctx)) % 97).astype(np.int32)


class Killed(Exception):
    pass


def test_killed_training_resumes_to_the_same_weights(tmp_path):
    rows, p = _corpus(), _params()
    torch.manual_seed(1)
    clean = Transformer(CFG)
    train_model(clean, rows, p, tmp_path / "a.pt", "fp")

    def die(step, _):
        if step == 16:  # after the checkpoint at step 10
            raise Killed

    torch.manual_seed(1)
    first = Transformer(CFG)
    with pytest.raises(Killed):
        train_model(first, rows, p, tmp_path / "b.pt", "fp", log=die)
    torch.manual_seed(2)  # the resumed process starts from different random weights
    resumed = Transformer(CFG)
    train_model(resumed, rows, p, tmp_path / "b.pt", "fp")
    for (name, a), (_, b) in zip(clean.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_checkpoint_from_other_params_is_ignored(tmp_path):
    rows = _corpus()
    train_model(Transformer(CFG), rows, _params(), tmp_path / "c.pt", "old", log=lambda s, m: None)
    torch.manual_seed(1)
    a = Transformer(CFG)
    train_model(a, rows, _params(checkpoint_every=100), tmp_path / "none.pt", "new")
    torch.manual_seed(1)
    b = Transformer(CFG)
    train_model(b, rows, _params(checkpoint_every=100), tmp_path / "c.pt", "new")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_model_learns_below_unigram_entropy(tmp_path):
    rows = _corpus(400)
    torch.manual_seed(0)
    model = Transformer(CFG)
    before = evaluate_loss(model, rows[:50])
    train_model(model, rows[50:], _params(steps=150, lr=1e-2), tmp_path / "x.pt", "fp")
    after = evaluate_loss(model, rows[:50])
    assert after < unigram_entropy(rows[50:], 97) - 1.0 < before


def test_unigram_entropy_of_uniform_tokens():
    rows = np.arange(64, dtype=np.int32).reshape(4, 16)
    assert unigram_entropy(rows, 64) == pytest.approx(np.log(64))
