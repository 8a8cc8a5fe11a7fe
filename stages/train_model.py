"""train_model: train the one-layer subject model, or adopt a Hugging Face causal LM."""

import shutil
from pathlib import Path

import torch

from monosemantic.errors import UserError
from monosemantic.model import Transformer, TransformerConfig, save_model, vocab_size
from monosemantic.model.hf import load_hf_model
from monosemantic.model.hooks import get_module
from monosemantic.model.train import evaluate_loss, train_model, unigram_entropy
from monosemantic.provenance import atomic_output, write_record
from monosemantic.tokens import read_tokens
from stages._stage import run_stage

OUT = "models/transformer"
CHECKPOINT = Path("checkpoints/train_model/checkpoint.pt")


def main() -> None:
    with run_stage("train_model", "model", also=("compute.precision",)) as s:
        p = s.section
        s.input("tokens", "data/tokens.zarr")
        store = read_tokens("data/tokens.zarr")
        vocab, train_rows = store.attrs["vocab_size"], store.split("train")
        if p.source == "hf":
            model = load_hf_model(p.hf.name_or_path, p.hf.dtype, p.hf.revision)
            if vocab > vocab_size(model):
                raise UserError(
                    f"the tokenizer has {vocab} tokens but model {p.hf.name_or_path!r} only {vocab_size(model)}; "
                    "use the model's own tokenizer (tokenizer.kind: file, tokenizer.path: its tokenizer.json)"
                )
            get_module(model, p.hook)
            train = {"tokens_seen": 0, "steps": 0}
        else:
            torch.manual_seed(p.seed)
            model = Transformer(TransformerConfig(vocab, store.ctx, p.d_model, p.n_heads, p.d_mlp)).to(s.compute.device)
            curve: list[dict] = []

            def log(step: int, m: dict) -> None:
                s.run.log_metrics(m, step)
                curve.append({"step": step, **m})

            train = train_model(model, train_rows, p, CHECKPOINT, s.fingerprint(s.compute.precision), log, s.compute)
            if not s.compute.is_main:
                return
            s.plot("plots/transformer/train.csv", curve)
        eval_rows = store.split("eval")[: max(1, p.eval_tokens // store.ctx)]
        metrics = {
            **train,
            "eval_loss": evaluate_loss(model, eval_rows),
            "eval_tokens": int(eval_rows.size),
            "unigram_entropy": unigram_entropy(train_rows, vocab),
            "parameters": sum(t.numel() for t in model.parameters()),
        }
        with atomic_output(OUT) as tmp:
            save_model(model, tmp)
            write_record(tmp, s.record(hook=p.hook))
        s.metrics("metrics/transformer.json", metrics)
        s.run.log_artifact(OUT)
        shutil.rmtree(CHECKPOINT.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
